//! The GPU executor: one CUDA context, one stream, device buffers of f32, and the
//! kernel modules compiled by NVRTC for this GPU (once per process, cached on
//! disk) and loaded on first launch.
//!
//! Nothing here touches cudarc before `probe::driver()` has loaded `libcuda` and
//! checked its symbols, and NVRTC is ours (`nvrtc.rs`), so a machine without a
//! driver, a GPU or NVRTC gets an `Error`, never a panic.
//!
//! Launches are asynchronous on the stream. With `LESIONSEG_SYNC=1`, in debug
//! builds, and in the GPU tests ([`Cuda::set_sync`]) every launch is followed by a
//! stream synchronisation, so that a fault inside a kernel is reported with that
//! kernel's name instead of at some later copy.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUfunction_attribute, CUresult};
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};

use super::{nvrtc, probe, Arg, Executor, Geometry, Kernel};
use crate::error::{Error, Result};

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// The kernel files a [`Cuda`] compiles from: `(module, source)` pairs, the
/// headers they may include, and the `(module, entry point)` pairs the sources declare.
#[derive(Clone, Copy, Debug)]
pub struct KernelSources {
    /// `(module, source)`, module being the file name without `.cu`.
    pub modules: &'static [(&'static str, &'static str)],
    /// `(file name, text)` of the headers (`kernels/*.cuh`: `common.cuh`, ...).
    pub headers: &'static [(&'static str, &'static str)],
    /// `(module, kernel)` for every name in the files' `ENTRY_POINTS` lists.
    pub entry_points: &'static [(&'static str, &'static str)],
}

impl KernelSources {
    /// The crate's own `kernels/*.cu`, embedded at build time.
    pub fn builtin() -> Self {
        use super::sources::{ENTRY_POINTS, HEADERS, SOURCES};
        KernelSources { modules: SOURCES, headers: HEADERS, entry_points: ENTRY_POINTS }
    }

    /// The source of `module`.
    pub fn get(&self, module: &str) -> Result<&'static str> {
        self.modules
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, s)| *s)
            .ok_or_else(|| Error::Cuda(format!("no kernel file `{module}.cu` in this build")))
    }
}

/// A device buffer of f32 (at least one element is allocated, so that even an
/// empty buffer has a valid address).
pub struct DeviceBuf {
    slice: CudaSlice<f32>,
    len: usize,
}

/// A loaded kernel and the dynamic shared memory it is currently allowed.
struct Func {
    func: CudaFunction,
    max_dynamic_smem: u32,
}

/// One GPU: context, stream, loaded modules.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    sources: KernelSources,
    /// Compute capability (major, minor).
    cc: (i32, i32),
    /// What NVRTC compiles for: `compute_XY` of this GPU, or the newest NVRTC knows.
    arch: String,
    /// The most dynamic shared memory a block may opt in to.
    smem_optin: u32,
    /// Device memory, bytes.
    total_bytes: usize,
    sync: bool,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<Kernel, Func>>,
}

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

