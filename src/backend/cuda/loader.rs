//! Loading a kernel file into a CUDA context, from the best image there is:
//! 1. the embedded cubin for the GPU's exact architecture (no compilation at all);
//! 2. the embedded PTX, JIT-compiled by the driver through `cuModuleLoadDataEx`,
//!    whose error log is captured into the error;
//! 3. NVRTC, when present (a test's own kernel files, architectures the embedded
//!    images do not cover, a binary built without them).
//!
//! Each step that is skipped or fails says why, and the module remembers how it was
//! loaded ([`LoadPath`]), so `lesionseg info` can tell which path each module took.
//! A module declaring a minimum architecture above the GPU's (`// lesionseg:
//! min-arch sm_80`, see `embed.rs`) is refused with the card and the requirement.

use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::sys::{self, CUjit_option, CUresult};
use cudarc::driver::{result::DriverError, CudaContext};

use super::driver::driver_error;
use super::{embed, embedded, nvrtc, probe};
use crate::error::{Error, Result};

/// Bytes of the JIT error and info logs captured per load.
const LOG_BYTES: usize = 16 * 1024;

/// The GPU a module is loaded for.
#[derive(Clone, Debug)]
pub struct Gpu {
    /// The driver's name for it.
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
}

impl Gpu {
    /// The architecture number: 90 for compute capability 9.0.
    pub fn arch(&self) -> u32 {
        (self.cc.0 * 10 + self.cc.1).max(0) as u32
    }
}

/// A loaded module, unloaded when the last reference goes.
pub struct Module {
    cu: sys::CUmodule,
    ctx: Arc<CudaContext>,
}

// SAFETY: a CUmodule is a driver handle usable from any thread that binds its
// context; the driver serialises what needs serialising.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    /// The entry point `name` (the context must be bound to this thread).
    pub fn function(&self, name: &str) -> std::result::Result<sys::CUfunction, DriverError> {
        let c = CString::new(name).map_err(|_| DriverError(CUresult::CUDA_ERROR_INVALID_VALUE))?;
        let mut f = std::ptr::null_mut();
        // SAFETY: `self.cu` is a loaded module; `f` receives the handle.
        unsafe { sys::cuModuleGetFunction(&mut f, self.cu, c.as_ptr()) }.result()?;
        Ok(f)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // Failures here have nowhere to go; a context being torn down unloads anyway.
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: loaded once, unloaded once.
            let _ = unsafe { sys::cuModuleUnload(self.cu) };
        }
    }
}

/// How a module was loaded, and why that way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPath {
    /// `embedded cubin sm_90`, `embedded PTX compute_80 (JIT by the driver)`, `NVRTC 13.0 → PTX compute_90`.
    pub how: String,
    /// Why the better paths were not taken (empty for an exact cubin).
    pub why: Vec<String>,
}

impl std::fmt::Display for LoadPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.how)?;
        if !self.why.is_empty() {
            write!(f, " ({})", self.why.join("; "))?;
        }
        Ok(())
    }
}

/// The architecture NVRTC compiles for: the GPU's own when NVRTC knows it (or
/// cannot say), else the newest it knows below it (the driver JIT-compiles that
/// PTX for the GPU); an error when the GPU is older than all of them.
pub fn pick_arch(cc: (i32, i32), nvrtc_archs: &[i32]) -> Result<String> {
    let want = cc.0 * 10 + cc.1;
    if nvrtc_archs.is_empty() || nvrtc_archs.contains(&want) {
        return Ok(format!("compute_{want}"));
    }
    match nvrtc_archs.iter().copied().filter(|&a| a <= want).max() {
        Some(a) => Ok(format!("compute_{a}")),
        None => Err(Error::Cuda(format!(
            "this GPU (compute {}.{}) is older than anything this NVRTC targets (oldest sm_{})",
            cc.0,
            cc.1,
            nvrtc_archs.iter().min().copied().unwrap_or_default()
        ))),
    }
}

/// Whether `gpu` can run a module of minimum architecture `min`; the refusal names
/// the card and the requirement.
pub fn check_arch(gpu: &Gpu, module: &str, min: u32) -> Result<()> {
    if gpu.arch() >= min {
        return Ok(());
    }
    Err(Error::Cuda(format!(
        "kernels/{module}.cu needs a GPU of compute capability {}.{} (sm_{min}) or newer (it declares \
         `// {} sm_{min}`: tensor-core instructions); this GPU, {}, is {}.{} (sm_{})",
        min / 10,
        min % 10,
        embed::MARKER,
        gpu.name,
        gpu.cc.0,
        gpu.cc.1,
        gpu.arch()
    )))
}

