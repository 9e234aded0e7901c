//! Helpers shared by the kernel tests (`tests/*_kernels.rs`): operand views inside
//! sentinel-filled buffers, buffers placed at an offset among NaN, upload and
//! download through the `Backend` trait, and the GPU backend when there is one.

use super::SENTINEL;
use lesionseg::backend::cpu::view_len;
use lesionseg::backend::cuda::driver::Cuda;
use lesionseg::backend::cuda::Kernels;
use lesionseg::backend::Backend;
use rand::Rng;

/// A view of `pixels` pixels of `c` channels `pitch` apart at element `off` of its
/// buffer (a dense vector is one pixel of `c` elements).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub pixels: usize,
    pub c: usize,
    pub pitch: usize,
    pub off: usize,
}

impl Layout {
    /// Pitch and offset multiples of 4 with `aligned` (the 16-byte paths when C
    /// allows), otherwise dense or wider at any offset.
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
    /// The whole buffer: `value(i)` at the i-th channel element, [`SENTINEL`] elsewhere
    /// (including a few elements past the view).
    pub fn fill(&self, mut value: impl FnMut(usize) -> f32) -> Vec<f32> {
        let mut buf = vec![SENTINEL; self.off + view_len(self.pixels, self.c, self.pitch) + 3];
        for p in 0..self.pixels {
            for ch in 0..self.c {
                buf[self.off + p * self.pitch + ch] = value(p * self.c + ch);
            }
        }
        buf
    }
    /// The view's channel elements, densely packed.
    pub fn channels(&self, buf: &[f32]) -> Vec<f32> {
        (0..self.pixels * self.c).map(|i| buf[self.off + (i / self.c) * self.pitch + i % self.c]).collect()
    }
    /// Panics if an element outside the view's channels is not the sentinel.
    pub fn assert_gaps(&self, buf: &[f32], what: &str) {
        let mut inside = vec![false; buf.len()];
        for p in 0..self.pixels {
            inside[self.off + p * self.pitch..][..self.c].fill(true);
        }
        let bad = buf.iter().zip(&inside).position(|(&v, &i)| !i && v.to_bits() != SENTINEL.to_bits());
        assert!(bad.is_none(), "{what}: element {bad:?} outside the view was touched");
    }
}

/// A new buffer on `be` holding `data`.
pub fn upload<B: Backend>(be: &B, data: &[f32]) -> B::Buf {
    let buf = be.alloc(data.len()).expect("alloc");
    be.upload(&buf, 0, data).expect("upload");
    buf
}

/// The first `len` elements of `buf`.
pub fn download<B: Backend>(be: &B, buf: &B::Buf, len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    be.download(buf, 0, &mut out).expect("download");
    out
}

/// A new buffer on `be` with `data` at `off`, NaN before it and `tail` NaN after it.
pub fn place<B: Backend>(be: &B, data: &[f32], off: usize, tail: usize) -> B::Buf {
    let mut all = vec![f32::NAN; off + data.len() + tail];
    all[off..off + data.len()].copy_from_slice(data);
    upload(be, &all)
}

/// The GPU backend for test `what`, through the one skip-or-require policy
/// ([`lesionseg::device::test_gpu`]: `None` after printing why there is none, a
/// failure instead with `LESIONSEG_REQUIRE_GPU=1`).
pub fn gpu(what: &str) -> Option<Kernels<Cuda>> {
    lesionseg::device::test_gpu(what)
}

/// `be` with bf16 tensor-core convolutions (`Precision::Bf16`), for the bf16 tests.
pub fn bf16<E: lesionseg::backend::cuda::Executor>(mut be: Kernels<E>) -> Kernels<E> {
    be.precision = lesionseg::backend::cuda::Precision::Bf16;
    be
}