/// Loads the driver (checked) and runs `cuInit`; the device count.
fn init_driver() -> Result<usize> {
    let drv = probe::driver().map_err(Error::Cuda)?;
    result::init().map_err(|e| {
        let hint = if e.0 == CUresult::CUDA_ERROR_NO_DEVICE { "" } else { " (is the NVIDIA kernel module loaded?)" };
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

/// The architecture NVRTC should target for compute capability `cc`: the GPU's
/// own when NVRTC knows it, else the newest older one it knows (the driver JIT
/// runs older PTX on newer GPUs); an error when the GPU is older than all of them.
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

/// `LESIONSEG_SYNC=1|0`, else on in debug builds.
fn sync_default() -> bool {
    match std::env::var("LESIONSEG_SYNC").as_deref() {
        Ok("1") | Ok("true") => true,
        Ok("0") | Ok("false") => false,
        _ => cfg!(debug_assertions),
    }
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Cuda {
    /// GPU `ordinal` with the crate's kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_sources(ordinal, KernelSources::builtin())
    }

    /// GPU `ordinal` with the given kernel files (tests use their own).
    pub fn with_sources(ordinal: usize, sources: KernelSources) -> Result<Self> {
        let count = init_driver()?;
        // No GPU is usable for us without NVRTC: say so before creating a context.
        let nv = nvrtc::nvrtc()?;
        if count == 0 {
            return Err(Error::Cuda("the driver sees no CUDA device".into()));
        }
        if ordinal >= count {
            return Err(Error::Cuda(format!("no GPU {ordinal}: the driver sees {count}")));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| driver_error(format_args!("creating a context on GPU {ordinal}"), e))?;
        // SAFETY: every buffer and launch of this executor goes to its one stream,
        // so no cross-stream ordering (what event tracking provides) is needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| driver_error("cuStreamCreate", e))?;
        let cc = ctx.compute_capability().map_err(|e| driver_error("reading the compute capability", e))?;
        let optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| driver_error("cuDeviceGetAttribute", e))?;
        let total_bytes = ctx.total_mem().map_err(|e| driver_error("cuDeviceTotalMem", e))?;
        Ok(Cuda {
            arch: pick_arch(cc, &nv.archs)?,
            total_bytes,
            ctx,
            stream,
            sources,
            cc,
            smem_optin: optin.max(0) as u32,
            sync: sync_default(),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Synchronise after every launch (and check) when `on`.
    pub fn set_sync(&mut self, on: bool) {
        self.sync = on;
    }

    /// The GPU's name.
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// The architecture kernels are compiled for (`compute_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Free and total device memory, bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        result::mem_get_info().map_err(|e| driver_error("cuMemGetInfo", e))
    }

    /// Waits for everything queued on the stream; reports an asynchronous fault.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_error("stream synchronisation", e))
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the CUDA context", e))
    }

    /// Compiles (or takes from the cache) and loads kernel file `module`.
    pub fn module(&self, module: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().map_err(|_| poisoned())?;
        if let Some(m) = modules.get(module) {
            return Ok(m.clone());
        }
        let ptx = nvrtc::cached_ptx(module, self.sources.get(module)?, self.sources.headers, &self.arch)?;
        self.bind()?;
        let loaded = self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx.as_str())).map_err(|e| {
            let hint = if e.0 == CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
                format!(
                    " — NVRTC {} emits PTX newer than this driver (CUDA {}) accepts; update the driver or use an older NVRTC",
                    nvrtc::nvrtc().map(|n| n.version_string()).unwrap_or_default(),
                    probe::driver().map(|d| probe::cuda_version_string(d.version)).unwrap_or_default()
                )
            } else {
                String::new()
            };
            driver_error(format_args!("loading the PTX of {module}.cu for {}{hint}", self.arch), e)
        })?;
        modules.insert(module, loaded.clone());
        Ok(loaded)
    }

    /// `(registers, static shared bytes, local bytes per thread, max threads per
    /// block)` of `kernel` as loaded on this GPU.
    pub fn attributes(&self, kernel: Kernel) -> Result<(i32, i32, i32, i32)> {
        let func = self.module(kernel.module)?.load_function(kernel.name).map_err(|e| missing_entry(kernel, e))?;
        let get = |a| {
            // SAFETY: `func` is a live function of a loaded module.
            unsafe { result::function::get_function_attribute(func.cu_function(), a) }
                .map_err(|e| driver_error(format_args!("cuFuncGetAttribute on {}", kernel.name), e))
        };
        Ok((
            get(CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
            get(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
            get(CUfunction_attribute::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
            get(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
        ))
    }

    /// The loaded function of `kernel`, allowed `smem` bytes of dynamic shared memory.
    fn function(&self, kernel: Kernel, smem: u32) -> Result<CudaFunction> {
        let mut functions = self.functions.lock().map_err(|_| poisoned())?;
        let f = match functions.entry(kernel) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let func =
                    self.module(kernel.module)?.load_function(kernel.name).map_err(|err| missing_entry(kernel, err))?;
                e.insert(Func { func, max_dynamic_smem: DEFAULT_DYNAMIC_SMEM })
            }
        };
        if smem > f.max_dynamic_smem {
            if smem > self.smem_optin {
                return Err(Error::Cuda(format!(
                    "{}: {smem} bytes of dynamic shared memory requested, this GPU allows {} per block",
                    kernel.name, self.smem_optin
                )));
            }
            // SAFETY: `f.func` is a live function; the value is within the device limit.
            unsafe {
                result::function::set_function_attribute(
                    f.func.cu_function(),
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
            }
            .map_err(|e| {
                driver_error(format_args!("{}: allowing {smem} bytes of dynamic shared memory", kernel.name), e)
            })?;
            f.max_dynamic_smem = smem;
        }
        Ok(f.func.clone())
    }

    fn check_range(&self, what: &str, mem: &DeviceBuf, off: usize, len: usize) -> Result<()> {
        if off.checked_add(len).is_none_or(|end| end > mem.len) {
            return Err(Error::shape(
                format!("cuda {what}"),
                format!("at most {} elements from offset {off}", mem.len.saturating_sub(off)),
                len,
            ));
        }
        Ok(())
    }

    fn ptr(&self, mem: &DeviceBuf, off: usize) -> u64 {
        let (ptr, _record) = mem.slice.device_ptr(&self.stream);
        ptr + 4 * off as u64
    }
}

fn poisoned() -> Error {
    Error::Cuda("CUDA executor state poisoned by an earlier panic".into())
}

fn missing_entry(kernel: Kernel, e: DriverError) -> Error {
    driver_error(format_args!("no entry point `{}` in {}.cu", kernel.name, kernel.module), e)
}

impl Executor for Cuda {
    type Mem = DeviceBuf;
    type Mark = CudaEvent;

    fn mark(&self) -> Result<CudaEvent> {
        // cudarc's default flags disable timing; these events exist to be timed.
        let event =
            self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| driver_error("cuEventCreate", e))?;
        event.record(&self.stream).map_err(|e| driver_error("cuEventRecord", e))?;
        Ok(event)
    }

    fn elapsed_ms(&self, start: &CudaEvent, end: &CudaEvent) -> Result<f64> {
        // Waits for both events; an asynchronous fault of the work before `end` shows here.
        start.elapsed_ms(end).map(f64::from).map_err(|e| driver_error("timing GPU work (cuEventElapsedTime)", e))
    }

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        format!("cuda: {}", Cuda::name(self))
    }

    fn device_memory_in_use(&self) -> Option<u64> {
        self.mem_info().ok().map(|(free, total)| total.saturating_sub(free) as u64)
    }

    fn alloc(&self, len: usize) -> Result<DeviceBuf> {
        self.bind()?;
        let out_of_memory = || {
            let free = match result::mem_get_info() {
                Ok((free, total)) => format!("{} free of {}", mib(free), mib(total)),
                Err(_) => "free memory unknown".into(),
            };
            Error::Cuda(format!("out of GPU memory: asked for {} ({len} f32), {free}", mib(len.saturating_mul(4))))
        };
        // Beyond the device's memory the driver's answer varies by allocator; ours does not.
        if len.saturating_mul(4) > self.total_bytes {
            return Err(out_of_memory());
        }
        let slice = self.stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| match e.0 {
            CUresult::CUDA_ERROR_OUT_OF_MEMORY => out_of_memory(),
            _ => driver_error(format_args!("allocating {} on the GPU", mib(4 * len)), e),
        })?;
        Ok(DeviceBuf { slice, len })
    }

    fn len(&self, mem: &DeviceBuf) -> usize {
        mem.len
    }

    fn addr(&self, mem: &DeviceBuf) -> u64 {
        self.ptr(mem, 0)
    }

    fn upload(&self, mem: &DeviceBuf, off: usize, src: &[f32]) -> Result<()> {
        self.check_range("upload", mem, off, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the destination range is inside the allocation (checked above).
        // From pageable host memory the copy returns once `src` has been staged,
        // so `src` may be reused as soon as this returns.
        unsafe { result::memcpy_htod_async(self.ptr(mem, off), src, self.stream.cu_stream()) }
            .map_err(|e| driver_error(format_args!("copying {} to the GPU", mib(4 * src.len())), e))?;
        if self.sync {
            self.synchronize()?;
        }
        Ok(())
    }

    fn download(&self, mem: &DeviceBuf, off: usize, dst: &mut [f32]) -> Result<()> {
        self.check_range("download", mem, off, dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the source range is inside the allocation (checked above); the
        // stream is synchronised before `dst` is handed back.
        unsafe { result::memcpy_dtoh_async(dst, self.ptr(mem, off), self.stream.cu_stream()) }
            .map_err(|e| driver_error(format_args!("copying {} from the GPU", mib(4 * dst.len())), e))?;
        self.synchronize()
    }

    fn launch(&self, kernel: Kernel, geom: &Geometry, args: &[Arg]) -> Result<()> {
        let threads: u64 = geom.block.iter().map(|&b| b as u64).product();
        if threads == 0 || threads > 1024 || geom.grid.contains(&0) {
            return Err(Error::Cuda(format!("{}: invalid launch geometry {geom:?}", kernel.name)));
        }
        let func = self.function(kernel, geom.smem_bytes)?;
        self.bind()?;
        // Each argument lives in its own 8-byte slot; cuLaunchKernel reads as many
        // bytes from each pointer as the kernel's parameter has (8 or 4).
        let mut slots: Vec<[u8; 8]> = args
            .iter()
            .map(|a| {
                let mut s = [0u8; 8];
                match *a {
                    Arg::Ptr(p) => s.copy_from_slice(&p.to_ne_bytes()),
                    Arg::I32(v) => s[..4].copy_from_slice(&v.to_ne_bytes()),
                    Arg::F32(v) => s[..4].copy_from_slice(&v.to_ne_bytes()),
                }
                s
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s.as_mut_ptr() as *mut c_void).collect();
        let g = geom.grid;
        let b = geom.block;
        // SAFETY: `func` is a live function of a module loaded in this context; the
        // parameter array holds one pointer per kernel argument, each to a live
        // slot of the argument's size; device pointers were range-checked by the
        // launcher against their buffers.
        unsafe {
            result::launch_kernel(
                func.cu_function(),
                (g[0], g[1], g[2]),
                (b[0], b[1], b[2]),
                geom.smem_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| driver_error(format_args!("launching {} with {geom:?}", kernel.name), e))?;
        if self.sync {
            self.stream
                .synchronize()
                .map_err(|e| driver_error(format_args!("kernel {} ({geom:?})", kernel.name), e))?;
        }
        Ok(())
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

    #[test]
    fn no_gpu_is_an_error_not_a_panic() {
        // On a machine with a GPU this opens it; elsewhere it must fail cleanly.
        if let Err(e) = Cuda::with_sources(0, KernelSources { modules: &[], headers: &[], entry_points: &[] }) {
            assert!(matches!(e, Error::Cuda(_)), "{e}");
        }
    }
}
