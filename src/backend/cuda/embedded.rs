//! The kernel images embedded at build time (`build/aot.rs`; rules in `embed.rs`):
//! which NVRTC made them, the table, and the images decompressed on demand.

use std::io::Read as _;

pub use super::embed::{Image, Kind};

// `MADE_BY` and `IMAGES`, from build.rs.
include!(concat!(env!("OUT_DIR"), "/embedded_kernels.rs"));

/// The embedded images of `module` compiled from sources hashing to `source_hash`
/// (none when the module is not embedded, or when its source is not the one this
/// binary was built from, as for a test's own kernel files).
pub fn images(module: &str, source_hash: u64) -> impl Iterator<Item = &'static Image> + '_ {
    IMAGES.iter().filter(move |i| i.module == module && i.source_hash == source_hash)
}

/// Every embedded image of `module`, whatever its source.
pub fn images_of(module: &str) -> impl Iterator<Item = &'static Image> + '_ {
    IMAGES.iter().filter(move |i| i.module == module)
}

/// The image's bytes (a cubin, or PTX text without a NUL), decompressed.
pub fn bytes(image: &Image) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(image.zlib.len() * 4);
    flate2::read::ZlibDecoder::new(image.zlib)
        .read_to_end(&mut out)
        .map_err(|e| format!("embedded image {} of {}.cu is corrupt: {e}", image.target(), image.module))?;
    Ok(out)
}
