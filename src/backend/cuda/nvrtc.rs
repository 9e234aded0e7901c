//! NVRTC: compiling the kernel sources to PTX at run time, and the on-disk PTX
//! cache. Needs only `libnvrtc` (no GPU, no driver), so the test suite uses the
//! same function to check every kernel for every target architecture.
//!
//! We call NVRTC through our own `libloading` bindings rather than
//! `cudarc::nvrtc`, because cudarc can only find the library by bare name on the
//! linker path and panics when it is absent; here it is opened by full path from
//! wherever `probe` found it (a wheel, a toolkit, `LESIONSEG_NVRTC`).
//!
//! Options: `--gpu-architecture=compute_XY` (PTX, which the driver JIT-compiles for
//! the exact GPU), `-std=c++17`, `-lineinfo` (source lines in profiles). Not
//! `--use_fast_math`: the CPU comparisons need IEEE `expf`/`logf` and division.
//! The headers of `kernels/` (`common.cuh`, `tile.cuh`, ...) are passed in memory, so
//! `#include "tile.cuh"` works with no include path.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use super::probe;
use crate::error::{Error, Result};

/// The options every kernel is compiled with, after the architecture.
pub const OPTIONS: &[&str] = &["-std=c++17", "-lineinfo"];

type Program = *mut c_void;

/// NVRTC's entry points, resolved once.
struct Fns {
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    log: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    ptx_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    ptx: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut Program) -> c_int,
    num_archs: Option<unsafe extern "C" fn(*mut c_int) -> c_int>,
    archs: Option<unsafe extern "C" fn(*mut c_int) -> c_int>,
}

/// A loaded NVRTC library.
pub struct Nvrtc {
    fns: Fns,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Its version, (major, minor).
    pub version: (i32, i32),
    /// The real architectures it can target (`90` for sm_90), ascending.
    pub archs: Vec<i32>,
    // Declared last: the function pointers above point into these libraries.
    _lib: probe::NvrtcLib,
}

/// The process's NVRTC, loaded on first use; `Err` says why there is none.
pub fn nvrtc() -> Result<&'static Nvrtc> {
    static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
    NVRTC.get_or_init(load).as_ref().map_err(|e| Error::Cuda(e.clone()))
}

/// The first NVRTC of `probe::nvrtc_candidates` that loads, skipping (while
/// another exists) any newer than the driver: its PTX would not load
/// (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`).
fn load() -> std::result::Result<Nvrtc, String> {
    let driver = probe::driver().ok().map(|d| d.version);
    let mut too_new = None;
    let mut last_error = None;
    for path in probe::nvrtc_candidates() {
        match probe::open_nvrtc_at(&path).and_then(Nvrtc::new) {
            Ok(n) if driver.is_some_and(|d| n.version.0 * 1000 + n.version.1 * 10 > d) => {
                too_new.get_or_insert(n);
            }
            Ok(n) => return Ok(n),
            Err(e) => last_error = Some(e),
        }
    }
    too_new.ok_or_else(|| probe::nvrtc_not_found(last_error.as_deref()))
}

impl Nvrtc {
    fn new(lib: probe::NvrtcLib) -> std::result::Result<Self, String> {
        let path = lib.path.clone();
        let bad = |e: libloading::Error| format!("{} is not a usable NVRTC: {}", path.display(), probe::dl_error(&e));
        // SAFETY: the symbol types are NVRTC's documented C signatures (nvrtc.h);
        // the library stays loaded as long as the pointers (it is a field of Self).
        let fns = unsafe {
            Fns {
                version: *lib.lib.get(b"nvrtcVersion").map_err(bad)?,
                error_string: *lib.lib.get(b"nvrtcGetErrorString").map_err(bad)?,
                create: *lib.lib.get(b"nvrtcCreateProgram").map_err(bad)?,
                compile: *lib.lib.get(b"nvrtcCompileProgram").map_err(bad)?,
                log_size: *lib.lib.get(b"nvrtcGetProgramLogSize").map_err(bad)?,
                log: *lib.lib.get(b"nvrtcGetProgramLog").map_err(bad)?,
                ptx_size: *lib.lib.get(b"nvrtcGetPTXSize").map_err(bad)?,
                ptx: *lib.lib.get(b"nvrtcGetPTX").map_err(bad)?,
                destroy: *lib.lib.get(b"nvrtcDestroyProgram").map_err(bad)?,
                num_archs: lib.lib.get(b"nvrtcGetNumSupportedArchs").ok().map(|s| *s),
                archs: lib.lib.get(b"nvrtcGetSupportedArchs").ok().map(|s| *s),
            }
        };
        let (mut major, mut minor) = (0, 0);
        // SAFETY: nvrtcVersion writes two ints.
        let rc = unsafe { (fns.version)(&mut major, &mut minor) };
        if rc != 0 {
            return Err(format!("nvrtcVersion failed ({rc})"));
        }
        let archs = supported_archs(&fns);
        Ok(Nvrtc { fns, path, version: (major, minor), archs, _lib: lib })
    }

