//! The loss kernels (`kernels/loss.cu`) against the CPU backend, through the `Backend`
//! trait: `Kernels<Emu>` always, `Kernels<Cuda>` when a GPU is usable (otherwise that
//! half prints why it was skipped).
//!
//! Cases sweep batch 1–3, H and W odd and even (1x1 and non-square included), K from
//! 1 to 256, targets with empty (n, k) channels (all-empty and all-full batches too),
//! logits mostly in [-4, 4) with some far out, and samples large enough for several
//! pass-1 blocks. Every operand sits in its own buffer at an offset (16-byte aligned
//! or not, so both pass-2 paths run); outputs start as NaN, and the NaN around each
//! output view must survive. Tolerances: gradients relative L2 ≤ `tol::F32` (1e-5),
//! loss components ≤ 1e-6 relative; the errors reached are printed.

pub mod common;

use common::kernels::{download, place};
use common::{describe, rel_l2, tol};
use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::emu::{self, race_check};
use lesionseg::backend::{At, Backend, LossParams, LossParts};
use lesionseg::device::test_gpu;
use rand::Rng;

/// Loss components: relative error bound against the CPU reference.
const COMPONENT_TOL: f64 = 1e-6;
/// NaN elements after each operand's view in its buffer.
const TAIL: usize = 5;

/// Inputs of one loss evaluation, dense: mask logits and targets `[N,H,W,K]`,
/// head logits `[N,K]`; and the element offset of each of the seven operands.
struct Case {
    p: LossParams,
    mask: Vec<f32>,
    mid: Vec<f32>,
    last: Vec<f32>,
    target: Vec<f32>,
    /// d_mask, d_mid, d_last, mask, mid, last, target.
    offs: [usize; 7],
}

/// How the target channels are filled.
#[derive(Clone, Copy)]
enum Fill {
    /// About a third of the (n, k) channels empty, the rest at a random density.
    Mixed,
    /// No positive pixel anywhere (I = 0).
    Empty,
    /// Every pixel positive.
    Full,
}

impl Case {
    fn random(rng: &mut impl Rng, n: usize, h: usize, w: usize, k: usize, fill: Fill) -> Self {
        let p = LossParams { n, h, w, k };
        let hw = h * w;
        let density: Vec<f64> = (0..n * k)
            .map(|_| match fill {
                Fill::Mixed if rng.gen_bool(0.35) => 0.0,
                Fill::Mixed => rng.gen_range(0.05..0.9),
                Fill::Empty => 0.0,
                Fill::Full => 1.0,
            })
            .collect();
        let target =
            (0..n * hw * k).map(|i| f32::from(u8::from(rng.gen_bool(density[(i / (hw * k)) * k + i % k])))).collect();
        let mut logits = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| if rng.gen_bool(0.02) { rng.gen_range(-40.0..40.0) } else { rng.gen_range(-4.0..4.0) })
                .collect()
        };
        let (mask, mid, last) = (logits(n * hw * k), logits(n * k), logits(n * k));
        // Offsets: aligned (0 or 4) or not; the same offset for d_mask, mask and target
        // half of the time, so the 16-byte pass-2 path runs.
        let mut offs: [usize; 7] =
            std::array::from_fn(|_| if rng.gen_bool(0.5) { 4 * rng.gen_range(0..2) } else { rng.gen_range(1..7) });
        if rng.gen_bool(0.5) {
            let a = 4 * rng.gen_range(0..3);
            (offs[0], offs[3], offs[6]) = (a, a, a);
        }
        Case { p, mask, mid, last, target, offs }
    }
}

