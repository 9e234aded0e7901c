//! Writing result files: PNGs encoded in memory and written through
//! [`crate::output`] (a temporary name and a rename; special files in place).

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use crate::error::{Error, Result};
use crate::output::{self, Sync};

/// Encodes 8-bit pixels (`color`: L8 or Rgb8) as PNG and writes them.
pub fn write_png(path: &Path, pixels: &[u8], width: u32, height: u32, color: ExtendedColorType) -> Result<()> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(pixels, width, height, color)
        .map_err(|e| Error::Data { path: path.to_path_buf(), reason: format!("cannot encode PNG: {e}") })?;
    output::write(path, &bytes, Sync::Rename)
}
