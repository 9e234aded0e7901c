//! Transposed convolution 4x4, stride 2, padding 1 (doubles H and W), with bias and
//! an optional fused ReLU, on the CPU. PyTorch:
//! `relu(conv_transpose2d(x, w, b, stride=2, padding=1))`.
//!
//! Shapes: `x` `[N,H,W,C]`, `y` `[N,2H,2W,K]`, NHWC with pixels `x_pitch` and
//! `y_pitch` elements apart (the elements between a view's channels belong to other
//! tensors and are never read as data nor written); `w` parity-major
//! `[a][b][ty][tx][C][K]` (see [`DeconvParams`]), `b` `[K]`.
//!
//! Output pixel `(2i+a, 2j+b)` sees input pixels `(i-1+a+ty, j-1+b+tx)`, so each of
//! the four output parities `(a, b)` is a 2x2 convolution of the input with the
//! weight block `w[a][b]`, `[4C, K]` as a matrix. All products are blocked im2col
//! GEMMs (see [`super::im2col`]):
//! - forward: per block of input rows and per parity, `im2col_ab(x) · w[a][b]` into
//!   a dense buffer, then bias, ReLU and a strided copy into the output rows of that
//!   parity (a parity's pixels are not one evenly strided matrix of `y`);
//! - input gradient: a gather over all four parities, a 4x4 stride-2 convolution of
//!   `dy`: input pixel `(iy, jx)` reads output pixel `(2iy+2-a-2ty, 2jx+2-b-2tx)`
//!   through `w[a][b][ty][tx]ᵀ`, so no two tasks write one pixel;
//! - weight gradient: `dw[a][b] = im2col_ab(x)ᵀ · dy_ab`, `db = Σ dy`, per fixed
//!   chunk of pixels and summed in chunk order (deterministic bits).

use rayon::prelude::*;

use super::im2col::{
    add_col_sums, gather_matmul, inner_par, matmul, relu_mask, sum_partials, transpose, Gather, Mat, BLOCK_PIXELS,
};
use super::Real;
use crate::backend::view_len;
use crate::backend::DeconvParams;

/// Input taps of output parity `(a, b)`, in `(ty, tx)` order: `(a+ty-1, b+tx-1)`.
fn parity_taps(a: usize, b: usize) -> [(isize, isize); 4] {
    let (a, b) = (a as isize, b as isize);
    [(a - 1, b - 1), (a - 1, b), (a, b - 1), (a, b)]
}

/// The im2col of `x` for output parity `(a, b)`: one row per input-grid pixel.
fn gather_x<'a, T>(x: &'a [T], taps: &'a [(isize, isize)], p: &DeconvParams) -> Gather<'a, T> {
    Gather {
        src: x,
        src_pitch: p.x_pitch,
        channels: p.c,
        src_h: p.h,
        src_w: p.w,
        out_h: p.h,
        out_w: p.w,
        stride: 1,
        taps,
    }
}

/// Pixels of the `[N,2H,2W,K]` output read on the `[N,H,W]` input grid: pixel
/// `(n, i, j)` gathers output pixels `(n, 2i + dh, 2j + dw)` for each tap.
fn gather_dy<'a, T>(dy: &'a [T], taps: &'a [(isize, isize)], p: &DeconvParams) -> Gather<'a, T> {
    Gather {
        src: dy,
        src_pitch: p.y_pitch,
        channels: p.k,
        src_h: p.out_h(),
        src_w: p.out_w(),
        out_h: p.h,
        out_w: p.w,
        stride: 2,
        taps,
    }
}

/// Panics unless the slices hold the operands `p` describes (the backend checks
/// this before calling, so a failure is a bug in the caller).
fn check_lens(y: usize, x: usize, w: usize, b: usize, p: &DeconvParams) {
    assert!(p.x_pitch >= p.c && p.y_pitch >= p.k, "deconv: pitch smaller than channels in {p:?}");
    assert!(y >= view_len(p.n * p.out_h() * p.out_w(), p.k, p.y_pitch), "deconv: y too short for {p:?}");
    assert!(x >= view_len(p.n * p.h * p.w, p.c, p.x_pitch), "deconv: x too short for {p:?}");
    assert!(w >= p.weight_len() && b >= p.k, "deconv: weights too short for {p:?}");
}

/// Forward: `y[n, 2i+a, 2j+b, k] = relu?(b[k] + Σ_{ty,tx,c} x[n, i-1+a+ty, j-1+b+tx, c]
/// · w[a][b][ty][tx][c][k])`, `x` zero outside the image. Overwrites the `K`
/// channels of every pixel of `y`.
pub fn deconv_forward<T: Real>(y: &mut [T], x: &[T], w: &[T], b: &[T], p: &DeconvParams) {
    check_lens(y.len(), x.len(), w.len(), b.len(), p);
    let (c, k, pitch) = (p.c, p.k, p.y_pitch);
    let in_rows = p.n * p.h;
    let len = view_len(p.n * p.out_h() * p.out_w(), k, pitch);
    if len == 0 {
        return;
    }
    // Blocks of whole input rows: input rows r0..r1 own output rows 2*r0..2*r1,
    // one contiguous run of `y`, so the tasks' output chunks are disjoint.
    let rows_per_block = (BLOCK_PIXELS / p.w).max(1);
    let par = inner_par(in_rows.div_ceil(rows_per_block));
    let out_row_pixels = 2 * p.out_w();
    let bias = &b[..k];
    y[..len].par_chunks_mut(rows_per_block * out_row_pixels * pitch).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(col, prod), (bi, block)| {
            let r0 = bi * rows_per_block;
            let rows = rows_per_block.min(in_rows - r0);
            let q = rows * p.w;
            prod.resize(q * k, T::zero());
            for ab in 0..4 {
                let (a, b) = (ab / 2, ab % 2);
                let taps = parity_taps(a, b);
                let g = gather_x(x, &taps, p);
                let lhs = g.rows(col, r0 * p.w, q);
                let rhs = Mat { data: &w[ab * 4 * c * k..][..4 * c * k], rs: k, cs: 1 };
                matmul(prod, k, false, lhs, rhs, q, k, 4 * c, par);
                scatter_parity(block, prod, rows, a, b, bias, p);
            }
        },
    );
}

