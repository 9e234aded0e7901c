//! Helpers shared by the integration tests: fresh random inputs, poisoned outputs,
//! pitched views inside sentinel-filled buffers, and comparisons that name the op,
//! the shape and the first bad element.
#![allow(dead_code)]

pub mod conv2d;
pub mod kernels;

use lesionseg::backend::view_len;
use rand::{Rng, SeedableRng};

/// Tolerances, in one table (relative L2 error ‖a−b‖/‖b‖ unless noted).
pub mod tol {
    /// fp32 op against the CPU reference / a direct implementation.
    pub const F32: f64 = 1e-5;
    /// bf16 paths.
    pub const BF16: f64 = 1e-2;
    /// f64 analytic gradient against central finite differences.
    pub const FINITE_DIFF: f64 = 1e-6;
}

/// A random generator seeded from the clock (fresh inputs every run); the seed is
/// printed so that a failure can be replayed with `LESIONSEG_SEED`.
pub fn rng() -> rand_chacha::ChaCha8Rng {
    let seed = std::env::var("LESIONSEG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("seed {seed} (set LESIONSEG_SEED={seed} to replay)");
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// `len` values uniform in [-1, 1).
pub fn uniform(rng: &mut impl Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// `len` values uniform in [-1, 1), as f64.
pub fn uniform64(rng: &mut impl Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.gen_range(-1.0f64..1.0)).collect()
}

/// A NaN-filled buffer: any element an op fails to write makes the comparison fail.
pub fn poisoned(len: usize) -> Vec<f32> {
    vec![f32::NAN; len]
}

/// What the elements of a buffer outside its view hold.
pub const SENTINEL: f32 = 4242.0;

/// A pitched NHWC view at offset `off` of a buffer that holds [`SENTINEL`] elsewhere.
pub struct View {
    pub buf: Vec<f32>,
    pub off: usize,
    pub pixels: usize,
    pub c: usize,
    pub pitch: usize,
}

impl View {
    /// `pixels` pixels of `c` channels `pitch` apart at `off`, channel element `i`
    /// (dense order) set to `value(i)`, with a few sentinel elements after the view.
    pub fn new(pixels: usize, c: usize, pitch: usize, off: usize, mut value: impl FnMut(usize) -> f32) -> Self {
        let mut buf = vec![SENTINEL; off + pixels * pitch + 3];
        for p in 0..pixels {
            for ch in 0..c {
                buf[off + p * pitch + ch] = value(p * c + ch);
            }
        }
        View { buf, off, pixels, c, pitch }
    }
    /// A view holding `dense` (`[pixels, c]`).
    pub fn dense(dense: &[f32], c: usize, pitch: usize, off: usize) -> Self {
        Self::new(dense.len() / c.max(1), c, pitch, off, |i| dense[i])
    }
    /// Elements the view spans (from its first channel to its last).
    pub fn len(&self) -> usize {
        view_len(self.pixels, self.c, self.pitch)
    }
    /// The span of the view inside its buffer.
    pub fn get(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len()]
    }
    /// The span of the view inside its buffer, mutably.
    pub fn get_mut(&mut self) -> &mut [f32] {
        let (off, len) = (self.off, self.len());
        &mut self.buf[off..off + len]
    }
    /// The view's channels, densely packed `[pixels, c]`.
    pub fn values(&self) -> Vec<f32> {
        (0..self.pixels * self.c).map(|i| self.buf[self.off + (i / self.c) * self.pitch + i % self.c]).collect()
    }
    /// Panics if any element outside the view's channels changed.
    pub fn assert_gaps(&self, what: &str) {
        let mut inside = vec![false; self.buf.len()];
        for p in 0..self.pixels {
            inside[self.off + p * self.pitch..][..self.c].fill(true);
        }
        let bad = self.buf.iter().zip(&inside).position(|(&v, &i)| !i && v.to_bits() != SENTINEL.to_bits());
        assert!(bad.is_none(), "{what}: element {bad:?} outside the view was touched");
    }
}

/// A pitch for `c` channels: sometimes exactly `c`, sometimes a wider tensor.
pub fn some_pitch(rng: &mut impl Rng, c: usize) -> usize {
    if rng.gen_bool(0.5) {
        c
    } else {
        c + rng.gen_range(1..6)
    }
}

/// ‖a−b‖/‖b‖ in f64; infinite if either holds a NaN or the lengths differ.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    rel_l2_64(&a.iter().map(|&v| v as f64).collect::<Vec<_>>(), &b.iter().map(|&v| v as f64).collect::<Vec<_>>())
}

