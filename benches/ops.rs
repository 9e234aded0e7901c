//! Criterion benchmarks of every op of the model, forward and backward, at the
//! model's real layer shapes, and of the whole training step and inference.
//!
//! Shapes come from the model's own activation plan and parameter table (pitches
//! included: an encoder block's last conv writes into the wider concatenated
//! tensor), one benchmark per distinct shape, named after the first layer that has
//! it (`enc3_2`, `dec4_conv`, …).
//!
//! - default (`cargo bench --bench ops`): every distinct shape at 256x256, batch 1;
//!   a training step (batch 1, 256x256, width 1) and inference (batch 1 and 16).
//!   Short measurements (10 samples, flat sampling): about 5 minutes on 2 cores.
//! - `LESIONSEG_BENCH=full`: the paper's 512x512 at batch 1 and 8; training step at
//!   512x512 batch 1; inference at batch 1 and 16. Hours on a 2-core CPU: meant
//!   for bigger machines.
//!
//! Throughput: convolutions report `Elements` = FLOPs (2 per multiply-accumulate),
//! so criterion's "elem/s" reads as FLOP/s; pools, loss and Adam are memory-bound
//! and report the bytes they must move at least (each operand read or written
//! once), so "B/s" is their effective bandwidth.
//!
//! Every benchmark goes through the [`Backend`] trait and is timed with its marks
//! ([`Backend::mark`]): criterion's iterations run back to back between two marks,
//! which on a GPU are CUDA events, so the `cuda_*` groups time the GPU's work, not
//! the host's launches. They run when GPU 0 is usable (`cuda benchmarks: SKIPPED`
//! and the reason otherwise): every op at 512x512 batch 1 and 8, the training step
//! at batch 8, inference at batch 1 and 16. `cargo bench --bench ops -- cuda_`
//! runs only those; the `cuda-bf16_*` groups (`-- cuda-bf16_`) time the convolutions,
//! deconvolutions, training step and inference with `Precision::Bf16`.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, Bencher, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::cuda::Precision;
use lesionseg::backend::{
    AdamParams, At, Backend, Conv2dParams, DeconvParams, GlobalPoolParams, GradIn, LossParams, MaxPoolParams,
};
use lesionseg::model::plan::BLOCK_CONVS;
use lesionseg::model::unet::{Layer, NoHook};
use lesionseg::model::{ParamKind, ParamTable, Plan, UNetConfig, View};
use lesionseg::profile::{Inference, Trainer};
use rand::{Rng, SeedableRng};

/// One op launch of the model, with the shape it has there.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Conv(Conv2dParams),
    Deconv(DeconvParams),
    MaxPool(MaxPoolParams),
    GlobalAvg(GlobalPoolParams),
    GlobalMax(GlobalPoolParams),
    Loss(LossParams),
    Adam(usize),
}

/// A batch shape to benchmark at.
#[derive(Clone, Copy)]
struct Scale {
    n: usize,
    size: usize,
}

impl Scale {
    fn label(&self) -> String {
        format!("{}x{}_n{}", self.size, self.size, self.n)
    }
}

fn full() -> bool {
    std::env::var("LESIONSEG_BENCH").is_ok_and(|v| v == "full")
}

