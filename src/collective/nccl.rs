//! NCCL, loaded at run time through our own bindings, and the collective of GPU
//! ranks built on it ([`NcclCollective`]).
//!
//! cudarc 0.19's `nccl` module cannot be used here: its loader tries only the names
//! of `cudarc::get_lib_name_candidates("nccl")` (`libnccl.so`, `libnccl.so.13`,
//! `.12` … `.1`), never NCCL's soname `libnccl.so.2`, which is the only file the
//! `nvidia-nccl-cu13` wheel and the distributions' runtime packages install, and a
//! name that fails panics (`panic_no_lib_found`). Preloading the library by full
//! path does not help either, since the dynamic loader matches an already loaded
//! object by its soname (`libnccl.so.2`), not by `libnccl.so`. So, as for NVRTC
//! (`backend/cuda/nvrtc_lib.rs`), the few functions we call are resolved from a
//! library we find and `dlopen` ourselves, by full path with `RTLD_GLOBAL`:
//! `LESIONSEG_NCCL` (a file or a folder) when set, else `libnccl.so.2` under
//! `$CUDA_HOME`/`$CUDA_PATH` (`lib64`, `lib`), the `nvidia-nccl-cu13` wheel
//! (`nvidia/nccl/lib` under the repository's `.cache/nvidia` or a Python
//! site-packages), `/usr/local/cuda`, then the system's search path.
//!
//! Nothing here runs unless asked: a single-replica run never loads NCCL
//! ([`is_loaded`] says whether this process did).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

use super::{error, Collective};
use crate::backend::cuda::probe::{dl_error, loaded_path, site_dirs};
use crate::error::Result;

/// `ncclUniqueId`: 128 opaque bytes made by rank 0 and given to every rank.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    /// The bytes.
    pub internal: [u8; 128],
}

type Comm = *mut c_void;
/// `ncclFloat32`, `ncclSum` (nccl.h).
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

type GetVersionFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueIdFn = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRankFn = unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int;
type AllReduceFn = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> c_int;
type CommFn = unsafe extern "C" fn(Comm) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// The NCCL library: where it is, its version, the functions we call.
pub struct NcclLib {
    /// Kept loaded for the life of the process.
    _lib: Library,
    /// The file loaded.
    pub path: PathBuf,
    /// `ncclGetVersion`: 10000·major + 100·minor + patch (22703 for 2.27.3).
    pub version: i32,
    get_unique_id: GetUniqueIdFn,
    comm_init_rank: CommInitRankFn,
    all_reduce: AllReduceFn,
    comm_destroy: CommFn,
    comm_abort: CommFn,
    error_string: ErrorStringFn,
}

static LOADED: AtomicBool = AtomicBool::new(false);

/// Whether this process has loaded NCCL (tests: single-replica runs never do).
pub fn is_loaded() -> bool {
    LOADED.load(Ordering::SeqCst)
}

/// NCCL, loaded once per process; `Err` says why it cannot be used and what to do.
pub fn nccl() -> std::result::Result<&'static NcclLib, String> {
    static NCCL: OnceLock<std::result::Result<NcclLib, String>> = OnceLock::new();
    NCCL.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// The libraries tried, in order.
pub fn candidates() -> Vec<PathBuf> {
    const SONAME: &str = "libnccl.so.2";
    if let Some(p) = std::env::var_os("LESIONSEG_NCCL") {
        let p = PathBuf::from(p);
        return vec![if p.is_dir() { p.join(SONAME) } else { p }];
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var).map(PathBuf::from) {
            dirs.extend([root.join("lib64"), root.join("lib")]);
        }
    }
    dirs.extend(site_dirs().into_iter().map(|s| s.join("nvidia/nccl/lib")));
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    let mut out: Vec<PathBuf> = dirs.into_iter().map(|d| d.join(SONAME)).filter(|p| p.is_file()).collect();
    out.dedup();
    out.push(PathBuf::from(SONAME));
    out
}

fn load() -> std::result::Result<NcclLib, String> {
    let tried = candidates();
    let mut broken = None;
    for path in &tried {
        // SAFETY: loading NCCL runs its initialisers, which have no preconditions
        // on our side. RTLD_GLOBAL: a later open of the same soname by anyone
        // (a plugin, cudarc) finds this very object.
        match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
            Ok(lib) => {
                LOADED.store(true, Ordering::SeqCst);
                return bind(lib, path);
            }
            Err(e) if !dl_error(&e).contains("No such file") => {
                broken.get_or_insert(format!("{} cannot be loaded: {}", path.display(), dl_error(&e)));
            }
            Err(_) => {}
        }
    }
    Err(broken.unwrap_or_else(|| {
        "NCCL (libnccl.so.2) not found: install it (`pip install nvidia-nccl-cu13`, or the distribution's \
         libnccl2) or point LESIONSEG_NCCL at the library"
            .to_string()
    }))
}

