//! The GPU executor: one CUDA context, one stream, device buffers of f32 (counted,
//! for `profile`'s memory figures), and the kernel modules, loaded on first launch
//! by `loader.rs` from the embedded cubins, the embedded PTX or NVRTC.
//!
//! Nothing here touches cudarc before `probe::driver()` has loaded `libcuda` and
//! checked its symbols, and cudarc is then checked to have opened that same
//! library, so a machine without a driver or a GPU gets an `Error`, never a panic.
//! NVRTC is needed only for kernels the binary does not embed.
//!
//! Launches are asynchronous on the stream. With `LESIONSEG_SYNC=1`, in debug
//! builds, and in the GPU tests ([`Cuda::set_sync`]) every launch is followed by a
//! stream synchronisation, so that a fault inside a kernel is reported with that
//! kernel's name instead of at some later copy.
//!
//! Memory comes from the device's stream-ordered pool, whose release threshold is
//! raised so that freed memory stays in the pool instead of going back to the OS
//! at every synchronisation (the op workspaces are reused anyway, see `scratch.rs`).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys::{self, CUdevice_attribute, CUevent_flags, CUfunction_attribute, CUresult};
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr};

use super::gpu::{check_loadable, dynamic_smem_needed, init_driver, keep_freed_memory, DEFAULT_SMEM};
pub use super::gpu::{devices, driver_error, DeviceInfo};
use super::loader::{self, Gpu, LoadPath, Module};
use super::{embed, Arg, Executor, Geometry, Kernel};
use crate::backend::memory::{Accounting, MemoryStats, Tracked};
use crate::error::{Error, Result};

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

    /// The minimum architecture `module` declares (`embed::min_arch`).
    pub fn min_arch(&self, module: &str) -> Result<u32> {
        embed::min_arch(self.get(module)?).map_err(|e| Error::Cuda(format!("kernels/{module}.cu: {e}")))
    }
}

/// A device buffer of f32 (at least one element is allocated, so that even an
/// empty buffer has a valid address).
pub struct DeviceBuf {
    slice: CudaSlice<f32>,
    len: usize,
    _tracked: Tracked,
}

/// A loaded kernel: its handle, its module (kept loaded), its static shared memory
/// and the dynamic shared memory it is currently allowed.
struct Func {
    func: sys::CUfunction,
    _module: Arc<Module>,
    static_smem: u32,
    max_dynamic_smem: u32,
}

// SAFETY: a CUfunction is a driver handle usable from any thread that binds its
// context (every use here binds first).
unsafe impl Send for Func {}

