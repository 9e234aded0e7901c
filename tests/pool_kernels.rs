//! The pooling kernels (`kernels/pool.cu`) against the CPU backend, through the
//! `Backend` trait: `Kernels<Emu>` always, `Kernels<Cuda>` when a GPU is usable
//! (otherwise that half is skipped with the reason printed).
//!
//! Operands are views at offsets of larger buffers whose other elements hold a
//! sentinel, with pitches wider than their channels; outputs start as NaN, and the
//! gradients that are added into start as random values. Inputs are drawn from a
//! few integers so that windows and channels have exact ties, and some cases mix in
//! NaN and ±∞: the max ops must then pick exactly the CPU's (PyTorch's) argmax, so
//! their outputs, and the gradients routed through them, are compared bit for bit.
//! The average is compared within `tol::F32` (its sum runs in another order); its
//! backward is one division per element and is exact. A race check runs every kernel
//! under the emulator's forward, reverse and random thread orders.

pub mod common;

use common::kernels::{download, gpu, upload};
use common::{rng, tol, Layout};
use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::emu::{self, race_check};
use lesionseg::backend::{At, Backend, GlobalPoolParams, MaxPoolParams};
use rand::Rng;

/// The channel counts the sweep draws from.
const CHANNELS: [usize; 7] = [1, 3, 5, 7, 13, 33, 64];

/// What a max op's input is drawn from.
#[derive(Clone, Copy, Debug)]
enum Values {
    /// Integers -2..=2: many exact ties.
    Ties,
    /// Ties with NaN, +∞ and −∞ mixed in (whole windows of −∞ included).
    Specials,
    /// Uniform in [-1, 1).
    Uniform,
}

fn draw(rng: &mut impl Rng, v: Values) -> f32 {
    match v {
        Values::Ties => rng.gen_range(-2..=2) as f32,
        Values::Specials => match rng.gen_range(0..20) {
            0 => f32::NAN,
            1..=3 => f32::NEG_INFINITY,
            4 => f32::INFINITY,
            _ => rng.gen_range(-2..=2) as f32,
        },
        Values::Uniform => rng.gen_range(-1.0f32..1.0),
    }
}

/// Bitwise equality of a view's channels (NaN equal to the same NaN), gaps intact.
fn assert_exact(what: &str, l: &Layout, got: &[f32], want: &[f32]) {
    let (g, w) = (l.channels(got), l.channels(want));
    let bad = g.iter().zip(&w).position(|(a, b)| a.to_bits() != b.to_bits());
    if let Some(i) = bad {
        panic!(
            "{what}: element {i} of {} is {} (bits {:#x}), expected {} ({:#x})",
            g.len(),
            g[i],
            g[i].to_bits(),
            w[i],
            w[i].to_bits()
        );
    }
    l.assert_gaps(got, what);
}

// ---------------------------------------------------------------- 2x2 max pooling

struct MaxCase {
    p: MaxPoolParams,
    x: Layout,
    y: Layout,
    x_buf: Vec<f32>,
    dy_buf: Vec<f32>,
    dx_init: Vec<f32>,
}

fn max_case(rng: &mut impl Rng, n: usize, h: usize, w: usize, c: usize, aligned: bool, values: Values) -> MaxCase {
    let x = Layout::random(rng, n * h * w, c, aligned);
    let y = Layout::random(rng, n * (h / 2) * (w / 2), c, aligned);
    let p = MaxPoolParams { n, h, w, c, x_pitch: x.pitch, y_pitch: y.pitch };
    let x_buf = x.fill(|_| draw(rng, values));
    let dy_buf = y.fill(|_| rng.gen_range(-1.0f32..1.0));
    let dx_init = x.fill(|_| rng.gen_range(-1.0f32..1.0));
    MaxCase { p, x, y, x_buf, dy_buf, dx_init }
}

fn max_cases(rng: &mut impl Rng) -> Vec<MaxCase> {
    let mut v = vec![
        max_case(rng, 1, 2, 2, 1, false, Values::Ties),
        max_case(rng, 2, 2, 6, 5, false, Values::Specials),
        max_case(rng, 3, 4, 2, 64, true, Values::Ties),
        max_case(rng, 1, 8, 6, 13, false, Values::Uniform),
        max_case(rng, 2, 6, 4, 8, true, Values::Specials),
        // Encoder widths: conv1 -> conv2 (64 channels), conv4 -> conv5 (512).
        max_case(rng, 1, 16, 16, 64, true, Values::Ties),
        max_case(rng, 1, 4, 6, 512, false, Values::Uniform),
    ];
    for i in 0..8 {
        let (n, h, w) = (rng.gen_range(1..=3), 2 * rng.gen_range(1..=4), 2 * rng.gen_range(1..=4));
        let c = CHANNELS[rng.gen_range(0..7)];
        let values = [Values::Ties, Values::Specials, Values::Uniform][i % 3];
        v.push(max_case(rng, n, h, w, c, i % 2 == 0, values));
    }
    v
}

