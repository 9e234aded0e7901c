//! NVRTC at run time: the process's library (never one newer than the driver), the
//! kernel sources compiled to PTX, and the on-disk PTX cache. Needs only `libnvrtc`
//! (no GPU, no driver), so the test suite uses the same functions to check every
//! kernel for every target architecture. The bindings themselves are in
//! `nvrtc_lib.rs` (shared with `build.rs`).
//!
//! Options: `--gpu-architecture=compute_XY` (PTX, which the driver JIT-compiles for
//! the exact GPU) and [`OPTIONS`]. The headers of `kernels/` (`common.cuh`,
//! `tile.cuh`, ...) are passed in memory, so `#include "tile.cuh"` works with no
//! include path.
//!
//! With the kernels embedded in the binary (`embedded.rs`) this is the last resort
//! of the loader: new sources (a test's own kernels) and GPUs the embedded images
//! do not cover.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use super::probe;
use crate::error::{Error, Result};

pub use super::nvrtc_lib::{Nvrtc, Output, OPTIONS};

/// The process's NVRTC, loaded on first use; `Err` says why there is none.
pub fn nvrtc() -> Result<&'static Nvrtc> {
    static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
    NVRTC.get_or_init(load).as_ref().map_err(|e| Error::Cuda(e.clone()))
}

/// The first NVRTC of the search order not newer than the driver (when there is
/// one): a newer NVRTC's PTX does not load (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`),
/// so it is never used, even when it is the only one.
fn load() -> std::result::Result<Nvrtc, String> {
    let driver = probe::driver().ok().map(|d| d.version);
    super::nvrtc_lib::load_first(|n| match driver {
        Some(d) if n.version.0 * 1000 + n.version.1 * 10 > d => {
            Err(format!("newer than the driver's CUDA {}: its PTX would not load", probe::cuda_version_string(d)))
        }
        _ => Ok(()),
    })
}

impl Nvrtc {
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
        let (ptx, log) = self
            .compile_to(module, source, headers, &virtual_arch(arch), Output::Ptx)
            .map_err(|log| Error::Nvrtc { module: module.into(), log })?;
        Ok((String::from_utf8_lossy(&ptx).into_owned(), log))
    }
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

/// A 64-bit hash of the parts (FNV-1a with a separator after each, `embed::fnv`).
pub fn cache_key(parts: &[&str]) -> u64 {
    super::embed::fnv(&parts.iter().map(|p| p.as_bytes()).collect::<Vec<_>>())
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
