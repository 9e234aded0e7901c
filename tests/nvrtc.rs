//! Every kernel file, compiled by NVRTC for each target architecture and assembled
//! by `ptxas -v`, on a machine without a GPU: what the driver's JIT will make of
//! it on A100 (sm_80), A10/3090 (sm_86), L4/4090 (sm_89) and H100 (sm_90).
//!
//! Fails on any compile error, any register spill, and any mismatch between the
//! entry points build.rs found (the files' `ENTRY_POINTS` lists) and the `.entry`s in
//! the PTX. NVRTC
//! and ptxas come from NVIDIA's wheels (`scripts/test.sh` installs them into
//! `.cache/nvidia`); without them the tests fail when `CI` is set and otherwise
//! print `SKIPPED (no NVRTC/ptxas: …)`.
//!
//! The per-entry table (registers, shared memory, stack, spill bytes), or the
//! reason for skipping, is printed (visible with `-- --nocapture`) and written to
//! `target/tmp/nvrtc-kernels.txt`, which `scripts/test.sh` shows.

use std::collections::BTreeSet;
use std::path::PathBuf;

use lesionseg::backend::cuda::driver::KernelSources;
use lesionseg::backend::cuda::ptxas::{self, EntryStats};
use lesionseg::backend::cuda::{nvrtc, probe};
use lesionseg::Error;

/// The architectures every kernel must build for without spilling.
const ARCHS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90"];

/// Kernels allowed to spill, with the reason: planted bugs that exist to be caught.
const MAY_SPILL: &[(&str, &str, &str)] = &[(
    "testing",
    "test_stack_overflow",
    "a planted bug for the emulator's stack guard: recursion with a 1 KiB local array per frame",
)];

/// NVRTC and ptxas, or `None` after saying why (a failure when `CI` is set).
fn tools() -> Option<(&'static nvrtc::Nvrtc, PathBuf)> {
    let nv = nvrtc::nvrtc();
    let px = probe::find_ptxas();
    if let (Ok(nv), Some(px)) = (&nv, &px) {
        return Some((nv, px.clone()));
    }
    let mut why = Vec::new();
    if let Err(e) = nv {
        why.push(e.to_string());
    }
    if px.is_none() {
        why.push("ptxas not found (LESIONSEG_PTXAS, CUDA_HOME/bin, the nvidia-cuda-nvcc wheel, PATH)".to_string());
    }
    let why = why.join("; ");
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but the kernel toolchain is missing: {why}\n(scripts/test.sh installs nvidia-cuda-nvrtc and \
         nvidia-cuda-nvcc 13.0.88 into .cache/nvidia)"
    );
    report(&format!("SKIPPED (no NVRTC/ptxas: {why})\n"));
    None
}