/// Sizes of the sweep: fixed corner cases, then random ones.
fn cases(rng: &mut impl Rng) -> Vec<Case> {
    let fixed = [
        (1, 1, 1, 5, Fill::Mixed),
        (2, 1, 1, 5, Fill::Full),
        (3, 1, 2, 1, Fill::Mixed),
        (1, 3, 5, 5, Fill::Mixed),
        (3, 7, 4, 5, Fill::Empty),
        // 5 365 elements a sample: 2 pass-1 blocks of 255·16 each.
        (2, 37, 29, 5, Fill::Mixed),
        // 20 160: 5 blocks.
        (1, 64, 63, 5, Fill::Mixed),
        // A K that divides 256 (all 256 threads busy): 2 blocks a sample.
        (2, 20, 33, 8, Fill::Mixed),
        // 3·92 = 276 pass-1 blocks: the reduction's threads each add several partials.
        (3, 300, 250, 5, Fill::Mixed),
        (3, 17, 23, 1, Fill::Mixed),
        (2, 9, 11, 3, Fill::Full),
        (1, 4, 6, 256, Fill::Mixed),
        (2, 3, 5, 255, Fill::Mixed),
    ];
    let mut v: Vec<Case> = fixed.iter().map(|&(n, h, w, k, f)| Case::random(rng, n, h, w, k, f)).collect();
    for _ in 0..6 {
        let (n, h, w) = (rng.gen_range(1..=3), rng.gen_range(1..=40), rng.gen_range(1..=40));
        let k = [1, 3, 5, 5, 7][rng.gen_range(0..5)];
        v.push(Case::random(rng, n, h, w, k, Fill::Mixed));
    }
    v
}

/// What one loss evaluation produced.
struct Outcome {
    parts: LossParts,
    d_mask: Vec<f32>,
    d_mid: Vec<f32>,
    d_last: Vec<f32>,
}

impl Outcome {
    /// Everything, as f32 words (each f64 as its two halves), for bitwise comparisons.
    fn words(&self) -> Vec<f32> {
        let mut w: Vec<f32> = [self.parts.loss, self.parts.loss1, self.parts.loss2, self.parts.loss3]
            .iter()
            .flat_map(|v| {
                let b = v.to_bits();
                [f32::from_bits(b as u32), f32::from_bits((b >> 32) as u32)]
            })
            .collect();
        w.extend(self.d_mask.iter().chain(&self.d_mid).chain(&self.d_last));
        w
    }
}

/// Runs the loss on `be`; checks that nothing outside the output views was written.
fn run<B: Backend>(be: &B, c: &Case) -> Outcome {
    let (masks, heads) = (c.mask.len(), c.mid.len());
    let o = c.offs;
    let d_mask = place(be, &vec![f32::NAN; masks], o[0], TAIL);
    let d_mid = place(be, &vec![f32::NAN; heads], o[1], TAIL);
    let d_last = place(be, &vec![f32::NAN; heads], o[2], TAIL);
    let (mask, mid, last, target) = (
        place(be, &c.mask, o[3], TAIL),
        place(be, &c.mid, o[4], TAIL),
        place(be, &c.last, o[5], TAIL),
        place(be, &c.target, o[6], TAIL),
    );
    let parts = be
        .loss(
            At::new(&d_mask, o[0]),
            At::new(&d_mid, o[1]),
            At::new(&d_last, o[2]),
            At::new(&mask, o[3]),
            At::new(&mid, o[4]),
            At::new(&last, o[5]),
            At::new(&target, o[6]),
            &c.p,
        )
        .unwrap_or_else(|e| panic!("{} loss {:?}: {e}", be.name(), c.p));
    let mut views = Vec::new();
    for (buf, len, off, name) in
        [(&d_mask, masks, o[0], "d_mask"), (&d_mid, heads, o[1], "d_mid"), (&d_last, heads, o[2], "d_last")]
    {
        let all = download(be, buf, off + len + TAIL);
        let outside = all[..off].iter().chain(&all[off + len..]).position(|v| !v.is_nan());
        assert!(outside.is_none(), "{} loss {:?}: {name} written outside its view", be.name(), c.p);
        views.push(all[off..off + len].to_vec());
    }
    let [d_mask, d_mid, d_last]: [Vec<f32>; 3] = views.try_into().expect("three views");
    Outcome { parts, d_mask, d_mid, d_last }
}

/// The worst errors seen over a sweep.
#[derive(Default)]
struct Worst {
    component: f64,
    grad: f64,
}

