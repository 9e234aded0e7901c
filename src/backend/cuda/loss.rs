//! Launchers of kernels/loss.cu. (launcher not written yet: every entry returns an error)

use super::{Executor, Kernels};
use crate::backend::*;
use crate::error::{Error, Result};

fn missing(op: &str) -> Error {
    Error::Cuda(format!("{op}: no kernel yet"))
}

/// Launches `loss`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn loss<E: Executor>(k: &Kernels<E>, d_mask: At<Kernels<E>>, d_mid: At<Kernels<E>>, d_last: At<Kernels<E>>, mask_logits: At<Kernels<E>>, cls_mid: At<Kernels<E>>, cls_last: At<Kernels<E>>, target: At<Kernels<E>>, p: &LossParams) -> Result<LossParts> {
    Err(missing("loss"))
}
