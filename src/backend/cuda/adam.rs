//! Launchers of kernels/adam.cu. (launcher not written yet: every entry returns an error)

use super::{Executor, Kernels};
use crate::backend::*;
use crate::error::{Error, Result};

fn missing(op: &str) -> Error {
    Error::Cuda(format!("{op}: no kernel yet"))
}

/// Launches `adam`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn adam<E: Executor>(k: &Kernels<E>, param: At<Kernels<E>>, m: At<Kernels<E>>, v: At<Kernels<E>>, grad: At<Kernels<E>>, p: &AdamParams) -> Result<()> {
    Err(missing("adam"))
}
