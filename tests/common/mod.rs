//! Helpers shared by the integration tests: fresh random inputs, poisoned outputs,
//! pitched views inside sentinel-filled buffers ([`Layout`], [`View`]), and
//! comparisons that name the op, the shape and the first bad element.
//!
//! Each test file declares `pub mod common;`: these are a library of helpers, of which
//! each test uses some (a private helper nobody uses still warns).

pub mod cli;
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

/// A pitched NHWC view: `pixels` pixels of `c` channels `pitch` apart, at element
/// `off` of a buffer whose other elements hold [`SENTINEL`] (a dense vector is one
/// pixel of `c` elements). The one description of an operand's place that every
/// test uses: to build the buffer, read the view back, and check what lies outside.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub pixels: usize,
    pub c: usize,
    pub pitch: usize,
    pub off: usize,
}

impl Layout {
    /// Pitch and offset multiples of 4 with `aligned` (the kernels' 16-byte paths when
    /// C allows), otherwise dense or wider at any offset.
    pub fn random(rng: &mut impl Rng, pixels: usize, c: usize, aligned: bool) -> Self {
        let (pitch, off) = if aligned {
            (c.next_multiple_of(4) + 4 * rng.gen_range(0..2), 4 * rng.gen_range(0..3))
        } else if rng.gen_bool(0.5) {
            (c, rng.gen_range(0..3))
        } else {
            (c + rng.gen_range(1..6), rng.gen_range(0..9))
        };
        Layout { pixels, c, pitch, off }
    }
    /// A dense vector of `len` elements at `off`.
    pub fn dense(len: usize, off: usize) -> Self {
        Layout { pixels: 1, c: len, pitch: len, off }
    }
    /// Elements the view spans, from its first channel to its last.
    pub fn span(&self) -> usize {
        view_len(self.pixels, self.c, self.pitch)
    }
    /// The whole buffer: `value(i)` at the i-th channel element (dense order, so the
    /// values are drawn in that order), [`SENTINEL`] elsewhere, including 3 elements
    /// past the view.
    pub fn fill(&self, mut value: impl FnMut(usize) -> f32) -> Vec<f32> {
        let mut buf = vec![SENTINEL; self.off + self.span() + 3];
        for p in 0..self.pixels {
            for ch in 0..self.c {
                buf[self.off + p * self.pitch + ch] = value(p * self.c + ch);
            }
        }
        buf
    }
    /// The view's channel elements in `buf`, densely packed `[pixels, c]`.
    pub fn channels(&self, buf: &[f32]) -> Vec<f32> {
        (0..self.pixels).flat_map(|p| buf[self.off + p * self.pitch..][..self.c].iter().copied()).collect()
    }
    /// Panics if an element of `buf` outside the view's channels is not the sentinel.
    pub fn assert_gaps(&self, buf: &[f32], what: &str) {
        assert_outside(what, buf, &[*self]);
    }
}

/// Panics if an element of `buf` outside every one of `views` is not [`SENTINEL`]
/// (bit for bit): an op wrote where it must not.
pub fn assert_outside(what: &str, buf: &[f32], views: &[Layout]) {
    let mut inside = vec![false; buf.len()];
    for v in views {
        for p in 0..v.pixels {
            inside[v.off + p * v.pitch..][..v.c].fill(true);
        }
    }
    if let Some(i) = buf.iter().zip(&inside).position(|(&v, &i)| !i && v.to_bits() != SENTINEL.to_bits()) {
        panic!("{what}: element {i} outside the operands changed: {} (expected the sentinel {SENTINEL})", buf[i]);
    }
}

/// A buffer holding one view, for the CPU reference ops, which take its span as a slice.
pub struct View {
    pub buf: Vec<f32>,
    pub at: Layout,
}

impl View {
    /// `pixels` pixels of `c` channels `pitch` apart at `off`, channel element `i`
    /// (dense order) set to `value(i)`.
    pub fn new(pixels: usize, c: usize, pitch: usize, off: usize, value: impl FnMut(usize) -> f32) -> Self {
        let at = Layout { pixels, c, pitch, off };
        View { buf: at.fill(value), at }
    }
    /// A view holding `dense` (`[pixels, c]`).
    pub fn dense(dense: &[f32], c: usize, pitch: usize, off: usize) -> Self {
        Self::new(dense.len() / c.max(1), c, pitch, off, |i| dense[i])
    }
    /// The span of the view inside its buffer.
    pub fn get(&self) -> &[f32] {
        &self.buf[self.at.off..][..self.at.span()]
    }
    /// The span of the view inside its buffer, mutably.
    pub fn get_mut(&mut self) -> &mut [f32] {
        let (off, len) = (self.at.off, self.at.span());
        &mut self.buf[off..off + len]
    }
    /// The view's channels, densely packed `[pixels, c]`.
    pub fn values(&self) -> Vec<f32> {
        self.at.channels(&self.buf)
    }
    /// Panics if any element outside the view's channels changed.
    pub fn assert_gaps(&self, what: &str) {
        self.at.assert_gaps(&self.buf, what);
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
fn rel_l2_64(a: &[f64], b: &[f64]) -> f64 {
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
