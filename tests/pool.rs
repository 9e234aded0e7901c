//! Pooling ops (2x2 max, global average, global max) against direct f64 references
//! on random odd shapes with pitched operands inside wider buffers, finite-difference
//! gradient checks in f64, PyTorch's tie and NaN rules, and the `Backend` trait path.

pub mod common;

use common::{tol, Layout};
use lesionseg::backend::cpu::{pool, Cpu};
use lesionseg::backend::{view_len, At, Backend, GlobalPoolParams, MaxPoolParams};
use rand::seq::SliceRandom;
use rand::Rng;

/// An NHWC operand inside a sentinel-filled buffer: dense half the time, otherwise a
/// slice of a wider tensor at a random offset.
fn random_layout(rng: &mut impl Rng, pixels: usize, c: usize) -> Layout {
    if rng.gen_bool(0.5) {
        Layout { pixels, c, pitch: c, off: 0 }
    } else {
        Layout { pixels, c, pitch: c + rng.gen_range(1..6), off: rng.gen_range(1..9) }
    }
}

/// The span of `l` in its buffer.
fn range(l: &Layout) -> std::ops::Range<usize> {
    l.off..l.off + l.span()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A random 2x2-pool shape: batch 1-3, the brief's channel counts, even H/W.
fn maxpool_shape(rng: &mut impl Rng) -> MaxPoolParams {
    let c = *[1, 3, 5, 7, 13, 33].choose(rng).unwrap();
    let (h, w) = (2 * rng.gen_range(1..7), 2 * rng.gen_range(1..7));
    MaxPoolParams { n: rng.gen_range(1..4), h, w, c, x_pitch: c, y_pitch: c }
}

fn global_shape(rng: &mut impl Rng) -> GlobalPoolParams {
    let c = *[1, 3, 5, 7, 13, 33].choose(rng).unwrap();
    GlobalPoolParams { n: rng.gen_range(1..4), h: rng.gen_range(1..10), w: rng.gen_range(1..10), c, x_pitch: c }
}

/// PyTorch's CPU max rule, written out again for the references.
fn pytorch_argmax(vals: impl Iterator<Item = (usize, f64)>, first: usize) -> (f64, usize) {
    let mut best = (f64::NEG_INFINITY, first);
    for (i, v) in vals {
        if v > best.0 || v.is_nan() {
            best = (v, i);
        }
    }
    best
}

/// Dense NHWC 2x2 max pool in f64: outputs and, per output, the flat input index of the argmax.
fn maxpool_ref(x: &[f64], p: &MaxPoolParams) -> (Vec<f64>, Vec<usize>) {
    let (mut y, mut arg) = (vec![], vec![]);
    for n in 0..p.n {
        for i in 0..p.h / 2 {
            for j in 0..p.w / 2 {
                for ch in 0..p.c {
                    let idx = |a: usize, b: usize| ((n * p.h + 2 * i + a) * p.w + 2 * j + b) * p.c + ch;
                    let window = [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(a, b)| idx(a, b));
                    let (v, at) = pytorch_argmax(window.iter().map(|&k| (k, x[k])), window[0]);
                    y.push(v);
                    arg.push(at);
                }
            }
        }
    }
    (y, arg)
}

/// Dense global pools in f64: mean, max and the flat index of each max.
fn global_ref(x: &[f64], p: &GlobalPoolParams) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let hw = p.h * p.w;
    let (mut mean, mut max, mut arg) = (vec![], vec![], vec![]);
    for n in 0..p.n {
        for ch in 0..p.c {
            let idx = |px: usize| (n * hw + px) * p.c + ch;
            mean.push((0..hw).map(|px| x[idx(px)]).sum::<f64>() / hw as f64);
            let (v, at) = pytorch_argmax((0..hw).map(|px| (idx(px), x[idx(px)])), idx(0));
            max.push(v);
            arg.push(at);
        }
    }
    (mean, max, arg)
}