/// What the loader would try for `module` on `gpu` without NVRTC: the embedded
/// image it would use first, or why there is none (for opening a GPU: a module no
/// path can load is known before any launch).
pub fn embedded_choice(
    gpu: &Gpu,
    module: &str,
    source: &str,
    headers: &[(&str, &str)],
) -> std::result::Result<String, String> {
    let hash = embed::source_hash(source, headers);
    let mut ptx = None;
    for image in embedded::images(module, hash) {
        match image.kind {
            embed::Kind::Cubin if image.arch == gpu.arch() => return Ok(image.target()),
            embed::Kind::Ptx if image.arch <= gpu.arch() => ptx = Some(image.target()),
            _ => {}
        }
    }
    ptx.ok_or_else(|| not_embedded_reason(gpu, module, hash))
}

/// Why no embedded image fits.
fn not_embedded_reason(gpu: &Gpu, module: &str, hash: u64) -> String {
    if let Err(why) = embedded::MADE_BY {
        return format!("no kernels embedded in this build ({why})");
    }
    if embedded::images_of(module).next().is_none() {
        return format!("{module}.cu is not embedded in this build");
    }
    if embedded::images(module, hash).next().is_none() {
        return format!("{module}.cu differs from the source this binary embedded");
    }
    format!("no embedded image of {module}.cu for sm_{} (PTX needs an older or equal target)", gpu.arch())
}

/// Loads `module` (its `source` and the headers of `kernels/`) into `ctx` for `gpu`, by the first
/// path of the module doc that works; the error lists every path and why it failed.
pub fn load(
    ctx: &Arc<CudaContext>,
    gpu: &Gpu,
    module: &str,
    source: &str,
    headers: &[(&str, &str)],
) -> Result<(Arc<Module>, LoadPath)> {
    let min = embed::min_arch(source).map_err(|e| Error::Cuda(format!("kernels/{module}.cu: {e}")))?;
    check_arch(gpu, module, min)?;
    ctx.bind_to_thread().map_err(|e| driver_error("binding the CUDA context", e))?;
    let hash = embed::source_hash(source, headers);
    let mut why = Vec::new();

    let images: Vec<&embed::Image> = embedded::images(module, hash).collect();
    if images.is_empty() {
        why.push(not_embedded_reason(gpu, module, hash));
    }
    let cubin = images.iter().find(|i| i.kind == embed::Kind::Cubin && i.arch == gpu.arch());
    match cubin {
        Some(image) => match embedded::bytes(image).and_then(|b| load_image(ctx, &b, &image.target())) {
            Ok(m) => return Ok((m, LoadPath { how: format!("embedded cubin {}", image.target()), why })),
            Err(e) => why.push(format!("the embedded cubin {} did not load: {e}", image.target())),
        },
        None if !images.is_empty() => why.push(format!("no embedded cubin for sm_{}", gpu.arch())),
        None => {}
    }
    let ptx = images.iter().filter(|i| i.kind == embed::Kind::Ptx && i.arch <= gpu.arch()).max_by_key(|i| i.arch);
    if let Some(image) = ptx {
        let text = embedded::bytes(image);
        match text.and_then(|t| load_image(ctx, &nul_terminated(t), &image.target())) {
            Ok(m) => {
                let how = format!("embedded PTX {} (JIT-compiled by the driver)", image.target());
                return Ok((m, LoadPath { how, why }));
            }
            Err(e) => why.push(format!("the embedded PTX {} did not load: {e}", image.target())),
        }
    }

    let nv = match nvrtc::nvrtc() {
        Ok(nv) => nv,
        Err(e) => {
            why.push(format!("and no NVRTC to compile it: {}", plain(e)));
            return Err(Error::Cuda(format!("cannot load kernels/{module}.cu on {}: {}", gpu.name, why.join("; "))));
        }
    };
    let arch = pick_arch(gpu.cc, &nv.archs)?;
    let ptx = nvrtc::cached_ptx(module, source, headers, &arch)?;
    let how = format!("NVRTC {} → PTX {arch}", nv.version_string());
    match load_image(ctx, &nul_terminated(ptx.as_bytes().to_vec()), &arch) {
        Ok(m) => Ok((m, LoadPath { how, why })),
        Err(e) => {
            why.push(format!("{how} did not load: {e}"));
            Err(Error::Cuda(format!("cannot load kernels/{module}.cu on {}: {}", gpu.name, why.join("; "))))
        }
    }
}

