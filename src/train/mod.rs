//! The `train` command: Adam (lr 1e-3), batch 8, ReduceLROnPlateau (0.8, patience
//! 5) on validation loss, the paper's augmentations; per-epoch validation with
//! loss components, per-attribute Jaccard, the official score and both heads' AUC;
//! checkpoints best-by-loss, best-by-Jaccard and last; exact `--resume`; metrics
//! as CSV and JSONL plus a PNG plot; a progress bar; Ctrl-C saves and exits; a NaN
//! loss stops with the last good checkpoint kept.
//!
//! Every source of randomness is derived from `(seed, epoch, batch)`, so resuming
//! from a checkpoint replays exactly the batches and augmentations an uninterrupted
//! run would have seen.

pub mod checkpoint;
mod log;
pub mod schedule;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::backend::{AdamParams, At, Backend, LossParts};
use crate::data::augment::AugmentParams;
use crate::data::batch::make_batch;
use crate::data::cache::{self, LoadOptions};
use crate::data::isic;
use crate::error::{Error, Result};
use crate::model::unet::{Layer, LayerHook, NoHook, Pass};
use crate::model::{init::default_init, ParamTable, UNet16, UNetConfig, Workspace};
use crate::nvtx::{self, Nvtx, Ranges};
use checkpoint::TrainState;
use schedule::Plateau;
pub use validate::ValMetrics;

/// What `lesionseg train` was asked to do.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// ISIC-layout data folder.
    pub data: PathBuf,
    /// Run directory (checkpoints, metrics, plot, split).
    pub out: PathBuf,
    /// Total epochs (a resumed run continues up to this number).
    pub epochs: u32,
    /// Images per step.
    pub batch_size: usize,
    /// Training image size (square, a multiple of 32).
    pub size: usize,
    /// Learning rate: of a fresh run (default 1e-3), or, with `resume`, replacing
    /// the checkpoint's (e.g. to continue more gently after a divergence).
    pub lr: Option<f64>,
    /// Channel width factor of a model trained from scratch (1 = the paper's).
    pub width: f64,
    /// torchvision VGG16 safetensors for the encoder.
    pub init: Option<PathBuf>,
    /// Continue from `out/last.safetensors`.
    pub resume: bool,
    /// Seed of initialisation, split, shuffles and augmentation.
    pub seed: u64,
    /// Leave out unreadable samples instead of failing.
    pub skip_bad: bool,
    /// `ID,Split` CSV; otherwise a seeded 80/20 split.
    pub split_csv: Option<PathBuf>,
    /// Stop starting new epochs once this much time has passed.
    pub time_limit: Option<Duration>,
    /// Stop after this many optimizer steps in this invocation (tests).
    pub max_steps: Option<u64>,
    /// No progress bar (tests, logs).
    pub quiet: bool,
    /// NVTX ranges around each step and each layer pass (see [`crate::nvtx`]).
    pub nvtx: bool,
}

impl TrainOptions {
    /// The paper's recipe for `data` → `out`.
    pub fn new(data: PathBuf, out: PathBuf) -> Self {
        TrainOptions {
            data,
            out,
            epochs: 100,
            batch_size: 8,
            size: 512,
            lr: None,
            width: 1.0,
            init: None,
            resume: false,
            seed: 0,
            skip_bad: false,
            split_csv: None,
            time_limit: None,
            max_steps: None,
            quiet: false,
            nvtx: false,
        }
    }
}

/// How a training run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// All epochs done.
    Finished,
    /// Ctrl-C: the last checkpoint holds the state to resume.
    Interrupted,
    /// `time_limit` or `max_steps` reached.
    Budget,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// Why it stopped.
    pub stop: Stop,
    /// The final training state.
    pub state: TrainState,
    /// The last validation.
    pub last_val: Option<ValMetrics>,
    /// Training and validation samples.
    pub samples: (usize, usize),
    /// Samples left out by `skip_bad`.
    pub skipped: usize,
    /// Where the checkpoints are.
    pub out: PathBuf,
}

/// The checkpoint names in a run directory.
pub const LAST: &str = "last.safetensors";
/// Best validation loss.
pub const BEST_LOSS: &str = "best_loss.safetensors";
/// Best validation micro Jaccard.
pub const BEST_JACCARD: &str = "best_jaccard.safetensors";

/// Raised by Ctrl-C; the loop polls it after every step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler once per process. A second Ctrl-C (while the
/// checkpoint is being written, say) exits at once, as a user expects.
fn catch_ctrl_c() -> &'static AtomicBool {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    });
    &INTERRUPTED
}

/// The model, optimizer buffers and state of a run.
struct Run<B: Backend> {
    model: UNet16<B>,
    adam_m: B::Buf,
    adam_v: B::Buf,
    state: TrainState,
}

