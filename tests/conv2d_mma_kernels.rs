//! The tensor-core convolutions (`kernels/conv2d_mma.cu`, `Precision::Bf16`) against
//! the CPU's f32 reference, through the `Backend` trait, on the cases of the f32
//! kernel tests (`common::conv2d`): the emulator always, the GPU when there is one.
//! Errors are judged against the op run on the inputs' magnitudes (‖a−b‖ ≤
//! 1e-2·‖Σ|terms|‖), the bf16 rounding must show (not the f32 path), nothing outside
//! the views is touched, and every thread order gives the same bytes.

pub mod common;

use common::conv2d::{backward_on, forward_on, random_cases, sweep, Case, Data, Grad};
use common::kernels::bf16;
use common::{rng, tol};
use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::emu;
use lesionseg::backend::Backend;

/// `conv2d_fwd_f32_mma` against the CPU's f32 forward: within the bf16 tolerance
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
        let yv = |v: &[f32]| case.y_at().channels(v);
        let (g, w) = (yv(&got), yv(&want));
        common::assert_scaled(&what, &g, &w, &yv(&scale), tol::BF16);
        // Not f32 arithmetic: bf16 rounding must show (a kernel that silently ran the
        // f32 path would pass the tolerance but not this).
        if p.c * p.r * p.r >= 16 && w.iter().any(|v| *v != 0.0) {
            assert!(common::rel_l2(&g, &w) > 1e-6, "{what}: identical to f32 to 1e-6: not bf16 products");
        }
        case.y_at().assert_gaps(&got, &what);
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
        let db_scale = common::channel_abs_sums(&case.y_at().channels(&want_dy), p.k);
        let (got_db, want_db) = (&got_g[db_off..db_off + p.k], &want_g[db_off..db_off + p.k]);
        common::assert_scaled(&format!("{what}: db"), got_db, want_db, &db_scale, tol::F32);
        common::assert_outside(&format!("{what}: dw/db"), &got_g, &case.grad_views());
        if case.grad == Grad::Skip {
            assert!(bits(&got_dx) == bits(&d.dx), "{what}: dx changed although skipped");
            continue;
        }
        let xv = |v: &[f32]| case.x_at().channels(v);
        let (g, w) = (xv(&got_dx), xv(&want_dx));
        common::assert_scaled(&format!("{what}: dx"), &g, &w, &xv(&scale_dx), tol::BF16);
        // Rounding visible (an f32 run is within 1e-6), unless added into a larger dx.
        if case.grad == Grad::Write && p.k * p.r * p.r >= 16 && w.iter().any(|v| *v != 0.0) {
            assert!(common::rel_l2(&g, &w) > 1e-6, "{what}: dx identical to f32 to 1e-6: not bf16 products");
        }
        case.x_at().assert_gaps(&got_dx, &format!("{what}: dx"));
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
    let Some(gpu) = lesionseg::device::test_gpu("conv2d_mma_kernels::cuda_bf16_backward_matches_cpu").map(bf16) else {
        return;
    };
    let mut cases = sweep();
    cases.extend(random_cases(&mut rng(), 100));
    cases.push(Case::new(1, 16, 16, 256, 128, 3, true, 512, 64, true, Grad::Add));
    check_bf16_backward(&gpu, &cases);
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
    let Some(gpu) = lesionseg::device::test_gpu("conv2d_mma_kernels::cuda_bf16_forward_matches_cpu").map(bf16) else {
        return;
    };
    let mut cases = sweep();
    cases.extend(random_cases(&mut rng(), 100));
    cases.push(Case::new(2, 32, 32, 64, 128, 3, true, 0, 0, true, Grad::Skip));
    cases.push(Case::new(1, 16, 16, 256, 128, 3, true, 512, 64, true, Grad::Skip));
    check_bf16_forward(&gpu, &cases);
}
