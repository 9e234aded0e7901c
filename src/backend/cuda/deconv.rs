//! Launchers of kernels/deconv.cu. (launcher not written yet: every entry returns an error)

use super::{Executor, Kernels};
use crate::backend::*;
use crate::error::{Error, Result};

fn missing(op: &str) -> Error {
    Error::Cuda(format!("{op}: no kernel yet"))
}

/// Launches `deconv_forward`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn forward<E: Executor>(k: &Kernels<E>, y: At<Kernels<E>>, x: At<Kernels<E>>, w: At<Kernels<E>>, b: At<Kernels<E>>, p: &DeconvParams) -> Result<()> {
    Err(missing("deconv_forward"))
}

/// Launches `deconv_backward`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn backward<E: Executor>(k: &Kernels<E>, dx: GradIn<Kernels<E>>, dw: At<Kernels<E>>, db: At<Kernels<E>>, dy: At<Kernels<E>>, y: At<Kernels<E>>, x: At<Kernels<E>>, w: At<Kernels<E>>, p: &DeconvParams) -> Result<()> {
    Err(missing("deconv_backward"))
}
