//! Launcher of `kernels/loss.cu`: the multi-task loss of [`LossParams`] and the
//! gradients of the total with respect to the three logit tensors (formulas:
//! `backend::cpu::loss`; kernel design: the header of `kernels/loss.cu`).
//!
//! The loss in the two launch groups of the split in `backend::loss`:
//! [`loss_sums`] checks (shapes, operand bounds, disjoint outputs, `int` extents),
//! plans the workspace ([`LossWorkspace`]), launches the block partials and the
//! reduction (the sums, the heads' gradients) and downloads the six f64 sums;
//! [`loss_mask_grad`] launches the mask gradient with the factors the host computed
//! from the global sums (`LossSums::finish`, the CPU's formulas).

use super::scratch::Regions;
use super::{addresses, blocks, fits, int, stride_geometry, Arg, Executor, Geometry, Kernel, Kernels, Operand};
use crate::backend::loss::head_scale;
use crate::backend::{At, LossParams, LossSums, MaskCoefs};
use crate::error::{Error, Result};

const MODULE: &str = "loss";
const PARTIALS: Kernel = Kernel { module: MODULE, name: "loss_partials_f32" };
const REDUCE: Kernel = Kernel { module: MODULE, name: "loss_reduce_f32" };
const GRAD: Kernel = Kernel { module: MODULE, name: "loss_grad_f32" };

/// Threads per block of every loss kernel (`LOSS_THREADS`); also the most channels
/// pass 1 can give one thread each.
const THREADS: usize = 256;
/// Elements per thread in pass 1 (ITEMS in the header of loss.cu).
const ITEMS: usize = 16;

/// The loss's workspace, in f32 words (each region 256-byte aligned, so the f64
/// ones are 8-byte aligned), for B = N·chunks pass-1 blocks.
struct LossWorkspace {
    /// The six f64 sums of [`LossSums`], written by the reduction.
    out: usize,
    /// part[B][4] (f64): Σ BCE, Σ s·t, Σ s, Σ t per pass-1 block.
    part: usize,
    /// flags[B][K]: 1 where the block saw a target > 0.5, else 0.
    flags: usize,
    /// The heads' BCE terms (cls_mid, then cls_last), 2·N·K.
    heads: usize,
    /// Words in all.
    len: usize,
}

impl LossWorkspace {
    fn plan(partial_blocks: usize, k: usize, heads: usize) -> Result<Self> {
        let mut r = Regions::default();
        let out = r.f64s(LossSums::LEN);
        let part = r.f64s(partial_blocks.saturating_mul(4));
        let flags = r.f32s(partial_blocks.saturating_mul(k));
        let heads = r.f32s(heads.saturating_mul(2));
        let len = fits("loss", "the workspace", r.len())?;
        Ok(LossWorkspace { out, part, flags, heads, len })
    }
}

/// The f64 stored little-endian in two f32 words.
fn f64_from_words(lo: f32, hi: f32) -> f64 {
    f64::from_bits(u64::from(lo.to_bits()) | (u64::from(hi.to_bits()) << 32))
}

/// Element counts of the loss's operands, checked to fit the kernels' `int`s.
fn extents(p: &LossParams) -> Result<(usize, usize, usize)> {
    let hwk = fits(OP, "one sample's masks", p.h.checked_mul(p.w).and_then(|hw| hw.checked_mul(p.k)))?;
    let masks = fits(OP, "the mask tensor", hwk.checked_mul(p.n))?;
    let heads = fits(OP, "the head tensors", p.n.checked_mul(p.k))?;
    Ok((hwk, masks, heads))
}

const OP: &str = "loss";