fn bind(lib: Library, tried: &Path) -> std::result::Result<NcclLib, String> {
    let path =
        if tried.is_absolute() { tried.to_path_buf() } else { loaded_path("libnccl.so").unwrap_or(tried.into()) };
    let which = path.display().to_string();
    // SAFETY: each symbol is cast to its nccl.h signature (NCCL 2.x, stable ABI).
    unsafe {
        let sym = |name: &str| -> std::result::Result<*const (), String> {
            lib.get::<*const ()>(name.as_bytes())
                .map(|s| *s)
                .map_err(|e| format!("{which} is not a usable NCCL: {name}: {}", dl_error(&e)))
        };
        let get_version = std::mem::transmute::<*const (), GetVersionFn>(sym("ncclGetVersion")?);
        let mut version = 0;
        if get_version(&mut version) != 0 {
            return Err(format!("ncclGetVersion failed on {which}"));
        }
        Ok(NcclLib {
            get_unique_id: std::mem::transmute::<*const (), GetUniqueIdFn>(sym("ncclGetUniqueId")?),
            comm_init_rank: std::mem::transmute::<*const (), CommInitRankFn>(sym("ncclCommInitRank")?),
            all_reduce: std::mem::transmute::<*const (), AllReduceFn>(sym("ncclAllReduce")?),
            comm_destroy: std::mem::transmute::<*const (), CommFn>(sym("ncclCommDestroy")?),
            comm_abort: std::mem::transmute::<*const (), CommFn>(sym("ncclCommAbort")?),
            error_string: std::mem::transmute::<*const (), ErrorStringFn>(sym("ncclGetErrorString")?),
            _lib: lib,
            path,
            version,
        })
    }
}

/// "2.27.3" from an `ncclGetVersion` number (1000·major + 100·minor + patch before 2.9).
pub fn version_string(v: i32) -> String {
    if v >= 10000 {
        format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
    }
}

impl NcclLib {
    fn check(&self, rank: usize, what: &str, rc: c_int) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static C string for any code.
        let text = unsafe { CStr::from_ptr((self.error_string)(rc)) }.to_string_lossy().into_owned();
        Err(error(rank, format!("{what}: NCCL error {rc} ({text})")))
    }

    /// A new unique id (rank 0 makes it; the others receive it).
    pub fn unique_id(&self) -> Result<UniqueId> {
        let mut id = UniqueId { internal: [0; 128] };
        // SAFETY: writes one ncclUniqueId.
        self.check(0, "ncclGetUniqueId", unsafe { (self.get_unique_id)(&mut id) })?;
        Ok(id)
    }
}

/// One GPU rank's NCCL communicator, paired with a host collective (the threads'
/// rendezvous, or TCP between processes) for the small host values of a step (the
/// loss's sums, the stop flags, the learning rate) and for noticing a lost rank.
pub struct NcclCollective {
    lib: &'static NcclLib,
    comm: Comm,
    host: Box<dyn Collective>,
    failed: bool,
}

// SAFETY: an NCCL communicator may be used from any thread, one at a time; the
// handle is moved to its rank's thread and used only there.
unsafe impl Send for NcclCollective {}

impl NcclCollective {
    /// Joins rank `host.rank()` of `host.world()` to the communicator of `id`, on the
    /// GPU whose context is current on this thread (`Cuda::bind_stream`).
    pub fn new(lib: &'static NcclLib, id: UniqueId, host: Box<dyn Collective>) -> Result<Self> {
        let (rank, world) = (host.rank(), host.world());
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: writes one communicator handle; `id` is the group's.
        lib.check(rank, "ncclCommInitRank", unsafe {
            (lib.comm_init_rank)(&mut comm, world as c_int, id, rank as c_int)
        })?;
        Ok(NcclCollective { lib, comm, host, failed: false })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn world(&self) -> usize {
        self.host.world()
    }
    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.host.all_reduce_f64(buf)
    }
    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        self.host.all_reduce_f32(buf)
    }
    fn broadcast_f64(&mut self, buf: &mut [f64], root: usize) -> Result<()> {
        self.host.broadcast_f64(buf, root)
    }
    fn all_reduce_device_f32(&mut self, ptr: u64, len: usize, stream: u64) -> Result<bool> {
        // SAFETY: `ptr` is `len` f32 of this rank's GPU, in place (NCCL allows send
        // = receive); queued on the executor's stream, so it runs after the backward
        // pass that wrote the gradients and before the Adam step that reads them.
        let rc = unsafe {
            (self.lib.all_reduce)(
                ptr as *const c_void,
                ptr as *mut c_void,
                len,
                NCCL_FLOAT32,
                NCCL_SUM,
                self.comm,
                stream as *mut c_void,
            )
        };
        self.failed |= rc != 0;
        self.lib.check(self.rank(), "ncclAllReduce", rc)?;
        Ok(true)
    }
    fn abort(&mut self, reason: &str) {
        self.failed = true;
        self.host.abort(reason);
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // SAFETY: the communicator is ours; abort does not wait for the other
        // ranks (a failed group would hang in destroy).
        unsafe {
            if self.failed {
                (self.lib.comm_abort)(self.comm);
            } else {
                (self.lib.comm_destroy)(self.comm);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_candidates() {
        assert_eq!(version_string(22703), "2.27.3");
        assert_eq!(version_string(2804), "2.8.4");
        assert_eq!(candidates().last().map(|p| p.display().to_string()).as_deref(), Some("libnccl.so.2"));
        // Either answer, never a panic.
        let _ = nccl();
    }

    /// Why cudarc's `nccl` module is not used: its loader never tries NCCL's soname.
    /// When a cudarc release does, this fails: switch to it then.
    #[test]
    fn cudarc_never_tries_the_nccl_soname() {
        let names = cudarc::get_lib_name_candidates("nccl");
        assert!(names.iter().any(|n| n == "libnccl.so"), "{names:?}");
        assert!(!names.iter().any(|n| n == "libnccl.so.2"), "{names:?}");
    }
}
