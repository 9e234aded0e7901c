//! The multi-task loss on the CPU: mask BCE minus log soft Jaccard, plus the BCE of
//! the two image-level heads against "attribute present" labels, and the gradients
//! of the total with respect to the three logit tensors. See [`LossParams`] and, for
//! the split that data parallelism uses, `backend::loss`.
//!
//! Per element the work is done in `T`; the batch sums (BCE, intersection, union)
//! are accumulated in f64 over fixed-size chunks whose partial sums are added in
//! chunk order, so the result is the same for any number of rayon threads.

use rayon::prelude::*;

use super::Real;
use crate::backend::loss::head_scale;
use crate::backend::{LossParams, LossParts, LossSums, MaskCoefs};

/// Mask pixels per rayon task: large enough to amortise the task, small enough to
/// balance two to a few dozen cores on a 512x512 batch.
const CHUNK_PIXELS: usize = 8192;

/// sigmoid(x) and BCE-with-logits(x, t) = max(x,0) − x·t + ln(1 + e^−|x|), sharing
/// one exponential; neither overflows for any finite x.
#[inline]
fn sigmoid_bce<T: Real>(x: T, t: T) -> (T, T) {
    let one = T::one();
    let e = if x < T::zero() { x } else { -x }.exp();
    let s = if x < T::zero() { e / (one + e) } else { one / (one + e) };
    let relu = if x > T::zero() { x } else { T::zero() };
    (s, relu - x * t + (one + e).ln())
}

/// What one chunk of the mask contributes to the batch sums.
struct Partial {
    bce: f64,
    inter: f64,
    sum_s: f64,
    sum_t: f64,
    /// `[N·K]`: some target pixel of (n, k) in this chunk is > 0.5.
    positive: Vec<bool>,
}

/// The loss of [`LossParams`] (PyTorch: `BCEWithLogitsLoss` means and
/// `-log((I+ε)/(U−I+ε))` over `sigmoid(mask_logits)`), and its gradients, written
/// (not added):
/// - `d_mask = ∂loss1/∂mask_logits = (s−t)/M + s(1−s)·((1−t)/(U−I+ε) − t/(I+ε))`,
///   M = N·H·W·K. The last head's share of the mask gradient is added later by
///   `global_max_backward`.
/// - `d_mid = 0.5·(sigmoid(cls_mid) − y)/(N·K)`, `d_last` likewise.
///
/// `mask_logits`, `target`, `d_mask`: dense NHWC `[N,H,W,K]`; `cls_*`, `d_*`: dense
/// `[N,K]`. `y[n,k] = 1` where some `target[n,:,:,k] > 0.5`. [`loss_sums`],
/// [`LossSums::finish`] and [`loss_mask_grad`] on one whole batch.
#[allow(clippy::too_many_arguments)]
pub fn loss<T: Real>(
    d_mask: &mut [T],
    d_mid: &mut [T],
    d_last: &mut [T],
    mask_logits: &[T],
    cls_mid: &[T],
    cls_last: &[T],
    target: &[T],
    p: &LossParams,
) -> LossParts {
    let sums = loss_sums(d_mask, d_mid, d_last, mask_logits, cls_mid, cls_last, target, p, p.n);
    let (parts, coefs) = sums.finish(p, p.n);
    loss_mask_grad(d_mask, target, p, &coefs);
    parts
}