/// (y, dx) whole buffers after the forward and the backward on `be`.
fn maxpool_on<B: Backend>(be: &B, c: &MaxCase) -> (Vec<f32>, Vec<f32>) {
    let y0 = c.y.fill(|_| f32::NAN);
    let (y, x, dy, dx) = (upload(be, &y0), upload(be, &c.x_buf), upload(be, &c.dy_buf), upload(be, &c.dx_init));
    let name = be.name();
    be.maxpool_forward(At::new(&y, c.y.off), At::new(&x, c.x.off), &c.p)
        .unwrap_or_else(|e| panic!("{name} maxpool_forward {:?}: {e}", c.p));
    be.maxpool_backward(At::new(&dx, c.x.off), At::new(&dy, c.y.off), At::new(&x, c.x.off), &c.p)
        .unwrap_or_else(|e| panic!("{name} maxpool_backward {:?}: {e}", c.p));
    (download(be, &y, y0.len()), download(be, &dx, c.dx_init.len()))
}

fn maxpool_sweep<B: Backend>(be: &B, cases: &[MaxCase]) -> Vec<Vec<f32>> {
    let mut outs = Vec::new();
    for c in cases {
        let (y, dx) = maxpool_on(be, c);
        let (wy, wdx) = maxpool_on(&Cpu, c);
        assert_exact(&format!("{} maxpool_forward {:?}", be.name(), c.p), &c.y, &y, &wy);
        assert_exact(&format!("{} maxpool_backward {:?}", be.name(), c.p), &c.x, &dx, &wdx);
        outs.extend([y, dx]);
    }
    outs
}

// ---------------------------------------------------------------- global pooling

