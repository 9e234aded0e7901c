//! Drawing primitives for the synthetic scenes: an f32 RGB canvas with anti-aliased
//! discs and strokes, binary masks, smooth random fields (value noise) and irregular
//! blob shapes (perturbed ellipses). Everything takes its randomness from the caller's
//! RNG, so a scene is a pure function of its seed.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Linear RGB in [0, 1] (before quantisation; values may stray slightly outside).
pub(crate) type Rgb = [f32; 3];

/// Hermite step from 0 at `e0` to 1 at `e1` (either order).
pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// `a` at t = 0, `b` at t = 1.
pub(crate) fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

/// Channel-wise product.
pub(crate) fn mul(a: Rgb, b: Rgb) -> Rgb {
    [a[0] * b[0], a[1] * b[1], a[2] * b[2]]
}

/// `c` scaled by `f`.
pub(crate) fn scale(c: Rgb, f: f32) -> Rgb {
    [c[0] * f, c[1] * f, c[2] * f]
}

/// A colour near `c`, each channel scaled by the same random factor in `lo..hi`.
pub(crate) fn vary(rng: &mut ChaCha8Rng, c: Rgb, lo: f32, hi: f32) -> Rgb {
    scale(c, rng.gen_range(lo..hi))
}

/// The image being painted, row-major, with a scratch coverage buffer so that a
/// polyline's overlapping segments blend once (max coverage), not once per segment.
pub(crate) struct Canvas {
    pub w: usize,
    pub h: usize,
    pub px: Vec<Rgb>,
    coverage: Vec<f32>,
}

impl Canvas {
    /// A `w`x`h` canvas filled with `fill`.
    pub fn new(w: usize, h: usize, fill: Rgb) -> Self {
        Canvas { w, h, px: vec![fill; w * h], coverage: vec![0.0; w * h] }
    }

    /// Pixel rows `y0..y1` and columns `x0..x1` covering `[x-r, x+r] x [y-r, y+r]`,
    /// clipped to the canvas.
    fn bbox(&self, xa: f32, ya: f32, xb: f32, yb: f32, r: f32) -> (usize, usize, usize, usize) {
        let clip = |v: f32, n: usize| (v.max(0.0) as usize).min(n);
        let x0 = clip((xa.min(xb) - r).floor(), self.w);
        let x1 = clip((xa.max(xb) + r).ceil() + 1.0, self.w);
        let y0 = clip((ya.min(yb) - r).floor(), self.h);
        let y1 = clip((ya.max(yb) + r).ceil() + 1.0, self.h);
        (x0, x1, y0, y1)
    }

    /// A filled disc of radius `r` with a one-pixel anti-aliased rim, blended with
    /// opacity `alpha`; `halo` widens the soft rim (for spots that fade out).
    pub fn disc(&mut self, cx: f32, cy: f32, r: f32, halo: f32, colour: Rgb, alpha: f32) {
        let soft = 0.5 + halo;
        let (x0, x1, y0, y1) = self.bbox(cx, cy, cx, cy, r + soft);
        for y in y0..y1 {
            for x in x0..x1 {
                let d = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
                let a = alpha * (1.0 - smoothstep(r - soft, r + soft, d));
                if a > 0.0 {
                    let i = y * self.w + x;
                    self.px[i] = mix(self.px[i], colour, a);
                }
            }
        }
    }

    /// A polyline whose width goes linearly from `w0` at the first point to `w1` at
    /// the last, anti-aliased, blended with opacity `alpha`.
    pub fn stroke(&mut self, points: &[(f32, f32)], w0: f32, w1: f32, colour: Rgb, alpha: f32) {
        if points.len() < 2 {
            return;
        }
        let segments = (points.len() - 1) as f32;
        let (mut ux0, mut ux1, mut uy0, mut uy1) = (self.w, 0, self.h, 0);
        for (k, pair) in points.windows(2).enumerate() {
            let ((xa, ya), (xb, yb)) = (pair[0], pair[1]);
            let hw_a = 0.5 * (w0 + (w1 - w0) * k as f32 / segments);
            let hw_b = 0.5 * (w0 + (w1 - w0) * (k + 1) as f32 / segments);
            let (x0, x1, y0, y1) = self.bbox(xa, ya, xb, yb, hw_a.max(hw_b) + 1.0);
            (ux0, ux1, uy0, uy1) = (ux0.min(x0), ux1.max(x1), uy0.min(y0), uy1.max(y1));
            let (dx, dy) = (xb - xa, yb - ya);
            let len2 = (dx * dx + dy * dy).max(1e-6);
            for y in y0..y1 {
                for x in x0..x1 {
                    let (px, py) = (x as f32 + 0.5 - xa, y as f32 + 0.5 - ya);
                    let t = ((px * dx + py * dy) / len2).clamp(0.0, 1.0);
                    let d = ((px - t * dx).powi(2) + (py - t * dy).powi(2)).sqrt();
                    // Thin lines keep their darkness spread over one pixel instead of
                    // vanishing between samples, as an optical blur would.
                    let hw = hw_a + (hw_b - hw_a) * t;
                    let cov = (hw.min(0.5) * 2.0) * (hw.max(0.5) + 0.5 - d).clamp(0.0, 1.0);
                    let i = y * self.w + x;
                    self.coverage[i] = self.coverage[i].max(cov);
                }
            }
        }
        for y in uy0..uy1 {
            for x in ux0..ux1 {
                let i = y * self.w + x;
                let cov = std::mem::take(&mut self.coverage[i]);
                if cov > 0.0 {
                    self.px[i] = mix(self.px[i], colour, alpha * cov);
                }
            }
        }
    }
}

