//! Pooling on the CPU. (stub, being written)

use super::Real;
use crate::backend::{GlobalPoolParams, MaxPoolParams};

/// 2x2 max pool.
pub fn maxpool_forward<T: Real>(_y: &mut [T], _x: &[T], _p: &MaxPoolParams) {}
/// Adds into dx.
pub fn maxpool_backward<T: Real>(_dx: &mut [T], _dy: &[T], _x: &[T], _p: &MaxPoolParams) {}
/// Global average.
pub fn global_avg_forward<T: Real>(_y: &mut [T], _x: &[T], _p: &GlobalPoolParams) {}
/// Overwrites dx.
pub fn global_avg_backward<T: Real>(_dx: &mut [T], _dy: &[T], _p: &GlobalPoolParams) {}
/// Global max.
pub fn global_max_forward<T: Real>(_y: &mut [T], _x: &[T], _p: &GlobalPoolParams) {}
/// Adds into dx.
pub fn global_max_backward<T: Real>(_dx: &mut [T], _dy: &[T], _x: &[T], _p: &GlobalPoolParams) {}
