//! Pooling on the CPU: 2x2 max pooling (the encoder), global average pooling (the
//! middle head) and global max pooling (the last head), forward and backward.
//!
//! Inputs are NHWC with pixels `x_pitch` elements apart, of which the first `C` are
//! this tensor's channels; the elements in between belong to other tensors and are
//! never read or written. Max ops choose their argmax exactly as PyTorch's CPU
//! kernels (`max_pool2d`, `adaptive_max_pool2d`) do: start from −∞ at the first
//! element of the window, then take an element when `val > max || isnan(val)`. So
//! the first of equal maxima wins, a NaN always wins (the last NaN, for the
//! gradient), and a window of −∞ routes its gradient to its first element.
//!
//! Work is split over rayon tasks by output row (2x2 pooling) or by sample (global
//! pools); every sum is taken in a fixed order, so results do not depend on the
//! number of threads.

use rayon::prelude::*;

use super::Real;
use crate::backend::view_len;
use crate::backend::{GlobalPoolParams, MaxPoolParams};

/// PyTorch's CPU max rule: take `val` if it beats the running maximum or is NaN.
#[inline]
fn takes<T: Real>(val: T, max: T) -> bool {
    val > max || val.is_nan()
}

/// The channels of the four pixels of the 2x2 window whose top-left pixel is
/// `top_left`, in PyTorch's scan order (0,0), (0,1), (1,0), (1,1), for an image `w`
/// pixels wide.
#[inline]
fn window<T: Real>(x: &[T], top_left: usize, w: usize, pitch: usize, c: usize) -> [&[T]; 4] {
    [0, 1, w, w + 1].map(|off| &x[(top_left + off) * pitch..][..c])
}

/// Max and argmax (window position 0..4) of channel `ch` of a window.
#[inline]
fn window_max<T: Real>(win: &[&[T]; 4], ch: usize) -> (T, usize) {
    let mut best = (T::from_f64(f64::NEG_INFINITY), 0);
    for (k, px) in win.iter().enumerate() {
        if takes(px[ch], best.0) {
            best = (px[ch], k);
        }
    }
    best
}

/// 2x2 max pooling, stride 2: `y[n,i,j,c] = max over a,b ∈ {0,1} of x[n,2i+a,2j+b,c]`.
/// PyTorch: `F.max_pool2d(x, 2)` (NaN propagates).
///
/// `x`: `N·H·W` pixels, `p.x_pitch` apart; `y`: `N·(H/2)·(W/2)` pixels, `p.y_pitch`
/// apart; H and W even. Writes only the `C` channels of each output pixel.
pub fn maxpool_forward<T: Real>(y: &mut [T], x: &[T], p: &MaxPoolParams) {
    let (q, w) = (p.out_w(), p.w);
    debug_assert!(y.len() >= view_len(p.n * p.out_h() * q, p.c, p.y_pitch));
    debug_assert!(x.len() >= view_len(p.n * p.h * w, p.c, p.x_pitch));
    if y.is_empty() {
        return;
    }
    // Output row r = n·P + i reads input rows 2r and 2r+1 (since H = 2P).
    y.par_chunks_mut(q * p.y_pitch).enumerate().for_each(|(r, y_row)| {
        for j in 0..q {
            let win = window(x, 2 * r * w + 2 * j, w, p.x_pitch, p.c);
            for (ch, y) in y_row[j * p.y_pitch..][..p.c].iter_mut().enumerate() {
                *y = window_max(&win, ch).0;
            }
        }
    });
}

/// Gradient of [`maxpool_forward`]: adds `dy[n,i,j,c]` into `dx` at the window's
/// argmax, recomputed from `x` with the forward's rule; other elements of `dx` are
/// left as they are. PyTorch: `max_pool2d`'s backward (it routes through the saved
/// indices, which are the same argmax).
pub fn maxpool_backward<T: Real>(dx: &mut [T], dy: &[T], x: &[T], p: &MaxPoolParams) {
    let (q, w) = (p.out_w(), p.w);
    debug_assert!(dx.len() >= view_len(p.n * p.h * w, p.c, p.x_pitch));
    debug_assert!(dy.len() >= view_len(p.n * p.out_h() * q, p.c, p.y_pitch));
    debug_assert!(x.len() >= view_len(p.n * p.h * w, p.c, p.x_pitch));
    if dx.is_empty() || q == 0 {
        return;
    }
    let (pitch, c) = (p.x_pitch, p.c);
    // Each task owns the two input rows of one output row, so the adds never race.
    dx.par_chunks_mut(2 * w * pitch).enumerate().for_each(|(r, dx_rows)| {
        for j in 0..q {
            let win = window(x, 2 * r * w + 2 * j, w, pitch, c);
            let dy_px = &dy[(r * q + j) * p.y_pitch..][..c];
            // The window's four pixels of dx, in window order (rows 2r and 2r+1 of
            // dx_rows, columns 2j and 2j+1).
            let (d0, rest) = dx_rows[2 * j * pitch..].split_at_mut(pitch);
            let (d1, rest) = rest.split_at_mut(w * pitch - pitch);
            let (d2, d3) = rest.split_at_mut(pitch);
            let (d0, d1, d2, d3) = (&mut d0[..c], &mut d1[..c], &mut d2[..c], &mut d3[..c]);
            // The argmax as comparisons and selects (the scan of `window_max`, from
            // position 0), and every position either takes g or keeps its value: no
            // branch on the data, so the loop vectorises; the bits are those of a
            // single add at the argmax.
            let [x0, x1, x2, x3] = win;
            for ch in 0..c {
                let (a, b, e, f, g) = (x0[ch], x1[ch], x2[ch], x3[ch], dy_px[ch]);
                let s1 = takes(b, a);
                let m1 = if s1 { b } else { a };
                let s2 = takes(e, m1);
                let m2 = if s2 { e } else { m1 };
                let s3 = takes(f, m2);
                let (at3, at2) = (s3, s2 && !s3);
                let at1 = s1 && !s2 && !s3;
                let at0 = !(s1 || s2 || s3);
                d0[ch] = if at0 { d0[ch] + g } else { d0[ch] };
                d1[ch] = if at1 { d1[ch] + g } else { d1[ch] };
                d2[ch] = if at2 { d2[ch] + g } else { d2[ch] };
                d3[ch] = if at3 { d3[ch] + g } else { d3[ch] };
            }
        }
    });
}

