//! Launchers of `kernels/layout.cu`: 8-bit RGB normalisation into the model's input,
//! and NCHW ↔ NHWC (with pitch) for the `forward` command and prediction. Params:
//! `backend::{ImageParams, LayoutParams}`; semantics and CPU reference:
//! `backend::cpu::layout`. Not in the `Backend` trait yet, so these are functions
//! over [`Kernels`].
//!
//! Each launcher: check (shapes, operand bounds, disjoint operands, `int` extents) →
//! geometry → arguments → one launch. The results are exact (copies, or the
//! reference's f32 formula).

use super::{addresses, int, Arg, Executor, Geometry, Kernel, Kernels, Operand};
use super::{fits, stride_geometry};
use crate::backend::{At, ImageParams, LayoutParams};
use crate::error::{Error, Result};

const MODULE: &str = "layout";
const NORMALIZE: Kernel = Kernel { module: MODULE, name: "layout_normalize_u8_f32" };
const TO_NHWC: Kernel = Kernel { module: MODULE, name: "layout_nchw_to_nhwc_f32" };
const TO_NCHW: Kernel = Kernel { module: MODULE, name: "layout_nhwc_to_nchw_f32" };

/// Threads per block (`LAYOUT_THREADS`).
const THREADS: u32 = 256;
/// log2 of the elements of a transpose tile (`TILE_ELEMS` = 1024).
const TILE_LOG2: u32 = 10;
/// The widest tile in channels (a warp's worth).
const MAX_TILE_C_LOG2: u32 = 5;

/// Words of an f32 buffer holding `bytes` bytes, four to a word.
pub fn byte_words(bytes: usize) -> usize {
    bytes.div_ceil(4)
}

/// A new device buffer holding `bytes`, four to an f32 word (little-endian, as the
/// kernels read them through a byte pointer), for [`normalize_image`].
pub fn upload_bytes<E: Executor>(k: &Kernels<E>, bytes: &[u8]) -> Result<E::Mem> {
    let words: Vec<f32> = bytes
        .chunks(4)
        .map(|q| {
            let mut w = [0u8; 4];
            w[..q.len()].copy_from_slice(q);
            f32::from_bits(u32::from_le_bytes(w))
        })
        .collect();
    let mem = k.exec.alloc(words.len())?;
    k.exec.upload(&mem, 0, &words)?;
    Ok(mem)
}

/// Launches `layout_normalize_u8_f32`: `y` (NHWC, `p.y_pitch`) from the 3·N·H·W RGB
/// bytes starting at byte 0 of word `rgb.off` (a buffer from [`upload_bytes`]).
pub fn normalize_image<E: Executor>(
    k: &Kernels<E>,
    y: At<Kernels<E>>,
    rgb: At<Kernels<E>>,
    p: &ImageParams,
) -> Result<()> {
    const OP: &str = "normalize_image";
    if p.y_pitch < 3 {
        return Err(Error::shape(OP, "pixel pitch >= 3 channels", format!("pitch {}", p.y_pitch)));
    }
    let pixels = p.n.checked_mul(p.h).and_then(|nh| nh.checked_mul(p.w));
    let bytes = fits(OP, "the image", pixels.and_then(|px| px.checked_mul(3)))?;
    let ops = [
        Operand { name: "y", at: y, len: fits(OP, "the output", Some(p.y_len()))?, write: true },
        Operand { name: "rgb", at: rgb, len: byte_words(bytes), write: false },
    ];
    let [ya, ra] = addresses(&k.exec, OP, &ops)?[..] else { unreachable!("two operands") };
    if bytes == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(ya),
        Arg::Ptr(ra),
        int(OP, bytes / 3)?,
        int(OP, p.y_pitch)?,
        Arg::F32(p.mean[0]),
        Arg::F32(p.mean[1]),
        Arg::F32(p.mean[2]),
        Arg::F32(p.std[0]),
        Arg::F32(p.std[1]),
        Arg::F32(p.std[2]),
    ];
    k.exec.launch(NORMALIZE, &stride_geometry(bytes), &args)
}

/// Launches `layout_nchw_to_nhwc_f32`: `y` NHWC (`p.pitch`) from dense NCHW `x`.
pub fn nchw_to_nhwc<E: Executor>(k: &Kernels<E>, y: At<Kernels<E>>, x: At<Kernels<E>>, p: &LayoutParams) -> Result<()> {
    transpose(k, TO_NHWC, "nchw_to_nhwc", ("y", y, true), ("x", x, false), p)
}

/// Launches `layout_nhwc_to_nchw_f32`: dense NCHW `y` from `x` NHWC (`p.pitch`).
pub fn nhwc_to_nchw<E: Executor>(k: &Kernels<E>, y: At<Kernels<E>>, x: At<Kernels<E>>, p: &LayoutParams) -> Result<()> {
    transpose(k, TO_NCHW, "nhwc_to_nchw", ("y", y, false), ("x", x, true), p)
}

/// One transpose launch; each side is (name, place, whether it is the NHWC side).
fn transpose<E: Executor>(
    k: &Kernels<E>,
    kernel: Kernel,
    op: &str,
    (y_name, y, y_nhwc): (&'static str, At<Kernels<E>>, bool),
    (x_name, x, x_nhwc): (&'static str, At<Kernels<E>>, bool),
    p: &LayoutParams,
) -> Result<()> {
    if p.pitch < p.c {
        return Err(Error::shape(op, format!("pixel pitch >= {} channels", p.c), format!("pitch {}", p.pitch)));
    }
    let hw = p.h.checked_mul(p.w);
    let nchw = fits(op, "the NCHW tensor", hw.and_then(|hw| hw.checked_mul(p.c)).and_then(|l| l.checked_mul(p.n)))?;
    let nhwc = fits(op, "the NHWC tensor", Some(p.nhwc_len()))?;
    let len = |is_nhwc: bool| if is_nhwc { nhwc } else { nchw };
    let ops = [
        Operand { name: y_name, at: y, len: len(y_nhwc), write: true },
        Operand { name: x_name, at: x, len: len(x_nhwc), write: false },
    ];
    let [ya, xa] = addresses(&k.exec, op, &ops)?[..] else { unreachable!("two operands") };
    if nchw == 0 {
        return Ok(());
    }
    let hw = p.h * p.w;
    // Tile: the power of two ≥ C channels (at most 32) × 1024/that pixels.
    let tc_log2 = p.c.next_power_of_two().trailing_zeros().min(MAX_TILE_C_LOG2);
    let tp = 1usize << (TILE_LOG2 - tc_log2);
    let grid = [super::blocks(hw, tp), super::blocks(p.c, 1 << tc_log2), p.n as u32];
    if grid[1] > 65535 || p.n > 65535 {
        return Err(Error::shape(op, "at most 65535 samples and 2^21 channels", format!("{p:?}")));
    }
    let geom = Geometry { grid, block: [THREADS, 1, 1], smem_bytes: 0 };
    let args = [Arg::Ptr(ya), Arg::Ptr(xa), int(op, p.c)?, int(op, hw)?, int(op, p.pitch)?, Arg::I32(tc_log2 as i32)];
    k.exec.launch(kernel, &geom, &args)
}
