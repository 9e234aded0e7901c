//! The training loop, one function per part of it: the loop over epochs
//! ([`train`]), one epoch's batches ([`run_epoch`]), one optimizer step
//! ([`step`]), and the end of an epoch ([`end_epoch`]: validation, the learning-rate
//! schedule, the log) with its checkpoints ([`checkpoint`]). Every function takes
//! this replica's [`Part`] of a data-parallel run (`super::replicas`): one replica
//! is rank 0 of 1, and then nothing is communicated.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::log::{self, MetricsLog};
use super::replicas::{all_reduce_grads, GroupShards, Part, StepReport};
use super::validate::{self, ValMetrics};
use super::{save, Run, Stop, TrainOptions, BEST_JACCARD, BEST_LOSS, LAST};
use crate::backend::{AdamParams, At, Backend, LossParts};
use crate::data::augment::AugmentParams;
use crate::data::batch::make_batch_part;
use crate::data::isic::{Dataset, Split};
use crate::error::{Error, Result};
use crate::model::unet::{Layer, LayerHook, NoHook, Pass};
use crate::model::Workspace;
use crate::nvtx::{self, Nvtx, Ranges};
use crate::output::{self, Sync};

/// What the loop works with, set up once.
struct Loop<'a, B: Backend> {
    be: &'a B,
    ds: &'a Dataset,
    split: &'a Split,
    o: &'a TrainOptions,
    ws: Workspace<B>,
    batch_size: usize,
    nvtx: Option<&'static Nvtx>,
    /// Raised by Ctrl-C.
    interrupted: &'a AtomicBool,
    /// Optimizer steps taken by this invocation (for `max_steps`).
    steps_here: u64,
    /// This replica's part of the run.
    part: &'a mut Part,
    /// The log (rank 0 only).
    log: Option<MetricsLog>,
    /// Rank 0 of several replicas: a workspace of the global batch for validation,
    /// which then scores exactly what one replica scores.
    val_ws: Option<Workspace<B>>,
}

/// How an epoch's batches ended.
enum EpochEnd {
    /// All batches done, in this much time.
    Done(Duration),
    /// Stopped in the middle (the state is saved in `last`).
    Stopped(Stop),
}

/// Trains until `o.epochs` are done, the time or step budget is spent, or Ctrl-C;
/// returns why it stopped and the last validation (rank 0's). `batch_size` is the
/// global batch; this replica's workspace holds its share.
#[allow(clippy::too_many_arguments)]
pub(super) fn train<B: Backend>(
    be: &B,
    run: &mut Run<B>,
    ds: &Dataset,
    split: &Split,
    o: &TrainOptions,
    batch_size: usize,
    interrupted: &AtomicBool,
    part: &mut Part,
) -> Result<(Stop, Option<ValMetrics>)> {
    let nvtx = if o.nvtx { Nvtx::attached()? } else { None };
    let (world, leader) = (part.world(), part.leader());
    let log = if leader { Some(MetricsLog::open(&o.out, run.state.epoch)?) } else { None };
    let size = run.state.size;
    let ws = run.model.workspace(be, batch_size / world, size, size)?;
    let val_ws = if leader && world > 1 { Some(run.model.workspace(be, batch_size, size, size)?) } else { None };
    let mut lp = Loop { be, ds, split, o, ws, batch_size, nvtx, interrupted, steps_here: 0, part, log, val_ws };
    let (started, mut last_val) = (Instant::now(), None);
    while run.state.epoch < o.epochs {
        // Rank 0's clock decides, so every replica stops at the same epoch.
        let out_of_time = o.time_limit.is_some_and(|t| started.elapsed() >= t);
        if lp.part.leaders(out_of_time as u8 as f64)? > 0.0 {
            return Ok((Stop::Budget, last_val));
        }
        match run_epoch(&mut lp, run)? {
            EpochEnd::Done(took) => last_val = end_epoch(&mut lp, run, took)?.or(last_val),
            EpochEnd::Stopped(stop) => return Ok((stop, last_val)),
        }
    }
    Ok((Stop::Finished, last_val))
}

