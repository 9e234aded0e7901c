//! Adam on the CPU, one step over a flat buffer, written to round the way
//! `torch.optim.Adam` (single-tensor path, `foreach=False`, no weight decay, no
//! amsgrad) does on a CPU f32 tensor, so that trajectories stay close to PyTorch's.

use rayon::prelude::*;

use super::Real;
use crate::backend::AdamParams;

/// Elements per rayon task.
const CHUNK: usize = 1 << 16;

/// The f64 a Python float literal would have been: the shortest decimal that reads
/// back as `v` (0.9f32 → 0.9, not 0.8999999761…). PyTorch computes its bias
/// corrections from Python floats, and `1 − β^t` is sensitive to the last bits of β
/// for small t.
fn as_python_float(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// One Adam step, in place. With the scalars computed as Python floats (f64) and
/// rounded to T where they meet a tensor, exactly as PyTorch does:
/// ```text
/// m ← lerp(m, g, 1−β1)           = m + (1−β1)·(g − m)
/// v ← v·β2 + ((1−β2)·g)·g        (mul_, addcmul_)
/// denom = sqrt(v) / sqrt(1−β2^t) + eps
/// p ← p + (−lr/(1−β1^t) · m) / denom   (addcdiv_)
/// ```
/// All four slices hold `p.len` elements.
pub fn adam<T: Real>(param: &mut [T], m: &mut [T], v: &mut [T], grad: &[T], p: &AdamParams) {
    let n = p.len;
    debug_assert!(param.len() >= n && m.len() >= n && v.len() >= n && grad.len() >= n);
    let (lr, beta1, beta2) = (as_python_float(p.lr), as_python_float(p.beta1), as_python_float(p.beta2));
    let t = p.step as f64;
    let bias_correction1 = 1.0 - beta1.powf(t);
    let bias_correction2 = 1.0 - beta2.powf(t);
    let neg_step_size = T::from_f64(-(lr / bias_correction1));
    let bc2_sqrt = T::from_f64(bias_correction2.sqrt());
    // lerp takes `self + w·(end − self)` for weights below 0.5, which 1−β1 always is
    // in practice; the other branch keeps larger weights exact at w = 1.
    let w1 = T::from_f64(1.0 - beta1);
    let small_w1 = 1.0 - beta1 < 0.5;
    let b2 = T::from_f64(beta2);
    let c2 = T::from_f64(1.0 - beta2);
    let eps = T::from_f64(as_python_float(p.eps));

    param[..n]
        .par_chunks_mut(CHUNK)
        .zip(m[..n].par_chunks_mut(CHUNK))
        .zip(v[..n].par_chunks_mut(CHUNK))
        .zip(grad[..n].par_chunks(CHUNK))
        .for_each(|(((param, m), v), grad)| {
            for (((p, m), v), &g) in param.iter_mut().zip(m).zip(v).zip(grad) {
                *m = if small_w1 { *m + w1 * (g - *m) } else { g - (g - *m) * (T::one() - w1) };
                *v = *v * b2 + c2 * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p += neg_step_size * *m / denom;
            }
        });
}
