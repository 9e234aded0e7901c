//! The transposed-convolution kernels (`kernels/deconv.cu`, and `kernels/deconv_mma.cu`
//! with `Precision::Bf16`) against the CPU backend, through the `Backend` trait:
//! `Kernels<Emu>` always, `Kernels<Cuda>` when a GPU is usable (otherwise that half is
//! skipped with the reason printed).
//!
//! Every operand is a view at an offset of a larger buffer whose other elements hold
//! a sentinel, activations with pitches wider than their channels; outputs start as
//! NaN (or random values, for an input gradient that is added into). A case passes
//! when the channel elements agree with the CPU within `tol::F32` (relative L2), the
//! ReLU-masked `dy` agrees exactly, and no element outside a view changed. Shapes
//! cover odd and even H/W, channel counts that are not multiples of the 64-wide
//! tiles, both the scalar and the 16-byte load paths, and the split-K path of the
//! weight and bias gradients. A race check runs one case per kernel under the
//! emulator's forward, reverse and random thread orders and demands identical bytes.

pub mod common;

use common::kernels::{bf16, download, gpu, upload};
use common::{assert_close, rng, tol, Layout};
use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::emu::{self, race_check};
use lesionseg::backend::{At, Backend, DeconvParams, GradIn};
use rand::Rng;

/// The channel counts the sweep draws from.
const CHANNELS: [usize; 7] = [1, 3, 5, 7, 13, 33, 64];

/// One deconvolution case: shape, operand layouts and their initial contents.
struct Case {
    p: DeconvParams,
    x: Layout,
    y: Layout,
    w: Layout,
    b: Layout,
    x_buf: Vec<f32>,
    w_buf: Vec<f32>,
    b_buf: Vec<f32>,
    /// Upstream gradient (same layout as y).
    dy_buf: Vec<f32>,
    /// Initial dx for an added input gradient.
    dx_init: Vec<f32>,
}

impl Case {
    /// The case with every input replaced by its magnitude: an op run on it gives each
    /// output's Σ|terms|, the scale the bf16 results are judged against.
    fn magnitudes(&self) -> Case {
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
        Case {
            p: self.p,
            x: self.x,
            y: self.y,
            w: self.w,
            b: self.b,
            x_buf: abs(&self.x_buf),
            w_buf: abs(&self.w_buf),
            b_buf: abs(&self.b_buf),
            dy_buf: abs(&self.dy_buf),
            dx_init: abs(&self.dx_init),
        }
    }
}

/// A case of the given shape. With `aligned`, pitches and offsets are multiples of 4
/// floats (the 16-byte paths where C or K allow); otherwise pitches and offsets are
/// arbitrary.
#[allow(clippy::too_many_arguments)]
fn case(rng: &mut impl Rng, n: usize, h: usize, w: usize, c: usize, k: usize, relu: bool, aligned: bool) -> Case {
    let mut pitch = |ch: usize| {
        if aligned {
            ch.next_multiple_of(4) + 4 * rng.gen_range(0..2)
        } else if rng.gen_bool(0.5) {
            ch
        } else {
            ch + rng.gen_range(1..6)
        }
    };
    let (x_pitch, y_pitch) = (pitch(c), pitch(k));
    let p = DeconvParams { n, h, w, c, k, relu, x_pitch, y_pitch };
    let mut off = || if aligned { 4 * rng.gen_range(0..3) } else { rng.gen_range(0..8) };
    let x = Layout { pixels: n * h * w, c, pitch: x_pitch, off: off() };
    let y = Layout { pixels: n * p.out_h() * p.out_w(), c: k, pitch: y_pitch, off: off() };
    let wl = Layout { pixels: 1, c: p.weight_len(), pitch: p.weight_len(), off: off() };
    let b = Layout { pixels: 1, c: k, pitch: k, off: off() };
    let mut uniform = |l: &Layout| l.fill(|_| rng.gen_range(-1.0f32..1.0));
    Case {
        x_buf: uniform(&x),
        w_buf: uniform(&wl),
        b_buf: uniform(&b),
        dy_buf: uniform(&y),
        dx_init: uniform(&x),
        p,
        x,
        y,
        w: wl,
        b,
    }
}

