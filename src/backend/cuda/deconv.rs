//! Launchers of `kernels/deconv.cu` and `kernels/deconv_mma.cu`: the 4x4 / stride 2 /
//! padding 1 transposed
//! convolution, forward (four sub-pixel implicit GEMMs, bias and ReLU fused) and
//! backward (ReLU mask, split-K weight gradient with a deterministic reduction,
//! bias gradient, gather input gradient).
//!
//! Each launcher checks the shapes with the CPU backend's rules, every operand
//! against its buffer and every extent against the kernels' `int` arithmetic, then
//! takes the workspace it needs (the backend's reused scratch), computes each geometry once (the GPU and the
//! emulator run the same one) and launches each kernel once. The number of split-K
//! chunks depends only on the shape, so results are the same bits on every run.
//!
//! With the backend's [`Precision`](super::Precision) bf16 the three GEMM kernels are
//! their `_f32_mma` twins in `deconv_mma.cu` (bf16 products on tensor cores, same
//! arguments and geometry); the mask, the bias gradient and the partial sums stay f32.

use super::backward::{relu_mask, split_k, sum_partials};
use super::scratch::Workspace;
use super::{
    act_len, addresses, blocks, fits, int, vec4_ok, vec_bits, Arg, Executor, Geometry, Kernel, Kernels, Operand,
};
use crate::backend::{At, Backend, DeconvParams, GradIn};
use crate::error::{Error, Result};

/// Output rows and columns of a GEMM block (BM and BN of both files' engines).
const TILE: usize = 64;
/// Reduction depth of one pipeline stage (BK): split-K chunks are multiples of it.
const SLICE: usize = 16;
/// Threads per block of the GEMM kernels, f32 and mma (their `KERNEL_BOUNDS`).
const THREADS: u32 = 256;
/// Blocks the weight gradient aims for (a few waves on a 132-SM GPU); below that
/// its pixels are split into chunks ...
const FILTER_BLOCKS: usize = 512;
/// ... but into no more chunks than one per this many pixels.
const MIN_CHUNK: usize = 256;
/// The most floats of weight-gradient partials (256 MiB).
const MAX_PARTIALS: usize = 1 << 26;
/// Blocks the bias gradient aims for, and the pixels per chunk it splits at most into.
const BIAS_BLOCKS: usize = 256;
const MIN_BIAS_CHUNK: usize = 1024;

fn kernel(name: &'static str) -> Kernel {
    Kernel { module: "deconv", name }
}

/// A GEMM kernel: `name` from deconv.cu, or its `_mma` twin from deconv_mma.cu.
fn gemm_kernel<E: Executor>(k: &Kernels<E>, f32: &'static str, mma: &'static str) -> Kernel {
    k.precision.pick(kernel(f32), Kernel { module: "deconv_mma", name: mma })
}

/// A GEMM grid, checked against the driver's limits on y and z.
fn gemm_geometry(op: &str, x: usize, y: usize, z: usize) -> Result<Geometry> {
    if y > 65535 || z > 65535 {
        return Err(Error::shape(op, "grid y and z of at most 65535", format!("{y} x {z}")));
    }
    Ok(Geometry { grid: [x as u32, y as u32, z as u32], block: [THREADS, 1, 1], smem_bytes: 0 })
}

/// Launches `deconv_fwd_f32` (or `deconv_fwd_f32_mma` when the backend's
/// [`Precision`](super::Precision) is bf16: the same arguments and geometry): grid
/// (⌈N·H·W/64⌉, ⌈K/64⌉, 4 parities).
pub fn forward<E: Executor>(
    k: &Kernels<E>,
    y: At<Kernels<E>>,
    x: At<Kernels<E>>,
    w: At<Kernels<E>>,
    b: At<Kernels<E>>,
    p: &DeconvParams,
) -> Result<()> {
    let op = "deconv_forward";
    let pixels = p.n * p.h * p.w;
    let (yl, xl) = (act_len(op, p.n * p.out_h() * p.out_w(), p.k, p.y_pitch)?, act_len(op, pixels, p.c, p.x_pitch)?);
    let wl = fits(op, "operands", Some(p.weight_len()))?;
    let ops = [
        Operand { name: "y", at: y, len: yl, write: true },
        Operand { name: "x", at: x, len: xl, write: false },
        Operand { name: "w", at: w, len: wl, write: false },
        Operand { name: "b", at: b, len: p.k, write: false },
    ];
    let [ya, xa, wa, ba] = addresses(&k.exec, op, &ops)?[..] else { unreachable!("four operands") };
    if pixels == 0 || p.k == 0 {
        return Ok(());
    }
    let flags = vec_bits(vec4_ok(p.c, p.x_pitch, xa), vec4_ok(p.k, p.k, wa), vec4_ok(p.k, p.y_pitch, ya));
    let geom = gemm_geometry(op, blocks(pixels, TILE) as usize, blocks(p.k, TILE) as usize, 4)?;
    let args = [
        Arg::Ptr(ya),
        Arg::Ptr(xa),
        Arg::Ptr(wa),
        Arg::Ptr(ba),
        int(op, p.n)?,
        int(op, p.h)?,
        int(op, p.w)?,
        int(op, p.c)?,
        int(op, p.k)?,
        int(op, p.x_pitch)?,
        int(op, p.y_pitch)?,
        Arg::I32(p.relu as i32),
        Arg::I32(flags),
    ];
    k.exec.launch(gemm_kernel(k, "deconv_fwd_f32", "deconv_fwd_f32_mma"), &geom, &args)
}

