//! Adam against a direct f64 transcription of PyTorch's formula over several steps,
//! one step checked against numbers worked out by hand, and the `Backend` trait path.

pub mod common;

use lesionseg::backend::cpu::{adam, Cpu};
use lesionseg::backend::{AdamParams, At, Backend};
use rand::Rng;

/// torch.optim.Adam's update with Python floats for the scalars, in f64:
/// m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
/// p ← p − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps).
fn reference_step(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], hp: (f64, f64, f64, f64), t: u64) {
    let (lr, b1, b2, eps) = hp;
    let (bc1, bc2) = (1.0 - b1.powf(t as f64), 1.0 - b2.powf(t as f64));
    for i in 0..p.len() {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
    }
}

/// The Python float a user would have written for `v` (0.9f32 → 0.9).
fn py(v: f32) -> f64 {
    v.to_string().parse().unwrap()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Gradients spanning seven decades (down to where eps matters) with both signs.
fn gradients(rng: &mut impl Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0) * 10f32.powf(rng.gen_range(-7.0..1.0))).collect()
}

/// Several steps on random data (over several rayon chunks, with an odd tail), the
/// f32 op against the f64 reference fed the same gradients. Parameters start near
/// zero so that the relative error of `p` measures the updates, not p's own rounding.
#[test]
fn steps_match_reference() {
    let mut rng = common::rng();
    let len = 3 * 65536 + 1234;
    let hps = [(1e-3f32, 0.9f32, 0.999f32, 1e-8f32), (3e-2, 0.8, 0.99, 1e-6)];
    for (lr, beta1, beta2, eps) in hps {
        let hp = (py(lr), py(beta1), py(beta2), py(eps));
        let mut p32: Vec<f32> = common::uniform(&mut rng, len).iter().map(|v| v * 1e-3).collect();
        let (mut m32, mut v32) = (vec![0.0f32; len], vec![0.0f32; len]);
        let (mut p64, mut m64, mut v64) = (widen(&p32), vec![0.0; len], vec![0.0; len]);
        let (mut pg, mut mg, mut vg) = (p64.clone(), m64.clone(), v64.clone());
        for step in 1..=6 {
            let g = gradients(&mut rng, len);
            let hpar = AdamParams { len, lr, beta1, beta2, eps, step };
            adam::adam(&mut p32, &mut m32, &mut v32, &g, &hpar);
            reference_step(&mut p64, &mut m64, &mut v64, &widen(&g), hp, step);
            let what = format!("adam step {step} lr {lr} betas ({beta1}, {beta2}) eps {eps}");
            common::assert_close(&format!("{what} param"), &p32, &narrow(&p64), 1e-6);
            common::assert_close(&format!("{what} m"), &m32, &narrow(&m64), 1e-6);
            common::assert_close(&format!("{what} v"), &v32, &narrow(&v64), 1e-6);

            // The generic op in f64 is the same formula up to rounding order.
            adam::adam(&mut pg, &mut mg, &mut vg, &widen(&g), &hpar);
            common::assert_close64(&format!("{what} f64 param"), &pg, &p64, 1e-12);
            common::assert_close64(&format!("{what} f64 v"), &vg, &v64, 1e-12);
        }
    }
}

/// One step worked by hand. p = 0.5, m = 0.1, v = 0.01, g = −0.2, t = 3,
/// lr = 0.01, β1 = 0.9, β2 = 0.999, eps = 1e-8:
/// - m = 0.9·0.1 + 0.1·(−0.2) = 0.07
/// - v = 0.999·0.01 + 0.001·0.04 = 0.01003
/// - 1−β1³ = 1 − 0.729 = 0.271; 1−β2³ = 1 − 0.997002999 = 0.002997001
/// - denom = sqrt(0.01003)/sqrt(0.002997001) + 1e-8 = 0.1001498877/0.0547448719 + 1e-8
///   = 1.8293930605
/// - p = 0.5 − (0.01/0.271)·0.07/1.8293930605 = 0.5 − 0.0369003690·0.0382640..
///   = 0.5 − 0.0014119578 = 0.4985880422
#[test]
fn one_step_by_hand() {
    let hp = AdamParams { len: 1, lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 3 };
    let (mut p, mut m, mut v) = ([0.5f32], [0.1f32], [0.01f32]);
    adam::adam(&mut p, &mut m, &mut v, &[-0.2], &hp);
    let close = |got: f32, want: f64| (got as f64 - want).abs() <= 1e-6 * want.abs();
    assert!(close(m[0], 0.07), "m {}", m[0]);
    assert!(close(v[0], 0.01003), "v {}", v[0]);
    assert!(close(p[0], 0.498_588_042_2), "p {}", p[0]);

    let (mut p, mut m, mut v) = ([0.5f64], [0.1f64], [0.01f64]);
    adam::adam(&mut p, &mut m, &mut v, &[-0.2], &hp);
    assert!((p[0] - 0.498_588_042_2).abs() < 1e-10, "f64 p {}", p[0]);
}

/// Adam once through the `Backend` trait (all four operands in one buffer), against
/// a direct call; then an operand past the buffer's end is an `Err`.
#[test]
fn backend_trait_path() {
    let mut rng = common::rng();
    let len = 1001;
    let host = common::uniform(&mut rng, 4 * len + 2);
    let (p_off, m_off, v_off, g_off) = (2, 2 + len, 2 + 2 * len, 2 + 3 * len);
    let mut want = host.clone();
    // v must be non-negative, as it always is in training.
    for x in &mut want[v_off..g_off] {
        *x = x.abs();
    }
    let cpu = Cpu;
    let buf = cpu.alloc(host.len()).unwrap();
    cpu.upload(&buf, 0, &want).unwrap();
    let hp = AdamParams { len, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 7 };
    let at = |off| At::<Cpu>::new(&buf, off);
    cpu.adam(at(p_off), at(m_off), at(v_off), at(g_off), &hp).unwrap();
    let mut got = vec![0.0; host.len()];
    cpu.download(&buf, 0, &mut got).unwrap();

    let (head, g) = want.split_at_mut(g_off);
    let (head, v) = head.split_at_mut(v_off);
    let (head, m) = head.split_at_mut(m_off);
    adam::adam(&mut head[p_off..], m, v, &g[..len], &hp);
    assert_eq!(got, want);

    assert!(cpu.adam(at(p_off), at(m_off), at(v_off), at(g_off + 3), &hp).is_err());
    assert!(cpu.adam(at(host.len()), at(m_off), at(v_off), at(g_off), &hp).is_err());
}
