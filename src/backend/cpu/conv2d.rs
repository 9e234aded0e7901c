//! Convolution R×R (R = 3 or 1), stride 1, "same" padding R/2, with bias and an
//! optional fused ReLU, on the CPU. PyTorch: `relu(conv2d(x, w, b, padding=R//2))`.
//!
//! Shapes: `x` `[N,H,W,C]` and `y` `[N,H,W,K]`, NHWC with pixels `x_pitch` and
//! `y_pitch` elements apart (a view may be a channel slice of a wider tensor; the
//! elements between its channels belong to other tensors and are never read as data
//! nor written); `w` `[R][S][C][K]`, `b` `[K]`.
//!
//! All three products are im2col GEMMs over blocks of output pixels (see
//! [`super::im2col`]):
//! - forward: `y = relu?(im2col(x) · w + b)`, GEMM straight into the rows of `y`;
//! - input gradient: a gather, not a scatter-add, so no two tasks write one pixel:
//!   `dx = im2col(dy) · w'`, the same convolution with the spatially flipped,
//!   transposed weight `w'[r][s][k][c] = w[R-1-r][S-1-s][c][k]`;
//! - weight gradient: `dw = im2col(x)ᵀ · dy`, `db = Σ dy`, per fixed chunk of
//!   pixels and summed in chunk order, so the bits do not depend on the threads.

use super::im2col::{
    add_col_sums, bias_relu, gather_matmul, matmul, relu_mask, sum_partials, transpose, Gather, Mat, BLOCK_PIXELS,
};
use super::Real;
use crate::backend::view_len;
use crate::backend::Conv2dParams;

/// The filter taps of an R×R "same" convolution, row-major: `(r - R/2, s - R/2)`.
fn taps(r: usize) -> Vec<(isize, isize)> {
    let pad = (r / 2) as isize;
    (0..r as isize).flat_map(|dr| (0..r as isize).map(move |ds| (dr - pad, ds - pad))).collect()
}

/// The im2col of a `channels`-channel NHWC tensor for an R×R same convolution.
fn gather<'a, T>(
    src: &'a [T],
    pitch: usize,
    channels: usize,
    taps: &'a [(isize, isize)],
    p: &Conv2dParams,
) -> Gather<'a, T> {
    Gather { src, src_pitch: pitch, channels, src_h: p.h, src_w: p.w, out_h: p.h, out_w: p.w, stride: 1, taps }
}

/// Panics unless the slices hold the operands `p` describes (the backend checks
/// this before calling, so a failure is a bug in the caller).
fn check_lens(y: usize, x: usize, w: usize, b: usize, p: &Conv2dParams) {
    let pixels = p.n * p.h * p.w;
    assert!(p.r == 1 || p.r == 3, "conv2d: filter size {} is neither 1 nor 3", p.r);
    assert!(p.x_pitch >= p.c && p.y_pitch >= p.k, "conv2d: pitch smaller than channels in {p:?}");
    assert!(y >= view_len(pixels, p.k, p.y_pitch), "conv2d: y too short for {p:?}");
    assert!(x >= view_len(pixels, p.c, p.x_pitch), "conv2d: x too short for {p:?}");
    assert!(w >= p.weight_len() && b >= p.k, "conv2d: weights too short for {p:?}");
}

/// Forward: `y[n,h,w,k] = relu?(b[k] + Σ_{r,s,c} x[n, h+r-R/2, w+s-R/2, c] · w[r][s][c][k])`,
/// `x` zero outside the image. Overwrites the `K` channels of every pixel of `y`.
pub fn conv2d_forward<T: Real>(y: &mut [T], x: &[T], w: &[T], b: &[T], p: &Conv2dParams) {
    check_lens(y.len(), x.len(), w.len(), b.len(), p);
    let taps = taps(p.r);
    let g = gather(x, p.x_pitch, p.c, &taps, p);
    let b = &b[..p.k];
    gather_matmul(y, p.y_pitch, p.k, false, &g, p.n, &w[..p.weight_len()], |block, rows| {
        bias_relu(block, rows, p.y_pitch, b, p.relu)
    });
}

/// Backward of [`conv2d_forward`]. `dy` is the gradient of the post-ReLU output `y`;
/// with `p.relu` it is first masked in place by `y > 0`. Then `dw` (`[R][S][C][K]`)
/// and `db` (`[K]`) are overwritten; `dx`, when given, is overwritten or, with
/// `dx_add`, added into. Only the channel elements of each view are touched.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Real>(
    dx: Option<&mut [T]>,
    dx_add: bool,
    dw: &mut [T],
    db: &mut [T],
    dy: &mut [T],
    y: &[T],
    x: &[T],
    w: &[T],
    p: &Conv2dParams,
) {
    check_lens(dy.len(), x.len(), dw.len(), db.len(), p);
    check_lens(y.len(), x.len(), w.len(), db.len(), p);
    let pixels = p.n * p.h * p.w;
    if p.relu {
        relu_mask(dy, y, pixels, p.k, p.y_pitch);
    }
    let dy: &[T] = dy;
    let taps = taps(p.r);
    bwd_filter(&mut dw[..p.weight_len()], &mut db[..p.k], dy, x, &taps, p);
    if let Some(dx) = dx {
        assert!(dx.len() >= view_len(pixels, p.c, p.x_pitch), "conv2d: dx too short for {p:?}");
        let flipped = flip_transpose(w, p);
        let g = gather(dy, p.y_pitch, p.k, &taps, p);
        gather_matmul(dx, p.x_pitch, p.c, dx_add, &g, p.n, &flipped, |_, _| ());
    }
}

/// `dw = im2col(x)ᵀ · dy` and `db = Σ_p dy[p]` over all pixels, deterministically.
fn bwd_filter<T: Real>(dw: &mut [T], db: &mut [T], dy: &[T], x: &[T], taps: &[(isize, isize)], p: &Conv2dParams) {
    let pixels = p.n * p.h * p.w;
    let g = gather(x, p.x_pitch, p.c, taps, p);
    let width = g.width();
    sum_partials(pixels.div_ceil(BLOCK_PIXELS), dw, db, |blocks, dw, db, par| {
        let mut col = Vec::new();
        for bi in blocks {
            let p0 = bi * BLOCK_PIXELS;
            let rows = BLOCK_PIXELS.min(pixels - p0);
            let cols = g.rows(&mut col, p0, rows);
            // im2col(x)ᵀ: swap the strides instead of copying.
            let lhs = Mat { data: cols.data, rs: cols.cs, cs: cols.rs };
            let rhs = Mat { data: &dy[(p0 * p.y_pitch).min(dy.len())..], rs: p.y_pitch, cs: 1 };
            matmul(dw, p.k, true, lhs, rhs, width, p.k, rows, par);
            add_col_sums(db, rhs, rows);
        }
    });
}

/// `w'[r][s][k][c] = w[R-1-r][S-1-s][c][k]`: the weight that turns the input
/// gradient into a forward convolution of `dy`.
fn flip_transpose<T: Real>(w: &[T], p: &Conv2dParams) -> Vec<T> {
    let (r, c, k) = (p.r, p.c, p.k);
    let mut out = vec![T::zero(); p.weight_len()];
    for tap in 0..r * r {
        transpose(&mut out[tap * k * c..][..k * c], &w[(r * r - 1 - tap) * c * k..][..c * k], c, k);
    }
    out
}