fn plain(e: Error) -> String {
    match e {
        Error::Cuda(m) => m,
        other => other.to_string(),
    }
}

fn nul_terminated(mut text: Vec<u8>) -> Vec<u8> {
    if text.last() != Some(&0) {
        text.push(0);
    }
    text
}

/// `cuModuleLoadDataEx` on a cubin or NUL-terminated PTX, with the JIT's error and
/// info logs captured: the error is the driver's, then the logs.
fn load_image(ctx: &Arc<CudaContext>, image: &[u8], target: &str) -> std::result::Result<Arc<Module>, String> {
    let mut error_log = vec![0u8; LOG_BYTES];
    let mut info_log = vec![0u8; LOG_BYTES];
    let mut options = [
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        CUjit_option::CU_JIT_INFO_LOG_BUFFER,
        CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
    ];
    // Each value is a pointer-sized slot: a buffer, or a size passed by value (the
    // driver writes back how many bytes it logged).
    let mut values: [*mut c_void; 4] = [
        error_log.as_mut_ptr().cast(),
        LOG_BYTES as *mut c_void,
        info_log.as_mut_ptr().cast(),
        LOG_BYTES as *mut c_void,
    ];
    let mut cu = std::ptr::null_mut();
    // SAFETY: `image` is a cubin or NUL-terminated PTX that outlives the call; the
    // option and value arrays have 4 entries each, the log buffers LOG_BYTES bytes;
    // the context is bound (by `load`).
    let rc = unsafe {
        sys::cuModuleLoadDataEx(
            &mut cu,
            image.as_ptr().cast(),
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    let text = |buf: &[u8], slot: *mut c_void| {
        let n = (slot as usize).min(buf.len());
        let s = String::from_utf8_lossy(&buf[..n]);
        s.trim_end_matches('\0').trim().to_string()
    };
    match rc.result() {
        Ok(()) => Ok(Arc::new(Module { cu, ctx: ctx.clone() })),
        Err(e) => {
            let mut msg = plain(driver_error(format_args!("cuModuleLoadDataEx ({target})"), e));
            if e.0 == CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
                let driver = probe::driver().map(|d| probe::cuda_version_string(d.version)).unwrap_or_default();
                msg += &format!(" — the PTX is newer than this driver (CUDA {driver}) accepts; update the driver");
            }
            for log in [text(&error_log, values[1]), text(&info_log, values[3])] {
                if !log.is_empty() {
                    msg += &format!("; JIT log: {log}");
                }
            }
            Err(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_choice() {
        assert_eq!(pick_arch((9, 0), &[75, 80, 86, 89, 90, 100, 120]).unwrap(), "compute_90");
        assert_eq!(pick_arch((12, 1), &[75, 80, 90, 120]).unwrap(), "compute_120");
        assert_eq!(pick_arch((8, 7), &[75, 80, 86, 89, 90]).unwrap(), "compute_86");
        assert!(pick_arch((7, 0), &[75, 80]).is_err());
        assert_eq!(pick_arch((8, 0), &[]).unwrap(), "compute_80");
    }

    /// A T4 (sm_75) takes a module without a marker and refuses a tensor-core one,
    /// naming itself and the requirement; an sm_80 card takes both.
    #[test]
    fn a_turing_card_runs_the_portable_modules_only() {
        let f32_module = "// x.cu — plain f32\n#include \"common.cuh\"\n";
        let mma_module = "// y.cu — mma\n// lesionseg: min-arch sm_80\n#include \"common.cuh\"\n";
        let t4 = Gpu { name: "Tesla T4".into(), cc: (7, 5) };
        let a100 = Gpu { name: "NVIDIA A100".into(), cc: (8, 0) };
        let min = |s: &str| embed::min_arch(s).unwrap();
        assert!(check_arch(&t4, "x", min(f32_module)).is_ok());
        let err = check_arch(&t4, "y", min(mma_module)).unwrap_err().to_string();
        for part in ["kernels/y.cu", "sm_80", "Tesla T4", "7.5"] {
            assert!(err.contains(part), "`{part}` missing from: {err}");
        }
        assert!(check_arch(&a100, "y", min(mma_module)).is_ok());
    }

    /// Without a matching embedded image the choice says why (a test's own source).
    #[test]
    fn foreign_sources_are_not_embedded() {
        let gpu = Gpu { name: "any".into(), cc: (9, 0) };
        let why = embedded_choice(&gpu, "adam", "// not the real adam.cu\n", &[]).unwrap_err();
        assert!(why.contains("adam.cu") || why.contains("no kernels embedded"), "{why}");
    }
}
