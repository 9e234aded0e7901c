//! Tests of the CPU conv2d (3x3 and 1x1, stride 1, same padding, bias, fused ReLU):
//! against a direct f64 implementation of PyTorch's definition (weights in
//! PyTorch's `[K][C][R][S]` layout, so the `[R][S][C][K]` repacking is checked
//! too), against central finite differences, for bitwise determinism across thread
//! counts, and once through the `Backend` trait.
//!
//! Activations live as pitched views inside wider buffers whose other elements hold
//! a sentinel, and outputs are poisoned with NaN, so an element written that should
//! not be, or not written that should be, fails the test.

pub mod common;

use common::{some_pitch, tol, View};
use lesionseg::backend::cpu::conv2d::{conv2d_backward, conv2d_forward};
use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::{view_len, At, Backend, Conv2dParams, GradIn};
use rand::Rng;

/// Direct f64 conv2d from PyTorch's definition; `wpt` is `[K][C][R][S]`.
/// Returns the pre-activation and the output.
fn ref_forward(x: &[f64], wpt: &[f64], b: &[f64], p: &Conv2dParams) -> (Vec<f64>, Vec<f64>) {
    let (r, pad) = (p.r, p.pad() as isize);
    let mut z = vec![0.0; p.n * p.h * p.w * p.k];
    for n in 0..p.n {
        for h in 0..p.h {
            for w in 0..p.w {
                for k in 0..p.k {
                    let mut acc = b[k];
                    for c in 0..p.c {
                        for i in 0..r {
                            for j in 0..r {
                                let (ih, iw) = (h as isize + i as isize - pad, w as isize + j as isize - pad);
                                if ih >= 0 && iw >= 0 && (ih as usize) < p.h && (iw as usize) < p.w {
                                    let xv = x[((n * p.h + ih as usize) * p.w + iw as usize) * p.c + c];
                                    acc += xv * wpt[((k * p.c + c) * r + i) * r + j];
                                }
                            }
                        }
                    }
                    z[((n * p.h + h) * p.w + w) * p.k + k] = acc;
                }
            }
        }
    }
    let y = z.iter().map(|&v| if p.relu { v.max(0.0) } else { v }).collect();
    (z, y)
}

