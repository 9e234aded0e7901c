//! The machinery the CPU convolutions share: a bounds-checked wrapper around
//! `gemm`, the im2col gather, the blocked "gather then multiply" loop, and the
//! deterministic sum of per-chunk weight-gradient partials.
//!
//! Every convolution here (conv forward, both input gradients, each output parity
//! of the transposed conv) has the same shape: each output pixel `(n, oh, ow)` reads
//! a fixed list of input pixels (`taps`), concatenates their channels into one row
//! of an im2col matrix, and multiplies that row by a `[taps*C, K]` weight matrix.
//! The output pixels are cut into blocks of [`GATHER_BLOCK_PIXELS`] (weight
//! gradients: [`BLOCK_PIXELS`]); each rayon task builds the im2col of its block in
//! its own buffer and runs a single-threaded GEMM on it. This keeps the im2col in
//! cache instead of streaming a whole-image matrix through memory (docs/ARCHITECTURE.md
//! §7: ~85% of oneDNN's throughput against ~74%).

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use super::Real;
use crate::backend::view_len;

/// Pixels per block of the weight gradients' reduction (the depth of each of their
/// GEMMs): with 3x3x512 inputs a block's im2col is 9 MiB in f32.
pub(super) const BLOCK_PIXELS: usize = 512;

/// Output pixels per im2col block of the forward and input-gradient products. 256
/// measured faster than 512 (interleaved runs on 2 cores: the forward pass 5–12%,
/// the 512x512 training step 3–4%; 1024 and 2048 slower still): a 3x3x256 block's
/// im2col (2.3 MiB) stays in cache while gemm packs it.
pub(super) const GATHER_BLOCK_PIXELS: usize = 256;

/// Most weight-gradient partials summed at the end of a backward pass. A fixed cap
/// (not the thread count) keeps the summation order, and so the bits of `dw`, the
/// same on every machine; 8 also bounds the extra memory to 8 weight tensors.
const MAX_PARTIALS: usize = 8;

/// Weight gradients of at least this many elements are summed in place, block after
/// block with a multi-threaded GEMM, instead of in per-chunk partials: their partials
/// would be tens of MiB each to allocate and add up (a 3x3 768→512 weight is 14 MiB),
/// and their GEMMs are large enough to split over the threads by output tiles. The
/// choice depends on the shape only, so the bits still do not depend on the threads.
const IN_PLACE_WEIGHTS: usize = 1 << 20;

/// A read-only strided matrix: element `(i, j)` is `data[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// Largest element index of an `rows`×`cols` strided matrix, `None` when empty.
fn last_index(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    (rows > 0 && cols > 0).then(|| (rows - 1) * rs + (cols - 1) * cs)
}

/// `dst = [dst +] lhs · rhs` with `dst` `m`×`n` (row stride `dst_rs`, unit column
/// stride), `lhs` `m`×`k`, `rhs` `k`×`n`; with `k == 0` and no accumulation, `dst`
/// becomes zero. Only the `m`×`n` elements of `dst` are read or written, so the gaps
/// of a pitched view stay untouched.
///
/// Panics if an operand does not fit its slice: callers size everything, so that
/// is a bug here, and the check is what makes the raw-pointer call below sound.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul<T: Real>(
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    m: usize,
    n: usize,
    k: usize,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(m == 1 || dst_rs >= n, "matmul: rows of dst overlap");
    assert!(last_index(m, n, dst_rs, 1).is_some_and(|i| i < dst.len()), "matmul: dst out of bounds");
    assert!(last_index(m, k, lhs.rs, lhs.cs).is_none_or(|i| i < lhs.data.len()), "matmul: lhs out of bounds");
    assert!(last_index(k, n, rhs.rs, rhs.cs).is_none_or(|i| i < rhs.data.len()), "matmul: rhs out of bounds");
    let one = T::one();
    // SAFETY: every element gemm touches lies inside the slices checked above (it
    // reads lhs/rhs and reads/writes dst only at the m×n, m×k and k×n strided
    // positions); `dst` is a unique borrow, so nothing else aliases it. `T` is f32
    // or f64 (the only `Real`s), which gemm supports; alpha = 1 with `read_dst`
    // adds, and `read_dst = false` never reads dst, so poisoned outputs are fine.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            one,
            one,
            false,
            false,
            false,
            par,
        )
    }
}