/// The remaining batches of the current epoch (all of them, unless resumed in the
/// middle). Stops after a step when Ctrl-C was pressed or the step budget is spent,
/// saving the state to `last` first.
fn run_epoch<B: Backend>(lp: &mut Loop<'_, B>, run: &mut Run<B>) -> Result<EpochEnd> {
    let (o, epoch) = (lp.o, run.state.epoch);
    let batches = lp.split.train.len() / lp.batch_size;
    let order = shuffled(&lp.split.train, run.state.seed, epoch);
    let bar = log::progress(o.quiet || !lp.part.leader(), batches as u64, epoch, o.epochs);
    let local = lp.batch_size / lp.part.world();
    let mine = lp.part.rank() * local..(lp.part.rank() + 1) * local;
    bar.set_position(run.state.batch_in_epoch as u64);
    if run.state.batch_in_epoch == 0 {
        run.state.epoch_loss_sum = 0.0;
    }
    let (start, mut done_here) = (Instant::now(), 0usize);
    for b in run.state.batch_in_epoch as usize..batches {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(run.state.seed, epoch as u64, b as u64));
        let aug = AugmentParams::default();
        let ids = &order[b * lp.batch_size..(b + 1) * lp.batch_size];
        let batch = make_batch_part(lp.ds, ids, Some((&aug, &mut rng)), mine.clone())?;
        let loss = step(lp, run, &batch.input, &batch.target)?;
        if !loss.loss.is_finite() {
            bar.abandon();
            let last = o.out.join(LAST);
            return Err(Error::Diverged {
                loss: loss.loss,
                step: run.state.step,
                epoch: epoch + 1,
                batch: b + 1,
                checkpoint: last.is_file().then_some(last),
            });
        }
        run.state.batch_in_epoch = b as u32 + 1;
        run.state.epoch_loss_sum += loss.loss;
        lp.steps_here += 1;
        done_here += 1;
        let images_per_s = (done_here * lp.batch_size) as f64 / start.elapsed().as_secs_f64();
        let mean = run.state.epoch_loss_sum / run.state.batch_in_epoch as f64;
        bar.set_message(format!("loss {mean:.4}  {images_per_s:.1} img/s"));
        bar.inc(1);
        let budget = o.max_steps.is_some_and(|m| lp.steps_here >= m);
        // Ctrl-C reaches the replicas at different steps: stop together.
        if lp.part.any(lp.interrupted.load(Ordering::SeqCst))? || budget {
            bar.abandon();
            if lp.part.leader() {
                save(lp.be, run, &o.out.join(LAST))?;
            }
            return Ok(EpochEnd::Stopped(if budget { Stop::Budget } else { Stop::Interrupted }));
        }
    }
    bar.finish_and_clear();
    Ok(EpochEnd::Done(start.elapsed()))
}

