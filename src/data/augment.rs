//! Training-time augmentation as in the paper: random horizontal and vertical flips,
//! rotation, scale and translation (one affine warp), then brightness and saturation
//! jitter. Image and masks go through the SAME warp: the source coordinate of every
//! output pixel is computed once and read bilinearly for the image and with nearest
//! neighbour for the packed masks (one byte per pixel, bit `k` = attribute `k`), so
//! masks stay binary and aligned with the image.
//!
//! Choices:
//! - rotation: any angle by default (`max_rotation_deg` = 180): dermoscopic images have
//!   no preferred orientation. Multiples of 90° are exact (no interpolation blur).
//! - scale uniform in 0.8–1.2 (> 1 zooms in), translation up to ±10% of the side on
//!   each axis, brightness and saturation factors uniform in 1 ± 0.2.
//! - border: reflect-101 (`dcba|abcd|dcb`, OpenCV's `BORDER_REFLECT_101`, the default
//!   of the albumentations transform the paper's code base used), for the image and
//!   the masks alike, so no black corners that the model could learn as a cue.
//!
//! imageproc's `warp` is not used: it offers only a constant border and would compute
//! the mapping twice (image, masks); a direct 2x2 inverse map is simpler and cheap
//! (8 images of 128x128 in about 5 ms on one core of the dev profile, opt-level 1).
//!
//! Deterministic: [`Transform::sample`] draws a fixed number of values in a fixed order
//! from the given RNG, and [`Transform::apply`] uses no randomness.

use rand::Rng;

use crate::error::{Error, Result};

/// Ranges for the random transforms; [`AugmentParams::default`] is the paper's set,
/// [`AugmentParams::identity`] changes nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentParams {
    /// Probability of a horizontal flip, and (independently) of a vertical one.
    pub flip_prob: f32,
    /// Rotation uniform in ±this many degrees.
    pub max_rotation_deg: f32,
    /// Scale factor uniform in `[min, max]`; above 1 zooms in.
    pub scale: (f32, f32),
    /// Shift uniform in ±this fraction of the side, per axis.
    pub max_translation: f32,
    /// Brightness factor uniform in `1 ± brightness`.
    pub brightness: f32,
    /// Saturation factor uniform in `1 ± saturation` (0 is gray, 1 unchanged).
    pub saturation: f32,
}

impl Default for AugmentParams {
    fn default() -> Self {
        AugmentParams {
            flip_prob: 0.5,
            max_rotation_deg: 180.0,
            scale: (0.8, 1.2),
            max_translation: 0.1,
            brightness: 0.2,
            saturation: 0.2,
        }
    }
}

impl AugmentParams {
    /// Parameters under which every sampled transform is the identity.
    pub fn identity() -> Self {
        AugmentParams {
            flip_prob: 0.0,
            max_rotation_deg: 0.0,
            scale: (1.0, 1.0),
            max_translation: 0.0,
            brightness: 0.0,
            saturation: 0.0,
        }
    }
}

/// One concrete augmentation. The geometric part maps an input pixel `p` (centred
/// coordinates) to `scale * R(rotation) * F * p + translate * size`, with `F` the flips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Mirror left–right.
    pub flip_h: bool,
    /// Mirror top–bottom.
    pub flip_v: bool,
    /// Rotation in degrees (clockwise on screen, as y points down).
    pub rotation_deg: f32,
    /// Zoom factor.
    pub scale: f32,
    /// Shift as a fraction of the side, (x, y).
    pub translate: (f32, f32),
    /// Multiplies every channel.
    pub brightness: f32,
    /// Scales the distance of each pixel from its gray value.
    pub saturation: f32,
}

impl Transform {
    /// The transform that changes nothing.
    pub const IDENTITY: Transform = Transform {
        flip_h: false,
        flip_v: false,
        rotation_deg: 0.0,
        scale: 1.0,
        translate: (0.0, 0.0),
        brightness: 1.0,
        saturation: 1.0,
    };

