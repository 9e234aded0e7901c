//! The five dermoscopic attributes, each drawn as a visually distinct pattern inside
//! (or, for streaks, around) the lesion, with its mask exactly the region where the
//! pattern was drawn:
//!
//! | attribute | pattern | mask |
//! | --- | --- | --- |
//! | pigment_network | dark brown honeycomb lines, slightly lighter holes | the mesh's region |
//! | negative_network | pale lines around darker holes, larger cells | the mesh's region |
//! | streaks | dark radial lines across the lesion border | the band sector they span |
//! | milia_like_cyst | small white-yellow round spots | the spots, dilated |
//! | globules | dark round dots on a jittered grid | union of discs around the dots |
//!
//! Regions are claimed in the order streaks, globules, negative network, pigment
//! network, and each later region excludes the earlier ones, so no pixel carries two
//! patterns with two labels (milia, small and drawn last, are the exception: a cyst on
//! a network is labelled both, as annotators would). Sizes are in units of `s`, the
//! image's short side over 256, so a scene looks the same at any resolution.

use std::f32::consts::{PI, TAU};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::paint::{mix, mul, smoothstep, vary, Blob, Canvas, Mask, ValueNoise};
use super::scene::Lesion;

/// Fraction of ISIC 2018 Task 2 training images with a non-empty mask, per attribute
/// in [`crate::data::ATTRIBUTES`] order (from the multi-task U-Net paper).
pub const PREVALENCE: [f64; 5] = [0.587, 0.073, 0.029, 0.263, 0.232];

/// Attribute regions stay inside this normalised lesion radius, away from the soft
/// border where the lesion fades into skin and a pattern would be hard to see.
const CORE: f32 = 0.92;

/// Which attributes image `index` of `seed` shows. Not independent coin flips, whose
/// counts wander by a few binomial deviations (±10% relative for globules over 200
/// images): attribute k is present when `frac(offset_k + index * alpha_k) < p_k`, a
/// Weyl sequence, so over any run of n consecutive images its count is within a few
/// of `n * p_k`. The `alpha_k` are square roots of distinct primes (rationally
/// independent), so the five sequences are jointly equidistributed and the attributes
/// co-occur as if independent; the offsets come from the seed.
pub(crate) fn presence(seed: u64, index: usize) -> [bool; 5] {
    // sqrt is correctly rounded (IEEE 754), so these are the same on every machine.
    let alpha = [2.0f64, 3.0, 5.0, 7.0, 11.0].map(f64::sqrt);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Image streams are 0..MAX_COUNT; this one is nobody's.
    rng.set_stream(u64::MAX);
    std::array::from_fn(|k| {
        let offset: f64 = rng.gen();
        (offset + index as f64 * alpha[k]).fract() < PREVALENCE[k]
    })
}

/// Draws the attributes marked `present` onto `canvas` (which already shows skin and
/// lesion) and returns their masks in [`crate::data::ATTRIBUTES`] order.
pub(crate) fn draw(
    rng: &mut ChaCha8Rng,
    canvas: &mut Canvas,
    lesion: &Lesion,
    s: f32,
    present: [bool; 5],
) -> [Mask; 5] {
    let (w, h) = (canvas.w, canvas.h);
    let mut masks: [Mask; 5] = std::array::from_fn(|_| Mask::new(w, h));
    let mut claimed = Mask::new(w, h);
    // Globules and the negative network sit on roughly opposite sides of the lesion.
    let side: f32 = rng.gen_range(0.0..TAU);
    if present[2] {
        masks[2] = streaks(rng, canvas, lesion, s, &mut claimed);
    }
    if present[4] {
        masks[4] = globules(rng, canvas, lesion, s, side, &mut claimed);
    }
    if present[1] {
        let theta = side + PI + rng.gen_range(-0.6..0.6);
        let region = region(rng, lesion, theta, (0.2, 0.45), (0.45, 0.7), &claimed);
        masks[1] = negative_network(rng, canvas, region, s);
        claim(&mut claimed, &masks[1]);
    }
    if present[0] {
        let theta = rng.gen_range(0.0..TAU);
        let region = region(rng, lesion, theta, (0.0, 0.35), (0.55, 1.1), &claimed);
        masks[0] = pigment_network(rng, canvas, region, s);
    }
    if present[3] {
        masks[3] = milia(rng, canvas, lesion, s);
    }
    masks
}