/// One optimizer step on this replica's shard of a batch already normalised (NHWC
/// input and targets): forward, loss (its sums all-reduced), backward, the
/// gradients all-reduced, Adam. A non-finite loss takes no Adam step.
fn step<B: Backend>(lp: &mut Loop<'_, B>, run: &mut Run<B>, input: &[f32], target: &[f32]) -> Result<LossParts> {
    let (be, ws) = (lp.be, &lp.ws);
    let _r = nvtx::range(lp.nvtx, c"train_step");
    be.upload(&ws.acts, ws.plan.input.off, input)?;
    be.upload(&ws.target, 0, target)?;
    let mut ranges = Ranges { nvtx: lp.nvtx, inner: &mut NoHook };
    run.model.forward_profiled(be, ws, &mut ranges)?;
    let loss = run.model.backward_sharded(be, ws, false, &mut ranges, &mut GroupShards { part: lp.part })?;
    if !loss.loss.is_finite() {
        // The loss is the global batch's: every replica stops here.
        return Ok(loss);
    }
    run.state.step += 1;
    let m = &run.model;
    all_reduce_grads(be, &m.grads, m.table.len, lp.part)?;
    if let Some(obs) = &lp.o.observer {
        let mut grads = vec![0.0; if obs.grads { m.table.len } else { 0 }];
        be.download(&m.grads, 0, &mut grads)?;
        let (rank, world) = (lp.part.rank(), lp.part.world());
        let report = StepReport { rank, world, step: run.state.step, loss, grads: obs.grads.then_some(&grads[..]) };
        (obs.f)(&report)?;
    }
    let p = AdamParams {
        len: m.table.len,
        lr: run.state.lr as f32,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: run.state.step,
    };
    ranges.begin(Layer::Adam, Pass::Backward, 0);
    be.adam(At::new(&m.params, 0), At::new(&run.adam_m, 0), At::new(&run.adam_v, 0), At::new(&m.grads, 0), &p)?;
    ranges.end(Layer::Adam, Pass::Backward);
    Ok(loss)
}

/// The end of an epoch: validation, the plateau schedule, the log row and line, the
/// checkpoints and the curves, on rank 0, which tells the others the learning rate
/// (they return `None`).
fn end_epoch<B: Backend>(lp: &mut Loop<'_, B>, run: &mut Run<B>, took: Duration) -> Result<Option<ValMetrics>> {
    let batches = run.state.batch_in_epoch.max(1) as f64;
    let train_loss = run.state.epoch_loss_sum / batches;
    run.state.epoch += 1;
    run.state.batch_in_epoch = 0;
    run.state.epoch_loss_sum = 0.0;
    let Some(log) = lp.log.as_ref() else {
        run.state.lr = lp.part.leaders(run.state.lr)?;
        return Ok(None);
    };
    let val = validate::run(lp.be, &run.model, lp.ds, &lp.split.val, lp.val_ws.as_ref().unwrap_or(&lp.ws))?;
    let lr_before = run.state.lr;
    run.state.lr = lp.part.leaders(run.state.plateau.step(val.loss.loss, run.state.lr))?;
    log.append(&run.state, train_loss, lr_before, &val, took)?;
    if !lp.o.quiet {
        eprintln!("{}", log::epoch_line(&run.state, lp.o.epochs, train_loss, &val));
    }
    checkpoint(lp.be, run, &lp.o.out, &val)?;
    log.plot(&lp.o.out.join("curves.png"))?;
    Ok(Some(val))
}

/// Writes `last` and, when this epoch improved on them, the best checkpoints. The
/// bests are updated in the state first, so one download and one write of `last`
/// serve all three files: an improved best is a copy of it.
fn checkpoint<B: Backend>(be: &B, run: &mut Run<B>, out: &Path, val: &ValMetrics) -> Result<()> {
    let better_loss = val.loss.loss < run.state.best_val_loss;
    let better_jaccard = val.micro_jaccard() > run.state.best_jaccard || !out.join(BEST_JACCARD).exists();
    if better_loss {
        run.state.best_val_loss = val.loss.loss;
    }
    if better_jaccard {
        run.state.best_jaccard = run.state.best_jaccard.max(val.micro_jaccard());
    }
    let last = out.join(LAST);
    save(be, run, &last)?;
    for (better, name) in [(better_loss, BEST_LOSS), (better_jaccard, BEST_JACCARD)] {
        if better {
            output::copy(&last, &out.join(name), Sync::Durable)?;
        }
    }
    Ok(())
}

/// The training order of `epoch`: a permutation seeded by (seed, epoch).
fn shuffled(idx: &[usize], seed: u64, epoch: u32) -> Vec<usize> {
    let mut order = idx.to_vec();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(seed, epoch as u64, u64::MAX)));
    order
}

/// A well-mixed seed from three numbers (splitmix64 steps).
fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a ^ b.rotate_left(21) ^ c.rotate_left(42);
    for _ in 0..2 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}