/// Every op launch of UNet16 at `s`, in forward order, from the plan and the
/// parameter table (the wiring of `model::unet`).
fn model_ops(cfg: &UNetConfig, s: Scale) -> Vec<(Layer, Op)> {
    let p = Plan::new(cfg, s.n, s.size, s.size).expect("benchmark sizes are multiples of 32");
    let t = ParamTable::new(cfg);
    let conv = |y: View, x: View, w: &ParamKind, relu: bool| {
        let ParamKind::Conv { r, c, k } = *w else { unreachable!("conv layer without a conv weight") };
        Op::Conv(Conv2dParams { n: x.n, h: x.h, w: x.w, c, k, r, relu, x_pitch: x.pitch, y_pitch: y.pitch })
    };
    let gpool = |x: View| GlobalPoolParams { n: x.n, h: x.h, w: x.w, c: x.c, x_pitch: x.pitch };
    let mut ops = Vec::new();
    let (mut x, mut i) = (p.input, 0);
    for (b, &convs) in BLOCK_CONVS.iter().enumerate() {
        for j in 0..convs {
            ops.push((Layer::Enc(b, j), conv(p.enc[i], x, &t.encoder[i].weight.kind, true)));
            (x, i) = (p.enc[i], i + 1);
        }
        let y = p.pool[b];
        ops.push((
            Layer::Pool(b),
            Op::MaxPool(MaxPoolParams { n: x.n, h: x.h, w: x.w, c: x.c, x_pitch: x.pitch, y_pitch: y.pitch }),
        ));
        x = y;
    }
    for (d, (cw, dw)) in t.decoder.iter().enumerate() {
        let input = if d == 0 { p.pool[4] } else { p.cat[5 - d] };
        ops.push((Layer::DecConv(d), conv(p.dec_conv[d], input, &cw.weight.kind, true)));
        let (xv, yv) = (p.dec_conv[d], p.dec_up[d]);
        let ParamKind::Deconv { c, k } = dw.weight.kind else { unreachable!("deconv layer without a deconv weight") };
        let dp = DeconvParams { n: xv.n, h: xv.h, w: xv.w, c, k, relu: true, x_pitch: xv.pitch, y_pitch: yv.pitch };
        ops.push((Layer::DecUp(d), Op::Deconv(dp)));
        if d == 0 {
            ops.push((Layer::HeadMid, conv(p.head_map, p.dec_up[0], &t.center_head.weight.kind, false)));
            ops.push((Layer::HeadMid, Op::GlobalAvg(gpool(p.head_map))));
        }
    }
    ops.push((Layer::Dec1, conv(p.dec1, p.cat[0], &t.dec1.weight.kind, true)));
    ops.push((Layer::Final, conv(p.mask_logits, p.dec1, &t.final_conv.weight.kind, false)));
    ops.push((Layer::HeadLast, Op::GlobalMax(gpool(p.mask_logits))));
    let m = p.mask_logits;
    ops.push((Layer::Loss, Op::Loss(LossParams { n: m.n, h: m.h, w: m.w, k: m.c })));
    ops.push((Layer::Adam, Op::Adam(t.len)));
    ops
}

/// The first layer of each distinct op shape, in forward order.
fn distinct(ops: Vec<(Layer, Op)>) -> Vec<(Layer, Op)> {
    let mut seen: Vec<(Layer, Op)> = Vec::new();
    for (l, op) in ops {
        if !seen.iter().any(|(_, o)| *o == op) {
            seen.push((l, op));
        }
    }
    seen
}

/// A buffer of `len` values uniform in ±1 (seeded: every run benchmarks the same data).
fn random<B: Backend>(be: &B, len: usize, seed: u64) -> B::Buf {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let host: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let buf = be.alloc(len).expect("benchmark buffer");
    be.upload(&buf, 0, &host).expect("upload");
    buf
}

/// Times criterion's iterations of `op` run back to back between two backend
/// marks: CUDA events on a GPU (the time the GPU spent, with no host round trip
/// per iteration), the wall clock on the CPU.
fn timed<B: Backend>(bch: &mut Bencher<'_, WallTime>, be: &B, mut op: impl FnMut()) {
    bch.iter_custom(|iters| {
        let start = be.mark().expect("timing mark");
        for _ in 0..iters {
            op();
        }
        let end = be.mark().expect("timing mark");
        Duration::from_secs_f64(be.elapsed_ms(&start, &end).expect("reading the timing marks") / 1e3)
    })
}

/// Operand at the start of `buf`.
fn at<B: Backend>(buf: &B::Buf) -> At<'_, B> {
    At::new(buf, 0)
}

/// The group `{dev}_{name}`: flat sampling (every op here takes milliseconds or more).
fn group<'a>(c: &'a mut Criterion, dev: &str, name: &str, tp: Throughput) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(format!("{dev}_{name}"));
    g.sampling_mode(SamplingMode::Flat).throughput(tp);
    g
}