/// Trains on `be` as `o` says.
pub fn run<B: Backend>(be: &B, o: &TrainOptions) -> Result<TrainSummary> {
    crate::model::plan::check_input_size(o.batch_size.max(1), o.size, o.size)
        .map_err(|e| Error::Config(format!("--size {}: {e}", o.size)))?;
    if o.batch_size == 0 {
        return Err(Error::Config("--batch-size must be at least 1".into()));
    }
    let nvtx = if o.nvtx { Nvtx::attached()? } else { None };
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let load_opts = LoadOptions { skip_bad: o.skip_bad, progress: !o.quiet, ..LoadOptions::default() };
    let (ds, report) = cache::load(&o.data, o.size, &load_opts)?;
    if !o.quiet {
        eprintln!("{}", report.summary());
    }
    let split = match &o.split_csv {
        Some(csv) => isic::read_split_csv(csv, &ds.ids)?,
        None => isic::split_seeded(ds.len(), 0.2, o.seed),
    };
    isic::write_split_csv(&o.out.join("split.csv"), &ds.ids, &split)?;
    let (train_idx, val_idx) = (split.train, split.val);
    if val_idx.is_empty() {
        return Err(Error::Config("no validation images: add data or give a split with some `val` rows".into()));
    }
    if train_idx.len() < o.batch_size {
        return Err(Error::Config(format!(
            "{} training images, fewer than one batch of {}; lower --batch-size or add data",
            train_idx.len(),
            o.batch_size
        )));
    }
    let mut run = start(be, o)?;
    let log = log::MetricsLog::open(&o.out, run.state.epoch)?;
    let flag = catch_ctrl_c();
    let started = Instant::now();
    let mut steps_here = 0u64;
    let mut last_val = None;
    let batches = train_idx.len() / o.batch_size;
    let ws = run.model.workspace(be, o.batch_size, o.size, o.size)?;
    let mut stop = Stop::Finished;
    'epochs: while run.state.epoch < o.epochs {
        if o.time_limit.is_some_and(|t| started.elapsed() >= t) {
            stop = Stop::Budget;
            break;
        }
        let epoch = run.state.epoch;
        let order = shuffled(&train_idx, o.seed, epoch);
        let bar = log::progress(o.quiet, batches as u64, epoch, o.epochs);
        bar.set_position(run.state.batch_in_epoch as u64);
        let (mut loss_sum, mut loss_n, epoch_start) = (0.0, 0usize, Instant::now());
        for b in run.state.batch_in_epoch as usize..batches {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(o.seed, epoch as u64, b as u64));
            let aug = AugmentParams::default();
            let batch = make_batch(&ds, &order[b * o.batch_size..(b + 1) * o.batch_size], Some((&aug, &mut rng)))?;
            let loss = train_step(be, &mut run, &ws, &batch.input, &batch.target, nvtx)?;
            if !loss.loss.is_finite() {
                bar.abandon();
                return Err(Error::Config(format!(
                    "training stopped: the loss became {} at step {} (epoch {}, batch {}); the last good \
                     checkpoint is {} — resume from it (--resume) with a lower --lr",
                    loss.loss,
                    run.state.step,
                    epoch + 1,
                    b + 1,
                    o.out.join(LAST).display()
                )));
            }
            run.state.batch_in_epoch = b as u32 + 1;
            steps_here += 1;
            loss_sum += loss.loss;
            loss_n += 1;
            let ips = (loss_n * o.batch_size) as f64 / epoch_start.elapsed().as_secs_f64();
            bar.set_message(format!("loss {:.4}  {ips:.1} img/s", loss_sum / loss_n as f64));
            bar.inc(1);
            let budget = o.max_steps.is_some_and(|m| steps_here >= m);
            if flag.load(Ordering::SeqCst) || budget {
                bar.abandon();
                save(be, &run, &o.out.join(LAST))?;
                stop = if budget { Stop::Budget } else { Stop::Interrupted };
                break 'epochs;
            }
        }
        bar.finish_and_clear();
        run.state.epoch += 1;
        run.state.batch_in_epoch = 0;
        let val = validate::run(be, &run.model, &ds, &val_idx, &ws)?;
        let lr_before = run.state.lr;
        run.state.lr = run.state.plateau.step(val.loss.loss, run.state.lr);
        let train_loss = if loss_n > 0 { loss_sum / loss_n as f64 } else { f64::NAN };
        log.append(&run.state, train_loss, lr_before, &val, epoch_start.elapsed())?;
        if !o.quiet {
            eprintln!("{}", log::epoch_line(&run.state, o.epochs, train_loss, &val));
        }
        // The bests are updated first, so one download and one write of `last` serve
        // all three files: an improved best is a copy of it.
        let better_loss = val.loss.loss < run.state.best_val_loss;
        let better_jaccard = val.micro_jaccard() > run.state.best_jaccard || !o.out.join(BEST_JACCARD).exists();
        if better_loss {
            run.state.best_val_loss = val.loss.loss;
        }
        if better_jaccard {
            run.state.best_jaccard = run.state.best_jaccard.max(val.micro_jaccard());
        }
        let last = o.out.join(LAST);
        save(be, &run, &last)?;
        for (better, name) in [(better_loss, BEST_LOSS), (better_jaccard, BEST_JACCARD)] {
            if better {
                copy_atomic(&last, &o.out.join(name))?;
            }
        }
        log.plot(&o.out.join("curves.png"))?;
        last_val = Some(val);
    }
    Ok(TrainSummary {
        stop,
        state: run.state,
        last_val,
        samples: (train_idx.len(), val_idx.len()),
        skipped: report.skipped.len(),
        out: o.out.clone(),
    })
}

