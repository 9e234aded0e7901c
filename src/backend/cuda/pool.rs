//! Launchers of `kernels/pool.cu`: 2x2 max pooling and global average / max pooling,
//! forward and backward.
//!
//! Each launcher checks the shapes with the CPU backend's rules (even H and W for 2x2
//! pooling, pitch ≥ channels), every operand against its buffer, and that every
//! extent fits the kernels' `int` arithmetic; then computes one geometry, used as is
//! by the GPU and by the emulator, and launches once. 16-byte accesses are enabled
//! only when every address, pitch and the channel count are multiples of 4 floats.

use super::scratch::Workspace;
use super::{
    act_len, addresses, fits, int, stride_geometry, vec4_ok, Arg, Executor, Geometry, Kernel, Kernels, Operand,
};
use crate::backend::{At, GlobalPoolParams, MaxPoolParams};
use crate::error::{Error, Result};

/// Threads per block of every pooling kernel (`THREADS` in pool.cu).
const THREADS: u32 = 256;
fn kernel(name: &'static str) -> Kernel {
    Kernel { module: "pool", name }
}

fn even_hw(op: &str, h: usize, w: usize) -> Result<()> {
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        return Err(Error::shape(op, "even H and W", format!("{h}x{w}")));
    }
    Ok(())
}

/// Launches `maxpool_fwd_f32`: one thread per output element (4 channels with `vec`).
pub fn maxpool_forward<E: Executor>(
    k: &Kernels<E>,
    y: At<Kernels<E>>,
    x: At<Kernels<E>>,
    p: &MaxPoolParams,
) -> Result<()> {
    let op = "maxpool_forward";
    even_hw(op, p.h, p.w)?;
    let out_pix = p.n * p.out_h() * p.out_w();
    let yl = act_len(op, out_pix, p.c, p.y_pitch)?;
    let xl = act_len(op, p.n * p.h * p.w, p.c, p.x_pitch)?;
    let ops = [Operand { name: "y", at: y, len: yl, write: true }, Operand { name: "x", at: x, len: xl, write: false }];
    let [ya, xa] = addresses(&k.exec, op, &ops)?[..] else { unreachable!("two operands") };
    if out_pix == 0 || p.c == 0 {
        return Ok(());
    }
    let vec = vec4_ok(p.c, p.x_pitch, xa) && vec4_ok(p.c, p.y_pitch, ya);
    let geom = stride_geometry(out_pix * if vec { p.c / 4 } else { p.c });
    let args = [
        Arg::Ptr(ya),
        Arg::Ptr(xa),
        int(op, p.n)?,
        int(op, p.h)?,
        int(op, p.w)?,
        int(op, p.c)?,
        int(op, p.x_pitch)?,
        int(op, p.y_pitch)?,
        Arg::I32(vec as i32),
    ];
    k.exec.launch(kernel("maxpool_fwd_f32"), &geom, &args)
}

/// Launches `maxpool_bwd_f32`: adds `dy` into `dx` at each window's argmax.
pub fn maxpool_backward<E: Executor>(
    k: &Kernels<E>,
    dx: At<Kernels<E>>,
    dy: At<Kernels<E>>,
    x: At<Kernels<E>>,
    p: &MaxPoolParams,
) -> Result<()> {
    let op = "maxpool_backward";
    even_hw(op, p.h, p.w)?;
    let out_pix = p.n * p.out_h() * p.out_w();
    let xl = act_len(op, p.n * p.h * p.w, p.c, p.x_pitch)?;
    let yl = act_len(op, out_pix, p.c, p.y_pitch)?;
    let ops = [
        Operand { name: "dx", at: dx, len: xl, write: true },
        Operand { name: "dy", at: dy, len: yl, write: false },
        Operand { name: "x", at: x, len: xl, write: false },
    ];
    let [dxa, dya, xa] = addresses(&k.exec, op, &ops)?[..] else { unreachable!("three operands") };
    if out_pix == 0 || p.c == 0 {
        return Ok(());
    }
    // dx is updated one element at a time; only x and dy are read 4 channels at once.
    let vec = vec4_ok(p.c, p.x_pitch, xa) && vec4_ok(p.c, p.y_pitch, dya);
    let geom = stride_geometry(out_pix * if vec { p.c / 4 } else { p.c });
    let args = [
        Arg::Ptr(dxa),
        Arg::Ptr(dya),
        Arg::Ptr(xa),
        int(op, p.n)?,
        int(op, p.h)?,
        int(op, p.w)?,
        int(op, p.c)?,
        int(op, p.x_pitch)?,
        int(op, p.y_pitch)?,
        Arg::I32(vec as i32),
    ];
    k.exec.launch(kernel("maxpool_bwd_f32"), &geom, &args)
}

