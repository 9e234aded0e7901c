//! Opening image files so that a damaged one is never taken for a whole one: the
//! JPEG decoder fills a file cut short with grey and reports success, so a JPEG
//! must have its end-of-image marker after its scan data, and a PNG its `IEND`
//! chunk, before it is decoded. Every image read (training data, prediction inputs,
//! masks to score, overlays) goes through [`decode`].

use std::io::Cursor;
use std::path::Path;

use image::DynamicImage;

/// Why an image could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The file does not exist.
    Missing,
    /// It exists but cannot be read (permissions, a folder, a special file).
    Unreadable(String),
    /// It was read but is not a whole image of a known format.
    Corrupt(String),
}

/// Largest image file read (a 100-megapixel PNG of noise is about 300 MB).
const MAX_BYTES: u64 = 1 << 30;

/// Reads and decodes the image at `path` (format from the content), refusing
/// truncated JPEG and PNG files. The decoder's own memory limit applies.
pub fn decode(path: &Path) -> Result<DynamicImage, Failure> {
    let bytes = read(path)?;
    if let Some(why) = truncated(&bytes) {
        return Err(Failure::Corrupt(format!("the file is truncated ({why}; {} bytes)", bytes.len())));
    }
    let reader = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Failure::Unreadable(e.to_string()))?;
    reader.decode().map_err(|e| Failure::Corrupt(e.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Failure::Missing,
        _ => Failure::Unreadable(e.to_string()),
    })?;
    if !meta.is_file() {
        return Err(Failure::Unreadable(format!("is {}, not a regular file", crate::output::kind(path))));
    }
    if meta.len() > MAX_BYTES {
        return Err(Failure::Unreadable(format!("is {} bytes, more than an image file may have", meta.len())));
    }
    // Never more than the limit, even if the file grows while it is read.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_BYTES), &mut bytes))
        .map_err(|e| Failure::Unreadable(e.to_string()))?;
    Ok(bytes)
}

/// Why `bytes` are a cut-short JPEG or PNG, if they are.
pub fn truncated(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return jpeg_truncated(bytes);
    }
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < PNG.len() && bytes.len() >= 4 && PNG.starts_with(bytes) {
        return Some("it ends inside the PNG signature");
    }
    if bytes.starts_with(PNG) {
        // The last chunk, always these 12 bytes; a file cut anywhere before its end
        // lacks it (trailing bytes after it are tolerated, up to 4 KiB).
        const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
        let whole = bytes.windows(12).rev().take(4096).any(|w| w == IEND);
        return (!whole).then_some("no IEND chunk at the end");
    }
    None
}

/// A JPEG is whole when an end-of-image marker (FF D9) follows its first scan.
/// Segments before the scan are skipped by their lengths, so a thumbnail embedded in
/// the EXIF data (with its own markers) is not mistaken for the image.
fn jpeg_truncated(b: &[u8]) -> Option<&'static str> {
    let mut i = 2;
    loop {
        // Markers may be preceded by fill bytes (FF).
        while b.get(i) == Some(&0xFF) && b.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        match (b.get(i), b.get(i + 1)) {
            (Some(0xFF), Some(0xDA)) => break,
            (Some(0xFF), Some(0xD9)) => return Some("an end-of-image marker before any scan data"),
            (Some(0xFF), Some(m)) if (0xD0..=0xD7).contains(m) || *m == 0x01 => i += 2,
            (Some(0xFF), Some(_)) => match (b.get(i + 2), b.get(i + 3)) {
                (Some(&hi), Some(&lo)) => i += 2 + u16::from_be_bytes([hi, lo]) as usize,
                _ => return Some("it ends inside a segment header"),
            },
            (None, _) | (_, None) => return Some("it ends before its scan data"),
            _ => return None, // Not where a marker should be: let the decoder say what is wrong.
        }
    }
    let scan = &b[i..];
    (!scan.windows(2).any(|w| w == [0xFF, 0xD9])).then_some("no end-of-image marker after the scan data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_cut_short_images() {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img).unwrap();
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        for whole in [&jpeg, &png] {
            assert_eq!(truncated(whole), None);
            for cut in [whole.len() / 3, whole.len() - 2, 5] {
                assert!(truncated(&whole[..cut]).is_some(), "cut at {cut} of {}", whole.len());
            }
        }
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(&[0; 100]);
        assert_eq!(truncated(&trailing), None, "bytes after the end marker are allowed");
        assert_eq!(truncated(b"GIF89a"), None);
    }
}
