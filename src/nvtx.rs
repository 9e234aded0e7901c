//! NVTX ranges for Nsight Systems and Nsight Compute, without linking anything.
//!
//! NVTX 3 (what CUDA 13 ships) is a header-only protocol, not a library: a tool
//! that wants the ranges sets `NVTX_INJECTION64_PATH` to its injection library;
//! the application loads it, calls its `InitializeInjectionNvtx2` with a
//! `GetExportTable` function, and the tool writes its own entry points into the
//! slots of the function tables the application exposes through that export table
//! (a table per module, each entry a pointer to one slot, indexed by callback id).
//! Only the core module's `RangePushA` and `RangePop` are used here; every other
//! slot of every module exists (so a tool may fill any of them) and is ignored.
//!
//! Without a tool attached there is nothing to load and [`Nvtx::attached`] returns
//! `None`: ranges cost nothing.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::model::unet::{Layer, LayerHook, Pass};

/// The environment variable through which a tool names its injection library.
pub const INJECTION_ENV: &str = "NVTX_INJECTION64_PATH";

/// Export table ids (`NvtxExportTableID`).
const ETID_CALLBACKS: u32 = 1;
const ETID_VERSIONINFO: u32 = 3;
/// `NVTX_VERSION` of the protocol implemented here.
const NVTX_VERSION: u32 = 3;
/// Callback ids of the core module (`NvtxCallbackIdCore`).
const CBID_CORE_RANGE_PUSH_A: usize = 9;
const CBID_CORE_RANGE_POP: usize = 11;
/// `NVTX_CB_MODULE_*_SIZE` of each module, by module id 1..=6 (core, cuda,
/// opencl, cudart, core2, sync): the number of callback ids including id 0.
const MODULE_SIZES: [usize; 6] = [16, 9, 15, 7, 16, 7];

type GetExportTable = unsafe extern "C" fn(u32) -> *const c_void;
type InitializeInjection = unsafe extern "C" fn(GetExportTable) -> c_int;
type RangePushA = unsafe extern "C" fn(*const c_char) -> c_int;
type RangePop = unsafe extern "C" fn() -> c_int;

/// `NvtxExportTableCallbacks`.
#[repr(C)]
struct CallbacksTable {
    struct_size: usize,
    get_module_function_table: unsafe extern "C" fn(c_int, *mut *mut *mut c_void, *mut c_uint) -> c_int,
}

/// `NvtxExportTableVersionInfo`.
#[repr(C)]
struct VersionInfoTable {
    struct_size: usize,
    version: u32,
    reserved0: u32,
    set_injection_nvtx_version: unsafe extern "C" fn(u32),
}

/// The slots a tool fills and, per module, the table of pointers to them: entry 0
/// and one past the last id are null, as in NVIDIA's header, so a tool reading off
/// the end finds null rather than a stray pointer.
struct Slots {
    slots: Vec<Vec<AtomicPtr<c_void>>>,
    tables: Vec<Vec<*mut c_void>>,
}

// SAFETY: the tables are built once and never changed afterwards; the slots they
// point to are atomics.
unsafe impl Sync for Slots {}
unsafe impl Send for Slots {}

fn slots() -> &'static Slots {
    static SLOTS: OnceLock<Slots> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let slots: Vec<Vec<AtomicPtr<c_void>>> =
            MODULE_SIZES.iter().map(|&n| (0..n).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect()).collect();
        let tables = slots
            .iter()
            .map(|module| {
                let mut t: Vec<*mut c_void> = module.iter().map(|s| s.as_ptr() as *mut c_void).collect();
                t[0] = std::ptr::null_mut();
                t.push(std::ptr::null_mut());
                t
            })
            .collect();
        Slots { slots, tables }
    })
}

unsafe extern "C" fn get_module_function_table(
    module: c_int,
    out_table: *mut *mut *mut c_void,
    out_size: *mut c_uint,
) -> c_int {
    let s = slots();
    let Some(table) = usize::try_from(module).ok().and_then(|m| m.checked_sub(1)).and_then(|i| s.tables.get(i)) else {
        return 0;
    };
    // SAFETY: the tool passes valid out-pointers or null, per the protocol.
    unsafe {
        if !out_size.is_null() {
            *out_size = (table.len() - 1) as c_uint;
        }
        if !out_table.is_null() {
            *out_table = table.as_ptr() as *mut *mut c_void;
        }
    }
    1
}

unsafe extern "C" fn set_injection_nvtx_version(_version: u32) {}

static CALLBACKS: CallbacksTable =
    CallbacksTable { struct_size: std::mem::size_of::<CallbacksTable>(), get_module_function_table };
static VERSION_INFO: VersionInfoTable = VersionInfoTable {
    struct_size: std::mem::size_of::<VersionInfoTable>(),
    version: NVTX_VERSION,
    reserved0: 0,
    set_injection_nvtx_version,
};

