//! The conv2d kernel tests' cases (`tests/conv2d_kernels.rs`, f32, and
//! `tests/conv2d_mma_kernels.rs`, tensor cores): parameters and operand offsets,
//! host data with sentinels and poison, the forward and backward through the
//! `Backend` trait, the sweep and random shapes.

use super::{Layout, SENTINEL};
use lesionseg::backend::{At, Backend, Conv2dParams, GradIn};
use lesionseg::Result;
use rand::Rng;

/// What happens to `dx`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Grad {
    Skip,
    Write,
    Add,
}

/// One test case: the op's parameters, element offsets of the operands in their
/// buffers, and the input-gradient mode.
#[derive(Clone, Debug)]
pub struct Case {
    pub p: Conv2dParams,
    pub x_off: usize,
    pub y_off: usize,
    pub w_off: usize,
    pub grad: Grad,
}

impl Case {
    /// `n h w c k r` with pitches `c + xe`, `k + ye`; offsets aligned to 4 when `aligned`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        h: usize,
        w: usize,
        c: usize,
        k: usize,
        r: usize,
        relu: bool,
        xe: usize,
        ye: usize,
        aligned: bool,
        grad: Grad,
    ) -> Self {
        let p = Conv2dParams { n, h, w, c, k, r, relu, x_pitch: c + xe, y_pitch: k + ye };
        let (x_off, y_off, w_off) = if aligned { (8, 4, 12) } else { (3, 1, 5) };
        Case { p, x_off, y_off, w_off, grad }
    }

    /// Whether the launcher takes the 16-byte path for every operand of the forward
    /// and the input gradient (the emulator's buffers start 256-byte aligned).
    pub fn all_vec(&self) -> bool {
        let p = &self.p;
        [p.c, p.k, p.x_pitch, p.y_pitch, self.x_off, self.y_off, self.w_off].iter().all(|v| v % 4 == 0)
    }

    /// Whether every operand takes the scalar path.
    pub fn all_scalar(&self) -> bool {
        let p = &self.p;
        !p.c.is_multiple_of(4) && !p.k.is_multiple_of(4)
    }

    pub fn label(&self) -> String {
        let p = &self.p;
        format!(
            "conv2d n{} {}x{} c{}→k{} r{} relu {} pitches {}/{} offsets x{} y{} w{} {:?}",
            p.n, p.h, p.w, p.c, p.k, p.r, p.relu, p.x_pitch, p.y_pitch, self.x_off, self.y_off, self.w_off, self.grad
        )
    }

    pub fn pixels(&self) -> usize {
        self.p.n * self.p.h * self.p.w
    }

    /// Where `x` (and `dx`) lie in their buffers.
    pub fn x_at(&self) -> Layout {
        Layout { pixels: self.pixels(), c: self.p.c, pitch: self.p.x_pitch, off: self.x_off }
    }

    /// Where `y` (and `dy`) lie in their buffers.
    pub fn y_at(&self) -> Layout {
        Layout { pixels: self.pixels(), c: self.p.k, pitch: self.p.y_pitch, off: self.y_off }
    }

    /// Where `dw` and `db` lie in the gradient buffer ([`Data::grads`]).
    pub fn grad_views(&self) -> [Layout; 2] {
        let wl = self.p.weight_len();
        [Layout::dense(wl, 2), Layout::dense(self.p.k, 2 + wl + 3)]
    }
}

/// Host data of one case: inputs, and the poisoned output buffers as uploaded.
pub struct Data {
    pub x: Vec<f32>,
    /// `w` at `w_off`, then 3 sentinels, then `b`.
    pub params: Vec<f32>,
    pub y: Vec<f32>,
    pub dy: Vec<f32>,
    pub dx: Vec<f32>,
    /// `dw` at 2, then 3 sentinels, then `db`: NaN inside, sentinels around.
    pub grads: Vec<f32>,
}