/// Launches the backward: `relu_mask_f32` (with `p.relu`), the weight gradient
/// (`deconv_bwd_filter_f32`, then `sum_partials_f32` when split), the bias gradient
/// (`deconv_bias_grad_f32`, then `sum_partials_f32` when split) and, unless skipped,
/// `deconv_bwd_data_f32` (the `_f32_mma` GEMMs with `Precision::Bf16`).
#[allow(clippy::too_many_arguments)]
pub fn backward<E: Executor>(
    k: &Kernels<E>,
    dx: GradIn<Kernels<E>>,
    dw: At<Kernels<E>>,
    db: At<Kernels<E>>,
    dy: At<Kernels<E>>,
    y: At<Kernels<E>>,
    x: At<Kernels<E>>,
    w: At<Kernels<E>>,
    p: &DeconvParams,
) -> Result<()> {
    let op = "deconv_backward";
    let out_pixels = p.n * p.out_h() * p.out_w();
    let xl = act_len(op, p.n * p.h * p.w, p.c, p.x_pitch)?;
    let yl = act_len(op, out_pixels, p.k, p.y_pitch)?;
    let wl = fits(op, "operands", Some(p.weight_len()))?;
    let (dx, add) = match dx {
        GradIn::Skip => (None, false),
        GradIn::Write(at) => (Some(at), false),
        GradIn::Add(at) => (Some(at), true),
    };
    let mut ops = vec![
        Operand { name: "dw", at: dw, len: wl, write: true },
        Operand { name: "db", at: db, len: p.k, write: true },
        Operand { name: "dy", at: dy, len: yl, write: true },
        Operand { name: "y", at: y, len: yl, write: false },
        Operand { name: "x", at: x, len: xl, write: false },
        Operand { name: "w", at: w, len: wl, write: false },
    ];
    if let Some(at) = dx {
        ops.push(Operand { name: "dx", at, len: xl, write: true });
    }
    let addrs = addresses(&k.exec, op, &ops)?;
    let [dwa, dba, dya, ya, xa, wa] = addrs[..6] else { unreachable!("six operands") };
    let s = Operands { dw: dwa, db: dba, dy: dya, x: xa, w: wa };

    if p.relu {
        relu_mask(k, op, s.dy, ya, out_pixels, p.k, p.y_pitch)?;
    }
    if out_pixels == 0 {
        // No pixels: the parameter gradients are sums over nothing.
        k.zero(dw.buf, dw.off, wl)?;
        k.zero(db.buf, db.off, p.k)?;
    } else {
        bwd_filter(k, &s, p)?;
        bias_grad(k, &s, p)?;
    }
    match addrs.get(6) {
        Some(&dxa) if xl > 0 => bwd_data(k, dxa, add, &s, p),
        _ => Ok(()),
    }
}

/// The addresses of the checked operands the backward's kernels share.
struct Operands {
    dw: u64,
    db: u64,
    dy: u64,
    x: u64,
    w: u64,
}

/// Partials of `chunks` chunks of `len` floats: the backend's workspace when there
/// is more than one chunk (held by the caller until its launches are queued; every
/// chunk writes its whole partial, so it is not cleared), else the destination itself.
fn partials<'a, E: Executor>(
    k: &'a Kernels<E>,
    op: &str,
    dst: u64,
    chunks: usize,
    len: usize,
) -> Result<(Option<Workspace<'a, E::Mem>>, u64)> {
    if chunks == 1 {
        return Ok((None, dst));
    }
    let ws = k.scratch(op, fits(op, "operands", chunks.checked_mul(len))?)?;
    let addr = ws.at(0);
    Ok((Some(ws), addr))
}