/// ‖a−b‖/‖b‖ for f64 slices; infinite on NaN or a length mismatch.
pub fn rel_l2_64(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.iter().chain(b).any(|v| v.is_nan()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

/// Panics with a useful message unless `rel_l2(got, want) <= tol`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let err = rel_l2(got, want);
    assert!(err <= tol, "{what}: relative L2 error {err:.3e} > {tol:.1e}\n{}", describe(got, want));
}

/// Panics unless ‖got − want‖ ≤ `tol`·‖scale‖, for sums whose result may cancel far
/// below their terms (a bias gradient: hundreds of random-sign values), `scale`
/// being each sum's Σ|terms|. Against ‖want‖ alone such a sum fails now and then
/// by rounding only, whenever its terms happen to nearly cancel.
pub fn assert_scaled(what: &str, got: &[f32], want: &[f32], scale: &[f32], tol: f64) {
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let err = if got.len() != want.len() || got.iter().chain(want).any(|v| v.is_nan()) {
        f64::INFINITY
    } else {
        norm(&mut got.iter().zip(want).map(|(&a, &b)| a as f64 - b as f64))
    };
    let bound = tol * norm(&mut scale.iter().map(|&v| v as f64));
    assert!(err <= bound, "{what}: L2 error {err:.3e} > {bound:.3e} (tol × ‖Σ|terms|‖)\n{}", describe(got, want));
}

/// Per channel of pixel-major `values` with `k` channels, Σ|value|: the scale of a
/// per-channel sum for [`assert_scaled`].
pub fn channel_abs_sums(values: &[f32], k: usize) -> Vec<f32> {
    (0..k).map(|j| values.iter().skip(j).step_by(k).map(|v| v.abs()).sum()).collect()
}

/// f64 version of [`assert_close`].
pub fn assert_close64(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let err = rel_l2_64(got, want);
    let g: Vec<f32> = got.iter().map(|&v| v as f32).collect();
    let w: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    assert!(err <= tol, "{what}: relative L2 error {err:.3e} > {tol:.1e}\n{}", describe(&g, &w));
}

/// Lengths, max abs error, the element that differs most, the first NaN, and a few pairs.
pub fn describe(got: &[f32], want: &[f32]) -> String {
    if got.len() != want.len() {
        return format!("length {} vs expected {}", got.len(), want.len());
    }
    let mut worst = (0usize, 0f64);
    let mut first_nan = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() || w.is_nan() {
            first_nan.get_or_insert(i);
            continue;
        }
        let d = (*g as f64 - *w as f64).abs();
        if d > worst.1 {
            worst = (i, d);
        }
    }
    let pairs: Vec<String> =
        (0..got.len().min(4)).map(|i| format!("[{i}] {:.6e} vs {:.6e}", got[i], want[i])).collect();
    format!(
        "len {}, max abs err {:.3e} at [{}] ({:.6e} vs {:.6e}), first NaN {:?}; {}",
        got.len(),
        worst.1,
        worst.0,
        got.get(worst.0).copied().unwrap_or(f32::NAN),
        want.get(worst.0).copied().unwrap_or(f32::NAN),
        first_nan,
        pairs.join(", ")
    )
}

/// Central finite differences of `f` at `v`, step `step`, one element at a time.
pub fn central_differences(v: &[f64], step: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut v = v.to_vec();
    (0..v.len())
        .map(|i| {
            let orig = v[i];
            v[i] = orig + step;
            let up = f(&v);
            v[i] = orig - step;
            let down = f(&v);
            v[i] = orig;
            (up - down) / (2.0 * step)
        })
        .collect()
}
