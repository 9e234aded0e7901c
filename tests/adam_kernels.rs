//! The Adam kernel (`kernels/adam.cu`) against the CPU backend, through the `Backend`
//! trait: `Kernels<Emu>` always, `Kernels<Cuda>` when a GPU is usable (otherwise that
//! half prints why it was skipped).
//!
//! Several steps over buffers of odd and even lengths (1 to ~100 000: tails of the
//! 16-byte path, several grid-stride blocks), at aligned and unaligned offsets, with
//! gradients spanning seven decades, under two hyper-parameter sets (the second with
//! β1 = 0.4, whose lerp weight 0.6 takes the other branch). The launcher computes the
//! scalars as the CPU does and the kernel repeats its f32 operations in order, so the
//! emulator must agree bit for bit; the GPU within 1e-6 relative L2 (bit-exactness
//! there is reported, not required: it depends on the driver's sqrt and division).

pub mod common;

use common::kernels::{download, place};
use common::{describe, rel_l2};
use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::emu::{self, race_check};
use lesionseg::backend::{AdamParams, At, Backend};
use lesionseg::device::test_gpu;
use rand::Rng;

/// Relative L2 bound of the GPU against the CPU reference.
const ADAM_TOL: f64 = 1e-6;
/// Steps per run.
const STEPS: u64 = 5;
/// NaN elements after each operand's view in its buffer.
const TAIL: usize = 3;

/// One run: length, element offset of each of param, m, v, grad, hyper-parameters.
struct Case {
    len: usize,
    offs: [usize; 4],
    hp: (f32, f32, f32, f32),
    param: Vec<f32>,
    grads: Vec<Vec<f32>>,
}

fn gradients(rng: &mut impl Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0) * 10f32.powf(rng.gen_range(-7.0..1.0))).collect()
}

fn cases(rng: &mut impl Rng) -> Vec<Case> {
    let lens = [1, 3, 4, 5, 17, 1023, 4099, 65_541, 100_003];
    let hps = [(1e-3f32, 0.9f32, 0.999f32, 1e-8f32), (3e-2, 0.4, 0.99, 1e-6)];
    let mut v = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let offs = if i % 2 == 0 { [0, 4, 8, 4] } else { std::array::from_fn(|_| rng.gen_range(0..7)) };
        let hp = hps[i % 2];
        let param = (0..len).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
        let grads = (0..STEPS).map(|_| gradients(rng, len)).collect();
        v.push(Case { len, offs, hp, param, grads });
    }
    v
}

/// (param, m, v) after every step, and nothing outside the views touched.
fn run<B: Backend>(be: &B, c: &Case) -> Vec<[Vec<f32>; 3]> {
    let n = c.len;
    let o = c.offs;
    let (param, m, v, grad) = (
        place(be, &c.param, o[0], TAIL),
        place(be, &vec![0.0; n], o[1], TAIL),
        place(be, &vec![0.0; n], o[2], TAIL),
        place(be, &vec![0.0; n], o[3], TAIL),
    );
    let (lr, beta1, beta2, eps) = c.hp;
    let mut out = Vec::new();
    for (step, g) in (1..=STEPS).zip(&c.grads) {
        be.upload(&grad, o[3], g).expect("upload");
        let p = AdamParams { len: n, lr, beta1, beta2, eps, step };
        be.adam(At::new(&param, o[0]), At::new(&m, o[1]), At::new(&v, o[2]), At::new(&grad, o[3]), &p)
            .unwrap_or_else(|e| panic!("{} adam {p:?}: {e}", be.name()));
        let views = [(&param, o[0]), (&m, o[1]), (&v, o[2])].map(|(buf, off)| {
            let all = download(be, buf, off + n + TAIL);
            assert!(
                all[..off].iter().chain(&all[off + n..]).all(|x| x.is_nan()),
                "{} adam len {n}: write outside the view",
                be.name()
            );
            all[off..off + n].to_vec()
        });
        out.push(views);
    }
    out
}

/// Compares `be` with the CPU on every case; returns (elements that differ in any bit,
/// elements compared, worst relative L2).
fn sweep<B: Backend>(be: &B, cases: &[Case]) -> (usize, usize, f64) {
    let (mut differ, mut total, mut worst) = (0, 0, 0.0f64);
    for c in cases {
        let got = run(be, c);
        let want = run(&Cpu, c);
        for (step, (g, w)) in got.iter().zip(&want).enumerate() {
            for (name, gv, wv) in [("param", &g[0], &w[0]), ("m", &g[1], &w[1]), ("v", &g[2], &w[2])] {
                let e = rel_l2(gv, wv);
                let what = format!(
                    "{} adam len {} offsets {:?} hp {:?} step {}: {name}",
                    be.name(),
                    c.len,
                    c.offs,
                    c.hp,
                    step + 1
                );
                assert!(e <= ADAM_TOL, "{what}: relative L2 error {e:.3e}\n{}", describe(gv, wv));
                worst = worst.max(e);
                differ += gv.iter().zip(wv.iter()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                total += gv.len();
            }
        }
    }
    (differ, total, worst)
}

#[test]
fn adam_matches_cpu() {
    let mut rng = common::rng();
    let cases = cases(&mut rng);
    let (differ, total, worst) = sweep(&emu::backend(), &cases);
    println!("emu: {differ} of {total} values differ from the CPU in some bit (worst relative L2 {worst:.2e})");
    assert_eq!(differ, 0, "emu adam must be bit-exact against the CPU reference");
    if let Some(gpu) = test_gpu("adam_matches_cpu") {
        let (differ, total, worst) = sweep(&gpu, &cases);
        println!("cuda: {differ} of {total} values differ from the CPU in some bit (worst relative L2 {worst:.2e})");
    }
}

#[test]
fn adam_is_race_free_and_deterministic() {
    let mut rng = common::rng();
    let cases: Vec<Case> = cases(&mut rng).into_iter().filter(|c| c.len < 5000).collect();
    let report =
        race_check(|be| Ok(cases.iter().flat_map(|c| run(be, c).concat().concat()).collect())).expect("race check ran");
    report.check(0.0).expect("identical bytes under every schedule");
}

#[test]
fn bad_operands_are_errors() {
    let be = emu::backend();
    let (a, b, c, d) = (be.alloc(10).unwrap(), be.alloc(10).unwrap(), be.alloc(10).unwrap(), be.alloc(10).unwrap());
    let p = AdamParams { len: 10, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 1 };
    assert!(be.adam(At::new(&a, 0), At::new(&b, 0), At::new(&c, 0), At::new(&d, 0), &p).is_ok());
    assert!(be.adam(At::new(&a, 1), At::new(&b, 0), At::new(&c, 0), At::new(&d, 0), &p).is_err());
    assert!(be.adam(At::new(&a, 0), At::new(&a, 0), At::new(&c, 0), At::new(&d, 0), &p).is_err());
    let empty = AdamParams { len: 0, ..p };
    assert!(be.adam(At::new(&a, 10), At::new(&b, 10), At::new(&c, 10), At::new(&d, 10), &empty).is_ok());
}
