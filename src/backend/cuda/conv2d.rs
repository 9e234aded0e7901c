//! Launchers of `kernels/conv2d.cu` and `kernels/conv2d_mma.cu`: the R×R (R = 1 or
//! 3) "same" convolution as implicit GEMM, forward and backward (formulas and shapes:
//! `backend::cpu::conv2d`, kernel design: the headers of the two kernel files).
//!
//! Every launch goes check (shapes, operand bounds, disjoint outputs, sizes that fit
//! the kernels' `int` indices) → workspace (the weight gradient's split-K partials,
//! from the backend's reused scratch) → arguments → one launch. The geometry is computed here once, so the emulator runs
//! exactly the grid the GPU runs.
//!
//! The forward pass and the input gradient run `conv2d_fwd_f32` / `conv2d_bwd_data_f32`,
//! or their `_f32_mma` twins (bf16 products on tensor cores, same arguments and grid,
//! 128 threads) when the backend's [`Precision`](super::Precision) is bf16; so does the
//! weight gradient (`conv2d_bwd_filter_f32_mma`, whose bias gradient stays an f32 sum).
//!
//! Path choice: the kernels take a `vec` bit set saying which operands may be moved
//! 16 bytes at a time (channel count, pitch and element offset all multiples of 4,
//! device address 16-byte aligned); anything else takes the scalar path, which handles
//! every shape.
//!
//! Backward, in this order:
//! 1. with `relu`, `relu_mask_f32` (`backward::relu_mask`) masks `dy` in place by
//!    `y > 0`: the [`Backend`](crate::backend::Backend) contract says `dy` is masked
//!    in place, and masking once is cheaper than masking inside the GEMMs, which read
//!    each element of `dy` R·R·⌈C/64⌉ (dx) or ⌈R·R·C/64⌉ (dw) times and would read `y`
//!    as often;
//! 2. `conv2d_bwd_filter_f32`: `dw` and `db`, split-K over pixel chunks
//!    (`backward::split_k`) into the planned scratch (reused, not zeroed), then
//!    `sum_partials_f32` adds the partials of each in split order (no float atomics:
//!    the bits depend only on the shapes); with a single split the kernel writes `dw`
//!    and `db` directly and no workspace is used;
//! 3. `conv2d_bwd_data_f32`: `dx` written or added into, unless [`GradIn::Skip`].

use super::backward::{relu_mask, split_k, sum_partials};
use super::{addresses, blocks, int, vec4_ok, vec_bits, Arg, Executor, Geometry, Kernel, Kernels, Operand};
use crate::backend::{view_len, At, Conv2dParams, GradIn};
use crate::error::{Error, Result};

const MODULE: &str = "conv2d";
/// The tensor-core twins (`Precision::Bf16`).
const MODULE_MMA: &str = "conv2d_mma";
const FWD: Kernel = Kernel { module: MODULE, name: "conv2d_fwd_f32" };
const FWD_MMA: Kernel = Kernel { module: MODULE_MMA, name: "conv2d_fwd_f32_mma" };
/// Threads per block of the `conv2d_*_f32_mma` kernels (their `KERNEL_BOUNDS`; same
/// tiles, grids and split-K chunks as the f32 kernels).
const MMA_THREADS: u32 = 128;
const BWD_DATA: Kernel = Kernel { module: MODULE, name: "conv2d_bwd_data_f32" };
const BWD_DATA_MMA: Kernel = Kernel { module: MODULE_MMA, name: "conv2d_bwd_data_f32_mma" };
const BWD_FILTER: Kernel = Kernel { module: MODULE, name: "conv2d_bwd_filter_f32" };
const BWD_FILTER_MMA: Kernel = Kernel { module: MODULE_MMA, name: "conv2d_bwd_filter_f32_mma" };

/// Output tile edge of the GEMM kernels (pixels or filter rows × channels): their
/// engines' BM and BN.
const TILE: usize = 64;
/// Reduction step of the f32 GEMM kernels (their engine's BK); weight-gradient chunks
/// are multiples.
const K_TILE: usize = 16;
/// Threads per block of the f32 kernels (their `KERNEL_BOUNDS`).
const THREADS: u32 = 256;
/// The weight gradient aims for about this many blocks (a few waves on a 132-SM GPU
/// at 2–3 resident blocks per SM) by splitting the pixel reduction ...
const BWD_FILTER_TARGET_BLOCKS: usize = 512;
/// ... but into no more splits than one per this many pixels: each split costs one
/// 64×64 partial tile written and read back, about what 128 pixels × 128 inputs cost
/// to load.
const BWD_FILTER_MIN_CHUNK: usize = 128;
/// Most blocks in grid y and z.
const GRID_YZ_MAX: usize = 65535;

/// Extents of the operands of `p`, after checking the parameters.
struct Sizes {
    pixels: usize,
    x_len: usize,
    y_len: usize,
}

