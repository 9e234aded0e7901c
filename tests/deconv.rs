//! Tests of the CPU transposed convolution (4x4, stride 2, padding 1, bias, fused
//! ReLU): against a direct f64 implementation of PyTorch's definition (weights in
//! PyTorch's `[C][K][4][4]` layout, so the parity-major repacking of
//! `DeconvParams` is checked too), against central finite differences, for bitwise
//! determinism across thread counts, and once through the `Backend` trait.
//!
//! Activations live as pitched views inside wider buffers whose other elements hold
//! a sentinel, and outputs are poisoned with NaN, so an element written that should
//! not be, or not written that should be, fails the test.

pub mod common;

use common::{some_pitch, tol, View};
use lesionseg::backend::cpu::deconv::{deconv_backward, deconv_forward};
use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::{view_len, At, Backend, DeconvParams, GradIn};
use rand::Rng;

/// Calls `f(n, iy, ix, oy, ox, ky, kx)` for every input pixel and filter tap of
/// PyTorch's transposed convolution (stride 2, padding 1: `o = 2i - 1 + kernel`)
/// whose output pixel lies inside the image.
fn for_each_tap(p: &DeconvParams, mut f: impl FnMut(usize, usize, usize, usize, usize, usize, usize)) {
    for n in 0..p.n {
        for iy in 0..p.h {
            for ix in 0..p.w {
                for ky in 0..4 {
                    for kx in 0..4 {
                        let (oy, ox) = ((2 * iy + ky) as isize - 1, (2 * ix + kx) as isize - 1);
                        if oy >= 0 && ox >= 0 && (oy as usize) < p.out_h() && (ox as usize) < p.out_w() {
                            f(n, iy, ix, oy as usize, ox as usize, ky, kx);
                        }
                    }
                }
            }
        }
    }
}

/// Direct f64 transposed convolution; `wpt` is PyTorch's `[C][K][4][4]`.
fn ref_forward(x: &[f64], wpt: &[f64], b: &[f64], p: &DeconvParams) -> Vec<f64> {
    let (oh, ow) = (p.out_h(), p.out_w());
    let mut y: Vec<f64> = (0..p.n * oh * ow * p.k).map(|i| b[i % p.k]).collect();
    for_each_tap(p, |n, iy, ix, oy, ox, ky, kx| {
        for c in 0..p.c {
            let xv = x[((n * p.h + iy) * p.w + ix) * p.c + c];
            for k in 0..p.k {
                y[((n * oh + oy) * ow + ox) * p.k + k] += xv * wpt[((c * p.k + k) * 4 + ky) * 4 + kx];
            }
        }
    });
    if p.relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    y
}

/// Direct f64 gradients: `dz = dy · (y > 0)` (with ReLU), then every product of
/// the forward contributes to `dx`, `dwpt` (`[C][K][4][4]`) and `db`.
fn ref_backward(dy: &[f64], y: &[f64], x: &[f64], wpt: &[f64], p: &DeconvParams) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = (p.out_h(), p.out_w());
    let dz: Vec<f64> = dy.iter().zip(y).map(|(&d, &y)| if p.relu && y <= 0.0 { 0.0 } else { d }).collect();
    let mut db = vec![0.0; p.k];
    for (i, d) in dz.iter().enumerate() {
        db[i % p.k] += d;
    }
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wpt.len()]);
    for_each_tap(p, |n, iy, ix, oy, ox, ky, kx| {
        for c in 0..p.c {
            let xi = ((n * p.h + iy) * p.w + ix) * p.c + c;
            for k in 0..p.k {
                let wi = ((c * p.k + k) * 4 + ky) * 4 + kx;
                let d = dz[((n * oh + oy) * ow + ox) * p.k + k];
                dx[xi] += d * wpt[wi];
                dw[wi] += d * x[xi];
            }
        }
    });
    (dx, dw, db)
}

