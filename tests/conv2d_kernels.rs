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

pub mod common;

use common::conv2d::{backward_on, forward_on, random_cases, sweep, Case, Data, Grad};
use common::{assert_close, rng, tol};
use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::emu::{self, race_check};
use lesionseg::backend::{At, Backend, Conv2dParams, GradIn};
use rand::Rng;

/// Runs `case` forward and backward on `be` and on the CPU and compares everything.
fn check_case<B: Backend>(be: &B, case: &Case, rng: &mut impl Rng) {
    let what = format!("{} on {}", case.label(), be.name());
    let p = &case.p;
    let d = Data::new(case, rng);

    let want_y = forward_on(&Cpu, case, &d).unwrap_or_else(|e| panic!("{what}: cpu forward: {e}"));
    let got_y = forward_on(be, case, &d).unwrap_or_else(|e| panic!("{what}: forward: {e}"));
    let (x_at, y_at) = (case.x_at(), case.y_at());
    assert_close(&format!("{what}: y"), &y_at.channels(&got_y), &y_at.channels(&want_y), tol::F32);
    y_at.assert_gaps(&got_y, &format!("{what}: y"));

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
    let db_scale = common::channel_abs_sums(&y_at.channels(&want_dy), p.k);
    let (got_db, want_db) = (&got_g[db_off..db_off + p.k], &want_g[db_off..db_off + p.k]);
    common::assert_scaled(&format!("{what}: db"), got_db, want_db, &db_scale, tol::F32);
    common::assert_outside(&format!("{what}: dw/db"), &got_g, &case.grad_views());
    if case.grad == Grad::Skip {
        assert!(bits(&got_dx) == bits(&d.dx), "{what}: dx changed although skipped");
    } else {
        assert_close(&format!("{what}: dx"), &x_at.channels(&got_dx), &x_at.channels(&want_dx), tol::F32);
        x_at.assert_gaps(&got_dx, &format!("{what}: dx"));
    }
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