/// A blob centred at normalised lesion radius `rho` (drawn from the range) in
/// direction `theta`, of radius `radius` (a fraction of the lesion's, drawn from the
/// range), clipped to the lesion core and minus what is already `claimed`.
fn region(
    rng: &mut ChaCha8Rng,
    lesion: &Lesion,
    theta: f32,
    rho: (f32, f32),
    radius: (f32, f32),
    claimed: &Mask,
) -> Mask {
    let (cx, cy) = lesion.blob.point(rng.gen_range(rho.0..rho.1), theta);
    let radius = lesion.blob.radius() * rng.gen_range(radius.0..radius.1);
    let blob = Blob::random(rng, cx, cy, radius, 0.3);
    let mut mask = Mask::new(claimed.w, claimed.px.len() / claimed.w);
    for (i, m) in mask.px.iter_mut().enumerate() {
        let (x, y) = ((i % claimed.w) as f32 + 0.5, (i / claimed.w) as f32 + 0.5);
        *m = lesion.rho[i] < CORE && !claimed.px[i] && blob.polar(x, y).0 < 1.0;
    }
    mask
}

/// Marks `mask`'s pixels in `claimed`.
fn claim(claimed: &mut Mask, mask: &Mask) {
    claimed.px.iter_mut().zip(&mask.px).for_each(|(c, &m)| *c |= m);
}

/// Whether `region` is smaller than three mesh cells of side `cell`: a sliver left
/// over by earlier regions, where a label would mark a pattern nobody could see.
fn too_small(region: &Mask, cell: f32) -> bool {
    (region.count() as f32) < 3.0 * cell * cell
}

/// Seed points on a jittered square lattice. The edges of their Voronoi cells make
/// the irregular honeycomb of a (negative) pigment network.
struct Lattice {
    cell: f32,
    gw: usize,
    /// Seed point of lattice cell (i, j), stored at `(j + 1) * gw + i + 1` so the
    /// border ring (-1 and n) exists.
    points: Vec<(f32, f32)>,
}

impl Lattice {
    fn new(rng: &mut ChaCha8Rng, w: usize, h: usize, cell: f32) -> Self {
        let gw = (w as f32 / cell) as usize + 3;
        let gh = (h as f32 / cell) as usize + 3;
        let points = (0..gw * gh)
            .map(|k| {
                let (i, j) = ((k % gw) as f32 - 1.0, (k / gw) as f32 - 1.0);
                ((i + 0.5 + rng.gen_range(-0.35..0.35)) * cell, (j + 0.5 + rng.gen_range(-0.35..0.35)) * cell)
            })
            .collect();
        Lattice { cell, gw, points }
    }

    /// Distance from `(x, y)` to the nearest Voronoi edge: the bisector of the two
    /// nearest seed points, `(d2² - d1²) / (2 |p2 - p1|)`.
    fn edge_distance(&self, x: f32, y: f32) -> f32 {
        let (ci, cj) = ((x / self.cell) as usize + 1, (y / self.cell) as usize + 1);
        let gh = self.points.len() / self.gw;
        let (mut d1, mut d2, mut p1, mut p2) = (f32::MAX, f32::MAX, (0.0, 0.0), (0.0, 0.0));
        for j in cj.saturating_sub(1)..(cj + 2).min(gh) {
            for i in ci.saturating_sub(1)..(ci + 2).min(self.gw) {
                let p = self.points[j * self.gw + i];
                let d = (p.0 - x).powi(2) + (p.1 - y).powi(2);
                if d < d1 {
                    (d2, p2, d1, p1) = (d1, p1, d, p);
                } else if d < d2 {
                    (d2, p2) = (d, p);
                }
            }
        }
        (d2 - d1) / (2.0 * ((p2.0 - p1.0).powi(2) + (p2.1 - p1.1).powi(2)).sqrt().max(1e-3))
    }

