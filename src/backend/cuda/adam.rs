//! Launcher of `kernels/adam.cu`: one Adam step over a flat buffer (formulas and
//! rounding: `backend::cpu::adam`; kernel design: the header of `kernels/adam.cu`).
//!
//! check (operand bounds, disjoint operands, `int` extent) → the scalars, on the host
//! in f64 exactly as the CPU reference computes them, rounded to f32 once →
//! arguments → one launch. 16-byte accesses when all four operands are 16-byte aligned.

use super::{addresses, int, Arg, Executor, Kernel, Kernels, Operand};
use super::{fits, stride_geometry};
use crate::backend::{AdamParams, At};
use crate::error::Result;

const STEP: Kernel = Kernel { module: "adam", name: "adam_step_f32" };

/// The f64 a Python float literal would have been: the shortest decimal that reads
/// back as `v` (0.9f32 → 0.9). The same rule as the CPU reference's, which PyTorch's
/// bias corrections make necessary (`1 − β^t` is sensitive to β's last bits).
fn as_python_float(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// The kernel's scalar arguments, in its parameter order after `len`:
/// w1, small_w1, b2, c2, bc2_sqrt, neg_step, eps.
fn scalars(p: &AdamParams) -> [Arg; 7] {
    let (lr, beta1, beta2) = (as_python_float(p.lr), as_python_float(p.beta1), as_python_float(p.beta2));
    let t = p.step as f64;
    let bias_correction1 = 1.0 - beta1.powf(t);
    let bias_correction2 = 1.0 - beta2.powf(t);
    [
        Arg::F32((1.0 - beta1) as f32),
        Arg::I32((1.0 - beta1 < 0.5) as i32),
        Arg::F32(beta2 as f32),
        Arg::F32((1.0 - beta2) as f32),
        Arg::F32(bias_correction2.sqrt() as f32),
        Arg::F32(-(lr / bias_correction1) as f32),
        Arg::F32(as_python_float(p.eps) as f32),
    ]
}

/// Launches `adam_step_f32`: updates `param`, `m` and `v` in place from `grad`.
pub fn adam<E: Executor>(
    k: &Kernels<E>,
    param: At<Kernels<E>>,
    m: At<Kernels<E>>,
    v: At<Kernels<E>>,
    grad: At<Kernels<E>>,
    p: &AdamParams,
) -> Result<()> {
    const OP: &str = "adam";
    let len = fits(OP, "the parameter buffer", Some(p.len))?;
    let ops = [
        Operand { name: "param", at: param, len, write: true },
        Operand { name: "m", at: m, len, write: true },
        Operand { name: "v", at: v, len, write: true },
        Operand { name: "grad", at: grad, len, write: false },
    ];
    let addrs = addresses(&k.exec, OP, &ops)?;
    if len == 0 {
        return Ok(());
    }
    let vec = addrs.iter().all(|a| a % 16 == 0);
    let mut args: Vec<Arg> = addrs.iter().map(|&a| Arg::Ptr(a)).collect();
    args.push(int(OP, len)?);
    args.extend(scalars(p));
    args.push(Arg::I32(vec as i32));
    let items = if vec { len / 4 + len % 4 } else { len };
    k.exec.launch(STEP, &stride_geometry(items), &args)
}
