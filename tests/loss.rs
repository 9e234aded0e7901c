//! The multi-task loss against a direct f64 transcription of the formulas in docs/ARCHITECTURE.md §2,
//! finite-difference checks of all three logit gradients in f64, determinism across
//! thread counts, and the `Backend` trait path.

pub mod common;

use common::tol;
use lesionseg::backend::cpu::{loss, Cpu};
use lesionseg::backend::{At, Backend, LossParams, LossParts};
use rand::seq::SliceRandom;
use rand::Rng;

/// Inputs of one loss evaluation, dense: mask logits and targets `[N,H,W,K]`,
/// head logits `[N,K]`.
struct Case {
    p: LossParams,
    mask: Vec<f64>,
    mid: Vec<f64>,
    last: Vec<f64>,
    target: Vec<f64>,
}

impl Case {
    /// Logits in [-4, 4); targets in {0, 1}, with about a third of the (n, k)
    /// channels empty and the rest at a random density, so the labels vary.
    fn random(rng: &mut impl Rng, p: LossParams) -> Self {
        let hw = p.h * p.w;
        let density: Vec<f64> =
            (0..p.n * p.k).map(|_| if rng.gen_bool(0.35) { 0.0 } else { rng.gen_range(0.05..0.9) }).collect();
        let target = (0..p.n * hw * p.k)
            .map(|i| {
                let (n, k) = (i / (hw * p.k), i % p.k);
                f64::from(u8::from(rng.gen_bool(density[n * p.k + k])))
            })
            .collect();
        let mut logits = |len| common::uniform64(rng, len).into_iter().map(|v| 4.0 * v).collect::<Vec<_>>();
        let (mask, mid, last) = (logits(p.n * hw * p.k), logits(p.n * p.k), logits(p.n * p.k));
        Case { p, mask, mid, last, target }
    }
    fn narrow(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&v| v as f32).collect()
    }
    /// Rounds every input to f32, so the f32 op and the f64 reference see the same values.
    fn round_to_f32(&mut self) {
        for v in [&mut self.mask, &mut self.mid, &mut self.last, &mut self.target] {
            v.iter_mut().for_each(|x| *x = *x as f32 as f64);
        }
    }
    /// Runs the generic op in f64: parts and (d_mask, d_mid, d_last).
    fn eval64(&self) -> (LossParts, [Vec<f64>; 3]) {
        let mut d = [vec![f64::NAN; self.mask.len()], vec![f64::NAN; self.mid.len()], vec![f64::NAN; self.last.len()]];
        let [dm, di, dl] = &mut d;
        let parts = loss::loss(dm, di, dl, &self.mask, &self.mid, &self.last, &self.target, &self.p);
        (parts, d)
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// BCE the textbook way; fine for the |x| < 4 of these tests.
fn bce(x: f64, t: f64) -> f64 {
    let s = sigmoid(x);
    -(t * s.ln() + (1.0 - t) * (1.0 - s).ln())
}

/// The loss of docs/ARCHITECTURE.md §2 and its gradients, straight from the formulas, in f64.
fn reference(c: &Case) -> (LossParts, [Vec<f64>; 3]) {
    let p = &c.p;
    let m = c.mask.len() as f64;
    let eps = 1e-15;
    let s: Vec<f64> = c.mask.iter().map(|&x| sigmoid(x)).collect();
    let inter: f64 = s.iter().zip(&c.target).map(|(s, t)| s * t).sum();
    let union: f64 = s.iter().sum::<f64>() + c.target.iter().sum::<f64>();
    let mean_bce = c.mask.iter().zip(&c.target).map(|(&x, &t)| bce(x, t)).sum::<f64>() / m;
    let loss1 = mean_bce - ((inter + eps) / (union - inter + eps)).ln();
    // d(-ln J)/ds = -t/(I+ε) + (1-t)/(U-I+ε); ds/dx = s(1-s).
    let d_mask = s
        .iter()
        .zip(&c.target)
        .map(|(&s, &t)| (s - t) / m + s * (1.0 - s) * (-t / (inter + eps) + (1.0 - t) / (union - inter + eps)))
        .collect();

    let hw = p.h * p.w;
    let y: Vec<f64> = (0..p.n * p.k)
        .map(|nk| {
            let (n, k) = (nk / p.k, nk % p.k);
            let any = (0..hw).any(|px| c.target[(n * hw + px) * p.k + k] > 0.5);
            f64::from(u8::from(any))
        })
        .collect();
    let head = |logits: &[f64]| {
        let nk = logits.len() as f64;
        let l = logits.iter().zip(&y).map(|(&x, &y)| bce(x, y)).sum::<f64>() / nk;
        let d = logits.iter().zip(&y).map(|(&x, &y)| 0.5 * (sigmoid(x) - y) / nk).collect();
        (l, d)
    };
    let ((loss2, d_mid), (loss3, d_last)) = (head(&c.mid), head(&c.last));
    (LossParts { loss: loss1 + 0.5 * loss2 + 0.5 * loss3, loss1, loss2, loss3 }, [d_mask, d_mid, d_last])
}

fn assert_parts(what: &str, got: &LossParts, want: &LossParts, tol: f64) {
    for (name, g, w) in [
        ("loss", got.loss, want.loss),
        ("loss1", got.loss1, want.loss1),
        ("loss2", got.loss2, want.loss2),
        ("loss3", got.loss3, want.loss3),
    ] {
        assert!((g - w).abs() <= tol * w.abs().max(1.0), "{what}: {name} {g} vs {w}");
    }
}

fn random_shape(rng: &mut impl Rng) -> LossParams {
    let k = *[1, 3, 5, 7].choose(rng).unwrap();
    LossParams { n: rng.gen_range(1..4), h: rng.gen_range(1..12), w: rng.gen_range(1..12), k }
}

/// Runs the f32 op; gradients start as NaN so anything left unwritten shows.
fn eval32(c: &Case) -> (LossParts, [Vec<f32>; 3]) {
    let mut d = [common::poisoned(c.mask.len()), common::poisoned(c.mid.len()), common::poisoned(c.last.len())];
    let [dm, di, dl] = &mut d;
    let (mask, mid, last, target) =
        (Case::narrow(&c.mask), Case::narrow(&c.mid), Case::narrow(&c.last), Case::narrow(&c.target));
    let parts = loss::loss(dm, di, dl, &mask, &mid, &last, &target, &c.p);
    (parts, d)
}

#[test]
fn loss_matches_reference() {
    let mut rng = common::rng();
    let mut shapes: Vec<LossParams> = (0..30).map(|_| random_shape(&mut rng)).collect();
    // Several rayon chunks (8192 pixels each), with a sample boundary inside one.
    shapes.push(LossParams { n: 2, h: 72, w: 120, k: 5 });
    shapes.push(LossParams { n: 3, h: 97, w: 61, k: 3 });
    for p in shapes {
        let mut c = Case::random(&mut rng, p);
        c.round_to_f32();
        let (want, [dm, di, dl]) = reference(&c);
        let (got, [gm, gi, gl]) = eval32(&c);
        let what = format!("loss {p:?}");
        assert_parts(&what, &got, &want, tol::F32);
        common::assert_close(&format!("{what} d_mask"), &gm, &Case::narrow(&dm), tol::F32);
        common::assert_close(&format!("{what} d_mid"), &gi, &Case::narrow(&di), tol::F32);
        common::assert_close(&format!("{what} d_last"), &gl, &Case::narrow(&dl), tol::F32);

        // The generic op in f64 agrees with the reference to rounding.
        let (got64, [em, ei, el]) = c.eval64();
        assert_parts(&format!("{what} f64"), &got64, &want, 1e-12);
        common::assert_close64(&format!("{what} f64 d_mask"), &em, &dm, 1e-12);
        common::assert_close64(&format!("{what} f64 d_mid"), &ei, &di, 1e-12);
        common::assert_close64(&format!("{what} f64 d_last"), &el, &dl, 1e-12);
    }
}

/// An all-empty batch (I = 0, so the Jaccard term is −ln(ε/(Σs+ε))) and large logits
/// (where a naive BCE would overflow) stay finite.
#[test]
fn loss_edge_cases_stay_finite() {
    let p = LossParams { n: 1, h: 2, w: 3, k: 2 };
    let mut c = Case { p, mask: vec![0.0; 12], mid: vec![0.0; 2], last: vec![0.0; 2], target: vec![0.0; 12] };
    let (got, [dm, di, dl]) = eval32(&c);
    let (want, _) = reference(&c);
    assert_parts("empty targets", &got, &want, tol::F32);
    assert!(dm.iter().chain(&di).chain(&dl).all(|v| v.is_finite()));
    c.mask = (0..12).map(|i| if i % 2 == 0 { 200.0 } else { -200.0 }).collect();
    c.target = (0..12).map(|i| f64::from(u8::from(i % 3 == 0))).collect();
    c.mid = vec![-150.0, 150.0];
    let (got, [dm, di, dl]) = eval32(&c);
    assert!(got.loss.is_finite(), "{got:?}");
    assert!(dm.iter().chain(&di).chain(&dl).all(|v| v.is_finite()));
    // The textbook reference takes ln(0) here; the f64 op is the yardstick instead.
    let (got64, _) = c.eval64();
    assert!((got.loss - got64.loss).abs() <= 1e-5 * got64.loss.abs());
}

/// Central differences of the f64 op's loss, step 1e-5 (truncation ~h²·f''' ≈ 1e-10,
/// rounding ~1e-16/h ≈ 1e-11, against gradients of ~1/(N·H·W·K)); tolerance
/// FINITE_DIFF (1e-6 relative L2) for each of the three logit tensors.
#[test]
fn gradients_match_finite_differences() {
    let mut rng = common::rng();
    let h = 1e-5;
    for _ in 0..5 {
        let p = LossParams { n: rng.gen_range(1..4), h: rng.gen_range(1..5), w: rng.gen_range(1..5), k: 3 };
        let mut c = Case::random(&mut rng, p);
        let (_, [dm, di, dl]) = c.eval64();
        for (name, which, analytic) in [("mask", 0, &dm), ("mid", 1, &di), ("last", 2, &dl)] {
            let fd: Vec<f64> = (0..analytic.len())
                .map(|i| (perturbed(&mut c, which, i, h) - perturbed(&mut c, which, i, -h)) / (2.0 * h))
                .collect();
            common::assert_close64(&format!("d_{name} {p:?}"), analytic, &fd, tol::FINITE_DIFF);
        }
    }
}

/// The loss with element `i` of logit tensor `which` (mask, mid, last) moved by `delta`.
fn perturbed(c: &mut Case, which: usize, i: usize, delta: f64) -> f64 {
    let orig = [&c.mask, &c.mid, &c.last][which][i];
    [&mut c.mask, &mut c.mid, &mut c.last][which][i] = orig + delta;
    let loss = c.eval64().0.loss;
    [&mut c.mask, &mut c.mid, &mut c.last][which][i] = orig;
    loss
}

/// Partial sums are added in chunk order, so one thread and many give the same bits.
#[test]
fn loss_is_deterministic_across_thread_counts() {
    let mut rng = common::rng();
    let c = Case::random(&mut rng, LossParams { n: 3, h: 64, w: 96, k: 5 });
    let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let (one, d_one) = pool(1).install(|| eval32(&c));
    let (many, d_many) = pool(4).install(|| eval32(&c));
    assert_eq!(one, many);
    assert!(d_one.iter().zip(&d_many).all(|(a, b)| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())));
}