/// The sweep: fixed corner cases, the split-K path, and random shapes.
fn cases(rng: &mut impl Rng) -> Vec<Case> {
    let mut v = vec![
        case(rng, 1, 1, 1, 1, 1, false, false),
        case(rng, 2, 3, 5, 3, 5, true, false),
        case(rng, 1, 4, 4, 64, 64, true, true),
        case(rng, 3, 5, 2, 13, 7, false, false),
        case(rng, 1, 3, 3, 33, 33, true, false),
        case(rng, 2, 2, 3, 8, 12, false, true),
        // 288 input pixels: the weight and bias gradients split into chunks.
        case(rng, 2, 12, 12, 5, 7, true, false),
        case(rng, 1, 10, 13, 4, 8, false, true),
        // The model's real widths: dec2 (128 -> 32) and the center block (512 -> 256).
        case(rng, 1, 4, 5, 128, 32, true, true),
        case(rng, 1, 2, 2, 512, 256, true, true),
    ];
    for i in 0..10 {
        let (n, h, w) = (rng.gen_range(1..=3), rng.gen_range(1..=6), rng.gen_range(1..=6));
        let (c, k) = (CHANNELS[rng.gen_range(0..7)], CHANNELS[rng.gen_range(0..7)]);
        let relu = rng.gen_bool(0.5);
        v.push(case(rng, n, h, w, c, k, relu, i % 2 == 0));
    }
    v
}

/// The forward on `be`: the whole y buffer after the op.
fn forward_on<B: Backend>(be: &B, c: &Case) -> Vec<f32> {
    let y0 = c.y.fill(|_| f32::NAN);
    let (y, x, w, b) = (upload(be, &y0), upload(be, &c.x_buf), upload(be, &c.w_buf), upload(be, &c.b_buf));
    be.deconv_forward(At::new(&y, c.y.off), At::new(&x, c.x.off), At::new(&w, c.w.off), At::new(&b, c.b.off), &c.p)
        .unwrap_or_else(|e| panic!("{} deconv_forward {:?}: {e}", be.name(), c.p));
    download(be, &y, y0.len())
}

/// Which input gradient a backward case asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum DxMode {
    Skip,
    Write,
    Add,
}

/// Whole buffers after a backward: (dx, dw, db, masked dy).
struct Grads {
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
    dy: Vec<f32>,
}

/// The backward on `be`, with `y` = the CPU forward of the case (so ReLU zeros are exact).
fn backward_on<B: Backend>(be: &B, c: &Case, y_buf: &[f32], mode: DxMode) -> Grads {
    let dx0 = match mode {
        DxMode::Add => c.dx_init.clone(),
        _ => c.x.fill(|_| f32::NAN),
    };
    let (dw0, db0) = (c.w.fill(|_| f32::NAN), c.b.fill(|_| f32::NAN));
    let (dx, dw, db) = (upload(be, &dx0), upload(be, &dw0), upload(be, &db0));
    let (dy, y, x, w) = (upload(be, &c.dy_buf), upload(be, y_buf), upload(be, &c.x_buf), upload(be, &c.w_buf));
    let at = At::new(&dx, c.x.off);
    let grad_in = match mode {
        DxMode::Skip => GradIn::Skip,
        DxMode::Write => GradIn::Write(at),
        DxMode::Add => GradIn::Add(at),
    };
    be.deconv_backward(
        grad_in,
        At::new(&dw, c.w.off),
        At::new(&db, c.b.off),
        At::new(&dy, c.y.off),
        At::new(&y, c.y.off),
        At::new(&x, c.x.off),
        At::new(&w, c.w.off),
        &c.p,
    )
    .unwrap_or_else(|e| panic!("{} deconv_backward {:?} {mode:?}: {e}", be.name(), c.p));
    Grads {
        dx: download(be, &dx, dx0.len()),
        dw: download(be, &dw, dw0.len()),
        db: download(be, &db, db0.len()),
        dy: download(be, &dy, c.dy_buf.len()),
    }
}