    /// How much of pixel `(x, y)` a mesh line of half-width `hw` covers.
    fn line(&self, x: f32, y: f32, hw: f32) -> f32 {
        1.0 - smoothstep(hw - 0.6, hw + 0.6, self.edge_distance(x, y))
    }
}

/// Dark brown reticular lines with slightly lighter holes over `region`; returns the
/// region, or an empty mask if it is too small to show a mesh (`too_small`).
fn pigment_network(rng: &mut ChaCha8Rng, canvas: &mut Canvas, region: Mask, s: f32) -> Mask {
    let cell = (rng.gen_range(12.0..15.0) * s).max(4.0);
    if too_small(&region, cell) {
        return Mask::new(canvas.w, canvas.h);
    }
    let hw = (rng.gen_range(1.1..1.4) * s).max(0.6);
    let lattice = Lattice::new(rng, canvas.w, canvas.h, cell);
    // Real networks are patchy: line strength varies smoothly over the region.
    let strength = ValueNoise::new(rng, canvas.w, canvas.h, 40.0 * s);
    let dark = vary(rng, [0.45, 0.40, 0.40], 0.85, 1.15);
    for (i, px) in canvas.px.iter_mut().enumerate().filter(|(i, _)| region.px[*i]) {
        let (x, y) = ((i % canvas.w) as f32 + 0.5, (i / canvas.w) as f32 + 0.5);
        let line = lattice.line(x, y, hw) * (0.78 + 0.22 * strength.at(x, y));
        *px = mul(*px, mix([1.07, 1.07, 1.06], dark, line));
    }
    region
}

/// Pale, whitish lines around holes darker than the surrounding lesion over `region`;
/// returns the region, or an empty mask if it is too small to show a mesh.
fn negative_network(rng: &mut ChaCha8Rng, canvas: &mut Canvas, region: Mask, s: f32) -> Mask {
    let cell = (rng.gen_range(14.0..17.0) * s).max(5.0);
    if too_small(&region, cell) {
        return Mask::new(canvas.w, canvas.h);
    }
    let hw = (rng.gen_range(1.4..1.8) * s).max(0.7);
    let lattice = Lattice::new(rng, canvas.w, canvas.h, cell);
    let pale = vary(rng, [0.86, 0.76, 0.70], 0.95, 1.05);
    for (i, px) in canvas.px.iter_mut().enumerate().filter(|(i, _)| region.px[*i]) {
        let (x, y) = ((i % canvas.w) as f32 + 0.5, (i / canvas.w) as f32 + 0.5);
        let line = lattice.line(x, y, hw);
        *px = mix(mul(*px, [0.68, 0.66, 0.70]), pale, 0.85 * line);
    }
    region
}

/// Dark radial lines crossing the lesion border in one angular sector; the mask is
/// the part of the sector's band (normalised radius 0.78–1.24) they span.
fn streaks(rng: &mut ChaCha8Rng, canvas: &mut Canvas, lesion: &Lesion, s: f32, claimed: &mut Mask) -> Mask {
    let span = if rng.gen_bool(0.15) { TAU } else { rng.gen_range(PI / 3.0..PI) };
    let start = rng.gen_range(0.0..TAU);
    let (inner, outer) = (0.78, 1.24);
    let n = ((lesion.blob.radius() * span / (9.0 * s)) as usize).max(3);
    let colour = vary(rng, [0.24, 0.14, 0.09], 0.8, 1.2);
    let width = (2.6 * s).max(0.8);
    for k in 0..n {
        let theta = start + span * (k as f32 + 0.5 + rng.gen_range(-0.25..0.25)) / n as f32;
        let (r0, r1) = (inner + rng.gen_range(0.0..0.05), outer - rng.gen_range(0.0..0.08));
        let wave = rng.gen_range(-0.04..0.04);
        let points: Vec<(f32, f32)> = (0..=8)
            .map(|j| {
                let t = j as f32 / 8.0;
                lesion.blob.point(r0 + (r1 - r0) * t, theta + wave * (t * PI).sin())
            })
            .collect();
        canvas.stroke(&points, width, width * 0.45, colour, 0.9);
    }
    let mut mask = Mask::new(canvas.w, canvas.h);
    for (i, m) in mask.px.iter_mut().enumerate() {
        let offset = (lesion.theta[i] - start).rem_euclid(TAU);
        *m = (inner..outer).contains(&lesion.rho[i]) && offset < span;
    }
    claim(claimed, &mask);
    mask
}