/// GEMM threading for `tasks` concurrent products: let gemm use the pool only when
/// our own tasks cannot fill it. gemm splits output tiles among threads and never
/// the depth, so the result does not depend on this choice.
pub(super) fn inner_par(tasks: usize) -> Parallelism {
    if tasks < rayon::current_num_threads() {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// Where the im2col row of an output pixel comes from. For output pixel
/// `(n, oh, ow)` of an `out_h`×`out_w` grid, tap `t` is input pixel
/// `(n, stride*oh + taps[t].0, stride*ow + taps[t].1)` of the `src_h`×`src_w` grid
/// (zeros outside it), and the row is the `channels` channels of each tap in order.
pub(super) struct Gather<'a, T> {
    pub src: &'a [T],
    pub src_pitch: usize,
    pub channels: usize,
    pub src_h: usize,
    pub src_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub stride: usize,
    pub taps: &'a [(isize, isize)],
}

impl<T: Real + Send + Sync> Gather<'_, T> {
    /// Columns of the im2col matrix.
    pub fn width(&self) -> usize {
        self.taps.len() * self.channels
    }

    /// True when the im2col matrix is the source itself (a 1x1 convolution), so
    /// it can be read in place with row stride `src_pitch`.
    fn is_identity(&self) -> bool {
        self.taps == [(0, 0)] && self.stride == 1 && (self.src_h, self.src_w) == (self.out_h, self.out_w)
    }

    /// The im2col rows of output pixels `p0..p0 + rows` (flat `(n, oh, ow)` index) as
    /// a matrix: the source in place when possible, else gathered into `col`.
    pub fn rows<'b>(&'b self, col: &'b mut Vec<T>, p0: usize, rows: usize) -> Mat<'b, T> {
        let width = self.width();
        if self.is_identity() {
            let start = (p0 * self.src_pitch).min(self.src.len());
            return Mat { data: &self.src[start..], rs: self.src_pitch, cs: 1 };
        }
        col.resize(rows * width, T::zero());
        // A large gather (deep layers: 512 pixels of 3x3x768) is a few MiB of
        // copying; split it over the threads (a copy: the threads change no bits).
        const PAR_ROWS: usize = 32;
        if rows * width >= 1 << 18 {
            col[..rows * width]
                .par_chunks_mut(PAR_ROWS * width)
                .enumerate()
                .for_each(|(i, c)| self.fill(c, p0 + i * PAR_ROWS));
        } else {
            self.fill(&mut col[..rows * width], p0);
        }
        Mat { data: col, rs: width, cs: 1 }
    }

    /// Writes every element of `col` (whole rows of `width()` columns, starting at
    /// output pixel `p0`): the padding taps as zeros.
    fn fill(&self, col: &mut [T], p0: usize) {
        let (c, width) = (self.channels, self.width());
        if width == 0 {
            return;
        }
        let (mut ow, mut oh, mut n) = (p0 % self.out_w, (p0 / self.out_w) % self.out_h, p0 / (self.out_w * self.out_h));
        let (sh, sw) = (self.src_h as isize, self.src_w as isize);
        for row in col.chunks_exact_mut(width) {
            let (bh, bw) = ((self.stride * oh) as isize, (self.stride * ow) as isize);
            for (dst, &(dh, dw)) in row.chunks_exact_mut(c).zip(self.taps) {
                let (ih, iw) = (bh + dh, bw + dw);
                if (0..sh).contains(&ih) && (0..sw).contains(&iw) {
                    let s = ((n * self.src_h + ih as usize) * self.src_w + iw as usize) * self.src_pitch;
                    dst.copy_from_slice(&self.src[s..s + c]);
                } else {
                    dst.fill(T::zero());
                }
            }
            ow += 1;
            if ow == self.out_w {
                ow = 0;
                oh += 1;
                if oh == self.out_h {
                    oh = 0;
                    n += 1;
                }
            }
        }
    }
}

/// For all `batch`×`out_h`×`out_w` output pixels of `g`:
/// `out[p, 0..k] = [out[p] +] im2col(p) · wmat` with `wmat` `[g.width(), k]`
/// row-major, then `epilogue(block, rows)` on each block of output rows (the block
/// slice starts at the block's first pixel; pixels are `out_pitch` apart).
#[allow(clippy::too_many_arguments)]
pub(super) fn gather_matmul<T: Real>(
    out: &mut [T],
    out_pitch: usize,
    k: usize,
    accumulate: bool,
    g: &Gather<T>,
    batch: usize,
    wmat: &[T],
    epilogue: impl Fn(&mut [T], usize) + Sync,
) {
    let pixels = batch * g.out_h * g.out_w;
    let len = view_len(pixels, k, out_pitch);
    if len == 0 {
        return;
    }
    let nblocks = pixels.div_ceil(GATHER_BLOCK_PIXELS);
    let par = inner_par(nblocks);
    let rhs = Mat { data: wmat, rs: k, cs: 1 };
    // Blocks of whole pixels: chunk i holds pixels i*BLOCK.. of the view, so the
    // chunks are disjoint and each task writes only its own output rows.
    out[..len].par_chunks_mut(GATHER_BLOCK_PIXELS * out_pitch).enumerate().for_each_init(
        Vec::new,
        |col, (bi, block)| {
            let p0 = bi * GATHER_BLOCK_PIXELS;
            let rows = GATHER_BLOCK_PIXELS.min(pixels - p0);
            let lhs = g.rows(col, p0, rows);
            matmul(block, out_pitch, accumulate, lhs, rhs, rows, k, g.width(), par);
            epilogue(block, rows);
        },
    );
}