/// Channels per block of a global pooling kernel: the power of two ≥ C, at most 32
/// (a warp's worth of consecutive channels); the block's other threads split the pixels.
fn channel_group(c: usize) -> usize {
    c.next_power_of_two().min(32)
}

/// Blocks a global reduction aims for (a few per SM of a large GPU) before it stops
/// splitting the pixels of a sample into chunks.
const GLOBAL_BLOCKS: usize = 512;
/// The fewest pixels of one chunk (so a split is worth its workspace round trip).
const MIN_CHUNK_PIXELS: usize = 1024;

/// How a global reduction splits: `chunks` chunks of `chunk_len` pixels per sample,
/// grid (channel groups, chunks, N). Depends only on the shape, so every run (and the
/// emulator) reduces in the same order.
struct Split {
    chunks: usize,
    chunk_len: usize,
    geom: Geometry,
}

fn split(op: &str, p: &GlobalPoolParams) -> Result<Split> {
    if p.n > 65535 {
        return Err(Error::shape(op, "a batch of at most 65535", p.n));
    }
    let hw = p.h * p.w;
    let groups = p.c.div_ceil(channel_group(p.c));
    let most = hw.div_ceil(MIN_CHUNK_PIXELS).clamp(1, 65535);
    let wanted = GLOBAL_BLOCKS.div_ceil(groups * p.n).clamp(1, most);
    let chunk_len = hw.div_ceil(wanted).max(1);
    let chunks = hw.div_ceil(chunk_len).max(1);
    let geom = Geometry { grid: [groups as u32, chunks as u32, p.n as u32], block: [THREADS, 1, 1], smem_bytes: 0 };
    Ok(Split { chunks, chunk_len, geom })
}

/// A workspace of `len` floats and its address (the backend's reused scratch, held by
/// the caller until the launches that use it are queued; the kernels write every
/// element they later read).
fn workspace<'a, E: Executor>(k: &'a Kernels<E>, op: &str, len: usize) -> Result<(Workspace<'a, E::Mem>, Arg)> {
    let ws = k.scratch(op, fits(op, "operands", Some(len))?)?;
    let addr = Arg::Ptr(ws.at(0));
    Ok((ws, addr))
}

/// The operands of a global pooling op over `x`-shaped input and `[N, C]` output,
/// checked: (x extent, `[N, C]` extent).
fn global_lens(op: &str, p: &GlobalPoolParams) -> Result<(usize, usize)> {
    Ok((act_len(op, p.n * p.h * p.w, p.c, p.x_pitch)?, fits(op, "operands", Some(p.n * p.c))?))
}

/// The pixel count H·W as the divisor of the mean (as the CPU reference rounds it).
fn pixel_count(hw: usize) -> Arg {
    Arg::F32(hw as f64 as f32)
}