/// One GPU: context, stream, loaded modules, allocation counters.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    sources: KernelSources,
    gpu: Gpu,
    /// The most shared memory (static + dynamic) a block may opt in to.
    smem_optin: u32,
    /// Device memory, bytes.
    total_bytes: usize,
    sync: bool,
    modules: Mutex<HashMap<&'static str, (Arc<Module>, LoadPath)>>,
    functions: Mutex<HashMap<Kernel, Func>>,
    accounting: Arc<Accounting>,
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

    /// GPU `ordinal` with the given kernel files (tests use their own). Fails when
    /// some module this GPU can run could be loaded by no path (not embedded for it
    /// and no NVRTC), so that `--device auto` falls back before the first launch.
    pub fn with_sources(ordinal: usize, sources: KernelSources) -> Result<Self> {
        let count = init_driver()?;
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
        let name = ctx.name().map_err(|e| driver_error("cuDeviceGetName", e))?;
        let optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| driver_error("cuDeviceGetAttribute", e))?;
        let total_bytes = ctx.total_mem().map_err(|e| driver_error("cuDeviceTotalMem", e))?;
        keep_freed_memory(&ctx)?;
        let gpu = Gpu { name, cc };
        check_loadable(&gpu, &sources)?;
        Ok(Cuda {
            total_bytes,
            ctx,
            stream,
            sources,
            gpu,
            smem_optin: optin.max(0) as u32,
            sync: sync_default(),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            accounting: Accounting::new(),
        })
    }

    /// Synchronise after every launch (and check) when `on`.
    pub fn set_sync(&mut self, on: bool) {
        self.sync = on;
    }

    /// The GPU's name.
    pub fn name(&self) -> String {
        self.gpu.name.clone()
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.gpu.cc
    }

    /// The GPU's architecture, `sm_90`.
    pub fn arch(&self) -> String {
        format!("sm_{}", self.gpu.arch())
    }

    /// Ok when this GPU can run every kernel file declaring a minimum architecture
    /// except `testing` (the tensor-core modules `--precision bf16` runs); the error
    /// names the card and the requirement.
    pub fn check_tensor_cores(&self) -> Result<()> {
        for (module, _) in self.sources.modules.iter().filter(|(m, _)| *m != "testing") {
            loader::check_arch(&self.gpu, module, self.sources.min_arch(module)?)?;
        }
        Ok(())
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

    /// This GPU's context made current on the calling thread, and the raw handle of
    /// its one stream: what a library that queues its own work (NCCL) needs to run
    /// in order with this executor's launches and copies.
    pub fn bind_stream(&self) -> Result<sys::CUstream> {
        self.bind()?;
        Ok(self.stream.cu_stream())
    }

    /// Loads kernel file `module` (once; see `loader.rs` for the order of paths).
    pub fn module(&self, module: &'static str) -> Result<Arc<Module>> {
        let mut modules = self.modules.lock().map_err(|_| poisoned())?;
        if let Some((m, _)) = modules.get(module) {
            return Ok(m.clone());
        }
        let (loaded, path) =
            loader::load(&self.ctx, &self.gpu, module, self.sources.get(module)?, self.sources.headers)?;
        modules.insert(module, (loaded.clone(), path));
        Ok(loaded)
    }

    /// How `module` was loaded, once it has been.
    pub fn load_path(&self, module: &str) -> Option<LoadPath> {
        self.modules.lock().ok()?.get(module).map(|(_, p)| p.clone())
    }

    /// `(registers, static shared bytes, local bytes per thread, max threads per
    /// block)` of `kernel` as loaded on this GPU.
    pub fn attributes(&self, kernel: Kernel) -> Result<(i32, i32, i32, i32)> {
        let module = self.module(kernel.module)?;
        self.bind()?;
        let func = module.function(kernel.name).map_err(|e| missing_entry(kernel, e))?;
        Ok((
            func_attribute(kernel, func, CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
            func_attribute(kernel, func, CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
            func_attribute(kernel, func, CUfunction_attribute::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
            func_attribute(kernel, func, CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
        ))
    }

    /// The loaded function of `kernel`, allowed `smem` bytes of dynamic shared memory.
    fn function(&self, kernel: Kernel, smem: u32) -> Result<sys::CUfunction> {
        let mut functions = self.functions.lock().map_err(|_| poisoned())?;
        let f = match functions.entry(kernel) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let module = self.module(kernel.module)?;
                // The function lookup and attributes need this context current.
                self.bind()?;
                let func = module.function(kernel.name).map_err(|err| missing_entry(kernel, err))?;
                let static_smem =
                    func_attribute(kernel, func, CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?.max(0)
                        as u32;
                let max_dynamic_smem = DEFAULT_SMEM.saturating_sub(static_smem);
                e.insert(Func { func, _module: module, static_smem, max_dynamic_smem })
            }
        };
        let grant = dynamic_smem_needed(f.static_smem, smem, f.max_dynamic_smem, self.smem_optin)
            .map_err(|e| Error::Cuda(format!("{}: {e}", kernel.name)))?;
        if let Some(bytes) = grant {
            self.bind()?;
            // SAFETY: `f.func` is a live function; static + dynamic is within the device limit.
            unsafe {
                result::function::set_function_attribute(
                    f.func,
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
            }
            .map_err(|e| {
                driver_error(format_args!("{}: allowing {bytes} bytes of dynamic shared memory", kernel.name), e)
            })?;
            f.max_dynamic_smem = bytes;
        }
        Ok(f.func)
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

    fn allocate(&self, len: usize, zeroed: bool) -> Result<DeviceBuf> {
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
        let n = len.max(1);
        let slice = if zeroed {
            self.stream.alloc_zeros::<f32>(n)
        } else {
            // SAFETY: workspaces; every element a kernel reads is written first by
            // the same op (checked in the emulator, which poisons them).
            unsafe { self.stream.alloc::<f32>(n) }
        };
        let slice = slice.map_err(|e| match e.0 {
            CUresult::CUDA_ERROR_OUT_OF_MEMORY => out_of_memory(),
            _ => driver_error(format_args!("allocating {} on the GPU", mib(4 * len)), e),
        })?;
        Ok(DeviceBuf { slice, len, _tracked: self.accounting.track(4 * n as u64) })
    }
}

fn func_attribute(kernel: Kernel, func: sys::CUfunction, a: CUfunction_attribute) -> Result<i32> {
    // SAFETY: `func` is a live function of a loaded module; the context is bound.
    unsafe { result::function::get_function_attribute(func, a) }
        .map_err(|e| driver_error(format_args!("cuFuncGetAttribute on {}", kernel.name), e))
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

    fn memory_stats(&self) -> Option<MemoryStats> {
        Some(self.accounting.stats())
    }

    fn reset_peak_memory(&self) {
        self.accounting.reset_peak();
    }

    fn alloc(&self, len: usize) -> Result<DeviceBuf> {
        self.allocate(len, true)
    }

    fn alloc_scratch(&self, len: usize) -> Result<DeviceBuf> {
        self.allocate(len, false)
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

    fn device_place(&self, mem: &DeviceBuf, off: usize) -> Result<Option<(u64, u64)>> {
        self.check_range("device_place", mem, off, 0)?;
        Ok(Some((self.ptr(mem, off), self.bind_stream()? as u64)))
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
                func,
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
    fn no_gpu_is_an_error_not_a_panic() {
        // On a machine with a GPU this opens it; elsewhere it must fail cleanly.
        if let Err(e) = Cuda::with_sources(0, KernelSources { modules: &[], headers: &[], entry_points: &[] }) {
            assert!(matches!(e, Error::Cuda(_)), "{e}");
        }
    }
}