/// Checks `p` and that every index the kernels form fits in an `int`.
fn sizes(op: &str, p: &Conv2dParams) -> Result<Sizes> {
    if p.r != 1 && p.r != 3 {
        return Err(Error::shape(op, "filter size 1 or 3", p.r));
    }
    if p.x_pitch < p.c || p.y_pitch < p.k {
        return Err(Error::shape(
            op,
            "pixel pitches of at least the channel counts",
            format!("x_pitch {} for C {}, y_pitch {} for K {}", p.x_pitch, p.c, p.y_pitch, p.k),
        ));
    }
    if p.c.max(p.k) > GRID_YZ_MAX * TILE {
        return Err(Error::shape(op, format!("at most {} channels", GRID_YZ_MAX * TILE), p.c.max(p.k)));
    }
    let too_big = || Error::shape(op, "every operand index below 2^31", format!("{p:?}"));
    let pixels = p.n.checked_mul(p.h).and_then(|v| v.checked_mul(p.w)).ok_or_else(too_big)?;
    // The largest intermediate index: a pixel (up to a tile past the end) plus a tap's
    // reach of one row and one pixel, times the pitch; and the pixel range of the last
    // weight-gradient split (under two times the pixels).
    let reach = |pitch: usize, ch: usize| pixels.checked_add(p.w + 1 + TILE)?.checked_mul(pitch)?.checked_add(ch);
    let biggest = [
        reach(p.x_pitch, p.c),
        reach(p.y_pitch, p.k),
        pixels.checked_mul(p.k.max(p.c)),
        pixels.checked_mul(2).and_then(|v| v.checked_add(2 * TILE)),
        p.r.checked_mul(p.r * p.c).and_then(|v| v.checked_mul(p.k)),
    ];
    if biggest.iter().any(|v| v.is_none_or(|v| v > i32::MAX as usize)) {
        return Err(too_big());
    }
    Ok(Sizes { pixels, x_len: view_len(pixels, p.c, p.x_pitch), y_len: view_len(pixels, p.k, p.y_pitch) })
}

/// The `int` arguments every GEMM kernel takes after its pointers: N, H, W, C, K, R.
fn dims(op: &str, p: &Conv2dParams) -> Result<[Arg; 6]> {
    Ok([int(op, p.n)?, int(op, p.h)?, int(op, p.w)?, int(op, p.c)?, int(op, p.k)?, int(op, p.r)?])
}

fn geometry(grid: [u32; 3]) -> Geometry {
    Geometry { grid, block: [THREADS, 1, 1], smem_bytes: 0 }
}

/// Launches `conv2d_fwd_f32`: `y = relu?(conv(x, w) + b)`, one 64-pixel × 64-channel
/// tile per block.
pub fn forward<E: Executor>(
    k: &Kernels<E>,
    y: At<Kernels<E>>,
    x: At<Kernels<E>>,
    w: At<Kernels<E>>,
    b: At<Kernels<E>>,
    p: &Conv2dParams,
) -> Result<()> {
    const OP: &str = "conv2d_forward";
    let s = sizes(OP, p)?;
    let ops = [
        Operand { name: "y", at: y, len: s.y_len, write: true },
        Operand { name: "x", at: x, len: s.x_len, write: false },
        Operand { name: "w", at: w, len: p.weight_len(), write: false },
        Operand { name: "b", at: b, len: p.k, write: false },
    ];
    let [ya, xa, wa, ba] = addresses(&k.exec, OP, &ops)?[..] else { unreachable!("four operands") };
    if s.y_len == 0 {
        return Ok(());
    }

    let vec = vec_bits(vec4_ok(p.c, p.x_pitch, xa), vec4_ok(p.k, p.k, wa), vec4_ok(p.k, p.y_pitch, ya));
    let mut geom = geometry([blocks(s.pixels, TILE), blocks(p.k, TILE), 1]);
    let mut args = vec![Arg::Ptr(ya), Arg::Ptr(xa), Arg::Ptr(wa), Arg::Ptr(ba)];
    args.extend(dims(OP, p)?);
    args.extend([int(OP, p.x_pitch)?, int(OP, p.y_pitch)?, Arg::I32(p.relu as i32), Arg::I32(vec)]);
    geom.block[0] = k.precision.pick(THREADS, MMA_THREADS);
    k.exec.launch(k.precision.pick(FWD, FWD_MMA), &geom, &args)
}