/// Launches `global_avg_fwd_f32` (one block per channel group, pixel chunk and
/// sample), then, when the pixels are split, `global_avg_finish_f32`.
pub fn global_avg_forward<E: Executor>(
    k: &Kernels<E>,
    y: At<Kernels<E>>,
    x: At<Kernels<E>>,
    p: &GlobalPoolParams,
) -> Result<()> {
    let op = "global_avg_forward";
    let (xl, yl) = global_lens(op, p)?;
    let ops = [Operand { name: "y", at: y, len: yl, write: true }, Operand { name: "x", at: x, len: xl, write: false }];
    let [ya, xa] = addresses(&k.exec, op, &ops)?[..] else { unreachable!("two operands") };
    if yl == 0 {
        return Ok(());
    }
    let (hw, s) = (p.h * p.w, split(op, p)?);
    let ws = if s.chunks > 1 { Some(workspace(k, op, p.n * s.chunks * p.c)?) } else { None };
    let part = ws.as_ref().map_or(Arg::Ptr(0), |w| w.1);
    let args = [
        Arg::Ptr(ya),
        part,
        Arg::Ptr(xa),
        int(op, hw)?,
        int(op, p.c)?,
        int(op, p.x_pitch)?,
        int(op, channel_group(p.c))?,
        int(op, s.chunk_len)?,
        pixel_count(hw),
    ];
    k.exec.launch(kernel("global_avg_fwd_f32"), &s.geom, &args)?;
    if s.chunks > 1 {
        let args = [Arg::Ptr(ya), part, int(op, yl)?, int(op, p.c)?, int(op, s.chunks)?, pixel_count(hw)];
        k.exec.launch(kernel("global_avg_finish_f32"), &stride_geometry(yl), &args)?;
    }
    Ok(())
}

/// Launches `global_avg_bwd_f32`: one thread per `dx` element (4 channels with `vec`).
pub fn global_avg_backward<E: Executor>(
    k: &Kernels<E>,
    dx: At<Kernels<E>>,
    dy: At<Kernels<E>>,
    p: &GlobalPoolParams,
) -> Result<()> {
    let op = "global_avg_backward";
    let (xl, yl) = global_lens(op, p)?;
    let ops =
        [Operand { name: "dx", at: dx, len: xl, write: true }, Operand { name: "dy", at: dy, len: yl, write: false }];
    let [dxa, dya] = addresses(&k.exec, op, &ops)?[..] else { unreachable!("two operands") };
    let hw = p.h * p.w;
    if xl == 0 {
        return Ok(());
    }
    let vec = vec4_ok(p.c, p.x_pitch, dxa) && vec4_ok(p.c, p.c, dya);
    let geom = stride_geometry(p.n * hw * if vec { p.c / 4 } else { p.c });
    let args = [
        Arg::Ptr(dxa),
        Arg::Ptr(dya),
        int(op, p.n)?,
        int(op, hw)?,
        int(op, p.c)?,
        int(op, p.x_pitch)?,
        pixel_count(hw),
        Arg::I32(vec as i32),
    ];
    k.exec.launch(kernel("global_avg_bwd_f32"), &geom, &args)
}

/// The per-chunk (max, argmax) candidates of a split global max: `global_max_fwd_f32`
/// into a workspace of `[N][chunks][C][2]` floats, returned with its address.
fn max_candidates<'a, E: Executor>(
    k: &'a Kernels<E>,
    op: &str,
    xa: Arg,
    p: &GlobalPoolParams,
    s: &Split,
) -> Result<(Workspace<'a, E::Mem>, Arg)> {
    let (ws, part) = workspace(k, op, 2 * p.n * s.chunks * p.c)?;
    let args = [
        Arg::Ptr(0),
        part,
        xa,
        int(op, p.h * p.w)?,
        int(op, p.c)?,
        int(op, p.x_pitch)?,
        int(op, channel_group(p.c))?,
        int(op, s.chunk_len)?,
    ];
    k.exec.launch(kernel("global_max_fwd_f32"), &s.geom, &args)?;
    Ok((ws, part))
}

