//! Finding the CUDA driver on this machine without letting anything panic, and
//! the other tools (re-exported from `locate`: NVRTC, `ptxas`).
//!
//! cudarc's dynamic loading panics when a library or a symbol is missing (its
//! `culib()` ends in `panic_no_lib_found`, its per-symbol loader in
//! `panic!("Missing symbol …")`), so nothing may call into `cudarc::driver` before
//! [`driver`] has loaded `libcuda` itself with `libloading` and checked every
//! symbol the code can reach ([`DRIVER_SYMBOLS`]).
//!
//! The library checked must be the one cudarc opens: [`driver`] tries cudarc's own
//! list of names in cudarc's order (`cudarc::get_lib_name_candidates`), so the first
//! that loads here is the first that loads there (a bare name that names an already
//! loaded object resolves to that object), and `driver::init_driver` compares the
//! two libraries' `cuInit` before the first driver call. A toolkit's stub `libcuda`
//! (`…/stubs/libcuda.so`, on `LD_LIBRARY_PATH` by mistake) is named as such.

use std::path::PathBuf;
use std::sync::OnceLock;

use libloading::Library;

pub use super::locate::{
    dl_error, find_ptxas, loaded_path, nvrtc_candidates, nvrtc_not_found, open_nvrtc_at, site_dirs, NvrtcLib,
};

/// Every `libcuda` symbol the code can reach: ours (`driver.rs`, `loader.rs`) and
/// those cudarc looks up behind the methods we call (context, stream, memory,
/// events for the timing marks, modules, launches, attributes, errors). Checked up
/// front so that an old or partial driver is a clear error, not a panic in cudarc's
/// symbol loader. `tests` below checks that every `sys::cu*` call in this folder
/// is listed; the cudarc ones were read off cudarc 0.19's `safe/core.rs` and
/// `result.rs` for the methods `driver.rs` uses.
pub const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetDefaultMemPool",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventElapsedTime_v2",
    "cuEventDestroy_v2",
    "cuMemAlloc_v2",
    "cuMemAllocAsync",
    "cuMemFree_v2",
    "cuMemFreeAsync",
    "cuMemGetInfo_v2",
    "cuMemPoolSetAttribute",
    "cuMemPoolGetAttribute",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuModuleLoadDataEx",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuFuncGetAttribute",
    "cuFuncSetAttribute",
    "cuLaunchKernel",
];

/// The CUDA driver library, loaded and checked.
pub struct DriverLib {
    /// Kept loaded for the life of the process, so that cudarc's `dlopen` by bare
    /// name finds this very object.
    _lib: Library,
    /// The name it was opened by (one of cudarc's candidates).
    pub name: String,
    /// Where it was loaded from (from `/proc/self/maps`), when known.
    pub path: Option<PathBuf>,
    /// `cuDriverGetVersion`: 1000·major + 10·minor (13000 for CUDA 13.0).
    pub version: i32,
    /// The address of its `cuInit`, to check that cudarc resolved the same library.
    pub cu_init: usize,
}

/// `libcuda`, loaded once per process; `Err` says why it cannot be used
/// (not installed, not a driver, missing symbols).
pub fn driver() -> Result<&'static DriverLib, String> {
    static DRIVER: OnceLock<Result<DriverLib, String>> = OnceLock::new();
    DRIVER.get_or_init(load_driver).as_ref().map_err(Clone::clone)
}

/// The names cudarc tries, in its order (it stops at the first that loads).
pub fn driver_candidates() -> Vec<String> {
    ["cuda", "nvcuda"].iter().flat_map(|l| cudarc::get_lib_name_candidates(l)).collect()
}

fn load_driver() -> Result<DriverLib, String> {
    let mut broken = None;
    for name in driver_candidates() {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, which
        // have no preconditions on our side.
        match unsafe { Library::new(&name) } {
            Ok(lib) => return check_driver(lib, name),
            // Present but unloadable (wrong architecture, missing dependency) is
            // worth saying; absent is the common case.
            Err(e) if !dl_error(&e).contains("No such file") => {
                broken.get_or_insert(format!("the CUDA driver {name} cannot be loaded: {}", dl_error(&e)));
            }
            Err(_) => {}
        }
    }
    Err(broken.unwrap_or_else(|| "no CUDA driver (libcuda.so.1 not found)".to_string()))
}

fn check_driver(lib: Library, name: String) -> Result<DriverLib, String> {
    let path = loaded_path("libcuda.so");
    let which = path.as_ref().map_or(name.clone(), |p| p.display().to_string());
    let missing: Vec<&str> = DRIVER_SYMBOLS
        .iter()
        .copied()
        // SAFETY: only the symbol's presence is checked; the pointer is not called.
        .filter(|s| unsafe { lib.get::<*const ()>(s.as_bytes()) }.is_err())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the CUDA driver {which} is too old or incomplete (CUDA 13.0, driver 580 or newer, is needed): missing {}",
            missing.join(", ")
        ));
    }
    let mut version = 0i32;
    // SAFETY: `cuDriverGetVersion(int*)` and `cuInit` are present (checked above);
    // the version needs no cuInit and writes one int; the address is only compared.
    let (rc, cu_init) = unsafe {
        let get = |s: &[u8]| lib.get::<*const ()>(s).map(|p| *p as usize).map_err(|e| dl_error(&e));
        let f: unsafe extern "C" fn(*mut i32) -> i32 = std::mem::transmute(get(b"cuDriverGetVersion")?);
        (f(&mut version), get(b"cuInit")?)
    };
    if rc != 0 {
        return Err(format!("cuDriverGetVersion on {which} failed (CUresult {rc})"));
    }
    Ok(DriverLib { _lib: lib, name, path, version, cu_init })
}

/// Whether the driver library at `path` is a CUDA toolkit's link-time stub (which
/// answers every call with CUDA_ERROR_STUB_LIBRARY), by its folder.
pub fn is_stub(path: &std::path::Path) -> bool {
    path.components().any(|c| c.as_os_str() == "stubs")
}

/// "13.0" from a `cuDriverGetVersion`/`nvrtcVersion`-style number.
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_string() {
        assert_eq!(cuda_version_string(13000), "13.0");
        assert_eq!(cuda_version_string(12080), "12.8");
    }

    #[test]
    fn driver_probe_never_panics() {
        // Either outcome is fine; what matters is an answer instead of a panic.
        let _ = driver();
        let _ = find_ptxas();
    }

    #[test]
    fn probes_cudarcs_candidates_in_cudarcs_order() {
        let names = driver_candidates();
        assert_eq!(names.first().map(String::as_str), Some("libcuda.so"), "{names:?}");
        assert!(names.iter().any(|n| n == "libcuda.so.1"), "{names:?}");
        assert!(is_stub(std::path::Path::new("/usr/local/cuda/lib64/stubs/libcuda.so")));
        assert!(!is_stub(std::path::Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1")));
    }

    /// Every driver function this folder calls directly is probed.
    #[test]
    fn every_direct_driver_call_is_probed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/backend/cuda");
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, _) in text.match_indices("sys::cu") {
                let name: String =
                    text[i + 5..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                // Types (`sys::CUresult`) start with `CU`; functions with `cu`;
                // `culib` is cudarc's handle on the library itself.
                if name.len() > 2 && name != "culib" && !DRIVER_SYMBOLS.contains(&name.as_str()) {
                    missing.push(format!("{name} ({})", path.display()));
                }
            }
        }
        assert!(missing.is_empty(), "called but not in DRIVER_SYMBOLS: {missing:?}");
    }
}