/// Compares `got` with the CPU's `want` on a view: values within `tol::F32`, gaps intact.
fn check_view(what: &str, l: &Layout, got: &[f32], want: &[f32]) {
    assert_close(what, &l.channels(got), &l.channels(want), tol::F32);
    l.assert_gaps(got, what);
}

/// The forward sweep on `be`; returns the outputs (for comparing backends).
fn forward_sweep<B: Backend>(be: &B, cases: &[Case]) -> Vec<Vec<f32>> {
    cases
        .iter()
        .map(|c| {
            let got = forward_on(be, c);
            check_view(&format!("{} deconv_forward {:?}", be.name(), c.p), &c.y, &got, &forward_on(&Cpu, c));
            got
        })
        .collect()
}

/// The backward sweep on `be`, cycling Write / Add / Skip; returns every output.
fn backward_sweep<B: Backend>(be: &B, cases: &[Case]) -> Vec<Vec<f32>> {
    let mut outs = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mode = [DxMode::Write, DxMode::Add, DxMode::Skip][i % 3];
        let y = forward_on(&Cpu, c);
        let (got, want) = (backward_on(be, c, &y, mode), backward_on(&Cpu, c, &y, mode));
        let what = |t: &str| format!("{} deconv_backward {t} {:?} {mode:?}", be.name(), c.p);
        // The mask is exact: the same elements zeroed, the rest untouched.
        let (gy, wy) = (c.y.channels(&got.dy), c.y.channels(&want.dy));
        assert!(gy.iter().zip(&wy).all(|(a, b)| a.to_bits() == b.to_bits()), "{}", what("masked dy"));
        c.y.assert_gaps(&got.dy, &what("masked dy"));
        check_view(&what("dw"), &c.w, &got.dw, &want.dw);
        // db[k] is one sum over every output pixel: with few channels its relative
        // L2 error is that of single, possibly cancelling sums, so it is measured
        // against Σ|dy| (the sum's condition) rather than against |db|.
        let abs = common::channel_abs_sums(&wy, c.p.k);
        common::assert_scaled(&what("db"), &c.b.channels(&got.db), &c.b.channels(&want.db), &abs, tol::F32);
        c.b.assert_gaps(&got.db, &what("db"));
        match mode {
            DxMode::Skip => c.x.assert_gaps(&got.dx, &what("dx (skipped)")),
            _ => check_view(&what("dx"), &c.x, &got.dx, &want.dx),
        }
        if let DxMode::Skip = mode {
            assert!(c.x.channels(&got.dx).iter().all(|v| v.is_nan()), "{}: dx written though skipped", what("dx"));
        }
        outs.extend([got.dx, got.dw, got.db, got.dy]);
    }
    outs
}

/// Asserts that two backends produced the same bits (the emulator runs the GPU's
/// code with the same geometry and exactly rounded FMAs, so they must agree).
fn assert_same_bits(what: &str, a: &[Vec<f32>], b: &[Vec<f32>]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let bad = x.iter().zip(y).position(|(p, q)| p.to_bits() != q.to_bits());
        assert!(bad.is_none(), "{what}: output {i} differs at element {bad:?}");
    }
}

#[test]
fn forward_matches_cpu() {
    let mut rng = rng();
    let cases = cases(&mut rng);
    let t = std::time::Instant::now();
    let emu_out = forward_sweep(&emu::backend(), &cases);
    eprintln!("emu forward sweep: {:.2?}", t.elapsed());
    if let Some(g) = gpu("forward_matches_cpu") {
        assert_same_bits("deconv_forward cuda vs emu", &forward_sweep(&g, &cases), &emu_out);
    }
}