/// PyTorch `[C][K][4][4]` to the engine's `[a][b][ty][tx][C][K]`:
/// `internal[a][b][ty][tx][c][k] = pytorch[c][k][3-a-2ty][3-b-2tx]` (DeconvParams).
fn to_internal<T: Copy + Default>(wpt: &[T], p: &DeconvParams) -> Vec<T> {
    let mut out = vec![T::default(); wpt.len()];
    for t in 0..16 {
        let (a, b, ty, tx) = (t >> 3 & 1, t >> 2 & 1, t >> 1 & 1, t & 1);
        let (ky, kx) = (3 - a - 2 * ty, 3 - b - 2 * tx);
        for c in 0..p.c {
            for k in 0..p.k {
                out[(t * p.c + c) * p.k + k] = wpt[((c * p.k + k) * 4 + ky) * 4 + kx];
            }
        }
    }
    out
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Runs forward and backward of the f32 op on pitched views and compares every
/// output with the f64 reference; checks poisoning, gaps and the in-place mask.
/// `shape`'s pitches are replaced by random ones.
fn check_case(rng: &mut impl Rng, shape: DeconvParams, dx_add: bool) {
    let (xp, yp) = (some_pitch(rng, shape.c), some_pitch(rng, shape.k));
    let p = DeconvParams { x_pitch: xp, y_pitch: yp, ..shape };
    let DeconvParams { n, h, w, c, k, relu, .. } = p;
    let what = format!("deconv {p:?} dx_add {dx_add}");
    let (in_pix, out_pix) = (n * h * w, n * p.out_h() * p.out_w());
    let x = View::dense(&common::uniform(rng, in_pix * c), c, xp, rng.gen_range(0..4));
    let wpt = common::uniform(rng, p.weight_len());
    let wt = to_internal(&wpt, &p);
    let b = common::uniform(rng, k);

    let mut y = View::new(out_pix, k, yp, rng.gen_range(0..4), |_| f32::NAN);
    deconv_forward(y.get_mut(), x.get(), &wt, &b, &p);
    y.assert_gaps(&format!("{what}: y"));
    x.assert_gaps(&format!("{what}: x"));
    let y_ref = ref_forward(&f64s(&x.values()), &f64s(&wpt), &f64s(&b), &p);
    common::assert_close(&format!("{what}: y"), &y.values(), &f32s(&y_ref), tol::F32);

    // The reference masks by the op's own y, as the op does, so that an output
    // within rounding of zero cannot make the two disagree.
    let dy_vals = common::uniform(rng, out_pix * k);
    let mut dy = View::dense(&dy_vals, k, yp, rng.gen_range(0..4));
    let dx_init = common::uniform(rng, in_pix * c);
    let mut dx = if dx_add {
        View::dense(&dx_init, c, xp, rng.gen_range(0..4))
    } else {
        View::new(in_pix, c, xp, rng.gen_range(0..4), |_| f32::NAN)
    };
    let (mut dw, mut db) = (common::poisoned(p.weight_len()), common::poisoned(k));
    deconv_backward(Some(dx.get_mut()), dx_add, &mut dw, &mut db, dy.get_mut(), y.get(), x.get(), &wt, &p);
    let (dx_ref, dw_ref, db_ref) =
        ref_backward(&f64s(&dy_vals), &f64s(&y.values()), &f64s(&x.values()), &f64s(&wpt), &p);
    let dx_want: Vec<f32> =
        dx_ref.iter().enumerate().map(|(i, &v)| (v + if dx_add { dx_init[i] as f64 } else { 0.0 }) as f32).collect();
    common::assert_close(&format!("{what}: dx"), &dx.values(), &dx_want, tol::F32);
    common::assert_close(&format!("{what}: dw"), &dw, &f32s(&to_internal(&dw_ref, &p)), tol::F32);
    let masked: Vec<f32> =
        dy_vals.iter().zip(y.values()).map(|(&d, y)| if relu && y <= 0.0 { 0.0 } else { d }).collect();
    let db_scale = common::channel_abs_sums(&masked, k);
    common::assert_scaled(&format!("{what}: db"), &db, &f32s(&db_ref), &db_scale, tol::F32);
    assert_eq!(dy.values(), masked, "{what}: dy after the in-place mask");
    dx.assert_gaps(&format!("{what}: dx"));
    dy.assert_gaps(&format!("{what}: dy"));
}

#[test]
fn matches_direct_f64_on_odd_shapes() {
    let mut rng = common::rng();
    // (3, 30, 7): 90 input rows of 7 pixels, two forward blocks of 73 rows;
    // (1, 1, 600): a row wider than a block; (3, 45, 45): twelve blocks of 512
    // pixels, more than there are weight-gradient partials.
    let shapes = [(1, 1, 1), (2, 1, 3), (1, 2, 5), (3, 4, 3), (2, 6, 7), (3, 30, 7), (1, 1, 600), (3, 45, 45)];
    let channels = [(1, 1), (3, 5), (7, 13), (13, 7), (33, 3), (5, 33)];
    for (i, &(n, h, w)) in shapes.iter().enumerate() {
        for j in 0..2 {
            let (c, k) = if h * w > 100 { (3, 2) } else { channels[(2 * i + j) % channels.len()] };
            let relu = rng.gen_bool(0.5);
            let shape = DeconvParams { n, h, w, c, k, relu, x_pitch: c, y_pitch: k };
            let dx_add = rng.gen_bool(0.5);
            check_case(&mut rng, shape, dx_add);
        }
    }
}

#[test]
fn matches_direct_f64_at_a_layer_shape() {
    // dec3's transposed conv (256 → 64), scaled down: 64 → 32 channels, 16x16 → 32x32.
    let mut rng = common::rng();
    let shape = DeconvParams { n: 1, h: 16, w: 16, c: 64, k: 32, relu: true, x_pitch: 64, y_pitch: 32 };
    check_case(&mut rng, shape, false);
    check_case(&mut rng, shape, true);
}

/// Σ y·g for the f64 op, the loss the finite differences differentiate.
fn loss(x: &[f64], w: &[f64], b: &[f64], g: &[f64], p: &DeconvParams) -> f64 {
    let mut y = vec![f64::NAN; g.len()];
    deconv_forward(&mut y, x, w, b, p);
    y.iter().zip(g).map(|(y, g)| y * g).sum()
}

/// f64 op against central differences (step 1e-6, relative L2 ≤ tol::FINITE_DIFF:
/// the loss is linear in each single parameter away from the ReLU kink, so only
/// rounding, ~1e-9 relative, separates the two). With ReLU, inputs are redrawn until
/// every pre-activation is at least 1e-3 from zero, far beyond what a step moves it.
/// Step of the central differences.
const FD_STEP: f64 = 1e-6;

#[test]
fn gradients_match_finite_differences() {
    let mut rng = common::rng();
    for relu in [false, true] {
        let p = DeconvParams { n: 2, h: 2, w: 3, c: 2, k: 3, relu, x_pitch: 3, y_pitch: 3 };
        let (in_pix, out_pix) = (p.n * p.h * p.w, p.n * p.out_h() * p.out_w());
        let (xl, yl) = (view_len(in_pix, p.c, p.x_pitch), view_len(out_pix, p.k, p.y_pitch));
        let (x, w, b) = loop {
            let x = common::uniform64(&mut rng, xl);
            let (w, b) = (common::uniform64(&mut rng, p.weight_len()), common::uniform64(&mut rng, p.k));
            let mut z = vec![0.0; yl];
            deconv_forward(&mut z, &x, &w, &b, &DeconvParams { relu: false, ..p });
            if z.iter().all(|v| v.abs() > 1e-3) {
                break (x, w, b);
            }
        };
        let g = common::uniform64(&mut rng, yl);
        let mut y = vec![0.0; yl];
        deconv_forward(&mut y, &x, &w, &b, &p);
        let (mut dx, mut dw, mut db, mut dy) = (vec![0.0; xl], vec![0.0; w.len()], vec![0.0; p.k], g.clone());
        deconv_backward(Some(&mut dx), false, &mut dw, &mut db, &mut dy, &y, &x, &w, &p);
        // x's gap element (pitch 3 > 2 channels) is not an input: its derivative is 0
        // and the op leaves dx's gap at its initial 0.
        let what = format!("deconv relu={relu}");
        let fd_x = common::central_differences(&x, FD_STEP, |v| loss(v, &w, &b, &g, &p));
        let fd_w = common::central_differences(&w, FD_STEP, |v| loss(&x, v, &b, &g, &p));
        let fd_b = common::central_differences(&b, FD_STEP, |v| loss(&x, &w, v, &g, &p));
        common::assert_close64(&format!("{what}: dx"), &dx, &fd_x, tol::FINITE_DIFF);
        common::assert_close64(&format!("{what}: dw"), &dw, &fd_w, tol::FINITE_DIFF);
        common::assert_close64(&format!("{what}: db"), &db, &fd_b, tol::FINITE_DIFF);
    }
}

/// Forward and backward give the same bits on 1 and 3 threads (12 pixel blocks,
/// so the weight gradient is summed from several partials).
#[test]
fn bitwise_deterministic_across_thread_counts() {
    let mut rng = common::rng();
    let p = DeconvParams { n: 3, h: 45, w: 45, c: 5, k: 3, relu: true, x_pitch: 6, y_pitch: 3 };
    let x = common::uniform(&mut rng, view_len(p.n * p.h * p.w, p.c, p.x_pitch));
    let (w, b) = (common::uniform(&mut rng, p.weight_len()), common::uniform(&mut rng, p.k));
    let g = common::uniform(&mut rng, view_len(p.n * p.out_h() * p.out_w(), p.k, p.y_pitch));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut y = vec![0.0; g.len()];
            deconv_forward(&mut y, &x, &w, &b, &p);
            let (mut dx, mut dw, mut db, mut dy) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; p.k], g.clone());
            deconv_backward(Some(&mut dx), false, &mut dw, &mut db, &mut dy, &y, &x, &w, &p);
            [y, dx, dw, db].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
        })
    };
    let (one, three) = (run(1), run(3));
    for (name, (a, b)) in ["y", "dx", "dw", "db"].iter().zip(one.iter().zip(&three)) {
        assert!(a == b, "deconv {name} differs between 1 and 3 threads");
    }
}