#[test]
fn maxpool_matches_reference() {
    let mut rng = common::rng();
    for _ in 0..40 {
        let mut p = maxpool_shape(&mut rng);
        let (in_px, out_px) = (p.n * p.h * p.w, p.n * p.out_h() * p.out_w());
        let (xs, ys) = (random_layout(&mut rng, in_px, p.c), random_layout(&mut rng, out_px, p.c));
        (p.x_pitch, p.y_pitch) = (xs.pitch, ys.pitch);
        let what = format!("maxpool {p:?}");

        let x = common::uniform(&mut rng, in_px * p.c);
        let (y_want, arg) = maxpool_ref(&widen(&x), &p);
        let x_buf = xs.fill(|i| x[i]);
        let mut y_buf = ys.fill(|_| f32::NAN);
        pool::maxpool_forward(&mut y_buf[range(&ys)], &x_buf[range(&xs)], &p);
        let y_want: Vec<f32> = y_want.iter().map(|&v| v as f32).collect();
        common::assert_close(&format!("{what} forward"), &ys.channels(&y_buf), &y_want, tol::F32);
        ys.assert_gaps(&y_buf, &format!("{what} forward y"));

        // Backward adds into dx, so dx starts from random values, not NaN.
        let dy = common::uniform(&mut rng, out_px * p.c);
        let dx0 = common::uniform(&mut rng, in_px * p.c);
        let mut dx_want = widen(&dx0);
        for (o, &at) in arg.iter().enumerate() {
            dx_want[at] += dy[o] as f64;
        }
        let dy_buf = ys.fill(|i| dy[i]);
        let mut dx_buf = xs.fill(|i| dx0[i]);
        pool::maxpool_backward(&mut dx_buf[range(&xs)], &dy_buf[range(&ys)], &x_buf[range(&xs)], &p);
        let dx_want: Vec<f32> = dx_want.iter().map(|&v| v as f32).collect();
        common::assert_close(&format!("{what} backward"), &xs.channels(&dx_buf), &dx_want, tol::F32);
        xs.assert_gaps(&dx_buf, &format!("{what} backward dx"));
    }
}

#[test]
fn maxpool_ties_and_nan_follow_pytorch() {
    // One 2x2 window per channel, channels-last: x[(a*2+b)*C + ch].
    let inf = f32::INFINITY;
    let nan = f32::NAN;
    let windows: [([f32; 4], usize); 7] = [
        ([1.0, 1.0, 1.0, 1.0], 0),     // all equal: the first
        ([0.0, 2.0, 1.0, 2.0], 1),     // (0,1) and (1,1) tie: (0,1)
        ([0.0, 1.0, 3.0, 3.0], 2),     // (1,0) and (1,1) tie: (1,0)
        ([-inf, -inf, -inf, -inf], 0), // nothing beats the initial −∞: the first
        ([5.0, nan, 7.0, 1.0], 1),     // a NaN beats everything after it
        ([5.0, nan, 7.0, nan], 3),     // and the last NaN wins
        ([-0.0, 0.0, -1.0, 0.0], 0),   // ±0 compare equal: the first
    ];
    let c = windows.len();
    let p = MaxPoolParams { n: 1, h: 2, w: 2, c, x_pitch: c, y_pitch: c };
    let mut x = vec![0.0f32; 4 * c];
    for (ch, (win, _)) in windows.iter().enumerate() {
        for (k, &v) in win.iter().enumerate() {
            x[k * c + ch] = v;
        }
    }
    let mut y = common::poisoned(c);
    pool::maxpool_forward(&mut y, &x, &p);
    let dy: Vec<f32> = (0..c).map(|ch| 10.0 + ch as f32).collect();
    let mut dx = vec![0.0f32; 4 * c];
    pool::maxpool_backward(&mut dx, &dy, &x, &p);
    for (ch, (win, first)) in windows.iter().enumerate() {
        let want = win[*first];
        assert!(y[ch].to_bits() == want.to_bits() || (want.is_nan() && y[ch].is_nan()), "channel {ch}: y {}", y[ch]);
        for k in 0..4 {
            let g = if k == *first { dy[ch] } else { 0.0 };
            assert_eq!(dx[k * c + ch], g, "channel {ch} window {win:?}: gradient at position {k}");
        }
    }
}