/// Prints `text` and keeps it in `target/tmp/nvrtc-kernels.txt` for scripts/test.sh.
fn report(text: &str) {
    println!("{text}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("nvrtc-kernels.txt");
    let _ = std::fs::write(path, text);
}

/// A small kernel in the header's vocabulary, to check the toolchain itself.
const AXPY: &str = r#"
#include "common.cuh"
// y[i] += a * x[i]; one thread per element, tail guarded.
KERNEL(axpy_f32)(float* __restrict__ y, const float* __restrict__ x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaf(a, x[i], y[i]);
}
KERNEL(block_sum_f32)(float* out, const float* x, int n) {
    SHARED(float, scratch, [32]);
    float v = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
    v = block_sum(v, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
}
ENTRY_POINTS(axpy_f32, block_sum_f32)
"#;

#[test]
fn toolchain_compiles_assembles_and_reports() {
    let Some((nv, px)) = tools() else { return };
    let headers = KernelSources::builtin().headers;
    let (ptx, _log) =
        nvrtc::compile_ptx_with("selftest", AXPY, headers, "sm_90").expect("NVRTC on the self-test kernel");
    assert!(ptx.contains(".target sm_90"), "PTX for compute_90:\n{}", &ptx[..ptx.len().min(400)]);
    assert_eq!(nvrtc::ptx_entries(&ptx), ["axpy_f32", "block_sum_f32"]);
    let stats = ptxas::assemble(&px, &ptx, "sm_90").expect("ptxas on the self-test kernel");
    let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from(["axpy_f32", "block_sum_f32"]));
    assert!(stats.iter().all(|s| s.registers > 0 && !s.spills()), "{stats:?}");
    let sum = stats.iter().find(|s| s.name == "block_sum_f32").unwrap();
    assert_eq!(sum.smem_bytes, 128, "32 floats of static shared memory");
    println!("NVRTC {} ({}), ptxas {} ({})", nv.version_string(), nv.path.display(), ptxas_version(&px), px.display());
}

#[test]
fn compile_error_carries_the_full_log() {
    let Some(_) = tools() else { return };
    let bad = "#include \"common.cuh\"\nKERNEL(broken_f32)(float* y) { y[0] = undefined_name; }\n";
    match nvrtc::compile_ptx_with("broken", bad, KernelSources::builtin().headers, "sm_80") {
        Err(Error::Nvrtc { module, log }) => {
            assert_eq!(module, "broken");
            assert!(log.contains("undefined_name") && log.contains("broken.cu"), "log: {log}");
        }
        other => panic!("expected an NVRTC error, got {other:?}"),
    }
}

fn ptxas_version(px: &std::path::Path) -> String {
    ptxas::version(px).unwrap_or_else(|| "unknown version".into())
}

/// The `.entry` names in the PTX and the ptxas statistics of one (module, arch).
type Built = (Vec<String>, Vec<EntryStats>);

/// One (module, arch) compiled and assembled, or what went wrong.
fn build(
    module: &str,
    source: &str,
    headers: &[(&str, &str)],
    arch: &str,
    px: &std::path::Path,
) -> Result<Built, String> {
    let (ptx, _log) = nvrtc::compile_ptx_with(module, source, headers, arch).map_err(|e| e.to_string())?;
    let stats = ptxas::assemble(px, &ptx, arch)?;
    Ok((nvrtc::ptx_entries(&ptx), stats))
}

#[test]
fn kernels_ptxas_every_arch() {
    let Some((nv, px)) = tools() else { return };
    let ks = KernelSources::builtin();
    assert!(!ks.modules.is_empty(), "no kernel files in this build (kernels/*.cu)");
    let start = std::time::Instant::now();
    // One thread per architecture: NVRTC and ptxas are separate programs per call.
    let results: Vec<(&str, &str, Result<Built, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = ARCHS
            .iter()
            .map(|&arch| {
                let px = &px;
                s.spawn(move || {
                    ks.modules
                        .iter()
                        .map(|&(module, source)| (module, arch, build(module, source, ks.headers, arch, px)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("build thread")).collect()
    });

    let mut problems = Vec::new();
    let mut rows = Vec::new();
    for (module, arch, result) in results {
        let (entries, stats) = match result {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{module}.cu for {arch}: {e}"));
                continue;
            }
        };
        let declared: BTreeSet<&str> = ks.entry_points.iter().filter(|(m, _)| *m == module).map(|(_, k)| *k).collect();
        let in_ptx: BTreeSet<&str> = entries.iter().map(String::as_str).collect();
        for missing in declared.difference(&in_ptx) {
            problems.push(format!("{module}.cu ({arch}): entry point {missing} is in ENTRY_POINTS but not in the PTX"));
        }
        for extra in in_ptx.difference(&declared) {
            problems.push(format!(
                "{module}.cu ({arch}): .entry {extra} in the PTX is not in the file's ENTRY_POINTS list"
            ));
        }
        for s in stats {
            if s.spills() && !MAY_SPILL.iter().any(|(m, k, _)| *m == module && *k == s.name) {
                problems.push(format!(
                    "{module}.cu ({arch}): {} spills ({} bytes stored, {} loaded, {} registers)",
                    s.name, s.spill_stores, s.spill_loads, s.registers
                ));
            }
            rows.push((module.to_string(), arch.to_string(), s));
        }
    }
    rows.sort_by(|a, b| (&a.0, &a.2.name, &a.1).cmp(&(&b.0, &b.2.name, &b.1)));
    report(&format!(
        "NVRTC {} ({}), ptxas {}: {} kernel files x {} architectures in {:.1} s\n{}",
        nv.version_string(),
        nv.path.display(),
        ptxas_version(&px),
        ks.modules.len(),
        ARCHS.len(),
        start.elapsed().as_secs_f64(),
        ptxas::table(&rows)
    ));
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}
