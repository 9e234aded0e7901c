//! What the machine has to give: memory available to this process and free disk
//! space, so that work too large for it is refused before it starts (with what it
//! needs and what there is) instead of exhausting the machine halfway through.
//!
//! Memory: `MemAvailable` of `/proc/meminfo`, lowered to what a cgroup limit leaves
//! (containers see the host's memory there). Disk: `statvfs`'s blocks available to
//! unprivileged users. Where a figure cannot be read (not Linux), it is `None` and
//! no check is made.

use std::path::Path;

use crate::error::{Error, Result};

/// Bytes as a person reads them: `805.3 MiB`, `61.5 GiB`.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Memory this process can still use, in bytes.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|k| k * 1024)
    };
    let mut avail = kib("MemAvailable:").or_else(|| kib("MemFree:"))?;
    // cgroup v2, then v1: a limit below the machine's memory is what counts.
    let read_u64 = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    for (limit, usage) in [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ] {
        if let (Some(l), Some(u)) = (read_u64(limit), read_u64(usage)) {
            avail = avail.min(l.saturating_sub(u));
            break;
        }
    }
    Some(avail)
}

/// Free disk space for unprivileged writes in the file system holding `path` (or,
/// when `path` does not exist yet, its nearest existing ancestor).
pub fn free_disk(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists() && !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    statvfs_available(existing)
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn statvfs_available(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    extern "C" {
        fn statvfs(path: *const std::ffi::c_char, buf: *mut u64) -> std::ffi::c_int;
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // `struct statvfs` on 64-bit Linux (glibc and musl) starts with f_bsize,
    // f_frsize, f_blocks, f_bfree, f_bavail, each 8 bytes; the rest (112 bytes in
    // all with glibc) fits the larger buffer given here.
    let mut buf = [0u64; 32];
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call, and
    // `buf` is writable and larger than any libc's `struct statvfs`.
    let rc = unsafe { statvfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    (rc == 0).then(|| buf[4].saturating_mul(buf[1]))
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn statvfs_available(_path: &Path) -> Option<u64> {
    None
}

/// Refuses reading `bytes` into memory for `what` when the machine has less.
pub fn check_memory(what: &str, bytes: u64) -> Result<()> {
    match available_memory() {
        Some(avail) if bytes > avail => Err(Error::Resources(format!(
            "{what} needs {} of memory but {} is available",
            fmt_bytes(bytes),
            fmt_bytes(avail)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_plausible() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 << 29), "1.5 GiB");
        if let Some(m) = available_memory() {
            assert!(m > 1 << 20, "{m}");
        }
        if let Some(d) = free_disk(&std::env::temp_dir().join("not/yet/there")) {
            assert!(d > 0);
        }
        assert!(check_memory("a test", 1 << 62).is_err() || available_memory().is_none());
    }
}
