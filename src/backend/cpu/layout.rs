//! Layout changes at the engine's boundary, on the CPU: the reference of
//! `kernels/layout.cu` (launchers `backend::cuda::layout`).
//!
//! - [`normalize_image`]: 8-bit RGB images, NHWC, into the model's normalised f32
//!   input (`(v/255 − mean[c]) / std[c]`, as `data::batch::normalize_into` computes it),
//!   written into a channel slice of an NHWC buffer.
//! - [`nchw_to_nhwc`] / [`nhwc_to_nchw`]: PyTorch's NCHW (the `forward` command's
//!   tensors, predictions) to and from the engine's NHWC, whose side may be a channel
//!   slice (`pitch` ≥ C).
//!
//! These ops are not in the `Backend` trait yet; their params structs
//! ([`ImageParams`], [`LayoutParams`]) are in `backend`, beside the trait's.

use crate::backend::{ImageParams, LayoutParams};

/// `y[pixel·y_pitch + c] = (rgb[3·pixel + c] / 255 − mean[c]) / std[c]`, in f32 in
/// that order (so a lookup table built the same way gives the same bits). Elements
/// of `y` between pixels are not touched.
pub fn normalize_image(y: &mut [f32], rgb: &[u8], p: &ImageParams) {
    debug_assert!(y.len() >= p.y_len() && rgb.len() >= p.bytes());
    for (px, src) in rgb[..p.bytes()].chunks_exact(3).enumerate() {
        let dst = &mut y[px * p.y_pitch..][..3];
        for (c, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
            *d = (v as f32 / 255.0 - p.mean[c]) / p.std[c];
        }
    }
}

/// `y[((n·H + h)·W + w)·pitch + c] = x[((n·C + c)·H + h)·W + w]`; gaps untouched.
pub fn nchw_to_nhwc(y: &mut [f32], x: &[f32], p: &LayoutParams) {
    let hw = p.h * p.w;
    for n in 0..p.n {
        for c in 0..p.c {
            for i in 0..hw {
                y[(n * hw + i) * p.pitch + c] = x[(n * p.c + c) * hw + i];
            }
        }
    }
}

/// The inverse of [`nchw_to_nhwc`]: `y` dense NCHW from `x` NHWC with `pitch`.
pub fn nhwc_to_nchw(y: &mut [f32], x: &[f32], p: &LayoutParams) {
    let hw = p.h * p.w;
    for n in 0..p.n {
        for c in 0..p.c {
            for i in 0..hw {
                y[(n * p.c + c) * hw + i] = x[(n * hw + i) * p.pitch + c];
            }
        }
    }
}