/// A binary mask, row-major, the size of the canvas.
#[derive(Clone)]
pub(crate) struct Mask {
    pub w: usize,
    pub px: Vec<bool>,
}

impl Mask {
    /// An empty `w`x`h` mask.
    pub fn new(w: usize, h: usize) -> Self {
        Mask { w, px: vec![false; w * h] }
    }

    /// Sets the pixels whose centres lie within `r` of `(cx, cy)`.
    pub fn fill_disc(&mut self, cx: f32, cy: f32, r: f32) {
        let h = self.px.len() / self.w;
        let clip = |v: f32, n: usize| (v.max(0.0) as usize).min(n);
        for y in clip((cy - r).floor(), h)..clip((cy + r).ceil() + 1.0, h) {
            for x in clip((cx - r).floor(), self.w)..clip((cx + r).ceil() + 1.0, self.w) {
                if (x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2) <= r * r {
                    self.px[y * self.w + x] = true;
                }
            }
        }
    }

    /// Number of set pixels.
    pub fn count(&self) -> usize {
        self.px.iter().filter(|&&p| p).count()
    }

    /// 0/255 bytes, the ISIC ground-truth convention.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.px.iter().map(|&p| if p { 255 } else { 0 }).collect()
    }
}

/// Value noise in [-1, 1]: random values on a lattice of `cell`-pixel squares,
/// interpolated with a smooth step. Organic-looking colour variation at one scale;
/// cheap enough to evaluate at every pixel.
pub(crate) struct ValueNoise {
    cell: f32,
    gw: usize,
    values: Vec<f32>,
}

impl ValueNoise {
    /// Noise covering a `w`x`h` image with features about `cell` pixels across.
    pub fn new(rng: &mut ChaCha8Rng, w: usize, h: usize, cell: f32) -> Self {
        let cell = cell.max(1.0);
        let gw = (w as f32 / cell) as usize + 2;
        let gh = (h as f32 / cell) as usize + 2;
        ValueNoise { cell, gw, values: (0..gw * gh).map(|_| rng.gen_range(-1.0..1.0)).collect() }
    }

    /// The field at pixel coordinates `(x, y)` inside the image it was made for.
    pub fn at(&self, x: f32, y: f32) -> f32 {
        let (fx, fy) = ((x / self.cell).max(0.0), (y / self.cell).max(0.0));
        let (i, j) = (fx as usize, fy as usize);
        let gh = self.values.len() / self.gw;
        let (i, j) = (i.min(self.gw - 2), j.min(gh - 2));
        let (tx, ty) = (smoothstep(0.0, 1.0, fx - i as f32), smoothstep(0.0, 1.0, fy - j as f32));
        let v = |di: usize, dj: usize| self.values[(j + dj) * self.gw + i + di];
        let top = v(0, 0) + (v(1, 0) - v(0, 0)) * tx;
        let bottom = v(0, 1) + (v(1, 1) - v(0, 1)) * tx;
        top + (bottom - top) * ty
    }
}

/// An irregular closed shape: an ellipse whose radius is modulated by a few low
/// harmonics of the polar angle. Lesions and attribute regions are such blobs, which
/// gives the smooth but irregular borders of real ones.
#[derive(Clone)]
pub(crate) struct Blob {
    cx: f32,
    cy: f32,
    a: f32,
    b: f32,
    cos: f32,
    sin: f32,
    /// `(amplitude, phase)` of harmonics 2, 3, ...
    harmonics: Vec<(f32, f32)>,
}

impl Blob {
    /// A blob around `(cx, cy)` of mean radius `radius`; `irregularity` (0 = ellipse,
    /// ~0.3 = clearly lobed) scales the harmonics, which decay as 1/k so the border
    /// stays smooth. The radius never drops below ~half its mean.
    pub fn random(rng: &mut ChaCha8Rng, cx: f32, cy: f32, radius: f32, irregularity: f32) -> Self {
        let elongation: f32 = rng.gen_range(0.8..1.25);
        let angle: f32 = rng.gen_range(0.0..std::f32::consts::PI);
        let harmonics = (2..=6)
            .map(|k| (irregularity * rng.gen_range(0.0..1.0) / k as f32, rng.gen_range(0.0..std::f32::consts::TAU)))
            .collect();
        Blob {
            cx,
            cy,
            a: radius * elongation.sqrt(),
            b: radius / elongation.sqrt(),
            cos: angle.cos(),
            sin: angle.sin(),
            harmonics,
        }
    }

    /// Mean radius in pixels.
    pub fn radius(&self) -> f32 {
        (self.a * self.b).sqrt()
    }

    /// Border radius (in units of the ellipse) at polar angle `theta`.
    fn border(&self, theta: f32) -> f32 {
        1.0 + self
            .harmonics
            .iter()
            .enumerate()
            .map(|(k, &(amp, ph))| amp * ((k + 2) as f32 * theta + ph).cos())
            .sum::<f32>()
    }

    /// `(rho, theta)` of pixel coordinates `(x, y)`: rho < 1 inside, 1 on the border;
    /// theta is the polar angle in the blob's own frame.
    pub fn polar(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.cos + dy * self.sin) / self.a;
        let v = (-dx * self.sin + dy * self.cos) / self.b;
        let theta = v.atan2(u);
        ((u * u + v * v).sqrt() / self.border(theta), theta)
    }

    /// Pixel coordinates of the point at `(rho, theta)`, the inverse of [`Blob::polar`].
    pub fn point(&self, rho: f32, theta: f32) -> (f32, f32) {
        let d = rho * self.border(theta);
        let (u, v) = (d * theta.cos() * self.a, d * theta.sin() * self.b);
        (self.cx + u * self.cos - v * self.sin, self.cy + u * self.sin + v * self.cos)
    }
}