/// Direct f64 gradients: `dz = dy · (y > 0)` (with ReLU), then scatter every
/// product of the forward into `dx`, `dwpt` (`[K][C][R][S]`) and `db`.
fn ref_backward(dy: &[f64], y: &[f64], x: &[f64], wpt: &[f64], p: &Conv2dParams) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (r, pad) = (p.r, p.pad() as isize);
    let dz: Vec<f64> = dy.iter().zip(y).map(|(&d, &y)| if p.relu && y <= 0.0 { 0.0 } else { d }).collect();
    let mut db = vec![0.0; p.k];
    for (i, d) in dz.iter().enumerate() {
        db[i % p.k] += d;
    }
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wpt.len()]);
    for n in 0..p.n {
        for h in 0..p.h {
            for w in 0..p.w {
                for k in 0..p.k {
                    let dz = dz[((n * p.h + h) * p.w + w) * p.k + k];
                    for c in 0..p.c {
                        for i in 0..r {
                            for j in 0..r {
                                let (ih, iw) = (h as isize + i as isize - pad, w as isize + j as isize - pad);
                                if ih >= 0 && iw >= 0 && (ih as usize) < p.h && (iw as usize) < p.w {
                                    let xi = ((n * p.h + ih as usize) * p.w + iw as usize) * p.c + c;
                                    let wi = ((k * p.c + c) * r + i) * r + j;
                                    dx[xi] += dz * wpt[wi];
                                    dw[wi] += dz * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

/// PyTorch `[K][C][R][S]` to the engine's `[R][S][C][K]`.
fn to_internal<T: Copy + Default>(wpt: &[T], p: &Conv2dParams) -> Vec<T> {
    let mut out = vec![T::default(); wpt.len()];
    for k in 0..p.k {
        for c in 0..p.c {
            for i in 0..p.r {
                for j in 0..p.r {
                    out[((i * p.r + j) * p.c + c) * p.k + k] = wpt[((k * p.c + c) * p.r + i) * p.r + j];
                }
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
fn check_case(rng: &mut impl Rng, shape: Conv2dParams, dx_add: bool) {
    let (xp, yp) = (some_pitch(rng, shape.c), some_pitch(rng, shape.k));
    let p = Conv2dParams { x_pitch: xp, y_pitch: yp, ..shape };
    let Conv2dParams { n, h, w, c, k, relu, .. } = p;
    let what = format!("conv2d {p:?} dx_add {dx_add}");
    let pixels = n * h * w;
    let x = View::dense(&common::uniform(rng, pixels * c), c, xp, rng.gen_range(0..4));
    let wpt = common::uniform(rng, p.weight_len());
    let wt = to_internal(&wpt, &p);
    let b = common::uniform(rng, k);

    let mut y = View::new(pixels, k, yp, rng.gen_range(0..4), |_| f32::NAN);
    conv2d_forward(y.get_mut(), x.get(), &wt, &b, &p);
    y.assert_gaps(&format!("{what}: y"));
    x.assert_gaps(&format!("{what}: x"));
    let (_, y_ref) = ref_forward(&f64s(&x.values()), &f64s(&wpt), &f64s(&b), &p);
    // Judged against the op on |inputs| (Σ|terms| per output): an output whose terms
    // nearly cancel (a 1x1 image sums only C products) has no relative accuracy to
    // speak of, which a relative L2 test mistakes for an error (seen: C = 33, 2.2e-5).
    let abs = |v: &[f32]| v.iter().map(|x| x.abs() as f64).collect::<Vec<_>>();
    let (y_scale, _) = ref_forward(&abs(&x.values()), &abs(&wpt), &abs(&b), &p);
    common::assert_scaled(&format!("{what}: y"), &y.values(), &f32s(&y_ref), &f32s(&y_scale), tol::F32);

    // The reference masks by the op's own y, as the op does, so that an output
    // within rounding of zero cannot make the two disagree.
    let dy_vals = common::uniform(rng, pixels * k);
    let mut dy = View::dense(&dy_vals, k, yp, rng.gen_range(0..4));
    let dx_init = common::uniform(rng, pixels * c);
    let mut dx = if dx_add {
        View::dense(&dx_init, c, xp, rng.gen_range(0..4))
    } else {
        View::new(pixels, c, xp, rng.gen_range(0..4), |_| f32::NAN)
    };
    let (mut dw, mut db) = (common::poisoned(p.weight_len()), common::poisoned(k));
    conv2d_backward(Some(dx.get_mut()), dx_add, &mut dw, &mut db, dy.get_mut(), y.get(), x.get(), &wt, &p);
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
    // (3, 17, 13): two blocks of 512 pixels; (3, 40, 41): ten, more than there
    // are weight-gradient partials, so some partials sum two blocks.
    let shapes = [(1, 1, 1), (2, 3, 5), (1, 7, 6), (3, 9, 11), (3, 17, 13), (3, 40, 41)];
    let channels = [(1, 1), (3, 5), (7, 13), (13, 7), (33, 3), (5, 33)];
    for (i, &(n, h, w)) in shapes.iter().enumerate() {
        for r in [1, 3] {
            for j in 0..2 {
                let (c, k) = if h * w > 1000 { (5, 7) } else { channels[(2 * i + j + r) % channels.len()] };
                let relu = rng.gen_bool(0.5);
                let shape = Conv2dParams { n, h, w, c, k, r, relu, x_pitch: c, y_pitch: k };
                let dx_add = rng.gen_bool(0.5);
                check_case(&mut rng, shape, dx_add);
            }
        }
    }
}

#[test]
fn matches_direct_f64_at_a_layer_shape() {
    // conv1's second layer, scaled down to 32x32; several blocks of pixels.
    let mut rng = common::rng();
    let shape = Conv2dParams { n: 1, h: 32, w: 32, c: 64, k: 64, r: 3, relu: true, x_pitch: 64, y_pitch: 64 };
    check_case(&mut rng, shape, false);
    check_case(&mut rng, shape, true);
}

/// Σ y·g for the f64 op, the loss the finite differences differentiate.
fn loss(x: &[f64], w: &[f64], b: &[f64], g: &[f64], p: &Conv2dParams) -> f64 {
    let mut y = vec![f64::NAN; g.len()];
    conv2d_forward(&mut y, x, w, b, p);
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
    for (r, relu) in [(3, false), (3, true), (1, true)] {
        let p = Conv2dParams { n: 2, h: 3, w: 4, c: 2, k: 3, r, relu, x_pitch: 2, y_pitch: 3 };
        let pixels = p.n * p.h * p.w;
        let (x, w, b) = loop {
            let (x, w, b) = (
                common::uniform64(&mut rng, pixels * p.c),
                common::uniform64(&mut rng, p.weight_len()),
                common::uniform64(&mut rng, p.k),
            );
            let mut z = vec![0.0; pixels * p.k];
            conv2d_forward(&mut z, &x, &w, &b, &Conv2dParams { relu: false, ..p });
            if z.iter().all(|v| v.abs() > 1e-3) {
                break (x, w, b);
            }
        };
        let g = common::uniform64(&mut rng, pixels * p.k);
        let mut y = vec![0.0; g.len()];
        conv2d_forward(&mut y, &x, &w, &b, &p);
        let (mut dx, mut dw, mut db, mut dy) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; p.k], g.clone());
        conv2d_backward(Some(&mut dx), false, &mut dw, &mut db, &mut dy, &y, &x, &w, &p);
        let what = format!("conv2d r={r} relu={relu}");
        let fd_x = common::central_differences(&x, FD_STEP, |v| loss(v, &w, &b, &g, &p));
        let fd_w = common::central_differences(&w, FD_STEP, |v| loss(&x, v, &b, &g, &p));
        let fd_b = common::central_differences(&b, FD_STEP, |v| loss(&x, &w, v, &g, &p));
        common::assert_close64(&format!("{what}: dx"), &dx, &fd_x, tol::FINITE_DIFF);
        common::assert_close64(&format!("{what}: dw"), &dw, &fd_w, tol::FINITE_DIFF);
        common::assert_close64(&format!("{what}: db"), &db, &fd_b, tol::FINITE_DIFF);
    }
}

/// Forward and backward give the same bits on 1 and 3 threads (10 pixel blocks,
/// so the weight gradient is summed from several partials).
#[test]
fn bitwise_deterministic_across_thread_counts() {
    let mut rng = common::rng();
    let p = Conv2dParams { n: 3, h: 40, w: 40, c: 5, k: 7, r: 3, relu: true, x_pitch: 6, y_pitch: 7 };
    let pixels = p.n * p.h * p.w;
    let x = common::uniform(&mut rng, view_len(pixels, p.c, p.x_pitch));
    let (w, b) = (common::uniform(&mut rng, p.weight_len()), common::uniform(&mut rng, p.k));
    let g = common::uniform(&mut rng, view_len(pixels, p.k, p.y_pitch));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut y = vec![0.0; g.len()];
            conv2d_forward(&mut y, &x, &w, &b, &p);
            let (mut dx, mut dw, mut db, mut dy) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; p.k], g.clone());
            conv2d_backward(Some(&mut dx), false, &mut dw, &mut db, &mut dy, &y, &x, &w, &p);
            [y, dx, dw, db].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
        })
    };
    let (one, three) = (run(1), run(3));
    for (name, (a, b)) in ["y", "dx", "dw", "db"].iter().zip(one.iter().zip(&three)) {
        assert!(a == b, "conv2d {name} differs between 1 and 3 threads");
    }
}

/// A weight of over 2^20 elements has its gradient summed in place, block after
/// block, by a multi-threaded GEMM (not in per-chunk partials): the same bits on 1
/// and 3 threads, and sampled elements equal to a direct f64 sum.
#[test]
fn large_weight_gradient_summed_in_place() {
    let mut rng = common::rng();
    // 3·3·343·345 > 2^20 weights; 26·25 = 650 pixels: two blocks of 512.
    let p = Conv2dParams { n: 1, h: 26, w: 25, c: 343, k: 345, r: 3, relu: false, x_pitch: 343, y_pitch: 347 };
    assert!(p.weight_len() >= 1 << 20);
    let pixels = p.n * p.h * p.w;
    let x = common::uniform(&mut rng, view_len(pixels, p.c, p.x_pitch));
    let w = common::uniform(&mut rng, p.weight_len());
    let g = common::uniform(&mut rng, view_len(pixels, p.k, p.y_pitch));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let (mut dw, mut db, mut dy) = (common::poisoned(w.len()), common::poisoned(p.k), g.clone());
            conv2d_backward(None, false, &mut dw, &mut db, &mut dy, &g, &x, &w, &p);
            (dw, db)
        })
    };
    let ((dw, db), (dw3, db3)) = (run(1), run(3));
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert!(bits(&dw) == bits(&dw3) && bits(&db) == bits(&db3), "dw/db differ between 1 and 3 threads");
    // dw[i][j][c][k] = Σ_pixels x[h+i-1, w+j-1, c] · dy[h, w, k]
    for _ in 0..300 {
        let (i, j, c, k) = (rng.gen_range(0..3), rng.gen_range(0..3), rng.gen_range(0..p.c), rng.gen_range(0..p.k));
        let (mut want, mut scale) = (0.0f64, 0.0f64);
        for h in 0..p.h as isize {
            for wi in 0..p.w as isize {
                let (ih, iw) = (h + i as isize - 1, wi + j as isize - 1);
                if (0..p.h as isize).contains(&ih) && (0..p.w as isize).contains(&iw) {
                    let xv = x[(ih as usize * p.w + iw as usize) * p.x_pitch + c] as f64;
                    let t = xv * g[(h as usize * p.w + wi as usize) * p.y_pitch + k] as f64;
                    (want, scale) = (want + t, scale + t.abs());
                }
            }
        }
        let got = dw[((i * 3 + j) * p.c + c) * p.k + k] as f64;
        assert!((got - want).abs() <= 1e-5 * scale, "dw[{i}][{j}][{c}][{k}] = {got}, want {want}");
    }
    for k in 0..p.k {
        let want: f64 = (0..pixels).map(|q| g[q * p.y_pitch + k] as f64).sum();
        let scale: f64 = (0..pixels).map(|q| (g[q * p.y_pitch + k] as f64).abs()).sum();
        assert!((db[k] as f64 - want).abs() <= 1e-5 * scale, "db[{k}] = {}, want {want}", db[k]);
    }
}

/// Through the `Backend` trait: operands at offsets of one shared buffer, the same
/// bits as the slice functions, and an operand past its buffer's end is an error.
#[test]
fn through_the_backend_trait() {
    let mut rng = common::rng();
    let cpu = Cpu;
    let p = Conv2dParams { n: 2, h: 5, w: 6, c: 3, k: 4, r: 3, relu: true, x_pitch: 3, y_pitch: 4 };
    let pixels = p.n * p.h * p.w;
    let (xl, yl, wl) = (pixels * p.c, pixels * p.k, p.weight_len());
    let (x, w, b) = (common::uniform(&mut rng, xl), common::uniform(&mut rng, wl), common::uniform(&mut rng, p.k));
    let g = common::uniform(&mut rng, yl);
    // One buffer: x | w | b | y | dy | dx | dw | db.
    let offs: Vec<usize> = [xl, wl, p.k, yl, yl, xl, wl, p.k]
        .iter()
        .scan(0, |acc, &l| {
            let o = *acc;
            *acc += l;
            Some(o)
        })
        .collect();
    let total = offs[7] + p.k;
    let buf = cpu.alloc(total).unwrap();
    for (off, data) in [(offs[0], &x), (offs[1], &w), (offs[2], &b), (offs[4], &g)] {
        cpu.upload(&buf, off, data).unwrap();
    }
    let at = |i: usize| At::new(&buf, offs[i]);
    cpu.conv2d_forward(at(3), at(0), at(1), at(2), &p).unwrap();
    cpu.conv2d_backward(GradIn::Write(at(5)), at(6), at(7), at(4), at(3), at(0), at(1), &p).unwrap();
    let down = |i: usize, len: usize| {
        let mut v = vec![0.0; len];
        cpu.download(&buf, offs[i], &mut v).unwrap();
        v
    };

    let mut y = vec![f32::NAN; yl];
    conv2d_forward(&mut y, &x, &w, &b, &p);
    let (mut dx, mut dw, mut db, mut dy) = (vec![f32::NAN; xl], vec![f32::NAN; wl], vec![f32::NAN; p.k], g.clone());
    conv2d_backward(Some(&mut dx), false, &mut dw, &mut db, &mut dy, &y, &x, &w, &p);
    for (name, i, want) in [("y", 3, &y), ("dy", 4, &dy), ("dx", 5, &dx), ("dw", 6, &dw), ("db", 7, &db)] {
        assert_eq!(&down(i, want.len()), want, "conv2d through the trait: {name}");
    }

    // y one element past the end, then an x reaching past it: errors, not panics.
    let past = At::new(&buf, total - yl + 1);
    assert!(cpu.conv2d_forward(past, at(0), at(1), at(2), &p).is_err());
    assert!(cpu.conv2d_forward(at(3), At::new(&buf, total - 1), at(1), at(2), &p).is_err());
    let dx_past = At::new(&buf, total - xl + 1);
    assert!(cpu.conv2d_backward(GradIn::Add(dx_past), at(6), at(7), at(4), at(3), at(0), at(1), &p).is_err());
}
