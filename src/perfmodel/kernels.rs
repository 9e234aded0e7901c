//! What the model knows about each kernel on a target architecture (registers,
//! shared memory, the SASS mix of its main loop), and how a traced launch becomes a
//! [`LaunchDemand`]: the mma count is exact; instructions and FP32 FLOPs are the main
//! loop's static counts times its dynamic trip count (the traced mma count over the
//! loop's HMMA, or its traced memory requests over the loop's memory instructions)
//! plus the rest of the kernel once per warp.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::LaunchDemand;
use crate::backend::cuda::driver::KernelSources;
use crate::backend::cuda::sass::{self, KernelSass, Mix};
use crate::backend::cuda::{nvrtc, probe};
use crate::backend::emu::counters::Counters;
use crate::backend::emu::trace::LaunchTrace;

/// Every kernel's SASS summary on one architecture, or why there is none.
#[derive(Clone, Debug, Default)]
pub struct StaticInfo {
    /// The architecture (`sm_90`).
    pub arch: String,
    /// By entry point.
    pub kernels: HashMap<String, KernelSass>,
    /// Tools and versions used, or what was missing.
    pub note: String,
}

/// The kernels of this build compiled for `arch` (NVRTC, ptxas, nvdisasm), once per
/// process and architecture. Without the tools the map is empty and `note` says why.
pub fn static_info(arch: &str) -> Arc<StaticInfo> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<StaticInfo>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(s) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(arch) {
        return s.clone();
    }
    let info = Arc::new(load(arch));
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(arch.to_string(), info.clone());
    info
}

fn load(arch: &str) -> StaticInfo {
    let mut info = StaticInfo { arch: arch.to_string(), ..Default::default() };
    let nv = match nvrtc::nvrtc() {
        Ok(nv) => nv,
        Err(e) => {
            info.note = format!("no SASS ({e})");
            return info;
        }
    };
    let (Some(ptxas), Some(nvdisasm)) = (probe::find_ptxas(), sass::find_nvdisasm()) else {
        info.note = "no SASS (ptxas or nvdisasm not found; scripts/test.sh installs both into .cache)".into();
        return info;
    };
    let ks = KernelSources::builtin();
    let results: Vec<Result<Vec<KernelSass>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ks
            .modules
            .iter()
            .map(|&(module, source)| {
                let (ptxas, nvdisasm) = (&ptxas, &nvdisasm);
                s.spawn(move || {
                    let (ptx, _) =
                        nvrtc::compile_ptx_with(module, source, ks.headers, arch).map_err(|e| e.to_string())?;
                    let (text, stats) = sass::sass(ptxas, nvdisasm, &ptx, arch)?;
                    let bounds = sass::ptx_max_threads(&ptx);
                    let mut list = sass::summarize(&text, &stats);
                    for k in &mut list {
                        k.max_threads = bounds.get(&k.name).copied();
                    }
                    Ok(list)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("panicked".into()))).collect()
    });
    let mut problems = Vec::new();
    for r in results {
        match r {
            Ok(list) => info.kernels.extend(list.into_iter().map(|k| (k.name.clone(), k))),
            Err(e) => problems.push(e),
        }
    }
    info.note = format!(
        "SASS of {arch} from NVRTC {}, ptxas {}, nvdisasm {}{}",
        nv.version_string(),
        sass::tool_version(&ptxas).unwrap_or_default(),
        sass::tool_version(&nvdisasm).unwrap_or_default(),
        if problems.is_empty() { String::new() } else { format!("; failed: {}", problems.join("; ")) }
    );
    info
}

/// Warp-level memory instructions of the traced main loop (a cp.async counted once).
fn loop_requests(c: &Counters) -> f64 {
    c.global_load.requests
        + c.global_store.requests
        + c.shared_load.requests
        + c.shared_store.requests
        + c.ldmatrix.requests
}

/// `loop` counts times the trip count, plus `whole − loop` once per warp.
fn scale(whole: u32, lp: u32, iters: f64, warps: f64) -> f64 {
    iters * f64::from(lp) + warps * f64::from(whole.saturating_sub(lp))
}

/// The model's view of traced launch `t`, with the kernel's SASS summary when known.
pub fn demand(t: &LaunchTrace, k: Option<&KernelSass>) -> LaunchDemand {
    let all = Counters::of(t, false);
    let threads = t.threads() as u32;
    let warps = t.blocks as f64 * f64::from(threads.div_ceil(32));
    let mut d = LaunchDemand {
        blocks: t.blocks,
        threads,
        smem_bytes: t.geometry.smem_bytes + k.map_or(0, |k| k.stats.smem_bytes),
        registers: k.map(|k| k.stats.registers),
        tensor_flops: all.tensor_flops(),
        dram_bytes: all.unique_read + all.unique_written,
        l2_bytes: 32.0 * all.l2_sectors(),
        wavefronts: all.shared().wavefronts,
        ..Default::default()
    };
    let Some(k) = k else { return d };
    let (lp, iters) = match k.main_loop {
        Some(lp) => {
            let (dynamic, fixed) = if lp.get("HMMA") > 0 && t.mma > 0.0 {
                (t.mma, lp.get("HMMA"))
            } else {
                (loop_requests(&Counters::of(t, true)), lp.memory())
            };
            (lp, if fixed > 0 { dynamic / f64::from(fixed) } else { 0.0 })
        }
        None => (Mix::default(), 0.0),
    };
    let w = &k.whole;
    d.instructions = Some(scale(w.total, lp.total, iters, warps));
    let ffma = scale(w.get("FFMA"), lp.get("FFMA"), iters, warps);
    let other = scale(w.get("FP32"), lp.get("FP32"), iters, warps);
    d.fp32_flops = Some(64.0 * ffma + 32.0 * other);
    d
}
