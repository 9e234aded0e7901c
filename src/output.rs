//! Every file any command writes goes through here, so that nothing is lost or
//! destroyed on the way:
//!
//! - A regular file (or a path that does not exist yet) is written to a temporary
//!   name in the same folder and renamed over the target, so a reader, a crash or a
//!   full disk never leaves a half-written file under the final name. Checkpoints
//!   ([`Sync::Durable`]) are also fsynced before the rename, and the folder after
//!   it, so the rename survives a power cut.
//! - Anything else is written in place, never renamed over: a character or block
//!   device (`/dev/null`: replacing it would break it for every process on the
//!   machine), a FIFO (its reader gets the bytes), a symlink (its target is
//!   written, atomically when that is a regular file; the link stays).
//! - An output that is one of the command's own inputs (the same file by device and
//!   inode, so `./x`, `x` and a hard link all count) is refused: [`refuse_inputs`].
//! - Temporary files are named `.<name>.tmp.<pid>.<n>`; those of a process that no
//!   longer runs (killed, or stopped by a full disk) are removed by the next run that
//!   writes in that folder: [`remove_stale_temps`].

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Whether a write must survive a power cut once it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// Renamed into place, not fsynced: outputs that can be regenerated (masks,
    /// plots, reports). A stopped process still never leaves a partial file.
    Rename,
    /// Fsynced before the rename and the folder after it: checkpoints, caches.
    Durable,
}

/// Writes `bytes` to `path` (see the module doc for how).
pub fn write(path: &Path, bytes: &[u8], sync: Sync) -> Result<()> {
    write_with(path, sync, |w| w.write_all(bytes))
}

/// Writes what `fill` writes to `path`, buffered (see the module doc for how). For
/// large outputs (dataset caches, images) that should not be built in memory first.
pub fn write_with(
    path: &Path,
    sync: Sync,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => replace(path, sync, None, fill),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.is_file() => replace(path, sync, Some(m.permissions()), fill),
        Ok(m) if m.is_dir() => {
            Err(Error::Output { path: path.to_path_buf(), reason: "is a folder, not a file".into() })
        }
        Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(path) {
            // A link to a regular file: replace the target, keep the link.
            Ok(target) if fs::metadata(&target).is_ok_and(|t| t.is_file()) => {
                let perms = fs::metadata(&target).ok().map(|t| t.permissions());
                replace(&target, sync, perms, fill)
            }
            _ => in_place(path, fill),
        },
        Ok(_) => in_place(path, fill),
    }
}

/// Copies `src` to `dst` the same way (one checkpoint to the name of another).
pub fn copy(src: &Path, dst: &Path, sync: Sync) -> Result<()> {
    let mut from = File::open(src).map_err(|e| Error::io(src, e))?;
    let mut read_error = None;
    let written =
        write_with(dst, sync, |w| std::io::copy(&mut from, w).map(|_| ()).inspect_err(|e| read_error = Some(e.kind())));
    match (written, read_error) {
        (Err(Error::Io { source, .. }), Some(_)) => Err(Error::io(src, source)),
        (r, _) => r,
    }
}

/// Writes a regular file (or a new one) through a temporary name and a rename.
fn replace(
    path: &Path,
    sync: Sync,
    perms: Option<fs::Permissions>,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Some(p) = perms {
            // Replacing a file keeps its permissions.
            file.set_permissions(p)?;
        }
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        if sync == Sync::Durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, path)?;
        if sync == Sync::Durable {
            sync_dir(path)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Best effort: the temporary file is ours and useless now.
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes into an existing special file (device, FIFO, dangling or special link)
/// without replacing it. A FIFO blocks here until it has a reader, as a user who
/// gives one expects.
fn in_place(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    let result = (|| {
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        w.flush()
    })();
    result.map_err(|e| Error::io(path, e))
}

/// Fsyncs the folder holding `path`, so a rename into it is durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(folder(path))?.sync_all()
}

/// The folder a file path is in (`.` for a bare name).
pub fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A name next to `path`, unique within this process and among processes (same
/// folder, so the rename cannot cross file systems): `.<name>.tmp.<pid>.<n>`.
fn temp_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::Output { path: path.to_path_buf(), reason: "is not a file path".into() })?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id())))
}

/// The process id in a temporary name of ours, if `name` is one.
fn temp_owner(name: &str) -> Option<u32> {
    let (head, tail) = name.rsplit_once(".tmp.")?;
    let (pid, n) = tail.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (head.starts_with('.') && head.len() > 1 && digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Whether process `pid` runs. Without `/proc` (not Linux) every process counts as
/// running, so nothing is removed that might be in use.
fn running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Removes the temporary files that processes no longer running left in `dir`
/// (see the module doc); returns how many. Errors are ignored: this is cleaning up.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else { continue };
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if regular && pid != std::process::id() && !running(pid) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// True when `a` and `b` are the same existing file (same device and inode, so any
/// spelling of the path, a symlink or a hard link all match).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Refuses `output` (the value of flag `flag`) when it is one of `inputs` (flag,
/// path) of the same command.
pub fn refuse_inputs(flag: &str, output: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    for (input_flag, input) in inputs {
        if same_file(output, input) {
            return Err(Error::Output {
                path: output.to_path_buf(),
                reason: format!("{flag} is the same file as {input_flag} {}; write elsewhere", input.display()),
            });
        }
    }
    Ok(())
}

/// What `path` is (following symlinks), for messages: `a FIFO`, `a device`, ….
pub fn kind(path: &Path) -> &'static str {
    match fs::metadata(path).map(|m| m.file_type()) {
        Ok(t) if t.is_dir() => "a folder",
        Ok(t) if t.is_file() => "a regular file",
        Ok(t) if t.is_fifo() => "a FIFO",
        Ok(t) if t.is_char_device() || t.is_block_device() => "a device",
        Ok(t) if t.is_socket() => "a socket",
        Ok(_) => "a special file",
        Err(_) => "missing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised() {
        assert_eq!(temp_owner(".last.safetensors.tmp.1234.0"), Some(1234));
        assert_eq!(temp_owner(".metrics.csv.tmp.99.12"), Some(99));
        for not_ours in ["last.safetensors", ".tmp.1.2", "x.tmp.1.2", ".a.tmp.1", ".a.tmp.1.x", ".a.tmp..1"] {
            assert_eq!(temp_owner(not_ours), None, "{not_ours}");
        }
        let p = temp_path(Path::new("dir/last.safetensors")).unwrap();
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(temp_owner(name), Some(std::process::id()));
        assert_eq!(p.parent(), Some(Path::new("dir")));
    }
}
