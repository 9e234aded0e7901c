//! Convolution 3x3/1x1 (stride 1, same padding) on the CPU. (stub, being written)

use super::Real;
use crate::backend::Conv2dParams;

/// Forward.
pub fn conv2d_forward<T: Real>(_y: &mut [T], _x: &[T], _w: &[T], _b: &[T], _p: &Conv2dParams) {}

/// Backward.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Real>(
    _dx: Option<&mut [T]>,
    _dx_add: bool,
    _dw: &mut [T],
    _db: &mut [T],
    _dy: &mut [T],
    _y: &[T],
    _x: &[T],
    _w: &[T],
    _p: &Conv2dParams,
) {
}
