//! One synthetic dermoscopy image: skin, an irregular pigmented lesion, the chosen
//! attributes (see `patterns`), then the non-attribute distractors real images have —
//! hairs across everything and the dark circular corners of a dermoscope's field of
//! view — and finally sensor grain and 8-bit quantisation.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::paint::{mix, smoothstep, vary, Blob, Canvas, Mask, Rgb, ValueNoise};
use super::patterns;

/// The pigmented lesion: its shape, and every pixel's polar coordinates in the shape's
/// frame (computed once; the attributes are placed relative to them).
pub(crate) struct Lesion {
    pub blob: Blob,
    /// Normalised radius per pixel: < 1 inside the lesion.
    pub rho: Vec<f32>,
    /// Polar angle per pixel, in the blob's frame.
    pub theta: Vec<f32>,
}

/// A rendered scene: RGB bytes and masks (0/255), row-major, `w`x`h`.
pub(crate) struct Scene {
    pub rgb: Vec<u8>,
    pub masks: [Vec<u8>; 5],
    pub lesion: Vec<u8>,
}

/// Renders one `w`x`h` scene showing the `present` attributes, every random choice
/// taken from `rng`.
pub(crate) fn render(rng: &mut ChaCha8Rng, w: usize, h: usize, present: [bool; 5]) -> Scene {
    // Pattern sizes scale with the image so a scene looks the same at any resolution.
    let s = w.min(h) as f32 / 256.0;
    let mut canvas = skin(rng, w, h, s);
    let lesion = lesion(rng, &mut canvas, s);
    let mut masks = patterns::draw(rng, &mut canvas, &lesion, s, present);
    if rng.gen_bool(0.3) {
        hairs(rng, &mut canvas, s);
    }
    if rng.gen_bool(0.25) {
        vignette(rng, &mut canvas, &mut masks, s);
    }
    // Luminance grain, one draw per pixel.
    let rgb = canvas
        .px
        .iter()
        .flat_map(|&c| {
            let g = rng.gen_range(-0.018f32..0.018);
            c.map(|v| ((v + g).clamp(0.0, 1.0) * 255.0).round() as u8)
        })
        .collect();
    let lesion_mask = lesion.rho.iter().map(|&r| if r < 1.0 { 255 } else { 0 }).collect();
    Scene { rgb, masks: masks.map(|m| m.to_bytes()), lesion: lesion_mask }
}

/// Warm beige-pink skin with low-frequency colour variation and fine texture.
fn skin(rng: &mut ChaCha8Rng, w: usize, h: usize, s: f32) -> Canvas {
    let r: f32 = rng.gen_range(0.80..0.95);
    let base: Rgb = [r, r * rng.gen_range(0.72..0.82), r * rng.gen_range(0.60..0.72)];
    let side = w.min(h) as f32;
    let light = ValueNoise::new(rng, w, h, 0.45 * side);
    let redness = ValueNoise::new(rng, w, h, 0.3 * side);
    let texture = ValueNoise::new(rng, w, h, 3.0 * s);
    let mut canvas = Canvas::new(w, h, base);
    for (i, px) in canvas.px.iter_mut().enumerate() {
        let (x, y) = ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
        let l = 1.0 + 0.06 * light.at(x, y) + 0.025 * texture.at(x, y);
        let red = 0.04 * redness.at(x, y);
        *px = [base[0] * l, base[1] * l * (1.0 - red), base[2] * l * (1.0 - red)];
    }
    canvas
}