/// Through the `Backend` trait: operands at offsets of one shared buffer, the same
/// bits as the slice functions, and an operand past its buffer's end is an error.
#[test]
fn through_the_backend_trait() {
    let mut rng = common::rng();
    let cpu = Cpu;
    let p = DeconvParams { n: 2, h: 3, w: 4, c: 3, k: 4, relu: true, x_pitch: 3, y_pitch: 4 };
    let (xl, yl, wl) = (p.n * p.h * p.w * p.c, p.n * p.out_h() * p.out_w() * p.k, p.weight_len());
    let (x, w, b) = (common::uniform(&mut rng, xl), common::uniform(&mut rng, wl), common::uniform(&mut rng, p.k));
    let g = common::uniform(&mut rng, yl);
    // One buffer: x | w | b | y | dy | dx | dw | db.
    let lens = [xl, wl, p.k, yl, yl, xl, wl, p.k];
    let offs: Vec<usize> = (0..lens.len()).map(|i| lens[..i].iter().sum()).collect();
    let total: usize = lens.iter().sum();
    let buf = cpu.alloc(total).unwrap();
    for (off, data) in [(offs[0], &x), (offs[1], &w), (offs[2], &b), (offs[4], &g)] {
        cpu.upload(&buf, off, data).unwrap();
    }
    let at = |i: usize| At::new(&buf, offs[i]);
    cpu.deconv_forward(at(3), at(0), at(1), at(2), &p).unwrap();
    cpu.deconv_backward(GradIn::Write(at(5)), at(6), at(7), at(4), at(3), at(0), at(1), &p).unwrap();

    let mut y = vec![f32::NAN; yl];
    deconv_forward(&mut y, &x, &w, &b, &p);
    let (mut dx, mut dw, mut db, mut dy) = (vec![f32::NAN; xl], vec![f32::NAN; wl], vec![f32::NAN; p.k], g.clone());
    deconv_backward(Some(&mut dx), false, &mut dw, &mut db, &mut dy, &y, &x, &w, &p);
    for (name, i, want) in [("y", 3, &y), ("dy", 4, &dy), ("dx", 5, &dx), ("dw", 6, &dw), ("db", 7, &db)] {
        let mut got = vec![0.0; want.len()];
        cpu.download(&buf, offs[i], &mut got).unwrap();
        assert_eq!(&got, want, "deconv through the trait: {name}");
    }

    // Operands reaching one element past the end: errors, not panics.
    let (y_past, dx_past) = (At::new(&buf, total - yl + 1), At::new(&buf, total - xl + 1));
    assert!(cpu.deconv_forward(y_past, at(0), at(1), at(2), &p).is_err());
    assert!(cpu.deconv_forward(at(3), At::new(&buf, total - 1), at(1), at(2), &p).is_err());
    assert!(cpu.deconv_backward(GradIn::Add(dx_past), at(6), at(7), at(4), at(3), at(0), at(1), &p).is_err());
}
