//! Where the CUDA tools live on this machine: NVRTC (`libnvrtc`) and `ptxas`. Used
//! at run time (`probe`, `nvrtc`) and by `build.rs`, which includes this file to find
//! the NVRTC that compiles the embedded kernels the same way the binary finds one, so
//! it depends on nothing but `std` and `libloading`.
//!
//! NVRTC is searched for in this order and opened by full path:
//! 1. `LESIONSEG_NVRTC` (the library, or a folder holding it), and only that when set;
//! 2. `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda*` (`lib64`, `lib`,
//!    `targets/x86_64-linux/lib`);
//! 3. NVIDIA's Python wheels: `nvidia/cu13/lib` or `nvidia/cuda_nvrtc/lib` under the
//!    repository's `.cache/nvidia` (where `scripts/test.sh` installs them) and under
//!    the usual site-packages folders (virtualenv, conda, user, system, pyenv);
//! 4. the system linker path (`libnvrtc.so.13`, `.12`, `libnvrtc.so`).
//!
//! A wheel's `libnvrtc` has no RUNPATH and `dlopen`s `libnvrtc-builtins.so.X.Y` by
//! bare name at compile time, which fails unless that folder is on
//! `LD_LIBRARY_PATH`; [`open_nvrtc_at`] therefore loads the builtins from the same
//! folder first, so that the loader resolves the bare name to them.

use std::path::{Path, PathBuf};

use libloading::Library;

/// A loader error with its cause (libloading's `Display` omits `dlerror()`'s text).
pub fn dl_error(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The full path of a loaded shared object whose file name starts with `stem`
/// (e.g. `libcuda.so`), read from `/proc/self/maps`.
pub fn loaded_path(stem: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().filter_map(|l| l.split_whitespace().nth(5)).map(PathBuf::from).find(|p| {
        p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with(stem) && !f.contains("builtins"))
    })
}

/// Candidate NVRTC libraries in search order: full paths first, then bare
/// names for the system linker path. With `LESIONSEG_NVRTC` set, only that.
pub fn nvrtc_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("LESIONSEG_NVRTC") {
        let p = PathBuf::from(p);
        return if p.is_dir() { nvrtc_in(&p) } else { vec![p] };
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in toolkit_roots().iter().flat_map(|r| toolkit_lib_dirs(r)).chain(wheel_dirs("lib")) {
        for p in nvrtc_in(&dir) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out.extend(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"].map(PathBuf::from));
    out
}

/// NVRTC libraries in one folder, newest CUDA major first.
fn nvrtc_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = list(dir)
        .into_iter()
        .filter(|p| {
            let f = file_name(p);
            f.starts_with("libnvrtc.so") && !f.contains(".alt.")
        })
        .collect();
    // libnvrtc.so.13 before libnvrtc.so.12 before the unversioned link.
    found.sort_by_key(|p| std::cmp::Reverse(so_major(&file_name(p))));
    found
}

fn so_major(file: &str) -> i64 {
    file.rsplit_once(".so.").and_then(|(_, v)| v.split('.').next()?.parse().ok()).unwrap_or(-1)
}

/// A loaded NVRTC and the builtins preloaded beside it.
pub struct NvrtcLib {
    /// The NVRTC library.
    pub lib: Library,
    /// `libnvrtc-builtins` from the same folder, kept loaded (see the module doc).
    pub builtins: Option<Library>,
    /// Where NVRTC was loaded from.
    pub path: PathBuf,
}

/// Opens the NVRTC at `path` (a full path, or a bare name for the linker path),
/// preloading the builtins from its folder.
pub fn open_nvrtc_at(path: &Path) -> Result<NvrtcLib, String> {
    if path.is_absolute() && !path.exists() {
        return Err(format!("{}: no such file", path.display()));
    }
    let builtins = path.parent().filter(|d| !d.as_os_str().is_empty()).and_then(preload_builtins);
    // SAFETY: NVRTC's initialisers have no preconditions on our side.
    let lib = unsafe { Library::new(path) }.map_err(|e| dl_error(&e))?;
    let path = if path.is_absolute() { path.to_path_buf() } else { loaded_path("libnvrtc.so").unwrap_or(path.into()) };
    Ok(NvrtcLib { lib, builtins, path })
}

/// Why no NVRTC could be opened, with the last loader error.
pub fn nvrtc_not_found(last: Option<&str>) -> String {
    let how = if std::env::var_os("LESIONSEG_NVRTC").is_some() {
        "LESIONSEG_NVRTC is set"
    } else {
        "looked in LESIONSEG_NVRTC, CUDA_HOME, CUDA_PATH, /usr/local/cuda*, the nvidia Python wheels and the \
         linker path; set LESIONSEG_NVRTC=/path/to/libnvrtc.so.13 or run scripts/test.sh to install the wheel"
    };
    format!("libnvrtc not found ({how}){}", last.map(|l| format!("; {l}")).unwrap_or_default())
}

/// Loads `libnvrtc-builtins.so.*` from `dir`, newest first, if there is one.
fn preload_builtins(dir: &Path) -> Option<Library> {
    let mut found: Vec<PathBuf> = list(dir)
        .into_iter()
        .filter(|p| {
            let f = file_name(p);
            f.starts_with("libnvrtc-builtins.so") && !f.contains(".alt.")
        })
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(file_name(p)));
    // SAFETY: the builtins library only holds data and initialisers without
    // preconditions; it is loaded so that libnvrtc's own dlopen finds it.
    found.iter().find_map(|p| unsafe { Library::new(p) }.ok())
}