impl Data {
    pub fn new(case: &Case, rng: &mut impl Rng) -> Self {
        let p = &case.p;
        let x = case.x_at().fill(|_| rng.gen_range(-1.0..1.0));
        let mut params = vec![SENTINEL; case.w_off + p.weight_len() + 3 + p.k + 2];
        for v in &mut params[case.w_off..][..p.weight_len()] {
            *v = rng.gen_range(-1.0..1.0);
        }
        for v in &mut params[case.w_off + p.weight_len() + 3..][..p.k] {
            *v = rng.gen_range(-1.0..1.0);
        }
        let y = case.y_at().fill(|_| f32::NAN);
        let dy = case.y_at().fill(|_| rng.gen_range(-1.0..1.0));
        let dx = case.x_at().fill(|_| match case.grad {
            Grad::Add => rng.gen_range(-1.0..1.0),
            _ => f32::NAN,
        });
        let mut grads = vec![SENTINEL; 2 + p.weight_len() + 3 + p.k + 2];
        grads[2..][..p.weight_len()].fill(f32::NAN);
        grads[2 + p.weight_len() + 3..][..p.k].fill(f32::NAN);
        Data { x, params, y, dy, dx, grads }
    }

    fn b_off(&self, case: &Case) -> usize {
        case.w_off + case.p.weight_len() + 3
    }

    /// Every input replaced by its magnitude: an op run on it gives each output's
    /// Σ|terms|, the scale a bf16 result is judged against (a sum that cancels far
    /// below its terms has a large error relative to itself in any finite precision).
    pub fn magnitudes(&self) -> Self {
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
        Data {
            x: abs(&self.x),
            params: abs(&self.params),
            y: self.y.clone(),
            dy: abs(&self.dy),
            dx: abs(&self.dx),
            grads: self.grads.clone(),
        }
    }
}

pub fn upload<B: Backend>(be: &B, v: &[f32]) -> Result<B::Buf> {
    let buf = be.alloc(v.len())?;
    be.upload(&buf, 0, v)?;
    Ok(buf)
}

pub fn download<B: Backend>(be: &B, buf: &B::Buf, len: usize) -> Result<Vec<f32>> {
    let mut v = vec![0.0; len];
    be.download(buf, 0, &mut v)?;
    Ok(v)
}

/// The whole `y` buffer after the forward pass on `be`.
pub fn forward_on<B: Backend>(be: &B, case: &Case, d: &Data) -> Result<Vec<f32>> {
    let (x, params, y) = (upload(be, &d.x)?, upload(be, &d.params)?, upload(be, &d.y)?);
    be.conv2d_forward(
        At::new(&y, case.y_off),
        At::new(&x, case.x_off),
        At::new(&params, case.w_off),
        At::new(&params, d.b_off(case)),
        &case.p,
    )?;
    download(be, &y, d.y.len())
}

/// The whole `dx`, `grads` and `dy` buffers after the backward pass on `be`, with
/// `y_fwd` (a forward output, so that the ReLU mask bites) as `y`.
pub fn backward_on<B: Backend>(be: &B, case: &Case, d: &Data, y_fwd: &[f32]) -> Result<[Vec<f32>; 3]> {
    let (x, params, y) = (upload(be, &d.x)?, upload(be, &d.params)?, upload(be, y_fwd)?);
    let (dy, dx, grads) = (upload(be, &d.dy)?, upload(be, &d.dx)?, upload(be, &d.grads)?);
    let dx_at = At::new(&dx, case.x_off);
    let gin = match case.grad {
        Grad::Skip => GradIn::Skip,
        Grad::Write => GradIn::Write(dx_at),
        Grad::Add => GradIn::Add(dx_at),
    };
    be.conv2d_backward(
        gin,
        At::new(&grads, 2),
        At::new(&grads, 2 + case.p.weight_len() + 3),
        At::new(&dy, case.y_off),
        At::new(&y, case.y_off),
        At::new(&x, case.x_off),
        At::new(&params, case.w_off),
        &case.p,
    )?;
    Ok([download(be, &dx, d.dx.len())?, download(be, &grads, d.grads.len())?, download(be, &dy, d.dy.len())?])
}

