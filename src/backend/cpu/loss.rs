//! The multi-task loss on the CPU. (stub, being written)

use super::Real;
use crate::backend::{LossParams, LossParts};

/// Loss and logit gradients.
#[allow(clippy::too_many_arguments)]
pub fn loss<T: Real>(
    _d_mask: &mut [T],
    _d_mid: &mut [T],
    _d_last: &mut [T],
    _mask_logits: &[T],
    _cls_mid: &[T],
    _cls_last: &[T],
    _target: &[T],
    _p: &LossParams,
) -> LossParts {
    LossParts::default()
}