#[test]
fn backward_matches_cpu() {
    let mut rng = rng();
    let cases = cases(&mut rng);
    let t = std::time::Instant::now();
    let emu_out = backward_sweep(&emu::backend(), &cases);
    eprintln!("emu backward sweep: {:.2?}", t.elapsed());
    if let Some(g) = gpu("backward_matches_cpu") {
        assert_same_bits("deconv_backward cuda vs emu", &backward_sweep(&g, &cases), &emu_out);
    }
}

/// `deconv_fwd_f32_mma` (the forward with bf16 products on tensor cores) against the
/// CPU's f32: within the bf16 tolerance scaled by Σ|terms| (the op on the inputs'
/// magnitudes: sums that cancel would fail a relative test by rounding alone), its
/// rounding visible (not the f32 path), gaps untouched.
fn check_bf16_forward<B: Backend>(be: &B, cases: &[Case]) {
    for c in cases {
        let what = format!("{} deconv_forward bf16 {:?}", be.name(), c.p);
        let (got, want) = (forward_on(be, c), forward_on(&Cpu, c));
        let (g, w) = (c.y.channels(&got), c.y.channels(&want));
        let scale = c.y.channels(&forward_on(&Cpu, &c.magnitudes()));
        common::assert_scaled(&what, &g, &w, &scale, tol::BF16);
        if c.p.c >= 4 && w.iter().any(|v| *v != 0.0) {
            assert!(common::rel_l2(&g, &w) > 1e-6, "{what}: identical to f32 to 1e-6: not bf16 products");
        }
        c.y.assert_gaps(&got, &what);
    }
}

#[test]
fn bf16_forward_matches_cpu() {
    let cases = cases(&mut rng());
    check_bf16_forward(&bf16(emu::backend()), &cases);
    if let Some(g) = gpu("bf16_forward_matches_cpu").map(bf16) {
        check_bf16_forward(&g, &cases);
    }
}

/// The backward with bf16 precision: `dx` and `dw` (bf16 GEMMs) within the bf16
/// tolerance with their rounding visible, `db` (f32 in both precisions) within the
/// f32 tolerance scaled by Σ|dy|, the masked `dy` bit-exact, gaps untouched.
fn check_bf16_backward<B: Backend>(be: &B, cases: &[Case]) {
    for c in cases {
        let y = forward_on(&Cpu, c);
        for mode in [DxMode::Write, DxMode::Add] {
            let what = format!("{} deconv_backward bf16 {:?} {mode:?}", be.name(), c.p);
            let (got, want) = (backward_on(be, c, &y, mode), backward_on(&Cpu, c, &y, mode));
            let scale = backward_on(&Cpu, &c.magnitudes(), &y, mode);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&got.dy) == bits(&want.dy), "{what}: masked dy differs");
            let pairs = [("dx", &c.x, &got.dx, &want.dx, &scale.dx), ("dw", &c.w, &got.dw, &want.dw, &scale.dw)];
            for (name, l, g, w, sc) in pairs {
                let (gv, wv) = (l.channels(g), l.channels(w));
                common::assert_scaled(&format!("{what}: {name}"), &gv, &wv, &l.channels(sc), tol::BF16);
                l.assert_gaps(g, &format!("{what}: {name}"));
                if mode == DxMode::Write && c.p.k >= 4 && wv.iter().any(|v| *v != 0.0) {
                    assert!(common::rel_l2(&gv, &wv) > 1e-6, "{what}: {name} identical to f32: not bf16 products");
                }
            }
            let wy = c.y.channels(&want.dy);
            let abs = common::channel_abs_sums(&wy, c.p.k);
            common::assert_scaled(
                &format!("{what}: db"),
                &c.b.channels(&got.db),
                &c.b.channels(&want.db),
                &abs,
                tol::F32,
            );
        }
    }
}