/// `global_max_finish_f32`: merges the candidates, then writes `y` (forward) or adds
/// `dy` into `dx` (backward); `out` is `[y, dx, dy]`, the unused ones null.
fn max_finish<E: Executor>(
    k: &Kernels<E>,
    op: &str,
    out: [Arg; 3],
    backward: bool,
    part: Arg,
    p: &GlobalPoolParams,
    s: &Split,
) -> Result<()> {
    let [y, dx, dy] = out;
    let nc = p.n * p.c;
    let args = [
        y,
        dx,
        dy,
        part,
        int(op, nc)?,
        int(op, p.h * p.w)?,
        int(op, p.c)?,
        int(op, p.x_pitch)?,
        int(op, s.chunks)?,
        Arg::I32(backward as i32),
    ];
    k.exec.launch(kernel("global_max_finish_f32"), &stride_geometry(nc), &args)
}

/// Launches `global_max_fwd_f32` (one block per channel group, pixel chunk and
/// sample), then, when the pixels are split, `global_max_finish_f32`.
pub fn global_max_forward<E: Executor>(
    k: &Kernels<E>,
    y: At<Kernels<E>>,
    x: At<Kernels<E>>,
    p: &GlobalPoolParams,
) -> Result<()> {
    let op = "global_max_forward";
    let (xl, yl) = global_lens(op, p)?;
    let ops = [Operand { name: "y", at: y, len: yl, write: true }, Operand { name: "x", at: x, len: xl, write: false }];
    let [ya, xa] = addresses(&k.exec, op, &ops)?[..] else { unreachable!("two operands") };
    if yl == 0 {
        return Ok(());
    }
    let s = split(op, p)?;
    if s.chunks > 1 {
        let (_ws, part) = max_candidates(k, op, Arg::Ptr(xa), p, &s)?;
        return max_finish(k, op, [Arg::Ptr(ya), Arg::Ptr(0), Arg::Ptr(0)], false, part, p, &s);
    }
    let args = [
        Arg::Ptr(ya),
        Arg::Ptr(0),
        Arg::Ptr(xa),
        int(op, p.h * p.w)?,
        int(op, p.c)?,
        int(op, p.x_pitch)?,
        int(op, channel_group(p.c))?,
        int(op, s.chunk_len)?,
    ];
    k.exec.launch(kernel("global_max_fwd_f32"), &s.geom, &args)
}

/// Adds `dy` into `dx` at each (n, c)'s argmax: `global_max_bwd_f32`, or, when the
/// pixels are split, the candidates of `global_max_fwd_f32` merged by
/// `global_max_finish_f32`.
pub fn global_max_backward<E: Executor>(
    k: &Kernels<E>,
    dx: At<Kernels<E>>,
    dy: At<Kernels<E>>,
    x: At<Kernels<E>>,
    p: &GlobalPoolParams,
) -> Result<()> {
    let op = "global_max_backward";
    let (xl, yl) = global_lens(op, p)?;
    let ops = [
        Operand { name: "dx", at: dx, len: xl, write: true },
        Operand { name: "dy", at: dy, len: yl, write: false },
        Operand { name: "x", at: x, len: xl, write: false },
    ];
    let [dxa, dya, xa] = addresses(&k.exec, op, &ops)?[..] else { unreachable!("three operands") };
    // No pixels: there is no argmax to add at (and nothing to add into).
    if xl == 0 {
        return Ok(());
    }
    let s = split(op, p)?;
    if s.chunks > 1 {
        let (_ws, part) = max_candidates(k, op, Arg::Ptr(xa), p, &s)?;
        return max_finish(k, op, [Arg::Ptr(0), Arg::Ptr(dxa), Arg::Ptr(dya)], true, part, p, &s);
    }
    let args = [
        Arg::Ptr(dxa),
        Arg::Ptr(dya),
        Arg::Ptr(xa),
        int(op, p.h * p.w)?,
        int(op, p.c)?,
        int(op, p.x_pitch)?,
        int(op, channel_group(p.c))?,
    ];
    k.exec.launch(kernel("global_max_bwd_f32"), &s.geom, &args)
}
