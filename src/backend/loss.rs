//! The multi-task loss in three parts, so a batch split over replicas computes the
//! loss of the whole batch (docs/ARCHITECTURE.md §2: the soft Jaccard's
//! intersection and union are sums over the whole batch, not per sample):
//!
//! 1. [`Backend::loss_sums`](super::Backend::loss_sums) on each replica's shard:
//!    the f64 sums ([`LossSums`]) and the heads' gradients, which need only the
//!    global batch size;
//! 2. the sums added over the replicas (an all-reduce; nothing for one replica);
//! 3. [`LossSums::finish`] turns the global sums into the loss and the factors of
//!    the mask gradient ([`MaskCoefs`]), and
//!    [`Backend::loss_mask_grad`](super::Backend::loss_mask_grad) writes it.
//!
//! One replica runs exactly the arithmetic of the fused loss it replaces: the same
//! sums in the same order, the same f64 formulas, the same roundings to f32.

use super::{LossParams, LossParts};

/// ε of the soft Jaccard term, as in the paper's code.
pub const JACCARD_EPS: f64 = 1e-15;

/// One replica's share of the loss: sums over its samples, in f64.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSums {
    /// Σ BCE-with-logits over the mask elements.
    pub bce: f64,
    /// Σ s·t, the soft intersection (s = sigmoid of the mask logits).
    pub inter: f64,
    /// Σ s.
    pub sum_s: f64,
    /// Σ t.
    pub sum_t: f64,
    /// Σ BCE of the middle head against the labels, in (n, k) order.
    pub mid: f64,
    /// Σ BCE of the last head.
    pub last: f64,
}

/// The factors of the mask gradient, from the global sums:
/// `d = (s−t)·inv_m + s(1−s)·((1−t)·inv_outside − t·inv_inter)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskCoefs {
    /// 1/M, M = N·H·W·K over the global batch.
    pub inv_m: f64,
    /// 1/(U − I + ε).
    pub inv_outside: f64,
    /// 1/(I + ε).
    pub inv_inter: f64,
}

impl LossSums {
    /// Values in a [`LossSums::to_array`].
    pub const LEN: usize = 6;

    /// The sums as one buffer, for an all-reduce.
    pub fn to_array(&self) -> [f64; Self::LEN] {
        [self.bce, self.inter, self.sum_s, self.sum_t, self.mid, self.last]
    }

    /// The inverse of [`LossSums::to_array`].
    pub fn from_array(a: [f64; Self::LEN]) -> Self {
        LossSums { bce: a[0], inter: a[1], sum_s: a[2], sum_t: a[3], mid: a[4], last: a[5] }
    }

    /// The loss of a batch of `total_n` images of `p`'s size and attributes (the
    /// global batch; `p.n` is one replica's share) from the global sums, and the
    /// factors of its mask gradient.
    pub fn finish(&self, p: &LossParams, total_n: usize) -> (LossParts, MaskCoefs) {
        let masks = (total_n * p.h * p.w * p.k) as f64;
        let heads = (total_n * p.k) as f64;
        let union = self.sum_s + self.sum_t;
        let loss1 = self.bce / masks - ((self.inter + JACCARD_EPS) / (union - self.inter + JACCARD_EPS)).ln();
        let (loss2, loss3) = (self.mid / heads, self.last / heads);
        let coefs = MaskCoefs {
            inv_m: 1.0 / masks,
            inv_outside: 1.0 / (union - self.inter + JACCARD_EPS),
            inv_inter: 1.0 / (self.inter + JACCARD_EPS),
        };
        (LossParts { loss: loss1 + 0.5 * loss2 + 0.5 * loss3, loss1, loss2, loss3 }, coefs)
    }
}

/// The scale of a head's gradient, 0.5/(N·K) over the global batch (the head's
/// weight in the total loss over the elements of its mean).
pub fn head_scale(total_n: usize, k: usize) -> f64 {
    0.5 / (total_n * k) as f64
}