/// The loss once through the `Backend` trait (all operands in one buffer), against a
/// direct call; then operands past the buffer's end are an `Err`.
#[test]
fn backend_trait_path() {
    let mut rng = common::rng();
    let p = LossParams { n: 2, h: 5, w: 7, k: 5 };
    let mut c = Case::random(&mut rng, p);
    c.round_to_f32();
    let (masks, heads) = (p.n * p.h * p.w * p.k, p.n * p.k);
    // Layout: d_mask | d_mid | d_last | mask | mid | last | target
    let lens = [masks, heads, heads, masks, heads, heads, masks];
    let offs: Vec<usize> = lens.iter().scan(1, |o, &l| Some(std::mem::replace(o, *o + l))).collect();
    let total = offs[6] + masks;
    let cpu = Cpu;
    let buf = cpu.alloc(total).unwrap();
    for (data, &off) in [&c.mask, &c.mid, &c.last, &c.target].into_iter().zip(&offs[3..]) {
        cpu.upload(&buf, off, &Case::narrow(data)).unwrap();
    }
    let at = |i: usize| At::<Cpu>::new(&buf, offs[i]);
    let got = cpu.loss(at(0), at(1), at(2), at(3), at(4), at(5), at(6), &p).unwrap();
    let (want, d_want) = eval32(&c);
    assert_eq!(got, want);
    for (i, d) in d_want.iter().enumerate() {
        let mut back = vec![0.0; d.len()];
        cpu.download(&buf, offs[i], &mut back).unwrap();
        assert_eq!(&back, d, "gradient {i}");
    }
    let past = At::<Cpu>::new(&buf, total - heads + 1);
    assert!(cpu.loss(at(0), at(1), past, at(3), at(4), at(5), at(6), &p).is_err());
    assert!(cpu.loss(at(0), at(1), at(2), at(3), at(4), at(5), At::new(&buf, total - 1), &p).is_err());
}