/// Dark round dots on a jittered grid inside a blob on side `side` of the lesion; the
/// mask is the union of discs around the dots (their region, hugging the cluster).
fn globules(rng: &mut ChaCha8Rng, canvas: &mut Canvas, lesion: &Lesion, s: f32, side: f32, claimed: &mut Mask) -> Mask {
    let spacing = (rng.gen_range(11.0..14.0) * s).max(4.0);
    let colour = vary(rng, [0.20, 0.11, 0.08], 0.75, 1.25);
    let mut mask = Mask::new(canvas.w, canvas.h);
    // A region squeezed by streaks may hold too few dots; move it inwards and retry.
    for attempt in 0..4 {
        let rho = if attempt < 3 { rng.gen_range(0.3..0.6) } else { 0.0 };
        let (cx, cy) = lesion.blob.point(rho, side + attempt as f32);
        let radius = (lesion.blob.radius() * rng.gen_range(0.25..0.45)).max(2.0 * spacing);
        let blob = Blob::random(rng, cx, cy, radius, 0.25);
        let mut dots = Vec::new();
        let (x0, y0) = (cx - radius * 1.5, cy - radius * 1.5);
        let steps = (3.0 * radius / spacing) as usize + 1;
        for j in 0..steps {
            for i in 0..steps {
                let x = x0 + (i as f32 + 0.5 + rng.gen_range(-0.3..0.3)) * spacing;
                let y = y0 + (j as f32 + 0.5 + rng.gen_range(-0.3..0.3)) * spacing;
                let (xi, yi) = (x as usize, y as usize);
                if x < 0.0 || y < 0.0 || xi >= canvas.w || yi >= canvas.h {
                    continue;
                }
                let p = yi * canvas.w + xi;
                if blob.polar(x, y).0 < 1.0 && lesion.rho[p] < CORE - 0.05 && !claimed.px[p] {
                    dots.push((x, y, spacing * rng.gen_range(0.28..0.4)));
                }
            }
        }
        if dots.len() >= 3 || attempt == 3 {
            for &(x, y, r) in &dots {
                canvas.disc(x, y, r, 0.3 * s, vary(rng, colour, 0.85, 1.15), 0.92);
                mask.fill_disc(x, y, 0.75 * spacing);
            }
            break;
        }
    }
    for (i, m) in mask.px.iter_mut().enumerate() {
        *m &= lesion.rho[i] < CORE && !claimed.px[i];
    }
    claim(claimed, &mask);
    mask
}

/// A few small white-yellow round spots in the lesion; the mask is each spot dilated
/// by 2 `s` (cysts are annotated generously).
fn milia(rng: &mut ChaCha8Rng, canvas: &mut Canvas, lesion: &Lesion, s: f32) -> Mask {
    let colour = vary(rng, [0.97, 0.94, 0.80], 0.97, 1.03);
    let count = rng.gen_range(2..=9);
    let mut mask = Mask::new(canvas.w, canvas.h);
    let mut spots: Vec<(f32, f32, f32)> = Vec::new();
    for _ in 0..count * 4 {
        if spots.len() == count {
            break;
        }
        let r = (rng.gen_range(3.0..5.5) * s).max(1.0);
        let (x, y) = lesion.blob.point(rng.gen_range(0.0..0.85f32).sqrt(), rng.gen_range(0.0..TAU));
        // Keep spots apart so each one reads as a separate cyst.
        if spots.iter().any(|&(sx, sy, sr)| (sx - x).hypot(sy - y) < sr + r + 4.0 * s) {
            continue;
        }
        spots.push((x, y, r));
        canvas.disc(x, y, r, 0.6 * s, colour, 0.92);
        mask.fill_disc(x, y, r + 2.0 * s);
    }
    mask
}