    /// Draws a transform from `params` (always 8 draws, in field order).
    pub fn sample(params: &AugmentParams, rng: &mut (impl Rng + ?Sized)) -> Self {
        // `lo + (hi - lo) * u` rather than `gen_range`, which panics on an empty range.
        let mut uniform = |lo: f32, hi: f32| lo + (hi - lo) * rng.gen::<f32>();
        let flip_h = uniform(0.0, 1.0) < params.flip_prob;
        let flip_v = uniform(0.0, 1.0) < params.flip_prob;
        let r = params.max_rotation_deg;
        let t = params.max_translation;
        Transform {
            flip_h,
            flip_v,
            rotation_deg: uniform(-r, r),
            scale: uniform(params.scale.0, params.scale.1).max(1e-3),
            translate: (uniform(-t, t), uniform(-t, t)),
            brightness: uniform(1.0 - params.brightness, 1.0 + params.brightness).max(0.0),
            saturation: uniform(1.0 - params.saturation, 1.0 + params.saturation).max(0.0),
        }
    }

    fn is_geometric_identity(&self) -> bool {
        !self.flip_h && !self.flip_v && self.rotation_deg == 0.0 && self.scale == 1.0 && self.translate == (0.0, 0.0)
    }

    /// Applies the transform to one `size`x`size` sample: `image` `[S][S][3]` RGB and
    /// `mask` `[S][S]` packed bits, into `out_image` and `out_mask` of the same shapes.
    pub fn apply(
        &self,
        size: usize,
        image: &[u8],
        mask: &[u8],
        out_image: &mut [u8],
        out_mask: &mut [u8],
    ) -> Result<()> {
        let px = size * size;
        for (name, len, want) in [
            ("image", image.len(), px * 3),
            ("mask", mask.len(), px),
            ("out_image", out_image.len(), px * 3),
            ("out_mask", out_mask.len(), px),
        ] {
            if len != want {
                return Err(Error::shape(format!("augment {name}"), want, len));
            }
        }
        if self.is_geometric_identity() {
            out_image.copy_from_slice(image);
            out_mask.copy_from_slice(mask);
        } else {
            self.warp(size, image, mask, out_image, out_mask);
        }
        jitter(out_image, self.brightness, self.saturation);
        Ok(())
    }

    /// The inverse map: output pixel centre → source coordinate, as a 2x2 matrix applied
    /// to (centred output − shift), plus the centre back.
    fn inverse(&self) -> [f32; 4] {
        let theta = (self.rotation_deg as f64).to_radians();
        // Snap tiny values so that multiples of 90° map pixel centres exactly.
        let snap = |v: f64| if v.abs() < 1e-9 { 0.0 } else { v };
        let (s, c) = (snap(theta.sin()), snap(theta.cos()));
        let fx = if self.flip_h { -1.0 } else { 1.0 };
        let fy = if self.flip_v { -1.0 } else { 1.0 };
        let k = 1.0 / self.scale as f64;
        // F * R(-theta) / scale, with R(-theta) = [[c, s], [-s, c]].
        [(fx * c * k) as f32, (fx * s * k) as f32, (-fy * s * k) as f32, (fy * c * k) as f32]
    }