/// Writes `relu?(prod + b)` (`[rows*W, K]`, dense) to the output pixels of parity
/// `(a, b)` of the input rows of `block` (whose first pixel is output row `2*r0`).
fn scatter_parity<T: Real>(block: &mut [T], prod: &[T], rows: usize, a: usize, b: usize, bias: &[T], p: &DeconvParams) {
    let (k, pitch, qw) = (p.k, p.y_pitch, p.out_w());
    for r in 0..rows {
        for j in 0..p.w {
            let out = ((2 * r + a) * qw + 2 * j + b) * pitch;
            let src = &prod[(r * p.w + j) * k..][..k];
            for ((v, &s), &bias) in block[out..out + k].iter_mut().zip(src).zip(bias) {
                let z = s + bias;
                *v = if p.relu && z <= T::zero() { T::zero() } else { z };
            }
        }
    }
}

/// Backward of [`deconv_forward`]. `dy` is the gradient of the post-ReLU output `y`;
/// with `p.relu` it is first masked in place by `y > 0`. Then `dw`
/// (`[a][b][ty][tx][C][K]`) and `db` are overwritten; `dx`, when given, is
/// overwritten or, with `dx_add`, added into. Only channel elements are touched.
#[allow(clippy::too_many_arguments)]
pub fn deconv_backward<T: Real>(
    dx: Option<&mut [T]>,
    dx_add: bool,
    dw: &mut [T],
    db: &mut [T],
    dy: &mut [T],
    y: &[T],
    x: &[T],
    w: &[T],
    p: &DeconvParams,
) {
    check_lens(dy.len(), x.len(), dw.len(), db.len(), p);
    check_lens(y.len(), x.len(), w.len(), db.len(), p);
    if p.relu {
        relu_mask(dy, y, p.n * p.out_h() * p.out_w(), p.k, p.y_pitch);
    }
    let dy: &[T] = dy;
    bwd_filter(&mut dw[..p.weight_len()], &mut db[..p.k], dy, x, p);
    if let Some(dx) = dx {
        assert!(dx.len() >= view_len(p.n * p.h * p.w, p.c, p.x_pitch), "deconv: dx too short for {p:?}");
        let (taps, wmat) = bwd_data_weight(w, p);
        let g = gather_dy(dy, &taps, p);
        gather_matmul(dx, p.x_pitch, p.c, dx_add, &g, p.n, &wmat, |_, _| ());
    }
}

/// `dw[a][b] = im2col_ab(x)ᵀ · dy_ab` and `db = Σ dy`, over blocks of input-grid
/// pixels, deterministically. Every output pixel is in exactly one `dy_ab`.
fn bwd_filter<T: Real>(dw: &mut [T], db: &mut [T], dy: &[T], x: &[T], p: &DeconvParams) {
    let pixels = p.n * p.h * p.w;
    let (c, k) = (p.c, p.k);
    sum_partials(pixels.div_ceil(BLOCK_PIXELS), dw, db, |blocks, dw, db, par| {
        let (mut col, mut dy_col) = (Vec::new(), Vec::new());
        for bi in blocks {
            let p0 = bi * BLOCK_PIXELS;
            let rows = BLOCK_PIXELS.min(pixels - p0);
            for ab in 0..4 {
                let (a, b) = (ab / 2, ab % 2);
                let dw = &mut dw[ab * 4 * c * k..][..4 * c * k];
                let x_taps = parity_taps(a, b);
                let g = gather_x(x, &x_taps, p);
                let cols = g.rows(&mut col, p0, rows);
                let dy_tap = [(a as isize, b as isize)];
                let gy = gather_dy(dy, &dy_tap, p);
                let rhs = gy.rows(&mut dy_col, p0, rows);
                let lhs = Mat { data: cols.data, rs: cols.cs, cs: cols.rs };
                matmul(dw, k, true, lhs, rhs, 4 * c, k, rows, par);
                add_col_sums(db, rhs, rows);
            }
        }
    });
}

/// The taps and the `[16K, C]` weight of the input gradient as a gather of `dy`:
/// tap `t = ((a*2+b)*2+ty)*2+tx` reads output pixel `(2i+2-a-2ty, 2j+2-b-2tx)`
/// (which is `(2i'+a, 2j'+b)` with `i = i'-1+a+ty`, the forward's relation; it is
/// outside the output exactly when `i'` is outside the input) through
/// `w[a][b][ty][tx]ᵀ`.
fn bwd_data_weight<T: Real>(w: &[T], p: &DeconvParams) -> (Vec<(isize, isize)>, Vec<T>) {
    let (c, k) = (p.c, p.k);
    let mut taps = Vec::with_capacity(16);
    let mut wmat = vec![T::zero(); p.weight_len()];
    for t in 0..16isize {
        let (a, b, ty, tx) = ((t >> 3) & 1, (t >> 2) & 1, (t >> 1) & 1, t & 1);
        taps.push((2 - a - 2 * ty, 2 - b - 2 * tx));
        transpose(&mut wmat[t as usize * k * c..][..k * c], &w[t as usize * c * k..][..c * k], c, k);
    }
    (taps, wmat)
}
