//! The driver and the device, before and around a [`Cuda`](super::driver::Cuda): the
//! driver's initialisation (checked to be the library the probe checked), the list
//! of GPUs, the memory pool's release threshold, the shared-memory opt-in rule, and
//! the check made when a GPU is opened that its kernels can be loaded at all.

use std::ffi::c_void;
use std::sync::OnceLock;

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys::{self, CUdevice_attribute, CUresult};
use cudarc::driver::CudaContext;

use super::driver::KernelSources;
use super::loader::{self, Gpu};
use super::{embed, nvrtc, probe};
use crate::error::{Error, Result};

/// Static plus dynamic shared memory a block may use without opting in.
pub const DEFAULT_SMEM: u32 = 48 * 1024;

/// A GPU as the driver describes it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// Device memory, bytes.
    pub total_bytes: usize,
}

/// A driver error as one readable line: what we were doing, the CUDA error name
/// and its description.
pub fn driver_error(what: impl std::fmt::Display, e: DriverError) -> Error {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Error::Cuda(format!("{what}: {name} ({text})"))
}

/// Checks that cudarc resolves the very `libcuda` the probe checked (same `cuInit`),
/// once per process.
fn same_library_as_cudarc(drv: &probe::DriverLib) -> Result<()> {
    static CHECKED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            // SAFETY: `probe::driver()` succeeded with a name from cudarc's own list,
            // so cudarc's loader finds a library (it does not reach its panic); only
            // the address of `cuInit` is read.
            let theirs = unsafe { sys::culib().get::<*const ()>(b"cuInit").map(|p| *p as usize) };
            match theirs {
                Ok(addr) if addr == drv.cu_init => Ok(()),
                _ => Err(format!(
                    "cudarc opened a different libcuda than the one checked ({}); set LD_LIBRARY_PATH so that \
                     only the driver's libcuda.so.1 is found",
                    drv.path.as_ref().map_or(drv.name.clone(), |p| p.display().to_string())
                )),
            }
        })
        .clone()
        .map_err(Error::Cuda)
}

/// Loads the driver (checked) and runs `cuInit`; the device count.
pub(crate) fn init_driver() -> Result<usize> {
    let drv = probe::driver().map_err(Error::Cuda)?;
    same_library_as_cudarc(drv)?;
    result::init().map_err(|e| {
        let hint = match (e.0, &drv.path) {
            (CUresult::CUDA_ERROR_NO_DEVICE, _) => String::new(),
            (CUresult::CUDA_ERROR_STUB_LIBRARY, Some(p)) if probe::is_stub(p) => format!(
                " ({} is the CUDA toolkit's link-time stub, not the driver: take its folder off LD_LIBRARY_PATH)",
                p.display()
            ),
            _ => " (is the NVIDIA kernel module loaded?)".into(),
        };
        driver_error(format_args!("cuInit (driver CUDA {}){hint}", probe::cuda_version_string(drv.version)), e)
    })?;
    let count = result::device::get_count().map_err(|e| driver_error("cuDeviceGetCount", e))?;
    Ok(count.max(0) as usize)
}

/// Every GPU the driver sees (an error when there is no usable driver).
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let count = init_driver()?;
    (0..count)
        .map(|ordinal| {
            let dev = result::device::get(ordinal as i32).map_err(|e| driver_error("cuDeviceGet", e))?;
            let name = result::device::get_name(dev).map_err(|e| driver_error("cuDeviceGetName", e))?;
            let attr = |a| {
                // SAFETY: `dev` is a valid device handle from cuDeviceGet.
                unsafe { result::device::get_attribute(dev, a) }.map_err(|e| driver_error("cuDeviceGetAttribute", e))
            };
            let cc = (
                attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            // SAFETY: as above.
            let total_bytes =
                unsafe { result::device::total_mem(dev) }.map_err(|e| driver_error("cuDeviceTotalMem", e))?;
            Ok(DeviceInfo { ordinal, name, cc, total_bytes })
        })
        .collect()
}

/// Keeps memory freed to the device's default pool in the pool (release threshold
/// at the maximum) instead of returning it to the OS at every synchronisation.
pub(crate) fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool = std::ptr::null_mut();
    // SAFETY: a valid device handle; `pool` receives the default pool.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .map_err(|e| driver_error("cuDeviceGetDefaultMemPool", e))?;
    let mut threshold = u64::MAX;
    // SAFETY: the release threshold attribute takes a cuuint64_t, read through the pointer.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast::<c_void>(),
        )
    }
    .result()
    .map_err(|e| driver_error("cuMemPoolSetAttribute (release threshold)", e))
}

/// The dynamic shared memory a kernel must be allowed before a launch asking for
/// `dynamic` bytes: `None` when `allowed` (what it is allowed now) suffices; an
/// error when static plus dynamic exceed the opt-in limit. The driver limits the
/// sum: without opting in, static + dynamic ≤ 48 KiB.
pub fn dynamic_smem_needed(
    static_smem: u32,
    dynamic: u32,
    allowed: u32,
    optin: u32,
) -> std::result::Result<Option<u32>, String> {
    if dynamic <= allowed {
        return Ok(None);
    }
    let total = static_smem.saturating_add(dynamic);
    if total > optin {
        return Err(format!(
            "{dynamic} bytes of dynamic shared memory requested on top of {static_smem} static; this GPU allows {optin} \
             per block"
        ));
    }
    Ok(Some(dynamic))
}

/// Fails when some module of `sources` that `gpu` can run (its minimum architecture
/// allows) has no embedded image for it and there is no NVRTC to compile it.
pub(crate) fn check_loadable(gpu: &Gpu, sources: &KernelSources) -> Result<()> {
    let mut missing = Vec::new();
    for (module, source) in sources.modules {
        let runs_here = embed::min_arch(source).is_ok_and(|min| gpu.arch() >= min);
        if runs_here {
            if let Err(why) = loader::embedded_choice(gpu, module, source, sources.headers) {
                missing.push(why);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    nvrtc::nvrtc().map(|_| ()).map_err(|e| {
        let why = match e {
            Error::Cuda(m) => m,
            other => other.to_string(),
        };
        Error::Cuda(format!("kernels cannot be loaded on {}: {}; and {why}", gpu.name, missing.join("; ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opt-in is decided on static + dynamic shared memory, as the driver limits it.
    #[test]
    fn shared_memory_opt_in_counts_static_memory() {
        const KIB: u32 = 1024;
        let allowed = |static_smem: u32| DEFAULT_SMEM.saturating_sub(static_smem);
        // 40 KiB dynamic alone fits the default, but not beside 16 KiB of static.
        assert_eq!(dynamic_smem_needed(0, 40 * KIB, allowed(0), 227 * KIB), Ok(None));
        assert_eq!(dynamic_smem_needed(16 * KIB, 40 * KIB, allowed(16 * KIB), 227 * KIB), Ok(Some(40 * KIB)));
        // The opt-in limit applies to the sum too.
        assert!(dynamic_smem_needed(32 * KIB, 200 * KIB, allowed(32 * KIB), 227 * KIB).is_err());
        assert_eq!(dynamic_smem_needed(32 * KIB, 195 * KIB, allowed(32 * KIB), 227 * KIB), Ok(Some(195 * KIB)));
        // Once granted, a smaller request needs nothing.
        assert_eq!(dynamic_smem_needed(16 * KIB, 20 * KIB, 40 * KIB, 227 * KIB), Ok(None));
    }
}