/// Compares `be` with the CPU on every case.
fn sweep<B: Backend>(be: &B, cases: &[Case]) -> Worst {
    let mut worst = Worst::default();
    for c in cases {
        let got = run(be, c);
        let want = run(&Cpu, c);
        let what = format!("{} loss {:?} offsets {:?}", be.name(), c.p, c.offs);
        let pairs = [
            ("loss", got.parts.loss, want.parts.loss),
            ("loss1", got.parts.loss1, want.parts.loss1),
            ("loss2", got.parts.loss2, want.parts.loss2),
            ("loss3", got.parts.loss3, want.parts.loss3),
        ];
        for (name, g, w) in pairs {
            let e = (g - w).abs() / w.abs().max(1e-30);
            assert!(e <= COMPONENT_TOL, "{what}: {name} = {g:e}, cpu {w:e} (relative error {e:.2e})");
            worst.component = worst.component.max(e);
        }
        for (name, g, w) in [
            ("d_mask", &got.d_mask, &want.d_mask),
            ("d_mid", &got.d_mid, &want.d_mid),
            ("d_last", &got.d_last, &want.d_last),
        ] {
            let e = rel_l2(g, w);
            assert!(e <= tol::F32, "{what}: {name} relative L2 error {e:.3e}\n{}", describe(g, w));
            worst.grad = worst.grad.max(e);
        }
    }
    worst
}

#[test]
fn loss_matches_cpu() {
    let mut rng = common::rng();
    let cases = cases(&mut rng);
    let w = sweep(&emu::backend(), &cases);
    println!("emu: loss components within {:.2e} relative, gradients within {:.2e} relative L2", w.component, w.grad);
    if let Some(gpu) = test_gpu("loss_matches_cpu") {
        let w = sweep(&gpu, &cases);
        println!(
            "cuda: loss components within {:.2e} relative, gradients within {:.2e} relative L2",
            w.component, w.grad
        );
    }
}

/// Every loss kernel under the emulator's forward, reverse and random thread orders:
/// the partials, the fixed reduction tree and the gradients give the same bytes.
#[test]
fn loss_is_race_free_and_deterministic() {
    let mut rng = common::rng();
    let cases = [Case::random(&mut rng, 2, 37, 29, 5, Fill::Mixed), Case::random(&mut rng, 3, 5, 7, 3, Fill::Mixed)];
    let report = race_check(|be| Ok(cases.iter().flat_map(|c| run(be, c).words()).collect())).expect("race check ran");
    report.check(0.0).expect("identical bytes under every schedule");
}

/// Shape errors: too many attributes, an operand past its buffer, overlapping outputs.
#[test]
fn bad_operands_are_errors() {
    let be = emu::backend();
    let p = LossParams { n: 1, h: 2, w: 2, k: 3 };
    let big = be.alloc(64).unwrap();
    let bufs: Vec<_> = (0..7).map(|_| be.alloc(12).unwrap()).collect();
    let at = |i: usize| At::new(&bufs[i], 0);
    assert!(be.loss(at(0), at(1), at(2), at(3), at(4), at(5), at(6), &p).is_ok());
    assert!(be.loss(At::new(&bufs[0], 1), at(1), at(2), at(3), at(4), at(5), at(6), &p).is_err());
    // d_mid overlapping d_mask.
    assert!(be.loss(At::new(&big, 0), At::new(&big, 8), at(2), at(3), at(4), at(5), at(6), &p).is_err());
    // The target overlapping d_mask.
    assert!(be.loss(At::new(&big, 0), at(1), at(2), at(3), at(4), at(5), At::new(&big, 11), &p).is_err());
    let wide = LossParams { n: 1, h: 1, w: 1, k: 257 };
    let bufs: Vec<_> = (0..7).map(|_| be.alloc(257).unwrap()).collect();
    let at = |i: usize| At::new(&bufs[i], 0);
    let err = be.loss(at(0), at(1), at(2), at(3), at(4), at(5), at(6), &wide).unwrap_err();
    assert!(err.to_string().contains("256"), "{err}");
}