#[test]
fn global_pools_match_reference() {
    let mut rng = common::rng();
    for _ in 0..40 {
        let mut p = global_shape(&mut rng);
        let px = p.n * p.h * p.w;
        let xs = random_layout(&mut rng, px, p.c);
        p.x_pitch = xs.pitch;
        let what = format!("global pool {p:?}");
        let x = common::uniform(&mut rng, px * p.c);
        let x_buf = xs.fill(|i| x[i]);
        let (mean, max, arg) = global_ref(&widen(&x), &p);
        let narrow = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();

        let mut y = common::poisoned(p.n * p.c);
        pool::global_avg_forward(&mut y, &x_buf[range(&xs)], &p);
        // A mean of random-sign values may cancel: scaled by the mean of |x|.
        let hw = p.h * p.w;
        let abs_mean: Vec<f32> = x
            .chunks(hw * p.c)
            .flat_map(|img| common::channel_abs_sums(img, p.c).into_iter().map(|s| s / hw as f32))
            .collect();
        common::assert_scaled(&format!("{what} avg forward"), &y, &narrow(&mean), &abs_mean, tol::F32);
        pool::global_max_forward(&mut y, &x_buf[range(&xs)], &p);
        common::assert_close(&format!("{what} max forward"), &y, &narrow(&max), tol::F32);

        let dy = common::uniform(&mut rng, p.n * p.c);
        let mut dx_buf = xs.fill(|_| f32::NAN);
        pool::global_avg_backward(&mut dx_buf[range(&xs)], &dy, &p);
        let hw = (p.h * p.w) as f64;
        let want: Vec<f64> = (0..px * p.c).map(|i| dy[(i / (p.h * p.w * p.c)) * p.c + i % p.c] as f64 / hw).collect();
        common::assert_close(&format!("{what} avg backward"), &xs.channels(&dx_buf), &narrow(&want), tol::F32);
        xs.assert_gaps(&dx_buf, &format!("{what} avg backward dx"));

        let dx0 = common::uniform(&mut rng, px * p.c);
        let mut want = widen(&dx0);
        for (o, &at) in arg.iter().enumerate() {
            want[at] += dy[o] as f64;
        }
        let mut dx_buf = xs.fill(|i| dx0[i]);
        pool::global_max_backward(&mut dx_buf[range(&xs)], &dy, &x_buf[range(&xs)], &p);
        common::assert_close(&format!("{what} max backward"), &xs.channels(&dx_buf), &narrow(&want), tol::F32);
        xs.assert_gaps(&dx_buf, &format!("{what} max backward dx"));
    }
}