/// The sums of the loss over this replica's `p.n` samples of a global batch of
/// `total_n`, and the heads' gradients (scaled for the global batch). Leaves
/// sigmoid(mask_logits) in `d_mask` for [`loss_mask_grad`].
#[allow(clippy::too_many_arguments)]
pub fn loss_sums<T: Real>(
    d_mask: &mut [T],
    d_mid: &mut [T],
    d_last: &mut [T],
    mask_logits: &[T],
    cls_mid: &[T],
    cls_last: &[T],
    target: &[T],
    p: &LossParams,
    total_n: usize,
) -> LossSums {
    let (hw, k) = (p.h * p.w, p.k);
    let masks = p.n * hw * k;
    let heads = p.n * k;
    debug_assert!(d_mask.len() >= masks && mask_logits.len() >= masks && target.len() >= masks);
    debug_assert!(d_mid.len() >= heads && d_last.len() >= heads);
    debug_assert!(cls_mid.len() >= heads && cls_last.len() >= heads);
    let (d_mask, mask_logits, target) = (&mut d_mask[..masks], &mask_logits[..masks], &target[..masks]);

    // Sums, labels, and sigmoid(mask_logits) parked in d_mask for the gradient.
    let chunk = CHUNK_PIXELS * k.max(1);
    let partials: Vec<Partial> = d_mask
        .par_chunks_mut(chunk)
        .zip(mask_logits.par_chunks(chunk))
        .zip(target.par_chunks(chunk))
        .enumerate()
        .map(|(i, ((s_out, x), t))| {
            let mut part = Partial { bce: 0.0, inter: 0.0, sum_s: 0.0, sum_t: 0.0, positive: vec![false; heads] };
            let pixels = s_out.chunks_exact_mut(k).zip(x.chunks_exact(k)).zip(t.chunks_exact(k));
            for (j, ((s_px, x_px), t_px)) in pixels.enumerate() {
                let n = (i * CHUNK_PIXELS + j) / hw;
                for ch in 0..k {
                    let (s, bce) = sigmoid_bce(x_px[ch], t_px[ch]);
                    let t = t_px[ch].to_f64();
                    s_px[ch] = s;
                    part.bce += bce.to_f64();
                    part.inter += s.to_f64() * t;
                    part.sum_s += s.to_f64();
                    part.sum_t += t;
                    if t > 0.5 {
                        part.positive[n * k + ch] = true;
                    }
                }
            }
            part
        })
        .collect();

    let mut sums = LossSums::default();
    let mut positive = vec![false; heads];
    for part in &partials {
        sums.bce += part.bce;
        sums.inter += part.inter;
        sums.sum_s += part.sum_s;
        sums.sum_t += part.sum_t;
        for (all, &here) in positive.iter_mut().zip(&part.positive) {
            *all |= here;
        }
    }
    let scale = T::from_f64(head_scale(total_n, k));
    sums.mid = head_sum(&mut d_mid[..heads], &cls_mid[..heads], &positive, scale);
    sums.last = head_sum(&mut d_last[..heads], &cls_last[..heads], &positive, scale);
    sums
}

/// `d_mask` from the sigmoid that [`loss_sums`] parked in it and the factors of
/// the global sums, in `T`.
pub fn loss_mask_grad<T: Real>(d_mask: &mut [T], target: &[T], p: &LossParams, c: &MaskCoefs) {
    let masks = p.n * p.h * p.w * p.k;
    let chunk = CHUNK_PIXELS * p.k.max(1);
    let (d_mask, target) = (&mut d_mask[..masks], &target[..masks]);
    let inv_m = T::from_f64(c.inv_m);
    let inv_outside = T::from_f64(c.inv_outside);
    let inv_inter = T::from_f64(c.inv_inter);
    d_mask.par_chunks_mut(chunk).zip(target.par_chunks(chunk)).for_each(|(d, t)| {
        for (d, &t) in d.iter_mut().zip(t) {
            let s = *d;
            let one = T::one();
            *d = (s - t) * inv_m + s * (one - s) * ((one - t) * inv_outside - t * inv_inter);
        }
    });
}

/// The sum of one image-level head's BCE-with-logits against the labels, in
/// (n, k) order, and its gradient `(s − y)·scale` (the head's weight 0.5 over the
/// global batch's N·K).
fn head_sum<T: Real>(d: &mut [T], logits: &[T], positive: &[bool], scale: T) -> f64 {
    let mut sum = 0.0;
    for ((d, &x), &pos) in d.iter_mut().zip(logits).zip(positive) {
        let y = if pos { T::one() } else { T::zero() };
        let (s, bce) = sigmoid_bce(x, y);
        sum += bce.to_f64();
        *d = (s - y) * scale;
    }
    sum
}
