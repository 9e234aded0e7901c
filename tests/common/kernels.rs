//! Helpers shared by the kernel tests (`tests/*_kernels.rs`): buffers placed at an
//! offset among NaN, upload and download through the `Backend` trait, and the GPU
//! backend when there is one.

use lesionseg::backend::cuda::driver::Cuda;
use lesionseg::backend::cuda::Kernels;
use lesionseg::backend::Backend;

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
