//! The `info` command: what this machine offers the CUDA backend — driver, GPUs,
//! the kernels embedded in this binary, NVRTC, NCCL, ptxas, the kernel cache — which path
//! each kernel file takes onto the GPU (embedded cubin, embedded PTX through the
//! driver's JIT, NVRTC) and why, and what each kernel costs in registers and shared
//! memory, measured the best way available: `cuFuncGetAttribute` on a GPU,
//! `ptxas -v` with ptxas, "not available" otherwise.
//!
//! Every probe here reports its failure as text; nothing panics, so `info` is the
//! first thing to run on a machine that does not work. A kernel file that fails to
//! load on a present GPU is a problem ([`Report::problems`]): the command exits
//! non-zero.

use std::fmt::Write as _;

use crate::backend::cuda::driver::{self, Cuda, KernelSources};
use crate::backend::cuda::{embed, embedded, loader, nvrtc, probe, ptxas, Kernel};

/// The architecture kernels are assembled for when there is no GPU to ask.
pub const DEFAULT_ARCH: &str = "sm_90";

/// What `info` found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The report, ready to print.
    pub text: String,
    /// What failed on a present GPU (a kernel file that does not load): empty when
    /// all is well, including on a machine with no GPU.
    pub problems: Vec<String>,
}

/// The whole report.
pub fn report() -> Report {
    let mut out = format!("lesionseg {}\n", env!("CARGO_PKG_VERSION"));
    let sources = KernelSources::builtin();
    section_driver(&mut out);
    section_embedded(&mut out, &sources);
    let nvrtc_ok = section_nvrtc(&mut out, &sources);
    section_nccl(&mut out);
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
    let problems = section_kernels(&mut out, &sources, nvrtc_ok, ptxas.as_deref());
    Report { text: out, problems }
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

/// The embedded images per kernel file: which NVRTC made them, the cubins, the PTX.
fn section_embedded(out: &mut String, sources: &KernelSources) {
    match embedded::MADE_BY {
        Ok(by) => {
            let _ = writeln!(out, "embedded kernels: compiled at build time by {by}");
        }
        Err(why) => {
            let _ = writeln!(out, "embedded kernels: none ({why}); kernels are compiled at run time by NVRTC");
            return;
        }
    }
    for (module, source) in sources.modules {
        let hash = embed::source_hash(source, sources.headers);
        let images: Vec<&embed::Image> = embedded::images(module, hash).collect();
        if images.is_empty() {
            let _ = writeln!(out, "  {module}.cu: not embedded (its source differs from the build's)");
            continue;
        }
        let cubins: Vec<String> = images.iter().filter(|i| i.kind == embed::Kind::Cubin).map(|i| i.target()).collect();
        let ptx: Vec<String> = images.iter().filter(|i| i.kind == embed::Kind::Ptx).map(|i| i.target()).collect();
        let min = embed::min_arch(source).unwrap_or(embed::LOWEST_ARCH);
        let bytes: usize = images.iter().map(|i| i.zlib.len()).sum();
        let _ = writeln!(
            out,
            "  {module}.cu: cubin {}, PTX fallback {} (GPUs sm_{min} and newer; {:.0} KiB compressed)",
            cubins.join(" "),
            ptx.join(" "),
            bytes as f64 / 1024.0
        );
    }
}

/// Whether every kernel file is embedded, as cubins and PTX, for this binary's sources.
fn all_embedded(sources: &KernelSources) -> bool {
    embedded::MADE_BY.is_ok()
        && sources.modules.iter().all(|(module, source)| {
            let hash = embed::source_hash(source, sources.headers);
            embedded::images(module, hash).any(|i| i.kind == embed::Kind::Ptx)
        })
}

fn section_nvrtc(out: &mut String, sources: &KernelSources) -> bool {
    let needed = if all_embedded(sources) {
        "not needed: every kernel file is embedded (cubins for sm_80–sm_90, PTX the driver compiles for other GPUs)"
    } else {
        "needed for the kernel files not embedded"
    };
    match nvrtc::nvrtc() {
        Ok(n) => {
            let archs: Vec<String> = n.archs.iter().map(|a| format!("sm_{a}")).collect();
            let _ = writeln!(out, "NVRTC: {} at {} ({needed})", n.version_string(), n.path.display());
            if !archs.is_empty() {
                let _ = writeln!(out, "  targets: {}", archs.join(" "));
            }
            true
        }
        Err(e) => {
            let _ = writeln!(out, "NVRTC: {} ({needed})", plain(e));
            false
        }
    }
}

/// NCCL: found (version, path) or why not; needed only by `--replicas` on cuda.
fn section_nccl(out: &mut String) {
    use crate::collective::nccl;
    let needed = "needed only by train --device cuda --replicas N";
    match nccl::nccl() {
        Ok(n) => {
            let _ = writeln!(out, "NCCL: {} at {} ({needed})", nccl::version_string(n.version), n.path.display());
        }
        Err(why) => {
            let _ = writeln!(out, "NCCL: {why} ({needed})");
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

/// The kernels on GPU 0 (how each file was loaded, each entry's resources), else
/// assembled by ptxas; the problems found on a present GPU.
fn section_kernels(
    out: &mut String,
    sources: &KernelSources,
    nvrtc_ok: bool,
    ptxas: Option<&std::path::Path>,
) -> Vec<String> {
    if sources.modules.is_empty() {
        out.push_str("kernels: none in this build\n");
        return Vec::new();
    }
    match Cuda::with_sources(0, *sources) {
        Ok(gpu) => kernels_on_gpu(out, sources, &gpu),
        Err(e) => {
            let why = plain(e);
            let gpu_present = driver::devices().is_ok_and(|d| !d.is_empty());
            let _ = writeln!(out, "kernels (no usable GPU: {why}), for {DEFAULT_ARCH}:");
            kernels_with_ptxas(out, sources, nvrtc_ok, ptxas);
            // A GPU the driver sees but that cannot be opened is a failure to report.
            if gpu_present {
                vec![format!("GPU 0 cannot be used: {why}")]
            } else {
                Vec::new()
            }
        }
    }
}

fn kernels_on_gpu(out: &mut String, sources: &KernelSources, gpu: &Cuda) -> Vec<String> {
    let mut problems = Vec::new();
    let _ = writeln!(out, "kernels on GPU 0 ({}, {}), via cuFuncGetAttribute:", gpu.name(), gpu.arch());
    for (module, _) in sources.modules {
        let refused = sources.min_arch(module).and_then(|min| {
            let g = loader::Gpu { name: gpu.name(), cc: gpu.compute_capability() };
            loader::check_arch(&g, module, min)
        });
        if let Err(e) = refused {
            // Not a failure: this GPU runs the portable files; bf16 needs a newer one.
            let _ = writeln!(out, "  {module}.cu: not for this GPU: {}", plain(e));
            continue;
        }
        if let Err(e) = gpu.module(module) {
            let _ = writeln!(out, "  {module}.cu: FAILED: {e}");
            problems.push(format!("{module}.cu: {e}"));
            continue;
        }
        let path = gpu.load_path(module).map(|p| p.to_string()).unwrap_or_default();
        let _ = writeln!(out, "  {module}.cu: loaded from {path}");
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
                    problems.push(format!("{module}.cu: {name}: {e}"));
                }
            }
        }
    }
    problems
}

/// The PTX of `module` for ptxas: NVRTC's, else the embedded one.
fn ptx_for_ptxas(
    module: &str,
    source: &str,
    sources: &KernelSources,
    nvrtc_ok: bool,
) -> Result<(String, String), String> {
    if nvrtc_ok {
        return nvrtc::cached_ptx(module, source, sources.headers, DEFAULT_ARCH)
            .map(|p| (p.to_string(), format!("compiled by NVRTC for {DEFAULT_ARCH}")))
            .map_err(|e| e.to_string());
    }
    let hash = embed::source_hash(source, sources.headers);
    let image = embedded::images(module, hash).find(|i| i.kind == embed::Kind::Ptx).ok_or("no NVRTC, not embedded")?;
    let text = String::from_utf8_lossy(&embedded::bytes(image)?).into_owned();
    Ok((text, format!("embedded PTX {}", image.target())))
}

fn kernels_with_ptxas(out: &mut String, sources: &KernelSources, nvrtc_ok: bool, ptxas: Option<&std::path::Path>) {
    for (module, source) in sources.modules {
        let (ptx, from) = match ptx_for_ptxas(module, source, sources, nvrtc_ok) {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(
                    out,
                    "  {module}.cu: {} entry points; PTX not available ({e})",
                    entries(sources, module).len()
                );
                continue;
            }
        };
        let _ = writeln!(out, "  {module}.cu: {} bytes of PTX ({from})", ptx.len());
        let Some(px) = ptxas else {
            let _ = writeln!(out, "    registers / shared memory not available (no ptxas)");
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
        let report = super::report();
        let r = &report.text;
        assert!(r.contains("driver:") && r.contains("NVRTC") && r.contains("kernel"), "{r}");
        assert!(r.contains("embedded kernels:"), "{r}");
        assert!(r.contains("NCCL: "), "{r}");
        // Problems are failures on a GPU that is there; without one there are none.
        if crate::backend::cuda::driver::devices().map_or(true, |d| d.is_empty()) {
            assert!(report.problems.is_empty(), "{:?}", report.problems);
        }
    }
}
