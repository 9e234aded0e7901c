//! NVRTC's C API through our own `libloading` bindings: load a library found by
//! `locate`, read its version and targets, compile a kernel file to PTX or to a
//! cubin. Errors are plain strings (the log), so that `build.rs`, which compiles the
//! embedded kernels, can include this file as it is; `nvrtc.rs` wraps it for the
//! crate (typed errors, the process-wide library, the PTX cache).
//!
//! We do not use `cudarc::nvrtc`: cudarc can only find the library by bare name on
//! the linker path and panics when it is absent; here it is opened by full path
//! from wherever `locate` found it (a wheel, a toolkit, `LESIONSEG_NVRTC`).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;

use super::locate;

/// The options every kernel is compiled with, after the architecture: C++17 and
/// source lines in profiles. Not `--use_fast_math`: the CPU comparisons need IEEE
/// `expf`/`logf` and division.
pub const OPTIONS: &[&str] = &["-std=c++17", "-lineinfo"];

type Program = *mut c_void;
type GetSize = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type GetText = unsafe extern "C" fn(Program, *mut c_char) -> c_int;

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
    log_size: GetSize,
    log: GetText,
    ptx_size: GetSize,
    ptx: GetText,
    cubin_size: Option<GetSize>,
    cubin: Option<GetText>,
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
    _lib: locate::NvrtcLib,
}

/// What a compilation produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// PTX text for a virtual architecture (`compute_80`), JIT-compiled by the driver.
    Ptx,
    /// A cubin (ELF) for a real architecture (`sm_80`), loaded as is.
    Cubin,
}

/// The first NVRTC of [`locate::nvrtc_candidates`] that loads and that `accept`s
/// (given its version); otherwise why none was taken: the libraries refused, with
/// the reason `accept` gave, or the last loader error.
pub fn load_first(accept: impl Fn(&Nvrtc) -> Result<(), String>) -> Result<Nvrtc, String> {
    let mut refused = Vec::new();
    let mut last_error = None;
    for path in locate::nvrtc_candidates() {
        match locate::open_nvrtc_at(&path).and_then(Nvrtc::new) {
            Ok(n) => match accept(&n) {
                Ok(()) => return Ok(n),
                Err(why) => refused.push(format!("NVRTC {} at {} ({why})", n.version_string(), n.path.display())),
            },
            Err(e) => last_error = Some(e),
        }
    }
    if refused.is_empty() {
        Err(locate::nvrtc_not_found(last_error.as_deref()))
    } else {
        Err(format!("no usable NVRTC: skipped {}", refused.join("; ")))
    }
}

impl Nvrtc {
    /// Resolves NVRTC's entry points in `lib` and reads its version and targets.
    pub fn new(lib: locate::NvrtcLib) -> Result<Self, String> {
        let path = lib.path.clone();
        let bad = |e: libloading::Error| format!("{} is not a usable NVRTC: {}", path.display(), locate::dl_error(&e));
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
                cubin_size: lib.lib.get(b"nvrtcGetCUBINSize").ok().map(|s| *s),
                cubin: lib.lib.get(b"nvrtcGetCUBIN").ok().map(|s| *s),
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

    /// Compiles `source` (file `module`.cu) with `headers` (name, text) for `arch`
    /// (`compute_80` for [`Output::Ptx`], `sm_80` for [`Output::Cubin`]) with
    /// [`OPTIONS`]: the output (PTX without its NUL, or the cubin) and the program
    /// log (warnings). `Err` is the full log of a rejected source, or what failed.
    pub fn compile_to(
        &self,
        module: &str,
        source: &str,
        headers: &[(&str, &str)],
        arch: &str,
        output: Output,
    ) -> Result<(Vec<u8>, String), String> {
        let cstr = |s: &str, what: &str| CString::new(s).map_err(|_| format!("{what} contains a NUL byte"));
        let src = cstr(source, "the source")?;
        let name = cstr(&format!("{module}.cu"), "the module name")?;
        let header_texts = headers.iter().map(|(_, t)| cstr(t, "a header")).collect::<Result<Vec<_>, _>>()?;
        let header_names = headers.iter().map(|(n, _)| cstr(n, "a header name")).collect::<Result<Vec<_>, _>>()?;
        let text_ptrs: Vec<*const c_char> = header_texts.iter().map(|c| c.as_ptr()).collect();
        let name_ptrs: Vec<*const c_char> = header_names.iter().map(|c| c.as_ptr()).collect();
        let mut options = vec![format!("--gpu-architecture={arch}")];
        options.extend(OPTIONS.iter().map(|s| s.to_string()));
        let options: Vec<CString> = options.into_iter().map(|o| cstr(&o, "an option")).collect::<Result<_, _>>()?;
        let option_ptrs: Vec<*const c_char> = options.iter().map(|c| c.as_ptr()).collect();
        let (size, get) = match output {
            Output::Ptx => (self.fns.ptx_size, self.fns.ptx),
            Output::Cubin => match (self.fns.cubin_size, self.fns.cubin) {
                (Some(s), Some(g)) => (s, g),
                _ => return Err(format!("NVRTC {} cannot emit cubins", self.version_string())),
            },
        };

        let fail = |what: &str, rc: c_int| format!("{what}: {}", self.error(rc));
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
        let log = String::from_utf8_lossy(log.split(|&b| b == 0).next().unwrap_or_default()).into_owned();
        if compiled != 0 {
            return Err(if log.trim().is_empty() { self.error(compiled) } else { log });
        }
        let mut out = self.read(prog.prog, size, get).map_err(|rc| fail("reading the compiled program", rc))?;
        if output == Output::Ptx {
            let end = out.iter().position(|&b| b == 0).unwrap_or(out.len());
            out.truncate(end);
        }
        Ok((out, log))
    }

    /// Reads one of the program's outputs (log, PTX, cubin) as NVRTC sized it.
    fn read(&self, prog: Program, size: GetSize, get: GetText) -> Result<Vec<u8>, c_int> {
        let mut len = 0usize;
        // SAFETY: valid program; writes one size_t.
        let rc = unsafe { size(prog, &mut len) };
        if rc != 0 {
            return Err(rc);
        }
        let mut buf = vec![0u8; len.max(1)];
        // SAFETY: the buffer holds the `len` bytes NVRTC reported.
        let rc = unsafe { get(prog, buf.as_mut_ptr() as *mut c_char) };
        if rc != 0 {
            return Err(rc);
        }
        buf.truncate(len);
        Ok(buf)
    }
}

/// Destroys the program on every path out of `compile_to`.
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