    fn warp(&self, size: usize, image: &[u8], mask: &[u8], out_image: &mut [u8], out_mask: &mut [u8]) {
        let m = self.inverse();
        let n = size as i32;
        let half = size as f32 / 2.0;
        let (tx, ty) = (self.translate.0 * size as f32, self.translate.1 * size as f32);
        let row = size * 3;
        for y in 0..size {
            let dy = y as f32 + 0.5 - half - ty;
            let out_row = &mut out_image[y * row..(y + 1) * row];
            let mask_row = &mut out_mask[y * size..(y + 1) * size];
            for x in 0..size {
                let dx = x as f32 + 0.5 - half - tx;
                // Clamped so that absurd parameters cannot overflow the integer indices.
                let sx = (m[0] * dx + m[1] * dy + half - 0.5).clamp(-1e6, 1e6);
                let sy = (m[2] * dx + m[3] * dy + half - 0.5).clamp(-1e6, 1e6);
                // Nearest for the masks: never blends, so bits stay bits.
                let (nx, ny) = (reflect(floor(sx + 0.5), n), reflect(floor(sy + 0.5), n));
                mask_row[x] = mask[ny * size + nx];
                // Bilinear for the image (weights 1 and 0 at integer coordinates, so flips
                // and right angles copy pixels unchanged).
                let (x0, y0) = (floor(sx), floor(sy));
                let (wx, wy) = (sx - x0 as f32, sy - y0 as f32);
                let (xa, xb) = (reflect(x0, n) * 3, reflect(x0 + 1, n) * 3);
                let (ra, rb) = (reflect(y0, n) * row, reflect(y0 + 1, n) * row);
                let (p00, p01) = (&image[ra + xa..ra + xa + 3], &image[ra + xb..ra + xb + 3]);
                let (p10, p11) = (&image[rb + xa..rb + xa + 3], &image[rb + xb..rb + xb + 3]);
                let w = [(1.0 - wx) * (1.0 - wy), wx * (1.0 - wy), (1.0 - wx) * wy, wx * wy];
                for (ch, out) in out_row[x * 3..x * 3 + 3].iter_mut().enumerate() {
                    let v =
                        w[0] * p00[ch] as f32 + w[1] * p01[ch] as f32 + w[2] * p10[ch] as f32 + w[3] * p11[ch] as f32;
                    // Truncation after + 0.5 rounds; v is within [0, 255].
                    *out = (v + 0.5) as u8;
                }
            }
        }
    }
}

/// `v.floor() as i32` for |v| < 2^24 without a libm call: the baseline x86-64 target
/// has no rounding instruction, and this runs several times per pixel.
#[inline(always)]
fn floor(v: f32) -> i32 {
    let i = v as i32;
    i - ((i as f32) > v) as i32
}

/// Reflect-101 of index `i` into `0..n` (`n >= 1`): -1 → 1, n → n - 2.
#[inline(always)]
fn reflect(i: i32, n: i32) -> usize {
    // Most samples fall inside; keep the division off that path.
    if (0..n).contains(&i) {
        return i as usize;
    }
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let i = i.rem_euclid(period);
    (if i < n { i } else { period - i }) as usize
}

/// Brightness then saturation, in place on RGB bytes; a no-op when both factors are 1.
fn jitter(rgb: &mut [u8], brightness: f32, saturation: f32) {
    if brightness == 1.0 && saturation == 1.0 {
        return;
    }
    for px in rgb.chunks_exact_mut(3) {
        let [r, g, b] = [px[0], px[1], px[2]].map(|v| v as f32 * brightness);
        // ITU-R 601 luma, as torchvision's saturation adjustment uses.
        let gray = 0.299 * r + 0.587 * g + 0.114 * b;
        for (dst, v) in px.iter_mut().zip([r, g, b]) {
            // `+ 0.5` then truncation rounds (values are >= 0 after the clamp) without libm.
            *dst = ((gray + (v - gray) * saturation).clamp(0.0, 255.0) + 0.5) as u8;
        }
    }
}

/// Draws a transform from `params` and applies it, returning the new image and mask.
pub fn augment(
    size: usize,
    image: &[u8],
    mask: &[u8],
    params: &AugmentParams,
    rng: &mut (impl Rng + ?Sized),
) -> Result<(Vec<u8>, Vec<u8>)> {
    let (mut out_image, mut out_mask) = (vec![0u8; image.len()], vec![0u8; mask.len()]);
    Transform::sample(params, rng).apply(size, image, mask, &mut out_image, &mut out_mask)?;
    Ok((out_image, out_mask))
}