/// Launches the backward kernels (see the module doc): `dy` masked in place when
/// `p.relu`, `dw` and `db` overwritten, `dx` written, added into, or skipped.
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
    p: &Conv2dParams,
) -> Result<()> {
    const OP: &str = "conv2d_backward";
    let s = sizes(OP, p)?;
    let (dx, add) = match dx {
        GradIn::Skip => (None, false),
        GradIn::Write(at) => (Some(at), false),
        GradIn::Add(at) => (Some(at), true),
    };
    let mut ops = vec![
        Operand { name: "dw", at: dw, len: p.weight_len(), write: true },
        Operand { name: "db", at: db, len: p.k, write: true },
        Operand { name: "dy", at: dy, len: s.y_len, write: true },
        Operand { name: "y", at: y, len: s.y_len, write: false },
        Operand { name: "x", at: x, len: s.x_len, write: false },
        Operand { name: "w", at: w, len: p.weight_len(), write: false },
    ];
    if let Some(at) = dx {
        ops.push(Operand { name: "dx", at, len: s.x_len, write: true });
    }
    let addrs = addresses(&k.exec, OP, &ops)?;
    let [dwa, dba, dya, ya, xa, wa] = addrs[..6] else { unreachable!("six operands") };

    if p.relu {
        relu_mask(k, "conv2d_backward (relu mask)", dya, ya, s.pixels, p.k, p.y_pitch)?;
    }
    bwd_filter(k, dwa, dba, xa, dya, s.pixels, p)?;
    match addrs.get(6) {
        Some(&dxa) => bwd_data(k, dxa, dya, wa, add, s.pixels, p),
        None => Ok(()),
    }
}

/// `conv2d_bwd_filter_f32` or `_f32_mma` (+ `sum_partials_f32` for each of `dw` and
/// `db` when split): `dw`, `db`.
fn bwd_filter<E: Executor>(
    k: &Kernels<E>,
    dwa: u64,
    dba: u64,
    xa: u64,
    dya: u64,
    pixels: usize,
    p: &Conv2dParams,
) -> Result<()> {
    const OP: &str = "conv2d_backward (bwd_filter)";
    let rows = p.r * p.r * p.c;
    let wlen = rows * p.k;
    if p.k == 0 {
        return Ok(());
    }
    let tiles = [blocks(rows, TILE), blocks(p.k, TILE)];
    let (splits, chunk) = split_k(
        pixels,
        tiles[0] as usize * tiles[1] as usize,
        BWD_FILTER_TARGET_BLOCKS,
        BWD_FILTER_MIN_CHUNK,
        GRID_YZ_MAX,
        K_TILE,
    );

    // The workspace (reused, not zeroed: every split writes its whole partial):
    // partials [splits][rows][K] then db partials [splits][K].
    let workspace = if splits > 1 {
        let len = splits.checked_mul(wlen + p.k).filter(|&l| l <= i32::MAX as usize);
        let len = len.ok_or_else(|| Error::shape(OP, "a split-K workspace below 2^31 elements", format!("{p:?}")))?;
        Some(k.scratch(OP, len)?)
    } else {
        None
    };
    let (part, db_part) = match &workspace {
        Some(ws) => (ws.at(0), ws.at(splits * wlen)),
        None => (dwa, dba),
    };

    let vec = vec_bits(vec4_ok(p.c, p.x_pitch, xa), vec4_ok(p.k, p.y_pitch, dya), vec4_ok(p.k, p.k, part));
    let mut geom = geometry([tiles[0], tiles[1], splits as u32]);
    let mut args = vec![Arg::Ptr(part), Arg::Ptr(db_part), Arg::Ptr(xa), Arg::Ptr(dya)];
    args.extend(dims(OP, p)?);
    args.extend([int(OP, p.x_pitch)?, int(OP, p.y_pitch)?, int(OP, chunk)?, Arg::I32(vec)]);
    geom.block[0] = k.precision.pick(THREADS, MMA_THREADS);
    k.exec.launch(k.precision.pick(BWD_FILTER, BWD_FILTER_MMA), &geom, &args)?;

    if workspace.is_some() {
        sum_partials(k, OP, dwa, part, wlen, splits)?;
        sum_partials(k, OP, dba, db_part, p.k, splits)?;
    }
    Ok(())
}

/// `conv2d_bwd_data_f32` (or `_f32_mma`): `dx (+)= conv(dy, w')`, one 64-pixel × 64-channel
/// tile per block.
fn bwd_data<E: Executor>(
    k: &Kernels<E>,
    dxa: u64,
    dya: u64,
    wa: u64,
    add: bool,
    pixels: usize,
    p: &Conv2dParams,
) -> Result<()> {
    const OP: &str = "conv2d_backward (bwd_data)";
    if pixels == 0 || p.c == 0 {
        return Ok(());
    }
    let vec = vec_bits(vec4_ok(p.k, p.y_pitch, dya), vec4_ok(p.k, p.k, wa), vec4_ok(p.c, p.x_pitch, dxa));
    let mut geom = geometry([blocks(pixels, TILE), blocks(p.c, TILE), 1]);
    let mut args = vec![Arg::Ptr(dxa), Arg::Ptr(dya), Arg::Ptr(wa)];
    args.extend(dims(OP, p)?);
    args.extend([int(OP, p.x_pitch)?, int(OP, p.y_pitch)?, Arg::I32(add as i32), Arg::I32(vec)]);
    geom.block[0] = k.precision.pick(THREADS, MMA_THREADS);
    k.exec.launch(k.precision.pick(BWD_DATA, BWD_DATA_MMA), &geom, &args)
}