#[test]
fn bf16_backward_matches_cpu() {
    let cases = cases(&mut rng());
    check_bf16_backward(&bf16(emu::backend()), &cases);
    if let Some(g) = gpu("bf16_backward_matches_cpu").map(bf16) {
        check_bf16_backward(&g, &cases);
    }
}

#[test]
fn bf16_forward_is_race_free() {
    let mut rng = rng();
    for c in [case(&mut rng, 2, 12, 11, 5, 7, true, false), case(&mut rng, 1, 5, 4, 8, 72, true, true)] {
        let runs: Vec<Vec<u32>> = emu::SCHEDULES
            .iter()
            .map(|&s| {
                let be = bf16(emu::backend_with(s));
                let g = backward_on(&be, &c, &forward_on(&Cpu, &c), DxMode::Add);
                [forward_on(&be, &c), g.dx, g.dw, g.db].concat().iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        assert!(runs.iter().all(|r| *r == runs[0]), "deconv bf16 {:?}: differs between thread orders", c.p);
    }
}

/// Every deconv kernel under the forward, reverse and two random thread orders: a
/// missing barrier or an order-dependent sum would change the bytes.
#[test]
fn kernels_are_race_free_and_deterministic() {
    let mut rng = rng();
    // Unaligned (scalar loads), split-K weight and bias gradients, ReLU mask, dx added.
    let split = case(&mut rng, 2, 12, 11, 5, 7, true, false);
    // Aligned: the 16-byte paths of all three GEMMs.
    let vec4 = case(&mut rng, 1, 5, 4, 8, 12, true, true);
    for (c, mode) in [(&split, DxMode::Add), (&vec4, DxMode::Write)] {
        let y = forward_on(&Cpu, c);
        let report = race_check(|be| {
            let g = backward_on(be, c, &y, mode);
            Ok([forward_on(be, c), g.dx, g.dw, g.db, g.dy].concat())
        })
        .expect("race check ran");
        report.check(0.0).unwrap_or_else(|e| panic!("deconv {:?}: {e}", c.p));
    }
}

/// Shape errors come back as errors, never as launches: an operand past its buffer,
/// a pitch below the channel count, an output overlapping an input.
#[test]
fn bad_operands_are_errors() {
    let be = emu::backend();
    let p = DeconvParams { n: 1, h: 2, w: 2, c: 3, k: 4, relu: false, x_pitch: 3, y_pitch: 4 };
    let (y, x) = (be.alloc(4 * 4 * 4).unwrap(), be.alloc(2 * 2 * 3).unwrap());
    let (w, b) = (be.alloc(p.weight_len()).unwrap(), be.alloc(4).unwrap());
    let ok = be.deconv_forward(At::new(&y, 0), At::new(&x, 0), At::new(&w, 0), At::new(&b, 0), &p);
    assert!(ok.is_ok(), "{ok:?}");
    let past = be.deconv_forward(At::new(&y, 1), At::new(&x, 0), At::new(&w, 0), At::new(&b, 0), &p);
    assert!(past.is_err());
    let narrow = DeconvParams { x_pitch: 2, ..p };
    assert!(be.deconv_forward(At::new(&y, 0), At::new(&x, 0), At::new(&w, 0), At::new(&b, 0), &narrow).is_err());
    // An output over an input of the same buffer.
    let both = be.alloc(4 * 4 * 4 + 2 * 2 * 3).unwrap();
    let overlap = be.deconv_forward(At::new(&both, 0), At::new(&both, 60), At::new(&w, 0), At::new(&b, 0), &p);
    assert!(overlap.is_err(), "{overlap:?}");
    assert!(be.deconv_forward(At::new(&both, 0), At::new(&both, 64), At::new(&w, 0), At::new(&b, 0), &p).is_ok());
}