/// `ptxas` in the usual places: `LESIONSEG_PTXAS`, the CUDA toolkit roots, the
/// nvidia-cuda-nvcc wheel, then `PATH`.
pub fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LESIONSEG_PTXAS") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let roots = toolkit_roots().into_iter().map(|r| r.join("bin"));
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    roots.chain(wheel_dirs("bin")).chain(path).map(|d| d.join("ptxas")).find(|p| p.is_file())
}

/// `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda`, then `/usr/local/cuda-*` newest first.
fn toolkit_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> =
        ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"].iter().filter_map(std::env::var_os).map(PathBuf::from).collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    let mut versioned: Vec<PathBuf> =
        list(Path::new("/usr/local")).into_iter().filter(|p| file_name(p).starts_with("cuda-")).collect();
    versioned.sort_by_key(|p| std::cmp::Reverse(file_name(p)));
    roots.extend(versioned);
    roots
}

fn toolkit_lib_dirs(root: &Path) -> Vec<PathBuf> {
    ["lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"].iter().map(|d| root.join(d)).collect()
}

/// `<site>/nvidia/<pkg>/<sub>` for every wheel layout (`cu13` since CUDA 13,
/// `cuda_nvrtc`/`cuda_nvcc` before) under every place wheels may be installed.
fn wheel_dirs(sub: &str) -> Vec<PathBuf> {
    let pkgs = ["cu13", "cuda_nvrtc", "cuda_nvcc", "cu12"];
    site_dirs()
        .into_iter()
        .flat_map(|s| pkgs.iter().map(move |p| s.join("nvidia").join(p).join(sub)))
        .filter(|d| d.is_dir())
        .collect()
}

/// Folders that may hold a `nvidia/` wheel tree: the repository's `.cache/nvidia`
/// (above the executable, as in `target/release/` or the `.gpu/` layout, or above
/// the working directory, as for tests and build scripts), then Python
/// site-packages. Not the folder this was built in: a binary copied elsewhere must
/// not depend on the build machine's files.
pub fn site_dirs() -> Vec<PathBuf> {
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        bases.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        bases.extend(cwd.ancestors().take(4).map(Path::to_path_buf));
    }
    let mut out: Vec<PathBuf> = bases.iter().map(|b| b.join(".cache/nvidia")).collect();
    if let Some(pp) = std::env::var_os("PYTHONPATH") {
        out.extend(std::env::split_paths(&pp));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut prefixes: Vec<PathBuf> =
        ["VIRTUAL_ENV", "CONDA_PREFIX"].iter().filter_map(std::env::var_os).map(PathBuf::from).collect();
    if let Some(h) = &home {
        prefixes.push(h.join(".local"));
        prefixes.extend(list(&h.join(".pyenv/versions")));
    }
    prefixes.extend(["/usr/local", "/usr", "/opt/conda"].map(PathBuf::from));
    for prefix in prefixes {
        for py in list(&prefix.join("lib")).into_iter().filter(|p| file_name(p).starts_with("python3")) {
            out.push(py.join("site-packages"));
            out.push(py.join("dist-packages"));
        }
    }
    out.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    let mut seen = Vec::new();
    out.retain(|p| {
        p.is_dir() && !seen.contains(p) && {
            seen.push(p.clone());
            true
        }
    });
    out
}

/// Entries of `dir` (empty when unreadable).
fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn so_major_orders_versions() {
        assert_eq!(so_major("libnvrtc.so.13"), 13);
        assert_eq!(so_major("libnvrtc.so.12.4.99"), 12);
        assert_eq!(so_major("libnvrtc.so"), -1);
    }
}
