//! Text in images without font files: the public-domain 8x8 bitmap font of the
//! `font8x8` crate, scaled by whole pixels (so it stays crisp).

use image::{Rgb, RgbImage};

/// Width and height of one glyph cell at scale 1, in pixels.
pub const GLYPH: u32 = 8;

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * GLYPH * scale
}

/// Draws `text` with its top-left corner at (`x`, `y`); each font pixel becomes a
/// `scale`×`scale` square. Characters outside ASCII are drawn as `?`; whatever
/// falls outside the image is clipped.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, color: Rgb<u8>) {
    let s = i64::from(scale.max(1));
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() { ch as usize } else { '?' as usize };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let x0 = x + i as i64 * 8 * s;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                // Bit 0 is the leftmost pixel of the row.
                if bits & (1 << col) != 0 {
                    fill(img, x0 + col * s, y + row as i64 * s, s, s, color);
                }
            }
        }
    }
}

/// Fills the rectangle at (`x`, `y`) of `w`×`h` pixels, clipped to the image.
pub fn fill(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, color: Rgb<u8>) {
    let (iw, ih) = (i64::from(img.width()), i64::from(img.height()));
    for py in y.max(0)..(y + h).min(ih) {
        for px in x.max(0)..(x + w).min(iw) {
            img.put_pixel(px as u32, py as u32, color);
        }
    }
}

/// Blends `color` over the rectangle with opacity `alpha` (0..1), clipped.
pub fn shade(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, color: Rgb<u8>, alpha: f32) {
    let (iw, ih) = (i64::from(img.width()), i64::from(img.height()));
    for py in y.max(0)..(y + h).min(ih) {
        for px in x.max(0)..(x + w).min(iw) {
            let p = img.get_pixel_mut(px as u32, py as u32);
            *p = blend(*p, color, alpha);
        }
    }
}

/// `under` with `over` laid on it at opacity `alpha`.
pub fn blend(under: Rgb<u8>, over: Rgb<u8>, alpha: f32) -> Rgb<u8> {
    let mix = |a: u8, b: u8| (f32::from(a) * (1.0 - alpha) + f32::from(b) * alpha).round().clamp(0.0, 255.0) as u8;
    Rgb([mix(under[0], over[0]), mix(under[1], over[1]), mix(under[2], over[2])])
}