/// Forward and backward of one op, each in its own benchmark group.
fn bench_op<B: Backend>(c: &mut Criterion, be: &B, dev: &str, layer: Layer, op: &Op, scale: &str) {
    let id = BenchmarkId::new(layer.to_string(), scale);
    let f4 = 4u64; // bytes per f32
    match *op {
        Op::Conv(p) => {
            let (xl, yl) = (p.n * p.h * p.w * p.x_pitch, p.n * p.h * p.w * p.y_pitch);
            let (x, y, w, b) =
                (random(be, xl, 1), random(be, yl, 2), random(be, p.weight_len(), 3), random(be, p.k, 4));
            let (dx, dy, dw, db) =
                (random(be, xl, 5), random(be, yl, 6), be.alloc(p.weight_len()).unwrap(), be.alloc(p.k).unwrap());
            let flops = 2 * p.macs() as u64;
            let kind = if p.r == 1 { "conv1x1" } else { "conv3x3" };
            let mut g = group(c, dev, &format!("{kind}_forward"), Throughput::Elements(flops));
            g.bench_function(id.clone(), |bch| {
                timed(bch, be, || {
                    be.conv2d_forward(at(&y), at(&x), at(&w), at(&b), &p).unwrap();
                })
            });
            g.finish();
            // The network input needs no gradient: its conv computes only dw (as in training).
            let skip = p.c == 3;
            let mut g =
                group(c, dev, &format!("{kind}_backward"), Throughput::Elements(if skip { flops } else { 2 * flops }));
            g.bench_function(id, |bch| {
                timed(bch, be, || {
                    let dxg = if skip { GradIn::Skip } else { GradIn::Write(at(&dx)) };
                    be.conv2d_backward(dxg, at(&dw), at(&db), at(&dy), at(&y), at(&x), at(&w), &p).unwrap();
                })
            });
            g.finish();
        }
        Op::Deconv(p) => {
            let (xl, yl) = (p.n * p.h * p.w * p.x_pitch, p.n * p.out_h() * p.out_w() * p.y_pitch);
            let (x, y, w, b) =
                (random(be, xl, 1), random(be, yl, 2), random(be, p.weight_len(), 3), random(be, p.k, 4));
            let (dx, dy, dw, db) =
                (random(be, xl, 5), random(be, yl, 6), be.alloc(p.weight_len()).unwrap(), be.alloc(p.k).unwrap());
            let flops = 2 * p.macs() as u64;
            let mut g = group(c, dev, "deconv_forward", Throughput::Elements(flops));
            g.bench_function(id.clone(), |bch| {
                timed(bch, be, || {
                    be.deconv_forward(at(&y), at(&x), at(&w), at(&b), &p).unwrap();
                })
            });
            g.finish();
            let mut g = group(c, dev, "deconv_backward", Throughput::Elements(2 * flops));
            g.bench_function(id, |bch| {
                timed(bch, be, || {
                    be.deconv_backward(GradIn::Write(at(&dx)), at(&dw), at(&db), at(&dy), at(&y), at(&x), at(&w), &p)
                        .unwrap();
                })
            });
            g.finish();
        }
        Op::MaxPool(p) => {
            let (xl, yl) = (p.n * p.h * p.w * p.x_pitch, p.n * p.out_h() * p.out_w() * p.y_pitch);
            let (x, y, dx, dy) = (random(be, xl, 1), random(be, yl, 2), random(be, xl, 3), random(be, yl, 4));
            let elems = (p.n * p.h * p.w * p.c) as u64;
            // Forward reads x and writes a quarter of it; backward reads x and dy
            // and adds into dx (read + write).
            let mut g = group(c, dev, "maxpool_forward", Throughput::Bytes(f4 * (elems + elems / 4)));
            g.bench_function(id.clone(), |bch| {
                timed(bch, be, || {
                    be.maxpool_forward(at(&y), at(&x), &p).unwrap();
                })
            });
            g.finish();
            let mut g = group(c, dev, "maxpool_backward", Throughput::Bytes(f4 * (3 * elems + elems / 4)));
            g.bench_function(id, |bch| {
                timed(bch, be, || {
                    be.maxpool_backward(at(&dx), at(&dy), at(&x), &p).unwrap();
                })
            });
            g.finish();
        }
        Op::GlobalAvg(p) | Op::GlobalMax(p) => {
            let avg = matches!(op, Op::GlobalAvg(_));
            let xl = p.n * p.h * p.w * p.x_pitch;
            let (x, dx, y, dy) =
                (random(be, xl, 1), random(be, xl, 2), random(be, p.n * p.c, 3), random(be, p.n * p.c, 4));
            let bytes = f4 * (p.n * p.h * p.w * p.c) as u64;
            let name = if avg { "global_avg" } else { "global_max" };
            let mut g = group(c, dev, &format!("{name}_forward"), Throughput::Bytes(bytes));
            g.bench_function(id.clone(), |bch| {
                timed(bch, be, || {
                    if avg {
                        be.global_avg_forward(at(&y), at(&x), &p).unwrap();
                    } else {
                        be.global_max_forward(at(&y), at(&x), &p).unwrap();
                    }
                })
            });
            g.finish();
            // Average: writes dx; max: reads x again to find each argmax.
            let mut g = group(c, dev, &format!("{name}_backward"), Throughput::Bytes(bytes));
            g.bench_function(id, |bch| {
                timed(bch, be, || {
                    if avg {
                        be.global_avg_backward(at(&dx), at(&dy), &p).unwrap();
                    } else {
                        be.global_max_backward(at(&dx), at(&dy), at(&x), &p).unwrap();
                    }
                })
            });
            g.finish();
        }
        Op::Loss(p) => {
            let (masks, heads) = (p.n * p.h * p.w * p.k, p.n * p.k);
            let (logits, mid, last) = (random(be, masks, 1), random(be, heads, 2), random(be, heads, 3));
            let (dm, dmid, dlast) = (be.alloc(masks).unwrap(), be.alloc(heads).unwrap(), be.alloc(heads).unwrap());
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
            let t: Vec<f32> = (0..masks).map(|_| f32::from(rng.gen_bool(0.3))).collect();
            let target = be.alloc(masks).unwrap();
            be.upload(&target, 0, &t).unwrap();
            // Reads logits and targets, writes their gradient: one op, value and gradient.
            let mut g = group(c, dev, "loss", Throughput::Bytes(3 * f4 * masks as u64));
            g.bench_function(id, |bch| {
                timed(bch, be, || {
                    be.loss(at(&dm), at(&dmid), at(&dlast), at(&logits), at(&mid), at(&last), at(&target), &p).unwrap();
                })
            });
            g.finish();
        }
        Op::Adam(len) => {
            let (param, grad) = (random(be, len, 1), random(be, len, 2));
            let (m, v) = (be.alloc(len).unwrap(), be.alloc(len).unwrap());
            let mut step = 0;
            // Reads parameter, gradient and both moments, writes three of them back.
            let mut g = group(c, dev, "adam", Throughput::Bytes(7 * f4 * len as u64));
            g.bench_function(id, |bch| {
                timed(bch, be, || {
                    step += 1;
                    let p = AdamParams { len, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, step };
                    be.adam(at(&param), at(&m), at(&v), at(&grad), &p).unwrap();
                })
            });
            g.finish();
        }
    }
}