/// Paints an irregular brown lesion, darker towards its centre, mottled, with a soft
/// border, spanning 30–70% of the short side; returns its geometry.
fn lesion(rng: &mut ChaCha8Rng, canvas: &mut Canvas, s: f32) -> Lesion {
    let (w, h) = (canvas.w, canvas.h);
    let side = w.min(h) as f32;
    let cx = w as f32 * 0.5 + rng.gen_range(-0.1..0.1) * side;
    let cy = h as f32 * 0.5 + rng.gen_range(-0.1..0.1) * side;
    let radius = 0.5 * side * rng.gen_range(0.30..0.70);
    let irregularity = rng.gen_range(0.1..0.3);
    let blob = Blob::random(rng, cx, cy, radius, irregularity);
    let centre = vary(rng, [0.33, 0.19, 0.13], 0.8, 1.2);
    let edge = vary(rng, [0.60, 0.42, 0.32], 0.9, 1.08);
    // Pigment is uneven at two scales: broad blotches and a finer mottle.
    let blotches = ValueNoise::new(rng, w, h, 0.25 * blob.radius());
    let mottle = ValueNoise::new(rng, w, h, 7.0 * s);
    // Border softness as a fraction of the radius: a few pixels of fade.
    let soft = (rng.gen_range(1.5..5.0) * s).max(0.8) / blob.radius();
    let opacity = rng.gen_range(0.9..1.0);
    let (mut rho, mut theta) = (vec![0.0; w * h], vec![0.0; w * h]);
    for (i, px) in canvas.px.iter_mut().enumerate() {
        let (x, y) = ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
        (rho[i], theta[i]) = blob.polar(x, y);
        let alpha = opacity * (1.0 - smoothstep(1.0 - soft, 1.0 + soft, rho[i]));
        if alpha > 0.0 {
            let t = (smoothstep(0.0, 1.0, rho[i]) + 0.25 * blotches.at(x, y)).clamp(0.0, 1.0);
            let colour = mix(centre, edge, t).map(|c| c * (1.0 + 0.06 * mottle.at(x, y)));
            *px = mix(*px, colour, alpha);
        }
    }
    Lesion { blob, rho, theta }
}

/// One to five thin dark gently curved hairs crossing the image (not an attribute:
/// masks are unchanged, as in ISIC's annotations).
fn hairs(rng: &mut ChaCha8Rng, canvas: &mut Canvas, s: f32) {
    let (w, h) = (canvas.w as f32, canvas.h as f32);
    let border_point = |rng: &mut ChaCha8Rng, side: usize| match side {
        0 => (rng.gen_range(0.0..w), 0.0),
        1 => (w, rng.gen_range(0.0..h)),
        2 => (rng.gen_range(0.0..w), h),
        _ => (0.0, rng.gen_range(0.0..h)),
    };
    for _ in 0..rng.gen_range(1..=5) {
        // A quadratic Bezier between two different borders, bowed sideways by at most
        // a third of its length (more would make loops, which hairs rarely do).
        let side = rng.gen_range(0..4);
        let p0 = border_point(rng, side);
        let other = (side + rng.gen_range(1..4)) % 4;
        let p2 = border_point(rng, other);
        let bow: f32 = rng.gen_range(-0.33..0.33);
        let p1 = (0.5 * (p0.0 + p2.0) - bow * (p2.1 - p0.1), 0.5 * (p0.1 + p2.1) + bow * (p2.0 - p0.0));
        let points: Vec<(f32, f32)> = (0..=24)
            .map(|k| {
                let t = k as f32 / 24.0;
                let (a, b, c) = ((1.0 - t) * (1.0 - t), 2.0 * t * (1.0 - t), t * t);
                (a * p0.0 + b * p1.0 + c * p2.0, a * p0.1 + b * p1.1 + c * p2.1)
            })
            .collect();
        let width = (rng.gen_range(0.8..1.8) * s).max(0.5);
        canvas.stroke(&points, width, width, vary(rng, [0.14, 0.10, 0.08], 0.6, 1.4), 0.85);
    }
}

/// Darkens everything outside a centred circle that cuts the corners, like the field
/// of view of a contact dermoscope; masks are cleared where it is dark.
fn vignette(rng: &mut ChaCha8Rng, canvas: &mut Canvas, masks: &mut [Mask; 5], s: f32) {
    let (w, h) = (canvas.w as f32, canvas.h as f32);
    // Short of the half-diagonal, so the corners go dark (on a square image, only
    // the corners: 0.8 of the half-diagonal is past the half-side).
    let radius = 0.5 * w.hypot(h) * rng.gen_range(0.8..0.93);
    let soft = (rng.gen_range(3.0..10.0) * s).max(1.0);
    let black = vary(rng, [0.03, 0.025, 0.02], 0.5, 1.5);
    for (i, px) in canvas.px.iter_mut().enumerate() {
        let (x, y) = ((i % canvas.w) as f32 + 0.5, (i / canvas.w) as f32 + 0.5);
        let dark = smoothstep(radius - soft, radius + soft, (x - 0.5 * w).hypot(y - 0.5 * h));
        if dark > 0.0 {
            *px = mix(*px, black, dark);
            if dark > 0.5 {
                masks.iter_mut().for_each(|m| m.px[i] = false);
            }
        }
    }
}
