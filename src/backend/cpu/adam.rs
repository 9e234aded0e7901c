//! Adam on the CPU. (stub, being written)

use super::Real;
use crate::backend::AdamParams;

/// One step.
pub fn adam<T: Real>(_param: &mut [T], _m: &mut [T], _v: &mut [T], _grad: &[T], _p: &AdamParams) {}