struct GlobalCase {
    p: GlobalPoolParams,
    x: Layout,
    /// Dense `[N, C]` output and upstream gradient.
    y: Layout,
    x_buf: Vec<f32>,
    dy_buf: Vec<f32>,
    dx_init: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn global_case(
    rng: &mut impl Rng,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    aligned: bool,
    values: Values,
) -> GlobalCase {
    let x = Layout::random(rng, n * h * w, c, aligned);
    let y = Layout::dense(n * c, if aligned { 4 } else { rng.gen_range(0..5) });
    let p = GlobalPoolParams { n, h, w, c, x_pitch: x.pitch };
    let x_buf = x.fill(|_| draw(rng, values));
    let dy_buf = y.fill(|_| rng.gen_range(-1.0f32..1.0));
    let dx_init = x.fill(|_| rng.gen_range(-1.0f32..1.0));
    GlobalCase { p, x, y, x_buf, dy_buf, dx_init }
}

fn global_cases(rng: &mut impl Rng) -> Vec<GlobalCase> {
    let mut v = vec![
        global_case(rng, 1, 1, 1, 1, false, Values::Ties),
        global_case(rng, 2, 3, 5, 5, false, Values::Specials),
        // 272 pixels, one channel: all 256 threads of the block scan pixels.
        global_case(rng, 1, 16, 17, 1, false, Values::Ties),
        global_case(rng, 3, 4, 4, 64, true, Values::Ties),
        global_case(rng, 2, 7, 3, 33, false, Values::Specials),
        global_case(rng, 2, 5, 6, 8, true, Values::Uniform),
        // The heads: K = 5 attribute maps (mask logits), and a 256-channel input.
        global_case(rng, 2, 64, 48, 5, false, Values::Uniform),
        global_case(rng, 1, 12, 12, 256, true, Values::Ties),
        // Over 1024 pixels: split into chunks, merged by the finish kernels.
        global_case(rng, 1, 40, 41, 33, false, Values::Ties),
        global_case(rng, 2, 37, 30, 3, true, Values::Specials),
    ];
    for i in 0..8 {
        let (n, h, w) = (rng.gen_range(1..=3), rng.gen_range(1..=9), rng.gen_range(1..=9));
        let c = CHANNELS[rng.gen_range(0..7)];
        let values = [Values::Ties, Values::Specials, Values::Uniform][i % 3];
        v.push(global_case(rng, n, h, w, c, i % 2 == 1, values));
    }
    v
}

/// Whole buffers after each op on `be`: (avg y, avg dx, max y, max dx).
fn global_on<B: Backend>(be: &B, c: &GlobalCase) -> [Vec<f32>; 4] {
    let name = be.name();
    let (x, dy) = (upload(be, &c.x_buf), upload(be, &c.dy_buf));
    let y0 = c.y.fill(|_| f32::NAN);
    let (avg_y, max_y) = (upload(be, &y0), upload(be, &y0));
    let (avg_dx, max_dx) = (upload(be, &c.x.fill(|_| f32::NAN)), upload(be, &c.dx_init));
    let (xa, ya, dya) = (At::new(&x, c.x.off), c.y.off, At::new(&dy, c.y.off));
    be.global_avg_forward(At::new(&avg_y, ya), xa, &c.p)
        .unwrap_or_else(|e| panic!("{name} global_avg_forward {:?}: {e}", c.p));
    be.global_avg_backward(At::new(&avg_dx, c.x.off), dya, &c.p)
        .unwrap_or_else(|e| panic!("{name} global_avg_backward {:?}: {e}", c.p));
    be.global_max_forward(At::new(&max_y, ya), xa, &c.p)
        .unwrap_or_else(|e| panic!("{name} global_max_forward {:?}: {e}", c.p));
    be.global_max_backward(At::new(&max_dx, c.x.off), dya, xa, &c.p)
        .unwrap_or_else(|e| panic!("{name} global_max_backward {:?}: {e}", c.p));
    let xl = c.dx_init.len();
    [
        download(be, &avg_y, y0.len()),
        download(be, &avg_dx, xl),
        download(be, &max_y, y0.len()),
        download(be, &max_dx, xl),
    ]
}

fn global_sweep<B: Backend>(be: &B, cases: &[GlobalCase]) -> Vec<Vec<f32>> {
    let mut outs = Vec::new();
    for c in cases {
        let got = global_on(be, c);
        let want = global_on(&Cpu, c);
        let what = |op: &str| format!("{} {op} {:?}", be.name(), c.p);
        // Only uniform inputs are NaN-free; with ±∞ and NaN the mean is compared exactly
        // where non-finite (both must be the same kind) and the rest by L2.
        let (g, w) = (c.y.channels(&got[0]), c.y.channels(&want[0]));
        let finite: Vec<bool> = w.iter().map(|v| v.is_finite()).collect();
        for (i, f) in finite.iter().enumerate() {
            if !f {
                assert!(
                    g[i].to_bits() == w[i].to_bits() || (g[i].is_nan() && w[i].is_nan()),
                    "{}: [{i}] {} vs {}",
                    what("global_avg_forward"),
                    g[i],
                    w[i]
                );
            }
        }
        // A mean may cancel far below its terms: its error is measured against the
        // mean of |x| (the sum's condition), not against the mean itself.
        let xs = c.x.channels(&c.x_buf);
        let hw = (c.p.h * c.p.w) as f32;
        let abs_mean: Vec<f32> = (0..c.p.n * c.p.c)
            .map(|nc| {
                let (n, ch) = (nc / c.p.c, nc % c.p.c);
                xs[n * c.p.h * c.p.w * c.p.c..]
                    .iter()
                    .skip(ch)
                    .step_by(c.p.c)
                    .take(c.p.h * c.p.w)
                    .map(|v| v.abs())
                    .sum::<f32>()
                    / hw
            })
            .collect();
        let keep = |v: &[f32]| v.iter().zip(&finite).filter(|(_, &f)| f).map(|(&x, _)| x).collect::<Vec<_>>();
        assert_scaled(&what("global_avg_forward"), &keep(&g), &keep(&w), &keep(&abs_mean));
        c.y.assert_gaps(&got[0], &what("global_avg_forward"));
        assert_exact(&what("global_avg_backward"), &c.x, &got[1], &want[1]);
        assert_exact(&what("global_max_forward"), &c.y, &got[2], &want[2]);
        assert_exact(&what("global_max_backward"), &c.x, &got[3], &want[3]);
        outs.extend(got);
    }
    outs
}

/// Panics unless ‖got − want‖ ≤ `tol::F32`·‖scale‖ (`scale`: the magnitude of each
/// value's terms, for results that may cancel far below them).
fn assert_scaled(what: &str, got: &[f32], want: &[f32], scale: &[f32]) {
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let err = norm(&mut got.iter().zip(want).map(|(&a, &b)| a as f64 - b as f64));
    let bound = tol::F32 * norm(&mut scale.iter().map(|&v| v as f64));
    assert!(
        err <= bound,
        "{what}: L2 error {err:.3e} > {bound:.3e} (tol × ‖mean |x|‖)\n{}",
        common::describe(got, want)
    );
}

/// Asserts that two backends produced the same bits, except that any NaN equals any
/// NaN (a GPU's arithmetic makes the canonical 0x7fffffff where x86 makes 0xffc00000).
fn assert_same_bits(what: &str, a: &[Vec<f32>], b: &[Vec<f32>]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let bad = x.iter().zip(y).position(|(p, q)| p.to_bits() != q.to_bits() && !(p.is_nan() && q.is_nan()));
        assert!(bad.is_none(), "{what}: output {i} differs at element {bad:?}");
    }
}

