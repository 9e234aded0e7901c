//! Launchers of kernels/pool.cu. (launcher not written yet: every entry returns an error)

use super::{Executor, Kernels};
use crate::backend::*;
use crate::error::{Error, Result};

fn missing(op: &str) -> Error {
    Error::Cuda(format!("{op}: no kernel yet"))
}

/// Launches `maxpool_forward`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn maxpool_forward<E: Executor>(k: &Kernels<E>, y: At<Kernels<E>>, x: At<Kernels<E>>, p: &MaxPoolParams) -> Result<()> {
    Err(missing("maxpool_forward"))
}

/// Launches `maxpool_backward`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn maxpool_backward<E: Executor>(k: &Kernels<E>, dx: At<Kernels<E>>, dy: At<Kernels<E>>, x: At<Kernels<E>>, p: &MaxPoolParams) -> Result<()> {
    Err(missing("maxpool_backward"))
}

/// Launches `global_avg_forward`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn global_avg_forward<E: Executor>(k: &Kernels<E>, y: At<Kernels<E>>, x: At<Kernels<E>>, p: &GlobalPoolParams) -> Result<()> {
    Err(missing("global_avg_forward"))
}

/// Launches `global_avg_backward`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn global_avg_backward<E: Executor>(k: &Kernels<E>, dx: At<Kernels<E>>, dy: At<Kernels<E>>, p: &GlobalPoolParams) -> Result<()> {
    Err(missing("global_avg_backward"))
}

/// Launches `global_max_forward`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn global_max_forward<E: Executor>(k: &Kernels<E>, y: At<Kernels<E>>, x: At<Kernels<E>>, p: &GlobalPoolParams) -> Result<()> {
    Err(missing("global_max_forward"))
}

/// Launches `global_max_backward`.
#[allow(clippy::too_many_arguments, unused_variables)]
pub fn global_max_backward<E: Executor>(k: &Kernels<E>, dx: At<Kernels<E>>, dy: At<Kernels<E>>, x: At<Kernels<E>>, p: &GlobalPoolParams) -> Result<()> {
    Err(missing("global_max_backward"))
}
