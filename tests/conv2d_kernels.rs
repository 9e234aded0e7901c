//! The conv2d kernels (`kernels/conv2d.cu`, launched by `backend::cuda::conv2d`)
//! against the CPU reference, through the `Backend` trait: one test body run on every
//! kernel backend — the emulator always, the GPU when there is one.
//!
//! Every case puts its activations as pitched views at offsets inside wider buffers
//! whose other elements hold a sentinel, poisons outputs with NaN (dw, db, y, and dx
//! for `GradIn::Write`), and compares: outputs by relative L2 against the CPU
//! ([`tol::F32`]), the masked `dy` and every element outside the views bit for bit.
//! The cases cover both kernel paths (16-byte loads and stores where channels,
//! pitches and offsets are multiples of 4; scalar otherwise), 1x1 and 3x3 filters,
//! tails in every GEMM dimension, ReLU on and off, `GradIn` Write/Add/Skip, and one
//! and several weight-gradient splits. The race test runs a forward and a backward
//! case under the emulator's forward, reverse and random thread orders and requires
//! identical bytes.

mod common;

use common::{assert_close, rng, tol, SENTINEL};
use lesionseg::backend::cpu::{view_len, Cpu};
use lesionseg::backend::cuda::Precision;
use lesionseg::backend::emu::{self, race_check};
use lesionseg::backend::{At, Backend, Conv2dParams, GradIn};
use lesionseg::Result;
use rand::Rng;

/// What happens to `dx`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Grad {
    Skip,
    Write,
    Add,
}

/// One test case: the op's parameters, element offsets of the operands in their
/// buffers, and the input-gradient mode.
#[derive(Clone, Debug)]
struct Case {
    p: Conv2dParams,
    x_off: usize,
    y_off: usize,
    w_off: usize,
    grad: Grad,
}

