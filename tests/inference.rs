//! Lean inference: the inference plan (tensors share memory once their consumers
//! have run, no gradients) gives the same bits as the training plan, comes within a
//! few percent of the peak of live tensors, refuses a backward pass; and the
//! allocator's figures: nothing allocated per step once warmed up, inference at
//! 512x512 batch 16 within half of training at batch 8.

use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::emu::Emu;
use lesionseg::backend::{cuda::Kernels, Backend};
use lesionseg::model::{init::default_init, ParamTable, Plan, PlanKind, UNet16, UNetConfig, View};
use lesionseg::profile::{self, ProfileOptions};
use rand::{Rng, SeedableRng};

fn fetch<B: Backend>(be: &B, buf: &B::Buf, v: View) -> Vec<f32> {
    let mut out = vec![0.0; lesionseg::backend::view_len(v.n * v.h * v.w, v.c, v.pitch)];
    be.download(buf, v.off, &mut out).unwrap();
    out
}

#[test]
fn the_inference_plan_is_near_the_live_peak_at_the_papers_size() {
    let cfg = UNetConfig::scaled(1.0).unwrap();
    for n in [1, 8, 16] {
        let training = Plan::new(&cfg, n, 512, 512).unwrap();
        let inference = Plan::inference(&cfg, n, 512, 512).unwrap();
        let peak = Plan::live_peak(&cfg, n, 512, 512).unwrap();
        let gib = |e: usize| e as f64 * 4.0 / (1u64 << 30) as f64;
        println!(
            "512x512 batch {n:2}: training arena {:.2} GiB (x2 with gradients), inference arena {:.2} GiB, live peak {:.2} GiB",
            gib(training.len),
            gib(inference.len),
            gib(peak)
        );
        assert_eq!(inference.kind, PlanKind::Inference);
        assert!(inference.len >= peak, "an arena below the live peak would overlap live tensors");
        assert!(inference.len as f64 <= 1.05 * peak as f64, "packing {} vs live peak {peak}", inference.len);
        assert!(inference.len * 2 < training.len, "{} vs {}", inference.len, training.len);
    }
}

/// The forward pass on the inference arena, poisoned with NaN first, gives the
/// outputs of the training arena bit for bit: no tensor is overwritten while a
/// consumer still needs it, and nothing is read before it is written.
#[test]
fn the_inference_arena_gives_the_same_bits() {
    let cfg = UNetConfig::scaled(0.125).unwrap();
    let flat = default_init(&ParamTable::new(&cfg), 11);
    let (n, h, w) = (2, 64, 96);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let input: Vec<f32> = (0..n * h * w * 3).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let run = |model: &UNet16<Cpu>, ws: &lesionseg::model::Workspace<Cpu>| {
        Cpu.upload(&ws.acts, 0, &vec![f32::NAN; ws.plan.len]).unwrap();
        Cpu.upload(&ws.acts, ws.plan.input.off, &input).unwrap();
        model.forward(&Cpu, ws).unwrap();
        let p = &ws.plan;
        [fetch(&Cpu, &ws.acts, p.mask_logits), fetch(&Cpu, &ws.acts, p.cls_mid), fetch(&Cpu, &ws.acts, p.cls_last)]
    };
    let trained = UNet16::new(&Cpu, cfg, &flat).unwrap();
    let want = run(&trained, &trained.workspace(&Cpu, n, h, w).unwrap());
    let lean = UNet16::for_inference(&Cpu, cfg, &flat).unwrap();
    let ws = lean.inference_workspace(&Cpu, n, h, w).unwrap();
    assert!(ws.plan.len * 2 < trained.workspace(&Cpu, n, h, w).unwrap().plan.len);
    let got = run(&lean, &ws);
    for (name, (g, w)) in ["mask_logits", "cls_mid", "cls_last"].iter().zip(got.iter().zip(&want)) {
        assert!(g.iter().all(|v| v.is_finite()), "{name}: a NaN from the poisoned arena");
        assert!(g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} differs from the training plan's");
    }
    // No backward pass on an inference model or arena.
    let err = lean.backward(&Cpu, &ws, false).expect_err("backward on an inference model").to_string();
    assert!(err.contains("inference"), "{err}");
    let ws_train = trained.workspace(&Cpu, n, h, w).unwrap();
    assert!(lean.backward(&Cpu, &ws_train, false).is_err());
    assert!(trained.backward(&Cpu, &ws, false).is_err());
}

/// Once warmed up, neither a training step nor an inference pass allocates: every
/// op workspace is planned once and reused (the emulator runs the same launchers,
/// with the same workspaces, as the GPU).
#[test]
fn nothing_is_allocated_in_the_steady_state() {
    let o = ProfileOptions { size: 32, width: 0.125, warmup: 1, steps: 2, layers: false, ..Default::default() };
    let r = profile::run(&Kernels::new(Emu::new()), &o).unwrap();
    let (train, infer) = (r.memory.training.unwrap(), r.memory.inference.unwrap());
    assert_eq!(train.per_iteration, 0, "bytes allocated per training step");
    assert_eq!(infer.per_iteration, 0, "bytes allocated per inference pass");
    assert!(infer.peak < train.peak);
    assert!(r.loss.is_finite());
    assert!(Cpu.memory_stats().is_none());
}

/// The paper's model at 512x512 on the emulator's allocator (memory only: the
/// figures depend on the shapes alone): inference at batch 16 needs at most half of
/// what training needs at batch 8.
#[test]
fn inference_at_batch_16_fits_in_half_of_training_at_batch_8() {
    let peak = |batch| {
        let o = ProfileOptions {
            batch,
            size: 512,
            warmup: 1,
            steps: 1,
            layers: false,
            memory_only: true,
            ..Default::default()
        };
        let r = profile::run(&Kernels::new(Emu::memory_only()), &o).unwrap();
        (r.memory.inference.unwrap(), r.memory.training.unwrap())
    };
    let (infer16, _) = peak(16);
    let (_, train8) = peak(8);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!("inference batch 16: {:.2} GiB; training batch 8: {:.2} GiB", gib(infer16.peak), gib(train8.peak));
    assert!(2 * infer16.peak <= train8.peak, "{infer16:?} vs {train8:?}");
    assert_eq!((infer16.per_iteration, train8.per_iteration), (0, 0));
}