/// `dw[a][b] = im2col_ab(x)ᵀ · dy_ab`, split over chunks of input-grid pixels so that
/// small layers still fill the GPU; the chunk count depends only on the shape.
fn bwd_filter<E: Executor>(k: &Kernels<E>, s: &Operands, p: &DeconvParams) -> Result<()> {
    let op = "deconv_backward (bwd_filter)";
    let len = p.weight_len();
    if len == 0 {
        return Ok(());
    }
    let pixels = p.n * p.h * p.w;
    let tiles = blocks(4 * p.c, TILE) as usize * blocks(p.k, TILE) as usize * 4;
    // Each chunk is 4 blocks in z (the parities): at most 65535 / 4 of them.
    let (chunks, chunk_len) =
        split_k(pixels, tiles, FILTER_BLOCKS, MIN_CHUNK, (MAX_PARTIALS / len).min(65535 / 4), SLICE);

    let (_ws, part) = partials(k, op, s.dw, chunks, len)?;
    let flags = vec_bits(vec4_ok(p.c, p.x_pitch, s.x), vec4_ok(p.k, p.y_pitch, s.dy), vec4_ok(p.k, p.k, part));
    let geom = gemm_geometry(op, blocks(4 * p.c, TILE) as usize, blocks(p.k, TILE) as usize, 4 * chunks)?;
    let args = [
        Arg::Ptr(part),
        Arg::Ptr(s.dy),
        Arg::Ptr(s.x),
        int(op, p.n)?,
        int(op, p.h)?,
        int(op, p.w)?,
        int(op, p.c)?,
        int(op, p.k)?,
        int(op, p.x_pitch)?,
        int(op, p.y_pitch)?,
        int(op, chunk_len)?,
        Arg::I32(flags),
    ];
    k.exec.launch(gemm_kernel(k, "deconv_bwd_filter_f32", "deconv_bwd_filter_f32_mma"), &geom, &args)?;
    if chunks > 1 {
        sum_partials(k, op, s.dw, part, len, chunks)?;
    }
    Ok(())
}

/// `db[k] = Σ dy[.., k]` over every output pixel, in chunks of pixels, then the
/// chunks in order.
fn bias_grad<E: Executor>(k: &Kernels<E>, s: &Operands, p: &DeconvParams) -> Result<()> {
    let op = "deconv_backward (bias gradient)";
    if p.k == 0 {
        return Ok(());
    }
    let pixels = p.n * p.out_h() * p.out_w();
    let groups = p.k.div_ceil(32);
    let (chunks, chunk_len) = split_k(pixels, groups, BIAS_BLOCKS, MIN_BIAS_CHUNK, 65535, 1);

    let (_ws, part) = partials(k, op, s.db, chunks, p.k)?;
    let geom = gemm_geometry(op, groups, chunks, 1)?;
    let args =
        [Arg::Ptr(part), Arg::Ptr(s.dy), int(op, pixels)?, int(op, p.k)?, int(op, p.y_pitch)?, int(op, chunk_len)?];
    k.exec.launch(kernel("deconv_bias_grad_f32"), &geom, &args)?;
    if chunks > 1 {
        sum_partials(k, op, s.db, part, p.k, chunks)?;
    }
    Ok(())
}

/// `dx` (written or added) as a gather GEMM over the 16 taps that read each input
/// pixel: grid (⌈N·H·W/64⌉, ⌈C/64⌉).
fn bwd_data<E: Executor>(k: &Kernels<E>, dxa: u64, add: bool, s: &Operands, p: &DeconvParams) -> Result<()> {
    let op = "deconv_backward (bwd_data)";
    let pixels = p.n * p.h * p.w;
    let flags = vec_bits(vec4_ok(p.k, p.y_pitch, s.dy), vec4_ok(p.k, p.k, s.w), vec4_ok(p.c, p.x_pitch, dxa));
    let geom = gemm_geometry(op, blocks(pixels, TILE) as usize, blocks(p.c, TILE) as usize, 1)?;
    let args = [
        Arg::Ptr(dxa),
        Arg::Ptr(s.dy),
        Arg::Ptr(s.w),
        int(op, p.n)?,
        int(op, p.h)?,
        int(op, p.w)?,
        int(op, p.c)?,
        int(op, p.k)?,
        int(op, p.x_pitch)?,
        int(op, p.y_pitch)?,
        Arg::I32(add as i32),
        Arg::I32(flags),
    ];
    k.exec.launch(gemm_kernel(k, "deconv_bwd_data_f32", "deconv_bwd_data_f32_mma"), &geom, &args)
}