#[test]
fn maxpool_matches_cpu_exactly() {
    let mut rng = rng();
    let cases = max_cases(&mut rng);
    let emu_out = maxpool_sweep(&emu::backend(), &cases);
    if let Some(g) = gpu("maxpool_matches_cpu_exactly") {
        assert_same_bits("maxpool cuda vs emu", &maxpool_sweep(&g, &cases), &emu_out);
    }
}

#[test]
fn global_pools_match_cpu() {
    let mut rng = rng();
    let cases = global_cases(&mut rng);
    let emu_out = global_sweep(&emu::backend(), &cases);
    if let Some(g) = gpu("global_pools_match_cpu") {
        assert_same_bits("global pools cuda vs emu", &global_sweep(&g, &cases), &emu_out);
    }
}

/// Every pooling kernel under the forward, reverse and two random thread orders.
#[test]
fn kernels_are_race_free_and_deterministic() {
    let mut rng = rng();
    let mc =
        [max_case(&mut rng, 2, 4, 6, 7, false, Values::Specials), max_case(&mut rng, 1, 6, 4, 8, true, Values::Ties)];
    let gc = [
        global_case(&mut rng, 2, 9, 7, 5, false, Values::Specials),
        global_case(&mut rng, 1, 6, 6, 36, true, Values::Uniform),
        global_case(&mut rng, 2, 33, 35, 6, false, Values::Specials),
    ];
    let report = race_check(|be| {
        let mut out = Vec::new();
        for c in &mc {
            let (y, dx) = maxpool_on(be, c);
            out.extend(y.into_iter().chain(dx));
        }
        for c in &gc {
            out.extend(global_on(be, c).concat());
        }
        Ok(out)
    })
    .expect("race check ran");
    report.check(0.0).expect("identical bytes under every schedule");
}

/// Shape errors: odd H or W for 2x2 pooling, an operand past its buffer, an output
/// overlapping an input.
#[test]
fn bad_operands_are_errors() {
    let be = emu::backend();
    let (x, y) = (be.alloc(4 * 4 * 2).unwrap(), be.alloc(2 * 2 * 2).unwrap());
    let p = MaxPoolParams { n: 1, h: 4, w: 4, c: 2, x_pitch: 2, y_pitch: 2 };
    assert!(be.maxpool_forward(At::new(&y, 0), At::new(&x, 0), &p).is_ok());
    assert!(be.maxpool_forward(At::new(&y, 0), At::new(&x, 0), &MaxPoolParams { h: 3, ..p }).is_err());
    assert!(be.maxpool_forward(At::new(&y, 1), At::new(&x, 0), &p).is_err());
    let g = GlobalPoolParams { n: 1, h: 4, w: 4, c: 2, x_pitch: 2 };
    assert!(be.global_max_forward(At::new(&y, 0), At::new(&x, 0), &g).is_ok());
    assert!(be.global_max_forward(At::new(&y, 7), At::new(&x, 0), &g).is_err());
    // Outputs over inputs of the same buffer.
    assert!(be.maxpool_forward(At::new(&x, 12), At::new(&x, 0), &MaxPoolParams { h: 2, ..p }).is_err());
    assert!(be.maxpool_forward(At::new(&x, 16), At::new(&x, 0), &MaxPoolParams { h: 2, ..p }).is_ok());
    assert!(be.global_avg_forward(At::new(&x, 15), At::new(&x, 0), &GlobalPoolParams { h: 2, ..g }).is_err());
}
