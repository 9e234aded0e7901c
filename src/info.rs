//! The `info` command: what this machine offers the CUDA backend — driver, GPUs,
//! NVRTC, ptxas, the kernel cache — and what each kernel costs in registers and
//! shared memory, measured the best way available: `cuFuncGetAttribute` on a GPU,
//! `ptxas -v` with only NVRTC and ptxas, "not available" otherwise.
//!
//! Every probe here reports its failure as text; nothing panics, so `info` is the
//! first thing to run on a machine that does not work.

use std::fmt::Write as _;

use crate::backend::cuda::driver::{self, Cuda, KernelSources};
use crate::backend::cuda::{nvrtc, probe, ptxas, Kernel};

/// The architecture kernels are assembled for when there is no GPU to ask.
pub const DEFAULT_ARCH: &str = "sm_90";

/// The whole report, ready to print.
pub fn report() -> String {
    let mut out = format!("lesionseg {}\n", env!("CARGO_PKG_VERSION"));
    let sources = KernelSources::builtin();
    section_driver(&mut out);
    let nvrtc_ok = section_nvrtc(&mut out);
    let ptxas = probe::find_ptxas();
    match &ptxas {
        Some(p) => {
            let v = ptxas::version(p).unwrap_or_else(|| "version unknown".into());
            let _ = writeln!(out, "ptxas: {v} at {}", p.display());
        }
        None => out += "ptxas: not found (LESIONSEG_PTXAS, CUDA_HOME/bin, nvidia-cuda-nvcc wheel, PATH)\n",
    }
    match nvrtc::cache_dir() {
        Some(d) => {
            let files = std::fs::read_dir(&d).map(|r| r.filter_map(|e| e.ok()).count()).unwrap_or(0);
            let _ = writeln!(out, "kernel cache: {} ({files} files)", d.display());
        }
        None => out += "kernel cache: none (set LESIONSEG_CACHE_DIR or HOME)\n",
    }
    section_kernels(&mut out, &sources, nvrtc_ok, ptxas.as_deref());
    out
}

fn section_driver(out: &mut String) {
    match probe::driver() {
        Ok(d) => {
            let path = d.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "libcuda.so.1".into());
            let _ = writeln!(out, "driver: CUDA {} ({path})", probe::cuda_version_string(d.version));
        }
        Err(e) => {
            let _ = writeln!(out, "driver: {e}");
            out.push_str("devices: none\n");
            return;
        }
    }
    match driver::devices() {
        Ok(devs) if devs.is_empty() => out.push_str("devices: none\n"),
        Ok(devs) => {
            out.push_str("devices:\n");
            for d in devs {
                let _ = writeln!(
                    out,
                    "  GPU {}: {}, compute {}.{} (sm_{}{}), {:.1} GiB",
                    d.ordinal,
                    d.name,
                    d.cc.0,
                    d.cc.1,
                    d.cc.0,
                    d.cc.1,
                    d.total_bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "devices: none ({})", plain(e));
        }
    }
}

fn section_nvrtc(out: &mut String) -> bool {
    match nvrtc::nvrtc() {
        Ok(n) => {
            let archs: Vec<String> = n.archs.iter().map(|a| format!("sm_{a}")).collect();
            let _ = writeln!(out, "NVRTC: {} at {}", n.version_string(), n.path.display());
            if !archs.is_empty() {
                let _ = writeln!(out, "  targets: {}", archs.join(" "));
            }
            true
        }
        Err(e) => {
            let _ = writeln!(out, "NVRTC: {}", plain(e));
            false
        }
    }
}

/// An error's message without the `CUDA: ` prefix (every line here is about CUDA).
fn plain(e: crate::Error) -> String {
    match e {
        crate::Error::Cuda(m) => m,
        other => other.to_string(),
    }
}

/// Entry points of `module` as declared by the sources.
fn entries(sources: &KernelSources, module: &str) -> Vec<&'static str> {
    sources.entry_points.iter().filter(|(m, _)| *m == module).map(|(_, k)| *k).collect()
}

fn section_kernels(out: &mut String, sources: &KernelSources, nvrtc_ok: bool, ptxas: Option<&std::path::Path>) {
    if sources.modules.is_empty() {
        out.push_str("kernels: none in this build\n");
        return;
    }
    if !nvrtc_ok {
        out.push_str("kernels: not compiled (no NVRTC); registers / shared memory: not available\n");
        for (module, _) in sources.modules {
            let _ = writeln!(out, "  {module}.cu: {} entry points", entries(sources, module).len());
        }
        return;
    }
    match Cuda::with_sources(0, *sources) {
        Ok(gpu) => kernels_on_gpu(out, sources, &gpu),
        Err(e) => {
            let _ = writeln!(out, "kernels (no GPU: {}), for {DEFAULT_ARCH}:", plain(e));
            kernels_with_ptxas(out, sources, ptxas);
        }
    }
}

fn kernels_on_gpu(out: &mut String, sources: &KernelSources, gpu: &Cuda) {
    let _ = writeln!(out, "kernels on GPU 0 ({}, PTX for {}), via cuFuncGetAttribute:", gpu.name(), gpu.arch());
    for (module, _) in sources.modules {
        if let Err(e) = gpu.module(module) {
            let _ = writeln!(out, "  {module}.cu: FAILED: {e}");
            continue;
        }
        let _ = writeln!(out, "  {module}.cu: compiled and loaded");
        for name in entries(sources, module) {
            match gpu.attributes(Kernel { module, name }) {
                Ok((regs, smem, local, threads)) => {
                    let _ = writeln!(
                        out,
                        "    {name}: {regs} registers, {smem} B static shared, {local} B local, max {threads} threads"
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "    {name}: {e}");
                }
            }
        }
    }
}

fn kernels_with_ptxas(out: &mut String, sources: &KernelSources, ptxas: Option<&std::path::Path>) {
    for (module, source) in sources.modules {
        let ptx = match nvrtc::cached_ptx(module, source, sources.headers, DEFAULT_ARCH) {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(out, "  {module}.cu: FAILED: {e}");
                continue;
            }
        };
        let _ = writeln!(out, "  {module}.cu: compiled ({} bytes of PTX)", ptx.len());
        let Some(px) = ptxas else {
            for name in entries(sources, module) {
                let _ = writeln!(out, "    {name}: registers / shared memory not available (no ptxas)");
            }
            continue;
        };
        match ptxas::assemble(px, &ptx, DEFAULT_ARCH) {
            Ok(stats) => {
                for s in stats {
                    let _ = writeln!(
                        out,
                        "    {}: {} registers, {} B static shared, {} B stack, spills {} B stored / {} B loaded (ptxas -v)",
                        s.name, s.registers, s.smem_bytes, s.stack_bytes, s.spill_stores, s.spill_loads
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "    ptxas failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn report_never_panics() {
        let r = super::report();
        assert!(r.contains("driver:") && r.contains("NVRTC") && r.contains("kernel"), "{r}");
    }
}
