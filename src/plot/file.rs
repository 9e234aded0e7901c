//! Writing result files so that an interrupted run never leaves a half-written file
//! under the final name: write a temporary file next to it, then rename.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder and a
/// rename (atomic on one file system). The file is not synced: the rename protects
/// against the process being stopped, which is what matters for outputs that can be
/// regenerated.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path)?;
    if let Err(e) = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path)) {
        // Best effort: the temporary file is ours and useless now.
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Encodes 8-bit pixels (`color`: L8 or Rgb8) as PNG and writes them atomically.
pub fn write_png(path: &Path, pixels: &[u8], width: u32, height: u32, color: ExtendedColorType) -> Result<()> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(pixels, width, height, color)
        .map_err(|e| Error::Data { path: path.to_path_buf(), reason: format!("cannot encode PNG: {e}") })?;
    write_atomic(path, &bytes)
}

/// A name next to `path`, unique within this process and among processes.
fn temp_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let file = path
        .file_name()
        .ok_or_else(|| Error::Data { path: path.to_path_buf(), reason: "is not a file path".into() })?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{file}.tmp.{}.{n}", std::process::id())))
}