/// A fresh run (initialised, optionally from VGG16) or the state in `out/last`.
fn start<B: Backend>(be: &B, o: &TrainOptions) -> Result<Run<B>> {
    let last = o.out.join(LAST);
    if o.resume {
        let ck = checkpoint::load(&last).map_err(|e| match e {
            Error::Io { .. } => Error::Config(format!("--resume: no checkpoint at {}", last.display())),
            e => e,
        })?;
        let state = ck.state.ok_or_else(|| Error::Config(format!("{} has no training state", last.display())))?;
        if state.size != o.size {
            return Err(Error::Config(format!(
                "--resume: the checkpoint was trained at --size {}, not {}",
                state.size, o.size
            )));
        }
        let model = UNet16::new(be, ck.cfg, &ck.params)?;
        let (adam_m, adam_v) = (be.alloc(model.table.len)?, be.alloc(model.table.len)?);
        be.upload(&adam_m, 0, ck.adam_m.as_deref().unwrap_or(&vec![0.0; model.table.len]))?;
        be.upload(&adam_v, 0, ck.adam_v.as_deref().unwrap_or(&vec![0.0; model.table.len]))?;
        let state = TrainState { lr: o.lr.unwrap_or(state.lr), ..state };
        return Ok(Run { model, adam_m, adam_v, state });
    }
    let cfg = UNetConfig::scaled(o.width)?;
    let table = ParamTable::new(&cfg);
    let mut flat = default_init(&table, o.seed);
    if let Some(init) = &o.init {
        let tensors = crate::weights::read_tensors(init)?;
        crate::weights::pack_into(&table, &tensors, init, &mut flat, true)?;
    }
    let model = UNet16::new(be, cfg, &flat)?;
    let (adam_m, adam_v) = (be.alloc(table.len)?, be.alloc(table.len)?);
    let state = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        lr: o.lr.unwrap_or(1e-3),
        plateau: Plateau::new(0.8, 5),
        best_val_loss: f64::INFINITY,
        best_jaccard: f64::NEG_INFINITY,
        seed: o.seed,
        size: o.size,
    };
    Ok(Run { model, adam_m, adam_v, state })
}

/// One optimizer step on a batch already normalised (NHWC input and targets).
fn train_step<B: Backend>(
    be: &B,
    run: &mut Run<B>,
    ws: &Workspace<B>,
    input: &[f32],
    target: &[f32],
    nvtx: Option<&Nvtx>,
) -> Result<LossParts> {
    let _r = nvtx::range(nvtx, c"train_step");
    be.upload(&ws.acts, ws.plan.input.off, input)?;
    be.upload(&ws.target, 0, target)?;
    let mut ranges = Ranges { nvtx, inner: &mut NoHook };
    run.model.forward_profiled(be, ws, &mut ranges)?;
    let loss = run.model.backward_profiled(be, ws, false, &mut ranges)?;
    if !loss.loss.is_finite() {
        return Ok(loss);
    }
    run.state.step += 1;
    let m = &run.model;
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

fn save<B: Backend>(be: &B, run: &Run<B>, path: &Path) -> Result<()> {
    let len = run.model.table.len;
    let (mut p, mut m, mut v) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
    be.download(&run.model.params, 0, &mut p)?;
    be.download(&run.adam_m, 0, &mut m)?;
    be.download(&run.adam_v, 0, &mut v)?;
    checkpoint::save(path, &run.model.table, &p, &m, &v, &run.state)
}

/// Copies `src` to `dst` through a temporary name in the same folder, so `dst` is
/// never half-written.
fn copy_atomic(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("safetensors.tmp");
    std::fs::copy(src, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, dst).map_err(|e| Error::io(dst, e))
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