/// The sweep the emulator runs (small: each block's 256 threads are fibers on one
/// OS thread). Channel counts 1, 3, 5, 7, 13, 33, 64 and others, none a multiple of
/// the 64-wide tile except 64; H/W odd, even, 1x1, 3x5; enough pixels in some cases
/// (≥ 256) for the weight gradient to split its reduction.
pub fn sweep() -> Vec<Case> {
    use Grad::*;
    vec![
        // Scalar path: odd channels, pitches and offsets.
        Case::new(1, 1, 1, 1, 1, 3, false, 0, 0, false, Write),
        Case::new(2, 3, 5, 3, 5, 3, true, 2, 1, false, Add),
        Case::new(3, 4, 6, 7, 13, 1, true, 1, 0, false, Write),
        Case::new(1, 5, 3, 13, 7, 3, false, 0, 3, false, Skip),
        Case::new(2, 7, 9, 5, 33, 3, true, 3, 2, false, Add),
        Case::new(1, 6, 7, 33, 3, 1, false, 2, 2, false, Write),
        Case::new(3, 9, 11, 3, 65, 3, true, 1, 1, false, Write), // 297 pixels: split weight gradient
        Case::new(1, 2, 2, 65, 1, 3, true, 0, 5, false, Add),
        // 16-byte path: channels, pitches and offsets multiples of 4.
        Case::new(1, 3, 5, 64, 64, 3, true, 0, 4, true, Write),
        Case::new(2, 5, 4, 8, 12, 3, false, 4, 0, true, Add),
        Case::new(1, 1, 1, 4, 68, 3, true, 0, 0, true, Skip),
        Case::new(2, 11, 13, 12, 20, 3, true, 4, 8, true, Write), // 286 pixels: split
        Case::new(3, 6, 5, 68, 4, 1, false, 8, 4, true, Add),
        // Mixed: 16-byte loads of x, scalar weights and outputs, and the reverse.
        Case::new(2, 4, 7, 16, 5, 3, true, 0, 2, true, Write),
        Case::new(1, 7, 6, 7, 32, 3, false, 1, 0, true, Add),
        // Unaligned offsets with 4-multiple channels: the scalar fallback.
        Case::new(2, 5, 5, 8, 8, 3, true, 0, 0, false, Add),
        // The model's layer kinds at small sizes: first layer (C = 3), a 64→64 layer
        // (4 weight-gradient splits), a long reduction (R·R·C = 2304), dec1 reading a
        // 96-channel concatenation and writing a slice of a wider tensor, the final 1x1.
        Case::new(2, 12, 12, 3, 64, 3, true, 0, 0, true, Skip),
        Case::new(2, 16, 16, 64, 64, 3, true, 0, 0, true, Write),
        Case::new(1, 4, 5, 256, 128, 3, true, 0, 0, true, Add),
        Case::new(1, 9, 10, 96, 32, 3, true, 0, 64, true, Write),
        Case::new(2, 8, 8, 32, 5, 1, false, 0, 0, true, Write),
    ]
}

/// A few random shapes on top of the sweep, drawn from the test's seed.
pub fn random_cases(rng: &mut impl Rng, count: usize) -> Vec<Case> {
    const CH: [usize; 11] = [1, 2, 3, 4, 5, 7, 8, 13, 33, 64, 67];
    let grads = [Grad::Skip, Grad::Write, Grad::Add];
    (0..count)
        .map(|_| {
            let aligned = rng.gen_bool(0.5);
            let (xe, ye) = if aligned {
                (4 * rng.gen_range(0..2), 4 * rng.gen_range(0..2))
            } else {
                (rng.gen_range(0..4), rng.gen_range(0..4))
            };
            Case::new(
                rng.gen_range(1..=3),
                rng.gen_range(1..=12),
                rng.gen_range(1..=12),
                CH[rng.gen_range(0..CH.len())],
                CH[rng.gen_range(0..CH.len())],
                if rng.gen_bool(0.5) { 3 } else { 1 },
                rng.gen_bool(0.5),
                xe,
                ye,
                aligned,
                grads[rng.gen_range(0..3)],
            )
        })
        .collect()
}