/// `y[p, 0..k] = relu?(y[p] + b)` for the `rows` pixels of `block`, `pitch` apart.
pub(super) fn bias_relu<T: Real>(block: &mut [T], rows: usize, pitch: usize, b: &[T], relu: bool) {
    for p in 0..rows {
        for (v, &bias) in block[p * pitch..p * pitch + b.len()].iter_mut().zip(b) {
            let z = *v + bias;
            *v = if relu && z <= T::zero() { T::zero() } else { z };
        }
    }
}

/// The ReLU backward, in place: zeroes `dy` where `y <= 0` (PyTorch's
/// `threshold_backward`), over `pixels` pixels of `k` channels, `pitch` apart.
pub(super) fn relu_mask<T: Real>(dy: &mut [T], y: &[T], pixels: usize, k: usize, pitch: usize) {
    let len = view_len(pixels, k, pitch);
    if len == 0 {
        return;
    }
    let chunk = BLOCK_PIXELS * pitch;
    dy[..len].par_chunks_mut(chunk).zip(y[..len].par_chunks(chunk)).for_each(|(d, y)| {
        for (d, y) in d.chunks_mut(pitch).zip(y.chunks(pitch)) {
            // A select written back unconditionally (not a conditional store): it
            // vectorises, where the branch on y compiled to one store per lane.
            for (d, &y) in d[..k].iter_mut().zip(&y[..k]) {
                *d = if y <= T::zero() { T::zero() } else { *d };
            }
        }
    });
}

/// `db[j] += Σ_p rows[p, j]` over `rows` rows `rs` apart, in row order.
pub(super) fn add_col_sums<T: Real>(db: &mut [T], m: Mat<T>, rows: usize) {
    if db.is_empty() {
        return;
    }
    for p in 0..rows {
        for (d, &v) in db.iter_mut().zip(&m.data[p * m.rs..]) {
            *d += v;
        }
    }
}

/// Weight and bias gradients summed over `nblocks` blocks of pixels, deterministically.
///
/// `accumulate(blocks, dw, db, par)` adds the contribution of a range of blocks, in
/// order, into zeroed buffers. Weights of [`IN_PLACE_WEIGHTS`] or more get one call
/// over all blocks with a multi-threaded GEMM. Smaller ones: the blocks are split
/// into at most [`MAX_PARTIALS`] contiguous chunks (a number that depends only on
/// `nblocks`), the chunks run in parallel into partials, and the partials are
/// summed in chunk order. Either way the bits depend on the shapes only. `dw` and
/// `db` are overwritten.
pub(super) fn sum_partials<T: Real>(
    nblocks: usize,
    dw: &mut [T],
    db: &mut [T],
    accumulate: impl Fn(Range<usize>, &mut [T], &mut [T], Parallelism) + Sync,
) {
    dw.fill(T::zero());
    db.fill(T::zero());
    if dw.len() >= IN_PLACE_WEIGHTS {
        // Large weights (the deep layers): one pass over the blocks in order, each
        // product split over the threads by gemm, straight into dw.
        accumulate(0..nblocks, dw, db, Parallelism::Rayon(0));
        return;
    }
    let nchunks = nblocks.min(MAX_PARTIALS);
    if nchunks == 0 {
        return;
    }
    let par = inner_par(nchunks);
    let blocks = |i: usize| i * nblocks / nchunks..(i + 1) * nblocks / nchunks;
    // Chunk 0 accumulates straight into the outputs; the others into partials.
    let mut parts: Vec<(Vec<T>, Vec<T>)> =
        (1..nchunks).map(|_| (vec![T::zero(); dw.len()], vec![T::zero(); db.len()])).collect();
    rayon::join(
        || accumulate(blocks(0), dw, db, par),
        || parts.par_iter_mut().enumerate().for_each(|(i, (pw, pb))| accumulate(blocks(i + 1), pw, pb, par)),
    );
    const SPAN: usize = 1 << 14;
    dw.par_chunks_mut(SPAN).enumerate().for_each(|(i, d)| {
        for (pw, _) in &parts {
            for (d, &v) in d.iter_mut().zip(&pw[i * SPAN..]) {
                *d += v;
            }
        }
    });
    for (_, pb) in &parts {
        for (d, &v) in db.iter_mut().zip(pb) {
            *d += v;
        }
    }
}

/// `dst[j·rows + i] = src[i·cols + j]`: the transpose of a row-major `rows`×`cols`
/// matrix. Done in 32×32 tiles so that both sides stay in cache (a plain loop writes
/// with stride `rows` and ran at ~6 ms for one 512→512 3x3 weight), in parallel over
/// bands of destination rows. A pure copy: the result does not depend on threads.
pub(super) fn transpose<T: Real>(dst: &mut [T], src: &[T], rows: usize, cols: usize) {
    const TILE: usize = 32;
    dst[..rows * cols].par_chunks_mut(TILE * rows).enumerate().for_each(|(band, d)| {
        let j0 = band * TILE;
        let jn = (cols - j0).min(TILE);
        for i0 in (0..rows).step_by(TILE) {
            for i in i0..(i0 + TILE).min(rows) {
                let row = &src[i * cols + j0..][..jn];
                for (jj, &v) in row.iter().enumerate() {
                    d[jj * rows + i] = v;
                }
            }
        }
    });
}