/// `y[n·C + c]` = mean over H×W of `x[n,:,:,c]`, summed in T in raster order, then
/// divided by H·W. PyTorch: `F.adaptive_avg_pool2d(x, 1)`. `y` is dense `[N, C]`.
pub fn global_avg_forward<T: Real>(y: &mut [T], x: &[T], p: &GlobalPoolParams) {
    let hw = p.h * p.w;
    debug_assert!(y.len() >= p.n * p.c);
    debug_assert!(x.len() >= view_len(p.n * hw, p.c, p.x_pitch));
    if p.c == 0 {
        return;
    }
    let count = T::from_f64(hw as f64);
    y[..p.n * p.c].par_chunks_mut(p.c).enumerate().for_each(|(n, y_n)| {
        y_n.fill(T::zero());
        for pix in n * hw..(n + 1) * hw {
            let x_px = &x[pix * p.x_pitch..pix * p.x_pitch + p.c];
            for (acc, &v) in y_n.iter_mut().zip(x_px) {
                *acc += v;
            }
        }
        for acc in y_n.iter_mut() {
            *acc = *acc / count;
        }
    });
}

/// Gradient of [`global_avg_forward`]: `dx[n,h,w,c] = dy[n·C + c] / (H·W)`,
/// overwriting the `C` channels of every pixel of `dx` (the gaps are untouched).
pub fn global_avg_backward<T: Real>(dx: &mut [T], dy: &[T], p: &GlobalPoolParams) {
    let hw = p.h * p.w;
    debug_assert!(dx.len() >= view_len(p.n * hw, p.c, p.x_pitch));
    debug_assert!(dy.len() >= p.n * p.c);
    if dx.is_empty() {
        return;
    }
    let count = T::from_f64(hw as f64);
    dx.par_chunks_mut(hw * p.x_pitch).enumerate().for_each(|(n, dx_n)| {
        let share: Vec<T> = dy[n * p.c..(n + 1) * p.c].iter().map(|&g| g / count).collect();
        for px in 0..hw {
            dx_n[px * p.x_pitch..px * p.x_pitch + p.c].copy_from_slice(&share);
        }
    });
}

/// Max and argmax (pixel index within the sample) of every channel of one sample,
/// scanning pixels in raster order with PyTorch's rule.
fn sample_argmax<T: Real>(x_n: &[T], hw: usize, c: usize, pitch: usize) -> (Vec<T>, Vec<usize>) {
    let mut max = vec![T::from_f64(f64::NEG_INFINITY); c];
    let mut arg = vec![0; c];
    for px in 0..hw {
        for ch in 0..c {
            let val = x_n[px * pitch + ch];
            if takes(val, max[ch]) {
                max[ch] = val;
                arg[ch] = px;
            }
        }
    }
    (max, arg)
}

/// `y[n·C + c]` = max over H×W of `x[n,:,:,c]`. PyTorch: `F.adaptive_max_pool2d(x, 1)`
/// (first maximum in raster order; NaN propagates). `y` is dense `[N, C]`.
pub fn global_max_forward<T: Real>(y: &mut [T], x: &[T], p: &GlobalPoolParams) {
    let hw = p.h * p.w;
    debug_assert!(y.len() >= p.n * p.c);
    debug_assert!(x.len() >= view_len(p.n * hw, p.c, p.x_pitch));
    if p.c == 0 {
        return;
    }
    y[..p.n * p.c].par_chunks_mut(p.c).enumerate().for_each(|(n, y_n)| {
        let start = n * hw * p.x_pitch;
        let (max, _) = sample_argmax(&x[start..], hw, p.c, p.x_pitch);
        y_n.copy_from_slice(&max);
    });
}

/// Gradient of [`global_max_forward`]: adds `dy[n·C + c]` into `dx` at the argmax of
/// `x[n,:,:,c]` (recomputed); every other element of `dx` is left as it is. The last
/// head's gradient joins the mask gradient the loss wrote, hence the add.
pub fn global_max_backward<T: Real>(dx: &mut [T], dy: &[T], x: &[T], p: &GlobalPoolParams) {
    let hw = p.h * p.w;
    debug_assert!(dx.len() >= view_len(p.n * hw, p.c, p.x_pitch));
    debug_assert!(dy.len() >= p.n * p.c);
    debug_assert!(x.len() >= view_len(p.n * hw, p.c, p.x_pitch));
    if dx.is_empty() {
        return;
    }
    dx.par_chunks_mut(hw * p.x_pitch).enumerate().for_each(|(n, dx_n)| {
        let start = n * hw * p.x_pitch;
        let (_, arg) = sample_argmax(&x[start..], hw, p.c, p.x_pitch);
        for (ch, &px) in arg.iter().enumerate() {
            dx_n[px * p.x_pitch + ch] += dy[n * p.c + ch];
        }
    });
}
