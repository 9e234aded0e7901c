//! Overlays for people: the image with each predicted attribute drawn in its own
//! colour (a semi-transparent fill and an opaque outline) and a legend naming the
//! colours. Attributes with no predicted pixel are listed in grey with a hollow
//! swatch.

use std::path::Path;

use image::{ExtendedColorType, Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::metrics::{ATTRIBUTES, K};
use crate::plot::text::{blend, draw_text, fill, shade, text_width, GLYPH};

/// One colour per attribute, in [`ATTRIBUTES`] order, chosen to stand out from skin
/// and lesion tones and from each other: sky blue, magenta, yellow, green, red.
pub const COLORS: [[u8; 3]; K] = [[0, 170, 255], [255, 0, 220], [255, 235, 0], [0, 230, 90], [255, 60, 40]];

/// Opacity of the fill over the image.
const FILL_ALPHA: f32 = 0.35;

/// `rgb` with the five `masks` (each `width·height` bytes, non-zero = attribute
/// present, row-major) drawn over it, and the legend.
pub fn render_overlay(rgb: &RgbImage, masks: &[Vec<u8>]) -> Result<RgbImage> {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if masks.len() != K || masks.iter().any(|m| m.len() != w * h) {
        let got: Vec<usize> = masks.iter().map(Vec::len).collect();
        return Err(Error::shape("render_overlay: masks", format!("{K} masks of {w}x{h}"), format!("lengths {got:?}")));
    }
    let mut out = rgb.clone();
    // Outlines scale with the image so that they stay visible on large photographs.
    let thickness = (w.min(h) / 400).max(1);
    for (mask, color) in masks.iter().zip(COLORS) {
        let color = Rgb(color);
        for (p, &m) in out.pixels_mut().zip(mask.iter()) {
            if m != 0 {
                *p = blend(*p, color, FILL_ALPHA);
            }
        }
        for (x, y) in dilate(&outline(mask, w, h), w, h, thickness) {
            out.put_pixel(x as u32, y as u32, color);
        }
    }
    let (bw, bh, scale) = legend_size(out.width().min(out.height()));
    // On small images an inset legend would hide much of the lesion: put it in a
    // panel beside the image instead.
    if (bw * bh) as f64 > 0.15 * (w * h) as f64 {
        let mut wide = RgbImage::from_pixel(out.width() + bw as u32, out.height().max(bh as u32), Rgb([0, 0, 0]));
        image::imageops::replace(&mut wide, &out, 0, 0);
        draw_legend(&mut wide, masks, i64::from(out.width()), scale);
        return Ok(wide);
    }
    draw_legend(&mut out, masks, 0, scale);
    Ok(out)
}

/// Writes [`render_overlay`] as a PNG, atomically.
pub fn write_overlay(path: &Path, rgb: &RgbImage, masks: &[Vec<u8>]) -> Result<()> {
    let img = render_overlay(rgb, masks)?;
    crate::plot::write_png(path, img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8)
}

/// Mask pixels with a 4-neighbour outside the mask (the image border does not count).
fn outline(mask: &[u8], w: usize, h: usize) -> Vec<(usize, usize)> {
    let on = |x: usize, y: usize| mask[y * w + x] != 0;
    let mut edge = Vec::new();
    for y in 0..h {
        for x in 0..w {
            if on(x, y)
                && ((x > 0 && !on(x - 1, y))
                    || (x + 1 < w && !on(x + 1, y))
                    || (y > 0 && !on(x, y - 1))
                    || (y + 1 < h && !on(x, y + 1)))
            {
                edge.push((x, y));
            }
        }
    }
    edge
}

/// The pixels within a square of side `t` around each of `points` (clipped).
fn dilate(points: &[(usize, usize)], w: usize, h: usize, t: usize) -> Vec<(usize, usize)> {
    if t <= 1 {
        return points.to_vec();
    }
    let (lo, hi) = ((t - 1) / 2, t / 2);
    let mut hit = vec![false; w * h];
    for &(x, y) in points {
        for yy in y.saturating_sub(lo)..=(y + hi).min(h - 1) {
            for xx in x.saturating_sub(lo)..=(x + hi).min(w - 1) {
                hit[yy * w + xx] = true;
            }
        }
    }
    hit.iter().enumerate().filter(|(_, &on)| on).map(|(i, _)| (i % w, i / w)).collect()
}

/// Width, height and text scale of the legend for an image whose short side is `short`.
fn legend_size(short: u32) -> (i64, i64, u32) {
    // 2x text (16 px) on ordinary photographs, larger on big ones, 1x on thumbnails.
    let scale = if short < 300 { 1 } else { (short / 500).max(2) };
    let (bw, bh) = legend_box(scale);
    (bw, bh, scale)
}

/// Width and height of the legend at text `scale`.
fn legend_box(scale: u32) -> (i64, i64) {
    let glyph = i64::from(GLYPH) * i64::from(scale);
    let (pad, gap) = (glyph / 2, glyph / 2);
    let name_w = ATTRIBUTES.iter().map(|a| text_width(a, scale) as i64).max().unwrap_or(0);
    (pad + glyph + gap + name_w + pad, pad + (glyph + gap) * K as i64 - gap + pad)
}

/// A dark box with its left edge at `x0`: a colour swatch and the name of each attribute.
fn draw_legend(img: &mut RgbImage, masks: &[Vec<u8>], x0: i64, scale: u32) {
    let glyph = i64::from(GLYPH) * i64::from(scale);
    let (pad, gap) = (glyph / 2, glyph / 2);
    let row = glyph + gap;
    let (bw, bh) = legend_box(scale);
    shade(img, x0, 0, bw, bh, Rgb([0, 0, 0]), 0.6);
    let pad_x = x0 + pad;
    for (k, (name, color)) in ATTRIBUTES.iter().zip(COLORS).enumerate() {
        let y = pad + row * k as i64;
        let present = masks[k].iter().any(|&m| m != 0);
        fill(img, pad_x, y, glyph, glyph, Rgb(color));
        if !present {
            // A hollow swatch: this colour appears nowhere in the image.
            let border = (glyph / 6).max(1);
            shade(img, pad_x + border, y + border, glyph - 2 * border, glyph - 2 * border, Rgb([0, 0, 0]), 1.0);
        }
        let ink = if present { Rgb([255, 255, 255]) } else { Rgb([140, 140, 140]) };
        draw_text(img, pad_x + glyph + gap, y, name, scale, ink);
    }
}