unsafe extern "C" fn get_export_table(id: u32) -> *const c_void {
    match id {
        ETID_CALLBACKS => &CALLBACKS as *const CallbacksTable as *const c_void,
        ETID_VERSIONINFO => &VERSION_INFO as *const VersionInfoTable as *const c_void,
        _ => std::ptr::null(),
    }
}

/// An attached NVTX tool: its push and pop entry points.
pub struct Nvtx {
    push: RangePushA,
    pop: RangePop,
    /// Kept loaded for as long as its entry points may be called.
    _lib: libloading::Library,
}

impl Nvtx {
    /// The tool named by `NVTX_INJECTION64_PATH`, loaded and initialised on the
    /// first call (a tool attaches once per process); `None` when the variable is
    /// unset: no tool is attached.
    pub fn attached() -> Result<Option<&'static Nvtx>> {
        static TOOL: OnceLock<std::result::Result<Option<Nvtx>, String>> = OnceLock::new();
        match TOOL.get_or_init(Nvtx::attach) {
            Ok(tool) => Ok(tool.as_ref()),
            Err(msg) => Err(Error::Nvtx(msg.clone())),
        }
    }

    fn attach() -> std::result::Result<Option<Nvtx>, String> {
        let Some(path) = std::env::var_os(INJECTION_ENV).filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let shown = path.to_string_lossy().into_owned();
        let fail = |what: &str| format!("NVTX tool {shown} (from {INJECTION_ENV}): {what}");
        // SAFETY: loading the tool runs its initialisers; that is what the user asked for.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
            // libloading's own message is only "dlopen failed"; the loader's reason is its source.
            let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
            fail(&format!("cannot load it: {why}"))
        })?;
        // SAFETY: the symbol's type is `NvtxInitializeInjectionNvtxFunc_t`.
        let init: InitializeInjection = unsafe { lib.get::<InitializeInjection>(b"InitializeInjectionNvtx2\0") }
            .map(|s| *s)
            .map_err(|_| fail("no InitializeInjectionNvtx2 entry point: not an NVTX injection library"))?;
        // SAFETY: `get_export_table` and everything it hands out live for the process.
        if unsafe { init(get_export_table) } == 0 {
            return Err(fail("its initialisation returned failure"));
        }
        let core = &slots().slots[0];
        let (push, pop) =
            (core[CBID_CORE_RANGE_PUSH_A].load(Ordering::Acquire), core[CBID_CORE_RANGE_POP].load(Ordering::Acquire));
        if push.is_null() || pop.is_null() {
            return Err(fail("it does not take push/pop ranges"));
        }
        // SAFETY: the tool wrote entry points of these types into these slots.
        let (push, pop) = unsafe {
            (std::mem::transmute::<*mut c_void, RangePushA>(push), std::mem::transmute::<*mut c_void, RangePop>(pop))
        };
        Ok(Some(Nvtx { push, pop, _lib: lib }))
    }

    /// Opens a range named `name` on this thread.
    pub fn push(&self, name: &CStr) {
        // SAFETY: the tool's entry point, called with a NUL-terminated string.
        unsafe { (self.push)(name.as_ptr()) };
    }

    /// Closes this thread's innermost range.
    pub fn pop(&self) {
        // SAFETY: the tool's entry point.
        unsafe { (self.pop)() };
    }
}

/// An open range; it closes when dropped.
#[must_use = "the range closes when this is dropped"]
pub struct Range<'a>(Option<&'a Nvtx>);

/// Opens a range named `name` on this thread if a tool is attached.
pub fn range<'a>(nvtx: Option<&'a Nvtx>, name: &CStr) -> Range<'a> {
    if let Some(n) = nvtx {
        n.push(name);
    }
    Range(nvtx)
}

impl Drop for Range<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.0 {
            n.pop();
        }
    }
}

/// A [`LayerHook`] that puts each layer's forward and backward in a range named
/// `<layer> forward` / `<layer> backward` (`enc3_2 backward`), around `inner`'s
/// brackets (so a timing hook's marks fall inside the range).
pub struct Ranges<'a> {
    /// The tool, if one is attached.
    pub nvtx: Option<&'a Nvtx>,
    /// The hook inside the ranges.
    pub inner: &'a mut dyn LayerHook,
}

/// The range name of a layer pass.
pub fn range_name(layer: Layer, pass: Pass) -> CString {
    let pass = match pass {
        Pass::Forward => "forward",
        Pass::Backward => "backward",
    };
    CString::new(format!("{layer} {pass}")).expect("layer names have no NUL")
}

impl LayerHook for Ranges<'_> {
    fn begin(&mut self, layer: Layer, pass: Pass, macs: usize) {
        if let Some(n) = self.nvtx {
            n.push(&range_name(layer, pass));
        }
        self.inner.begin(layer, pass, macs);
    }

    fn end(&mut self, layer: Layer, pass: Pass) {
        self.inner.end(layer, pass);
        if let Some(n) = self.nvtx {
            n.pop();
        }
    }
}