/// Launches pass 1 and the reduction (block partials, the sums and the heads) and
/// downloads the six sums; see the module doc.
#[allow(clippy::too_many_arguments)]
pub fn loss_sums<E: Executor>(
    k: &Kernels<E>,
    d_mask: At<Kernels<E>>,
    d_mid: At<Kernels<E>>,
    d_last: At<Kernels<E>>,
    mask_logits: At<Kernels<E>>,
    cls_mid: At<Kernels<E>>,
    cls_last: At<Kernels<E>>,
    target: At<Kernels<E>>,
    p: &LossParams,
    total_n: usize,
) -> Result<LossSums> {
    // Check.
    let (hwk, masks, heads) = extents(p)?;
    let ops = [
        Operand { name: "d_mask", at: d_mask, len: masks, write: true },
        Operand { name: "d_mid", at: d_mid, len: heads, write: true },
        Operand { name: "d_last", at: d_last, len: heads, write: true },
        Operand { name: "mask_logits", at: mask_logits, len: masks, write: false },
        Operand { name: "cls_mid", at: cls_mid, len: heads, write: false },
        Operand { name: "cls_last", at: cls_last, len: heads, write: false },
        Operand { name: "target", at: target, len: masks, write: false },
    ];
    let [_, di, dl, xm, xi, xl, tg] = addresses(&k.exec, OP, &ops)?[..] else { unreachable!("seven operands") };
    if heads == 0 {
        // No samples or no attributes: every sum is empty (the means are 0/0, as on the CPU).
        return Ok(LossSums::default());
    }
    if p.k > THREADS {
        return Err(Error::shape(OP, format!("at most {THREADS} attributes"), p.k));
    }
    if p.n > 65535 {
        return Err(Error::shape(OP, "a batch of at most 65535", p.n));
    }
    let stride = THREADS - THREADS % p.k;
    let chunk = stride * ITEMS;
    let chunks = blocks(hwk, chunk) as usize;
    let partial_blocks = chunks * p.n;

    // Plan the workspace; take it (reused from earlier calls).
    let plan = LossWorkspace::plan(partial_blocks, p.k, heads)?;
    let ws = k.scratch(OP, plan.len)?;
    let word = |off: usize| Arg::Ptr(ws.at(off));

    // Pass 1: block partials.
    let geom = Geometry { grid: [chunks as u32, p.n as u32, 1], block: [THREADS as u32, 1, 1], smem_bytes: 0 };
    let args = [
        word(plan.part),
        word(plan.flags),
        Arg::Ptr(xm),
        Arg::Ptr(tg),
        int(OP, hwk)?,
        int(OP, p.k)?,
        int(OP, stride)?,
        int(OP, chunk)?,
    ];
    k.exec.launch(PARTIALS, &geom, &args)?;

    // The batch sums and the heads.
    let one_block = Geometry { grid: [1, 1, 1], block: [THREADS as u32, 1, 1], smem_bytes: 0 };
    let args = [
        word(plan.out),
        word(plan.heads),
        Arg::Ptr(di),
        Arg::Ptr(dl),
        word(plan.part),
        word(plan.flags),
        Arg::Ptr(xi),
        Arg::Ptr(xl),
        int(OP, chunks)?,
        int(OP, p.n)?,
        int(OP, p.k)?,
        // Rounded from f64 as the CPU rounds it.
        Arg::F32(head_scale(total_n, p.k) as f32),
    ];
    k.exec.launch(REDUCE, &one_block, &args)?;

    let mut out = [0.0f32; 2 * LossSums::LEN];
    k.exec.download(ws.mem(), plan.out, &mut out)?;
    Ok(LossSums::from_array(std::array::from_fn(|i| f64_from_words(out[2 * i], out[2 * i + 1]))))
}

/// Launches pass 2, the mask gradient, with the factors of the global sums.
pub fn loss_mask_grad<E: Executor>(
    k: &Kernels<E>,
    d_mask: At<Kernels<E>>,
    mask_logits: At<Kernels<E>>,
    target: At<Kernels<E>>,
    p: &LossParams,
    c: &MaskCoefs,
) -> Result<()> {
    let (_, masks, _) = extents(p)?;
    let ops = [
        Operand { name: "d_mask", at: d_mask, len: masks, write: true },
        Operand { name: "mask_logits", at: mask_logits, len: masks, write: false },
        Operand { name: "target", at: target, len: masks, write: false },
    ];
    let [dm, xm, tg] = addresses(&k.exec, OP, &ops)?[..] else { unreachable!("three operands") };
    if masks == 0 {
        return Ok(());
    }
    let vec = [dm, xm, tg].iter().all(|a| a % 16 == 0);
    let args = [
        Arg::Ptr(dm),
        Arg::Ptr(xm),
        Arg::Ptr(tg),
        // Rounded from f64 as the CPU rounds them.
        Arg::F32(c.inv_m as f32),
        Arg::F32(c.inv_outside as f32),
        Arg::F32(c.inv_inter as f32),
        int(OP, masks)?,
        Arg::I32(vec as i32),
    ];
    k.exec.launch(GRAD, &stride_geometry(if vec { masks / 4 + masks % 4 } else { masks }), &args)
}