impl Case {
    /// `n h w c k r` with pitches `c + xe`, `k + ye`; offsets aligned to 4 when `aligned`.
    #[allow(clippy::too_many_arguments)]
    fn new(
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
    fn all_vec(&self) -> bool {
        let p = &self.p;
        [p.c, p.k, p.x_pitch, p.y_pitch, self.x_off, self.y_off, self.w_off].iter().all(|v| v % 4 == 0)
    }

    /// Whether every operand takes the scalar path.
    fn all_scalar(&self) -> bool {
        let p = &self.p;
        !p.c.is_multiple_of(4) && !p.k.is_multiple_of(4)
    }

    fn label(&self) -> String {
        let p = &self.p;
        format!(
            "conv2d n{} {}x{} c{}→k{} r{} relu {} pitches {}/{} offsets x{} y{} w{} {:?}",
            p.n, p.h, p.w, p.c, p.k, p.r, p.relu, p.x_pitch, p.y_pitch, self.x_off, self.y_off, self.w_off, self.grad
        )
    }

    fn pixels(&self) -> usize {
        self.p.n * self.p.h * self.p.w
    }
}

/// A buffer holding [`SENTINEL`] except for a pitched view at `off` filled by `value`.
fn pitched(
    len_extra: usize,
    off: usize,
    pixels: usize,
    c: usize,
    pitch: usize,
    mut value: impl FnMut() -> f32,
) -> Vec<f32> {
    let mut buf = vec![SENTINEL; off + view_len(pixels, c, pitch) + len_extra];
    for p in 0..pixels {
        for v in &mut buf[off + p * pitch..][..c] {
            *v = value();
        }
    }
    buf
}

/// The channels of the view at `off`, densely packed.
fn view(buf: &[f32], off: usize, pixels: usize, c: usize, pitch: usize) -> Vec<f32> {
    (0..pixels).flat_map(|p| buf[off + p * pitch..][..c].iter().copied()).collect()
}

/// Host data of one case: inputs, and the poisoned output buffers as uploaded.
struct Data {
    x: Vec<f32>,
    /// `w` at `w_off`, then 3 sentinels, then `b`.
    params: Vec<f32>,
    y: Vec<f32>,
    dy: Vec<f32>,
    dx: Vec<f32>,
    /// `dw` at 2, then 3 sentinels, then `db`: NaN inside, sentinels around.
    grads: Vec<f32>,
}

impl Data {
    fn new(case: &Case, rng: &mut impl Rng) -> Self {
        let p = &case.p;
        let pixels = case.pixels();
        let x = pitched(5, case.x_off, pixels, p.c, p.x_pitch, || rng.gen_range(-1.0..1.0));
        let mut params = vec![SENTINEL; case.w_off + p.weight_len() + 3 + p.k + 2];
        for v in &mut params[case.w_off..][..p.weight_len()] {
            *v = rng.gen_range(-1.0..1.0);
        }
        for v in &mut params[case.w_off + p.weight_len() + 3..][..p.k] {
            *v = rng.gen_range(-1.0..1.0);
        }
        let y = pitched(3, case.y_off, pixels, p.k, p.y_pitch, || f32::NAN);
        let dy = pitched(3, case.y_off, pixels, p.k, p.y_pitch, || rng.gen_range(-1.0..1.0));
        let dx = pitched(5, case.x_off, pixels, p.c, p.x_pitch, || match case.grad {
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
    fn magnitudes(&self) -> Self {
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

fn upload<B: Backend>(be: &B, v: &[f32]) -> Result<B::Buf> {
    let buf = be.alloc(v.len())?;
    be.upload(&buf, 0, v)?;
    Ok(buf)
}

fn download<B: Backend>(be: &B, buf: &B::Buf, len: usize) -> Result<Vec<f32>> {
    let mut v = vec![0.0; len];
    be.download(buf, 0, &mut v)?;
    Ok(v)
}

/// The whole `y` buffer after the forward pass on `be`.
fn forward_on<B: Backend>(be: &B, case: &Case, d: &Data) -> Result<Vec<f32>> {
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
fn backward_on<B: Backend>(be: &B, case: &Case, d: &Data, y_fwd: &[f32]) -> Result<[Vec<f32>; 3]> {
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

/// Panics unless `got` and `want` agree bit for bit outside `inside` (the views).
fn assert_outside_equal(what: &str, got: &[f32], want: &[f32], inside: &[(usize, usize, usize, usize)]) {
    let mut is_in = vec![false; got.len()];
    for &(off, pixels, c, pitch) in inside {
        for p in 0..pixels {
            is_in[off + p * pitch..][..c].fill(true);
        }
    }
    let bad = (0..got.len()).find(|&i| !is_in[i] && got[i].to_bits() != want[i].to_bits());
    if let Some(i) = bad {
        panic!("{what}: element {i} outside the operands changed: {} (expected {})", got[i], want[i]);
    }
}

/// Runs `case` forward and backward on `be` and on the CPU and compares everything.
fn check_case<B: Backend>(be: &B, case: &Case, rng: &mut impl Rng) {
    let what = format!("{} on {}", case.label(), be.name());
    let p = &case.p;
    let pixels = case.pixels();
    let d = Data::new(case, rng);

    let want_y = forward_on(&Cpu, case, &d).unwrap_or_else(|e| panic!("{what}: cpu forward: {e}"));
    let got_y = forward_on(be, case, &d).unwrap_or_else(|e| panic!("{what}: forward: {e}"));
    let y_view = [(case.y_off, pixels, p.k, p.y_pitch)];
    assert_close(
        &format!("{what}: y"),
        &view(&got_y, case.y_off, pixels, p.k, p.y_pitch),
        &view(&want_y, case.y_off, pixels, p.k, p.y_pitch),
        tol::F32,
    );
    assert_outside_equal(&format!("{what}: y"), &got_y, &d.y, &y_view);

    let [want_dx, want_g, want_dy] =
        backward_on(&Cpu, case, &d, &want_y).unwrap_or_else(|e| panic!("{what}: cpu backward: {e}"));
    let [got_dx, got_g, got_dy] =
        backward_on(be, case, &d, &want_y).unwrap_or_else(|e| panic!("{what}: backward: {e}"));
    // The mask is exact: same bits, and nothing outside the view touched.
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&got_dy) == bits(&want_dy), "{what}: dy after the in-place ReLU mask differs");
    let wl = p.weight_len();
    let db_off = 2 + wl + 3;
    assert_close(&format!("{what}: dw"), &got_g[2..2 + wl], &want_g[2..2 + wl], tol::F32);
    let db_scale = common::channel_abs_sums(&view(&want_dy, case.y_off, pixels, p.k, p.y_pitch), p.k);
    let (got_db, want_db) = (&got_g[db_off..db_off + p.k], &want_g[db_off..db_off + p.k]);
    common::assert_scaled(&format!("{what}: db"), got_db, want_db, &db_scale, tol::F32);
    assert_outside_equal(&format!("{what}: dw/db"), &got_g, &d.grads, &[(2, 1, wl, wl), (db_off, 1, p.k, p.k)]);
    let x_view = (case.x_off, pixels, p.c, p.x_pitch);
    if case.grad == Grad::Skip {
        assert!(bits(&got_dx) == bits(&d.dx), "{what}: dx changed although skipped");
    } else {
        let (g, w) =
            (view(&got_dx, x_view.0, pixels, p.c, p.x_pitch), view(&want_dx, x_view.0, pixels, p.c, p.x_pitch));
        assert_close(&format!("{what}: dx"), &g, &w, tol::F32);
        assert_outside_equal(&format!("{what}: dx"), &got_dx, &d.dx, &[x_view]);
    }
}

/// The sweep the emulator runs (small: each block's 256 threads are fibers on one
/// OS thread). Channel counts 1, 3, 5, 7, 13, 33, 64 and others, none a multiple of
/// the 64-wide tile except 64; H/W odd, even, 1x1, 3x5; enough pixels in some cases
/// (≥ 256) for the weight gradient to split its reduction.
fn sweep() -> Vec<Case> {
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
fn random_cases(rng: &mut impl Rng, count: usize) -> Vec<Case> {
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

/// The test body every backend runs.
fn check_backend<B: Backend>(be: &B, cases: &[Case]) {
    let mut rng = rng();
    assert!(cases.iter().any(Case::all_vec) && cases.iter().any(Case::all_scalar), "the sweep must cover both paths");
    for case in cases {
        let start = std::time::Instant::now();
        check_case(be, case, &mut rng);
        eprintln!("{:>8.1} ms  {}", start.elapsed().as_secs_f64() * 1e3, case.label());
    }
}

#[test]
fn emu_matches_cpu_sweep() {
    check_backend(&emu::backend(), &sweep());
}

#[test]
fn emu_matches_cpu_random_shapes() {
    let mut cases = random_cases(&mut rng(), 30);
    // Keep the coverage assertion of the shared body satisfied whatever was drawn.
    cases.push(Case::new(1, 3, 3, 4, 4, 3, true, 0, 0, true, Grad::Write));
    cases.push(Case::new(1, 3, 3, 3, 5, 1, false, 0, 0, false, Grad::Add));
    check_backend(&emu::backend(), &cases);
}

#[test]
fn cuda_matches_cpu() {
    let Some(gpu) = lesionseg::device::test_gpu("conv2d_kernels::cuda_matches_cpu") else { return };
    let mut cases = sweep();
    cases.extend(random_cases(&mut rng(), 100));
    // Real layer shapes (smaller images): the first layer, a middle one, dec1 into a
    // slice of a concatenation, the final 1x1.
    cases.push(Case::new(2, 64, 64, 3, 64, 3, true, 0, 32, true, Grad::Skip));
    cases.push(Case::new(2, 32, 32, 64, 128, 3, true, 0, 0, true, Grad::Write));
    cases.push(Case::new(1, 16, 16, 256, 128, 3, true, 512, 64, true, Grad::Add));
    cases.push(Case::new(2, 64, 64, 96, 32, 3, true, 0, 0, true, Grad::Write));
    cases.push(Case::new(2, 64, 64, 32, 5, 1, false, 0, 0, true, Grad::Write));
    check_backend(&gpu, &cases);
}

/// The same bytes under the emulator's forward, reverse and random thread orders:
/// a missing barrier would make a thread read a shared tile before or after its
/// writer ran. Several tiles in every GEMM dimension, tails, and a split weight
/// gradient (286 pixels).
#[test]
fn emu_schedules_agree() {
    let mut rng = rng();
    let fwd = Case::new(2, 5, 7, 13, 70, 3, true, 1, 2, false, Grad::Write);
    let bwd = Case::new(2, 11, 13, 12, 66, 3, true, 4, 2, true, Grad::Add);
    let scalar = Case::new(3, 9, 11, 5, 7, 1, false, 1, 0, false, Grad::Write);
    for case in [fwd, bwd, scalar] {
        let d = Data::new(&case, &mut rng);
        let y_fwd = forward_on(&Cpu, &case, &d).unwrap();
        let report = race_check(|be| {
            let mut out = forward_on(be, &case, &d)?;
            for v in backward_on(be, &case, &d, &y_fwd)? {
                out.extend(v);
            }
            Ok(out)
        })
        .unwrap_or_else(|e| panic!("{}: {e}", case.label()));
        report.check(0.0).unwrap_or_else(|e| panic!("{}: {e}", case.label()));
    }
}

/// `conv2d_fwd_bf16` against the CPU's f32 forward: within the bf16 tolerance
/// (‖a−b‖ ≤ 1e-2·‖Σ|terms|‖, see [`Data::magnitudes`]) on every case of the sweep and
/// on random shapes, nothing outside `y`'s view written.
fn check_bf16_forward<B: Backend>(be: &B, cases: &[Case]) {
    let mut rng = rng();
    for case in cases {
        let what = format!("bf16 forward {}", case.label());
        let d = Data::new(case, &mut rng);
        let want = forward_on(&Cpu, case, &d).unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
        let got = forward_on(be, case, &d).unwrap_or_else(|e| panic!("{what}: {e}"));
        let p = &case.p;
        let scale = forward_on(&Cpu, case, &d.magnitudes()).unwrap();
        let yv = |v: &[f32]| view(v, case.y_off, case.pixels(), p.k, p.y_pitch);
        let (g, w) = (yv(&got), yv(&want));
        common::assert_scaled(&what, &g, &w, &yv(&scale), tol::BF16);
        // Not f32 arithmetic: bf16 rounding must show (a kernel that silently ran the
        // f32 path would pass the tolerance but not this).
        if p.c * p.r * p.r >= 16 && w.iter().any(|v| *v != 0.0) {
            assert!(common::rel_l2(&g, &w) > 1e-6, "{what}: identical to f32 to 1e-6: not bf16 products");
        }
        assert_outside_equal(&what, &got, &d.y, &[(case.y_off, case.pixels(), p.k, p.y_pitch)]);
    }
}

/// The backward with bf16 precision against the CPU's f32: `dx` and `dw` (bf16
/// products) within the bf16 tolerance with their rounding visible, `dx` written or
/// added as asked; `db` (an f32 sum in both precisions) within the f32 tolerance
/// (scaled by Σ|dy|); nothing outside the views touched; the masked `dy` bit-exact.
fn check_bf16_backward<B: Backend>(be: &B, cases: &[Case]) {
    let mut rng = rng();
    for case in cases {
        let what = format!("bf16 backward {}", case.label());
        let d = Data::new(case, &mut rng);
        let y = forward_on(&Cpu, case, &d).unwrap();
        let [want_dx, want_g, want_dy] = backward_on(&Cpu, case, &d, &y).unwrap();
        let [got_dx, got_g, got_dy] = backward_on(be, case, &d, &y).unwrap_or_else(|e| panic!("{what}: {e}"));
        let p = &case.p;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&got_dy) == bits(&want_dy), "{what}: masked dy differs");
        // Scales: the backward of |dy| with |x|, |w| (and |dx| added), masked by the same y.
        let [scale_dx, scale_g, _] = backward_on(&Cpu, case, &d.magnitudes(), &y).unwrap();
        let (wl, pixels) = (p.weight_len(), case.pixels());
        let (gw, ww) = (&got_g[2..2 + wl], &want_g[2..2 + wl]);
        common::assert_scaled(&format!("{what}: dw"), gw, ww, &scale_g[2..2 + wl], tol::BF16);
        if pixels >= 4 && ww.iter().any(|v| *v != 0.0) {
            assert!(common::rel_l2(gw, ww) > 1e-6, "{what}: dw identical to f32 to 1e-6: not bf16 products");
        }
        let db_off = 2 + wl + 3;
        let db_scale = common::channel_abs_sums(&view(&want_dy, case.y_off, pixels, p.k, p.y_pitch), p.k);
        let (got_db, want_db) = (&got_g[db_off..db_off + p.k], &want_g[db_off..db_off + p.k]);
        common::assert_scaled(&format!("{what}: db"), got_db, want_db, &db_scale, tol::F32);
        assert_outside_equal(&format!("{what}: dw/db"), &got_g, &d.grads, &[(2, 1, wl, wl), (db_off, 1, p.k, p.k)]);
        let x_view = (case.x_off, pixels, p.c, p.x_pitch);
        if case.grad == Grad::Skip {
            assert!(bits(&got_dx) == bits(&d.dx), "{what}: dx changed although skipped");
            continue;
        }
        let xv = |v: &[f32]| view(v, case.x_off, pixels, p.c, p.x_pitch);
        let (g, w) = (xv(&got_dx), xv(&want_dx));
        common::assert_scaled(&format!("{what}: dx"), &g, &w, &xv(&scale_dx), tol::BF16);
        // Rounding visible (an f32 run is within 1e-6), unless added into a larger dx.
        if case.grad == Grad::Write && p.k * p.r * p.r >= 16 && w.iter().any(|v| *v != 0.0) {
            assert!(common::rel_l2(&g, &w) > 1e-6, "{what}: dx identical to f32 to 1e-6: not bf16 products");
        }
        assert_outside_equal(&format!("{what}: dx"), &got_dx, &d.dx, &[x_view]);
    }
}

#[test]
fn emu_bf16_backward_matches_cpu() {
    let mut cases = sweep();
    cases.extend(random_cases(&mut rng(), 20));
    check_bf16_backward(&bf16(emu::backend()), &cases);
}

#[test]
fn emu_bf16_backward_schedules_agree() {
    let mut rng = rng();
    for case in [
        Case::new(2, 9, 8, 70, 13, 3, true, 2, 1, false, Grad::Add),
        Case::new(1, 10, 13, 68, 16, 3, true, 0, 0, true, Grad::Write),
    ] {
        let d = Data::new(&case, &mut rng);
        let y = forward_on(&Cpu, &case, &d).unwrap();
        let runs: Vec<Vec<u32>> = emu::SCHEDULES
            .iter()
            .map(|&s| {
                let [dx, grads, _] = backward_on(&bf16(emu::backend_with(s)), &case, &d, &y).unwrap();
                dx.iter().chain(&grads).map(|v| v.to_bits()).collect()
            })
            .collect();
        assert!(runs.iter().all(|r| *r == runs[0]), "{}: bf16 dx/dw/db differ between thread orders", case.label());
    }
}

#[test]
fn cuda_bf16_backward_matches_cpu() {
    let Some(mut gpu) = lesionseg::device::test_gpu("conv2d_kernels::cuda_bf16_backward_matches_cpu") else { return };
    gpu.precision = Precision::Bf16;
    let mut cases = sweep();
    cases.extend(random_cases(&mut rng(), 100));
    cases.push(Case::new(1, 16, 16, 256, 128, 3, true, 512, 64, true, Grad::Add));
    check_bf16_backward(&gpu, &cases);
}

fn bf16(mut be: emu::EmuBackend) -> emu::EmuBackend {
    be.precision = Precision::Bf16;
    be
}

#[test]
fn emu_bf16_forward_matches_cpu() {
    let mut cases = sweep();
    cases.extend(random_cases(&mut rng(), 20));
    check_bf16_forward(&bf16(emu::backend()), &cases);
}

#[test]
fn emu_bf16_forward_schedules_agree() {
    let mut rng = rng();
    // Several tiles in pixels and channels, a reduction tail (3·3·13 = 117), both paths.
    for case in [
        Case::new(2, 9, 8, 13, 70, 3, true, 1, 2, false, Grad::Skip),
        Case::new(1, 10, 13, 16, 68, 3, false, 0, 0, true, Grad::Skip),
    ] {
        let d = Data::new(&case, &mut rng);
        let runs: Vec<Vec<u32>> = emu::SCHEDULES
            .iter()
            .map(|&s| {
                let y = forward_on(&bf16(emu::backend_with(s)), &case, &d).unwrap();
                y.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        assert!(runs.iter().all(|r| *r == runs[0]), "{}: bf16 forward differs between thread orders", case.label());
    }
}

#[test]
fn cuda_bf16_forward_matches_cpu() {
    let Some(mut gpu) = lesionseg::device::test_gpu("conv2d_kernels::cuda_bf16_forward_matches_cpu") else { return };
    gpu.precision = Precision::Bf16;
    let mut cases = sweep();
    cases.extend(random_cases(&mut rng(), 100));
    cases.push(Case::new(2, 32, 32, 64, 128, 3, true, 0, 0, true, Grad::Skip));
    cases.push(Case::new(1, 16, 16, 256, 128, 3, true, 512, 64, true, Grad::Skip));
    check_bf16_forward(&gpu, &cases);
}

/// Bad launches are errors, never undefined behaviour.
#[test]
fn emu_rejects_bad_operands() {
    let be = emu::backend();
    let p = Conv2dParams { n: 1, h: 3, w: 3, c: 4, k: 4, r: 3, relu: true, x_pitch: 4, y_pitch: 4 };
    // weight_len 144: x and y views of 36 elements, w in its own buffer with b after it.
    let (buf, other, params, grads) =
        (be.alloc(200).unwrap(), be.alloc(200).unwrap(), be.alloc(160).unwrap(), be.alloc(160).unwrap());
    let at = |b, off| At::new(b, off);
    // Past the end of the buffer.
    assert!(be.conv2d_forward(at(&buf, 190), at(&other, 0), at(&params, 0), at(&params, 150), &p).is_err());
    assert!(be.conv2d_forward(at(&buf, 0), at(&other, 0), at(&params, 20), at(&params, 150), &p).is_err());
    // Output overlapping an input.
    assert!(be.conv2d_forward(at(&buf, 0), at(&buf, 20), at(&params, 0), at(&params, 150), &p).is_err());
    // Filter size 2, and a pitch below the channel count.
    assert!(be
        .conv2d_forward(at(&buf, 0), at(&other, 0), at(&params, 0), at(&params, 150), &Conv2dParams { r: 2, ..p })
        .is_err());
    assert!(be
        .conv2d_forward(at(&buf, 0), at(&other, 0), at(&params, 0), at(&params, 150), &Conv2dParams { x_pitch: 3, ..p })
        .is_err());
    // Backward: dx overlapping dy, and db overlapping dw.
    let bwd = |dx, db| {
        be.conv2d_backward(
            GradIn::Write(dx),
            at(&grads, 0),
            db,
            at(&buf, 0),
            at(&other, 0),
            at(&other, 100),
            at(&params, 0),
            &p,
        )
    };
    assert!(bwd(at(&buf, 10), at(&grads, 150)).is_err());
    assert!(bwd(at(&buf, 100), at(&grads, 140)).is_err());
    bwd(at(&buf, 100), at(&grads, 150)).unwrap();
    // And a good launch on the same buffers works.
    be.conv2d_forward(at(&buf, 0), at(&other, 0), at(&params, 0), at(&params, 150), &p).unwrap();
}
