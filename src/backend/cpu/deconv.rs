//! Transposed convolution 4x4/s2/p1 on the CPU. (stub, being written)

use super::Real;
use crate::backend::DeconvParams;

/// Forward.
pub fn deconv_forward<T: Real>(_y: &mut [T], _x: &[T], _w: &[T], _b: &[T], _p: &DeconvParams) {}

/// Backward.
#[allow(clippy::too_many_arguments)]
pub fn deconv_backward<T: Real>(
    _dx: Option<&mut [T]>,
    _dx_add: bool,
    _dw: &mut [T],
    _db: &mut [T],
    _dy: &mut [T],
    _y: &[T],
    _x: &[T],
    _w: &[T],
    _p: &DeconvParams,
) {
}