    /// "13.0".
    pub fn version_string(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }

    fn error(&self, rc: c_int) -> String {
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any code.
        let s = unsafe { (self.fns.error_string)(rc) };
        if s.is_null() {
            format!("NVRTC error {rc}")
        } else {
            // SAFETY: non-null, NUL-terminated, static (see above).
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        }
    }

    /// Compiles `source` (file `module`.cu) with `headers` (name, text) for
    /// `arch` (`sm_90`, `compute_90`, `sm_90a` …) to PTX; returns the PTX and the
    /// program log (warnings). A rejected source is `Error::Nvrtc` with the full log.
    pub fn compile(
        &self,
        module: &str,
        source: &str,
        headers: &[(&str, &str)],
        arch: &str,
    ) -> Result<(String, String)> {
        let cstr = |s: &str, what: &str| {
            CString::new(s)
                .map_err(|_| Error::Nvrtc { module: module.into(), log: format!("{what} contains a NUL byte") })
        };
        let src = cstr(source, "the source")?;
        let name = cstr(&format!("{module}.cu"), "the module name")?;
        let header_texts = headers.iter().map(|(_, t)| cstr(t, "a header")).collect::<Result<Vec<_>>>()?;
        let header_names = headers.iter().map(|(n, _)| cstr(n, "a header name")).collect::<Result<Vec<_>>>()?;
        let text_ptrs: Vec<*const c_char> = header_texts.iter().map(|c| c.as_ptr()).collect();
        let name_ptrs: Vec<*const c_char> = header_names.iter().map(|c| c.as_ptr()).collect();
        let mut options = vec![format!("--gpu-architecture={}", virtual_arch(arch))];
        options.extend(OPTIONS.iter().map(|s| s.to_string()));
        let options: Vec<CString> = options.into_iter().map(|o| cstr(&o, "an option")).collect::<Result<_>>()?;
        let option_ptrs: Vec<*const c_char> = options.iter().map(|c| c.as_ptr()).collect();

        let fail =
            |what: &str, rc: c_int| Error::Nvrtc { module: module.into(), log: format!("{what}: {}", self.error(rc)) };
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: all pointers are to live NUL-terminated strings (the CStrings above)
        // and the arrays hold `headers.len()` entries each.
        let rc = unsafe {
            (self.fns.create)(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                headers.len() as c_int,
                text_ptrs.as_ptr(),
                name_ptrs.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(fail("nvrtcCreateProgram", rc));
        }
        let prog = ProgramGuard { nvrtc: self, prog };
        // SAFETY: `prog` is a valid program; the options array holds live C strings.
        let compiled = unsafe { (self.fns.compile)(prog.prog, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
        let log = self.read(prog.prog, self.fns.log_size, self.fns.log).map_err(|rc| fail("nvrtcGetProgramLog", rc))?;
        if compiled != 0 {
            let log = if log.trim().is_empty() { self.error(compiled) } else { log };
            return Err(Error::Nvrtc { module: module.into(), log });
        }
        let ptx = self.read(prog.prog, self.fns.ptx_size, self.fns.ptx).map_err(|rc| fail("nvrtcGetPTX", rc))?;
        Ok((ptx, log))
    }

    /// Reads one of the program's NUL-terminated outputs (log, PTX).
    fn read(
        &self,
        prog: Program,
        size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
        get: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    ) -> std::result::Result<String, c_int> {
        let mut len = 0usize;
        // SAFETY: valid program; writes one size_t.
        let rc = unsafe { size(prog, &mut len) };
        if rc != 0 {
            return Err(rc);
        }
        let mut buf = vec![0u8; len.max(1)];
        // SAFETY: the buffer holds the `len` bytes (NUL included) NVRTC reported.
        let rc = unsafe { get(prog, buf.as_mut_ptr() as *mut c_char) };
        if rc != 0 {
            return Err(rc);
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
}

/// Destroys the program on every path out of `compile`.
struct ProgramGuard<'a> {
    nvrtc: &'a Nvrtc,
    prog: Program,
}

impl Drop for ProgramGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: `prog` came from nvrtcCreateProgram and is destroyed once.
        unsafe { (self.nvrtc.fns.destroy)(&mut self.prog) };
    }
}

fn supported_archs(fns: &Fns) -> Vec<i32> {
    let (Some(num), Some(get)) = (fns.num_archs, fns.archs) else { return Vec::new() };
    let mut n = 0;
    // SAFETY: writes one int.
    if unsafe { num(&mut n) } != 0 || n <= 0 {
        return Vec::new();
    }
    let mut archs = vec![0; n as usize];
    // SAFETY: the array holds the `n` entries NVRTC reported.
    if unsafe { get(archs.as_mut_ptr()) } != 0 {
        return Vec::new();
    }
    archs.sort_unstable();
    archs
}

/// `compute_90` for `sm_90`, `compute_90a` for `sm_90a`; `compute_*` unchanged.
pub fn virtual_arch(arch: &str) -> String {
    match arch.strip_prefix("sm_") {
        Some(rest) => format!("compute_{rest}"),
        None => arch.to_string(),
    }
}

/// Compiles kernel file `module` with the crate's headers (`kernels/*.cuh`) for
/// `arch` (`sm_90` …) to PTX: `(ptx, log)`. Needs only libnvrtc, no GPU.
pub fn compile_ptx(module: &str, source: &str, arch: &str) -> Result<(String, String)> {
    compile_ptx_with(module, source, super::driver::KernelSources::builtin().headers, arch)
}

/// [`compile_ptx`] with explicit headers, (file name, text).
pub fn compile_ptx_with(module: &str, source: &str, headers: &[(&str, &str)], arch: &str) -> Result<(String, String)> {
    nvrtc()?.compile(module, source, headers, arch)
}

/// PTX of `module` for `arch`, compiled at most once per process and kept on disk
/// across runs (see [`cache_dir`]), keyed by a hash of the source, the headers,
/// the architecture, the options and the NVRTC version.
pub fn cached_ptx(module: &str, source: &str, headers: &[(&str, &str)], arch: &str) -> Result<Arc<String>> {
    static MEMORY: OnceLock<Mutex<HashMap<u64, Arc<String>>>> = OnceLock::new();
    let nv = nvrtc()?;
    let (virt, options, version) = (virtual_arch(arch), OPTIONS.join(" "), nv.version_string());
    let mut parts = vec![source];
    parts.extend(headers.iter().flat_map(|(name, text)| [*name, *text]));
    parts.extend([virt.as_str(), options.as_str(), version.as_str()]);
    let key = cache_key(&parts);
    let memory = MEMORY.get_or_init(Default::default);
    if let Some(ptx) = memory.lock().map_err(|_| poisoned())?.get(&key) {
        return Ok(ptx.clone());
    }
    let file = cache_dir().map(|d| d.join(format!("{module}-{}-{key:016x}.ptx", virtual_arch(arch))));
    let ptx = match file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .filter(|p| p.contains(".entry") && !p.contains('\0'))
    {
        Some(ptx) => ptx,
        None => {
            let (ptx, _log) = compile_ptx_with(module, source, headers, arch)?;
            if let Some(f) = &file {
                // A cache that cannot be written only costs a recompilation next time.
                let _ = write_atomically(f, &ptx);
            }
            ptx
        }
    };
    let ptx = Arc::new(ptx);
    memory.lock().map_err(|_| poisoned())?.insert(key, ptx.clone());
    Ok(ptx)
}

fn poisoned() -> Error {
    Error::Cuda("PTX cache lock poisoned by an earlier panic".into())
}

/// Where compiled PTX is kept: `$LESIONSEG_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/lesionseg/ptx`, else `~/.cache/lesionseg/ptx`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("LESIONSEG_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("lesionseg/ptx")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/lesionseg/ptx")))
}

/// Writes to a temporary name in the same folder, then renames, so that a
/// concurrent reader sees the whole file or none.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.{}.{nanos}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// FNV-1a (64-bit) over the parts, each followed by a 0xff separator byte (which
/// never occurs in UTF-8), so that ("ab","c") and ("a","bc") differ.
pub fn cache_key(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_bytes().iter().chain(&[0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The `.entry` names in a PTX text, in order.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix(".visible .entry ").or_else(|| l.strip_prefix(".entry "))?;
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$').collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!(virtual_arch("sm_90"), "compute_90");
        assert_eq!(virtual_arch("sm_90a"), "compute_90a");
        assert_eq!(virtual_arch("compute_86"), "compute_86");
    }

    #[test]
    fn key_separates_parts() {
        assert_ne!(cache_key(&["ab", "c"]), cache_key(&["a", "bc"]));
        assert_eq!(cache_key(&["x"]), cache_key(&["x"]));
    }

    #[test]
    fn entries_parsed() {
        let ptx = "//\n.visible .entry add_f32(\n\t.param .u64 p\n)\n.entry local_k(\n.func helper(\n";
        assert_eq!(ptx_entries(ptx), ["add_f32", "local_k"]);
    }
}