/// Every distinct op shape of the paper's model at each scale, forward and backward.
fn op_benches<B: Backend>(c: &mut Criterion, be: &B, dev: &str, scales: &[Scale]) {
    let cfg = UNetConfig::paper();
    for s in scales {
        for (layer, op) in distinct(model_ops(&cfg, *s)) {
            bench_op(c, be, dev, layer, &op, &s.label());
        }
    }
}

/// Multiply-accumulates of a forward pass and of a training step at `s`: each conv
/// and deconv once forward, twice backward (input and weight gradients), except
/// the first conv, whose input (the image) needs no gradient.
fn model_macs(s: Scale) -> (u64, u64) {
    let (mut fwd, mut bwd) = (0, 0);
    for (layer, op) in model_ops(&UNetConfig::paper(), s) {
        let macs = match op {
            Op::Conv(p) => p.macs() as u64,
            Op::Deconv(p) => p.macs() as u64,
            _ => 0,
        };
        fwd += macs;
        bwd += if layer == Layer::Enc(0, 0) { macs } else { 2 * macs };
    }
    (fwd, fwd + bwd)
}

/// A training step (forward, loss, backward, Adam) at each of `train` and an
/// inference pass at each of `infer`, width 1, random weights and data, measured
/// for `secs` (steps) and half that (inference). The model is built on first use,
/// so a filtered-out benchmark costs nothing.
fn model_benches<B: Backend>(c: &mut Criterion, be: &B, dev: &str, train: &[Scale], infer: &[Scale], secs: u64) {
    let trainer = |s: Scale| Trainer::new(be, s.n, s.size, 1.0, 7).expect("trainer");
    let mut g = c.benchmark_group(format!("{dev}_train_step"));
    g.sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(secs));
    for &s in train {
        let mut t = None;
        g.throughput(Throughput::Elements(2 * model_macs(s).1));
        g.bench_function(BenchmarkId::from_parameter(s.label()), |bch| {
            let t = t.get_or_insert_with(|| trainer(s));
            timed(bch, be, || {
                t.train_step(be, &mut NoHook).unwrap();
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group(format!("{dev}_inference"));
    g.sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(secs.div_ceil(2)));
    for &s in infer {
        let mut t = None;
        g.throughput(Throughput::Elements(2 * model_macs(s).0));
        g.bench_function(BenchmarkId::from_parameter(s.label()), |bch| {
            // As `predict` runs it: no gradients, the shared inference arena.
            let t = t.get_or_insert_with(|| Inference::new(be, s.n, s.size, 1.0, 7).expect("inference"));
            timed(bch, be, || {
                t.infer(be, &mut NoHook).unwrap();
            })
        });
    }
    g.finish();
}

fn cpu(c: &mut Criterion) {
    let (n1, n8, n16) = (Scale { n: 1, size: 512 }, Scale { n: 8, size: 512 }, Scale { n: 16, size: 512 });
    let small = Scale { n: 1, size: 256 };
    if full() {
        op_benches(c, &Cpu, "cpu", &[n1, n8]);
        model_benches(c, &Cpu, "cpu", &[n1], &[n1, n16], 20);
    } else {
        op_benches(c, &Cpu, "cpu", &[small]);
        model_benches(c, &Cpu, "cpu", &[small], &[small, Scale { n: 16, size: 256 }], 20);
    }
}

/// The same benchmarks on GPU 0, at the paper's sizes: every op at 512x512 batch 1
/// and 8, a training step at batch 8 and inference at batch 1 and 16. Without a
/// usable GPU it says why and benchmarks nothing (with `LESIONSEG_REQUIRE_GPU=1`,
/// as `scripts/gpu-check.sh` sets, that is a failure instead).
fn cuda(c: &mut Criterion) {
    let Some(mut gpu) = lesionseg::device::bench_gpu("cuda benchmarks") else { return };
    println!("cuda benchmarks on {}", gpu.describe());
    let (n1, n8, n16) = (Scale { n: 1, size: 512 }, Scale { n: 8, size: 512 }, Scale { n: 16, size: 512 });
    op_benches(c, &gpu, "cuda", &[n1, n8]);
    // A step takes tens of milliseconds here: 6 s is a hundred or more of them.
    model_benches(c, &gpu, "cuda", &[n8], &[n1, n16], 6);
    // The same with bf16 tensor-core convolutions (`cuda-bf16_*`; `-- cuda_` leaves them
    // out, `-- cuda-bf16_` runs only them): the ops bf16 changes, at batch 8.
    gpu.precision = Precision::Bf16;
    for (layer, op) in distinct(model_ops(&UNetConfig::paper(), n8)) {
        if matches!(op, Op::Conv(_) | Op::Deconv(_)) {
            bench_op(c, &gpu, "cuda-bf16", layer, &op, &n8.label());
        }
    }
    model_benches(c, &gpu, "cuda-bf16", &[n8], &[n1, n16], 6);
}

fn config() -> Criterion {
    // Ten flat samples of ~1 s each op: the spread criterion reports is what two
    // noisy cores allow; compare runs made back to back.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = cpu, cuda
}
criterion_main!(benches);