#[test]
fn global_max_ties_go_to_first_in_raster_order() {
    // 1 sample, 2x3 pixels, 3 channels: ch0 ties at pixels 2 and 4, ch1 all equal,
    // ch2 has NaNs at pixels 1 and 5 (the last NaN wins).
    let p = GlobalPoolParams { n: 1, h: 2, w: 3, c: 3, x_pitch: 3 };
    let chans = [[0.0, 1.0, 3.0, 2.0, 3.0, -1.0], [7.0; 6], [0.0, f32::NAN, 9.0, 1.0, 2.0, f32::NAN]];
    let x: Vec<f32> = (0..18).map(|i| chans[i % 3][i / 3]).collect();
    let mut y = common::poisoned(3);
    pool::global_max_forward(&mut y, &x, &p);
    assert_eq!((y[0], y[1]), (3.0, 7.0));
    assert!(y[2].is_nan(), "NaN propagates");
    let mut dx = vec![0.0f32; 18];
    pool::global_max_backward(&mut dx, &[1.0, 2.0, 3.0], &x, &p);
    let mut want = vec![0.0f32; 18];
    (want[2 * 3], want[1], want[5 * 3 + 2]) = (1.0, 2.0, 3.0);
    assert_eq!(dx, want);
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// The ops are piecewise linear, so with no ties within 2h the differences are exact
/// up to rounding (~1e-16/h relative): step 1e-6, tolerance FINITE_DIFF (1e-6).
#[test]
fn gradients_match_finite_differences() {
    let mut rng = common::rng();
    let h = 1e-6;
    for _ in 0..6 {
        let p = maxpool_shape(&mut rng);
        let x = common::uniform64(&mut rng, p.n * p.h * p.w * p.c);
        let w = common::uniform64(&mut rng, p.n * p.out_h() * p.out_w() * p.c);
        let fd = common::central_differences(&x, h, |x| {
            let mut y = vec![0.0; w.len()];
            pool::maxpool_forward(&mut y, x, &p);
            dot(&y, &w)
        });
        let mut dx = vec![0.0; x.len()];
        pool::maxpool_backward(&mut dx, &w, &x, &p);
        common::assert_close64(&format!("maxpool gradient {p:?}"), &dx, &fd, tol::FINITE_DIFF);

        let g = global_shape(&mut rng);
        let x = common::uniform64(&mut rng, g.n * g.h * g.w * g.c);
        let w = common::uniform64(&mut rng, g.n * g.c);
        let mut dx = vec![f64::NAN; x.len()];
        let fd = common::central_differences(&x, h, |x| {
            let mut y = vec![0.0; w.len()];
            pool::global_avg_forward(&mut y, x, &g);
            dot(&y, &w)
        });
        pool::global_avg_backward(&mut dx, &w, &g);
        common::assert_close64(&format!("global avg gradient {g:?}"), &dx, &fd, tol::FINITE_DIFF);
        let fd = common::central_differences(&x, h, |x| {
            let mut y = vec![0.0; w.len()];
            pool::global_max_forward(&mut y, x, &g);
            dot(&y, &w)
        });
        let mut dx = vec![0.0; x.len()];
        pool::global_max_backward(&mut dx, &w, &x, &g);
        common::assert_close64(&format!("global max gradient {g:?}"), &dx, &fd, tol::FINITE_DIFF);
    }
}

/// Every pooling op once through the `Backend` trait on one shared buffer, against
/// the direct calls; then an operand running past the end must be an `Err`.
#[test]
fn backend_trait_path() {
    let mut rng = common::rng();
    let cpu = Cpu;
    let p = MaxPoolParams { n: 2, h: 6, w: 4, c: 5, x_pitch: 7, y_pitch: 5 };
    let g = GlobalPoolParams { n: 2, h: 6, w: 4, c: 5, x_pitch: 7 };
    let (xl, yl, gl) = (view_len(48, 5, 7), view_len(12, 5, 5), 10);
    // Layout: x | dx | y | dy | gy
    let (x_off, dx_off, y_off, dy_off, gy_off) = (3, 3 + xl, 3 + 2 * xl, 3 + 2 * xl + yl, 3 + 2 * xl + 2 * yl);
    let total = gy_off + gl;
    let host = common::uniform(&mut rng, total);
    let buf = cpu.alloc(total).unwrap();
    cpu.upload(&buf, 0, &host).unwrap();
    let at = |off| At::<Cpu>::new(&buf, off);

    cpu.maxpool_forward(at(y_off), at(x_off), &p).unwrap();
    cpu.maxpool_backward(at(dx_off), at(dy_off), at(x_off), &p).unwrap();
    cpu.global_max_forward(at(gy_off), at(x_off), &g).unwrap();
    let mut got = vec![0.0; total];
    cpu.download(&buf, 0, &mut got).unwrap();

    let mut want = host.clone();
    let x = &host[x_off..x_off + xl];
    pool::maxpool_forward(&mut want[y_off..y_off + yl], x, &p);
    pool::maxpool_backward(&mut want[dx_off..dx_off + xl], &host[dy_off..dy_off + yl], x, &p);
    pool::global_max_forward(&mut want[gy_off..gy_off + gl], x, &g);
    assert_eq!(got, want, "trait path vs direct calls");

    // global avg / max backward on the dx region, then the avg forward.
    cpu.global_avg_backward(at(dx_off), at(gy_off), &g).unwrap();
    cpu.global_max_backward(at(dx_off), at(gy_off), at(x_off), &g).unwrap();
    cpu.global_avg_forward(at(gy_off), at(x_off), &g).unwrap();
    cpu.download(&buf, 0, &mut got).unwrap();
    let gy = want[gy_off..gy_off + gl].to_vec();
    pool::global_avg_backward(&mut want[dx_off..dx_off + xl], &gy, &g);
    pool::global_max_backward(&mut want[dx_off..dx_off + xl], &gy, x, &g);
    pool::global_avg_forward(&mut want[gy_off..gy_off + gl], x, &g);
    assert_eq!(got, want, "trait path vs direct calls (global pools)");

    let past_end = total - yl + 1;
    assert!(cpu.maxpool_forward(at(past_end), at(x_off), &p).is_err());
    assert!(cpu.maxpool_backward(at(total - xl + 1), at(dy_off), at(x_off), &p).is_err());
    assert!(cpu.global_avg_forward(at(total - gl + 1), at(x_off), &g).is_err());
    assert!(cpu.global_avg_backward(at(total - xl + 1), at(gy_off), &g).is_err());
    assert!(cpu.global_max_forward(at(gy_off), at(total - xl + 1), &g).is_err());
    assert!(cpu.global_max_backward(at(dx_off), at(total), at(x_off), &g).is_err());
}
