//! The `train` command: Adam (lr 1e-3), batch 8, ReduceLROnPlateau (0.8, patience
//! 5) on validation loss, the paper's augmentations; per-epoch validation with
//! loss components, per-attribute Jaccard, the official score and both heads' AUC;
//! checkpoints best-by-loss, best-by-Jaccard and last; exact `--resume`; metrics
//! as CSV plus a PNG plot; a progress bar; Ctrl-C saves and stops; a NaN loss stops
//! with the last good checkpoint kept.
//!
//! [`run`] is five steps, each a function: check the options and the run folder
//! and, for `--resume`, the checkpoint's header ([`setup`]); load the data after
//! checking memory and disk; split it; build the model and optimizer (fresh or from
//! the checkpoint); loop over epochs ([`epoch`]: steps, then validation and
//! checkpoints).
//!
//! Every source of randomness is derived from `(seed, epoch, batch)`, so resuming
//! from a checkpoint replays exactly the batches and augmentations an uninterrupted
//! run would have seen.

pub mod checkpoint;
mod epoch;
mod log;
mod parallel;
mod replicas;
pub mod schedule;
mod setup;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::limits;
use crate::model::{init::default_init, ParamTable, UNet16, UNetConfig};
use checkpoint::TrainState;
pub use parallel::run_parallel;
pub use replicas::{run_replicas, StepObserver, StepReport};
use schedule::Plateau;
pub use validate::ValMetrics;

/// Total epochs by default.
pub const DEFAULT_EPOCHS: u32 = 100;
/// Images per step by default (the paper's).
pub const DEFAULT_BATCH_SIZE: usize = 8;
/// Training size by default (the paper's).
pub const DEFAULT_SIZE: usize = 512;
/// Adam's learning rate by default (the paper's).
pub const DEFAULT_LR: f64 = 1e-3;
/// Width factor by default (the paper's model).
pub const DEFAULT_WIDTH: f64 = 1.0;
/// Seed by default.
pub const DEFAULT_SEED: u64 = 0;
/// The validation share of a seeded split (the paper's 80/20).
pub const VAL_FRACTION: f64 = 0.2;

/// What `lesionseg train` was asked to do. The options that `--resume` must keep
/// (size, width, batch size, seed) are `None` when not given: the default for a
/// fresh run, the checkpoint's value when resuming (a different value is refused).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// ISIC-layout data folder.
    pub data: PathBuf,
    /// Run directory (checkpoints, metrics, plot, split).
    pub out: PathBuf,
    /// Total epochs (a resumed run continues up to this number).
    pub epochs: u32,
    /// Images per step ([`DEFAULT_BATCH_SIZE`]).
    pub batch_size: Option<usize>,
    /// Training image size, square, a multiple of 32 ([`DEFAULT_SIZE`]).
    pub size: Option<usize>,
    /// Learning rate: of a fresh run ([`DEFAULT_LR`]), or, with `resume`, replacing
    /// the checkpoint's (e.g. to continue more gently after a divergence).
    pub lr: Option<f64>,
    /// Channel width factor of a model trained from scratch ([`DEFAULT_WIDTH`]).
    pub width: Option<f64>,
    /// torchvision VGG16 safetensors for the encoder.
    pub init: Option<PathBuf>,
    /// Continue from `out/last.safetensors`.
    pub resume: bool,
    /// Start over in a folder that holds a run (its files are removed first).
    pub force: bool,
    /// Seed of initialisation, split, shuffles and augmentation ([`DEFAULT_SEED`]).
    pub seed: Option<u64>,
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
    /// Data-parallel replicas sharing each global batch ([`run_replicas`]; 1: none).
    pub replicas: usize,
    /// How long a replica waits for the others at a collective.
    pub replica_timeout: Duration,
    /// Called by every replica after each step (tests).
    pub observer: Option<StepObserver>,
}

impl TrainOptions {
    /// The paper's recipe for `data` → `out`.
    pub fn new(data: PathBuf, out: PathBuf) -> Self {
        TrainOptions {
            data,
            out,
            epochs: DEFAULT_EPOCHS,
            batch_size: None,
            size: None,
            lr: None,
            width: None,
            init: None,
            resume: false,
            force: false,
            seed: None,
            skip_bad: false,
            split_csv: None,
            time_limit: None,
            max_steps: None,
            quiet: false,
            nvtx: false,
            replicas: 1,
            replica_timeout: crate::collective::DEFAULT_TIMEOUT,
            observer: None,
        }
    }

    /// Checks every value against its range ([`crate::limits`]) and the flags
    /// against each other.
    pub fn validate(&self) -> Result<()> {
        limits::EPOCHS.check(self.epochs)?;
        self.batch_size.map(|b| limits::BATCH_SIZE.check(b)).transpose()?;
        self.size.map(|s| limits::NET_SIZE.check(s)).transpose()?;
        self.lr.map(|lr| limits::LR.check(lr)).transpose()?;
        self.width.map(|w| limits::WIDTH.check(w)).transpose()?;
        if let Some(t) = self.time_limit {
            limits::TIME_LIMIT.check(t.as_secs_f64() / 60.0)?;
        }
        limits::REPLICAS.check(self.replicas)?;
        limits::REPLICA_TIMEOUT.check(self.replica_timeout.as_secs_f64())?;
        if self.resume && self.force {
            return Err(Error::argument("--force", "cannot be combined with --resume: continue a run, or start over"));
        }
        if self.resume && self.init.is_some() {
            return Err(Error::argument("--init", "a resumed run continues its checkpoint's weights; drop --init"));
        }
        Ok(())
    }
}

/// The values a run trains with: the options, else the checkpoint's, else the
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Recipe {
    size: usize,
    batch_size: usize,
    seed: u64,
    /// The model's shape: the width's, or the checkpoint's.
    cfg: UNetConfig,
    /// The width factor, when known (a checkpoint older than its record has none).
    width: Option<f64>,
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
    /// This process's rank (0 but in a launched group's other processes, which
    /// write nothing).
    pub rank: usize,
}

/// The checkpoint names in a run directory.
pub const LAST: &str = "last.safetensors";
/// Best validation loss.
pub const BEST_LOSS: &str = "best_loss.safetensors";
/// Best validation micro Jaccard.
pub const BEST_JACCARD: &str = "best_jaccard.safetensors";
/// Every file a run writes in its folder.
pub const RUN_FILES: [&str; 6] = [LAST, BEST_LOSS, BEST_JACCARD, "metrics.csv", "split.csv", "curves.png"];

/// Raised by Ctrl-C; the loop polls it after every step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler once per process and lowers the flag for this run.
/// A second Ctrl-C (while the checkpoint is being written, say) exits at once with
/// status 130, as a user expects.
fn catch_ctrl_c() -> &'static AtomicBool {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    });
    INTERRUPTED.store(false, Ordering::SeqCst);
    &INTERRUPTED
}

/// The model, optimizer buffers and state of a run.
struct Run<B: Backend> {
    model: UNet16<B>,
    adam_m: B::Buf,
    adam_v: B::Buf,
    state: TrainState,
}

/// Trains on `be` as `o` says: the steps of the module doc, in order. One replica
/// (`o.replicas` > 1 is [`run_replicas`]'s).
pub fn run<B: Backend>(be: &B, o: &TrainOptions) -> Result<TrainSummary> {
    o.validate()?;
    if o.replicas > 1 {
        return Err(Error::argument("--replicas", "train::run trains one replica; use train::run_replicas"));
    }
    let resumed = setup::check_resume(o)?;
    let recipe = setup::recipe(o, resumed.as_ref())?;
    setup::prepare_out(o)?;
    let (ds, report) = setup::load_data(be, o, &recipe)?;
    let split = setup::split(o, &ds, &recipe, true)?;
    let mut run = start(be, o, &recipe)?;
    let flag = catch_ctrl_c();
    if !o.quiet {
        // After the handler is set: a Ctrl-C from here on is caught and saved.
        eprintln!("{}", report.summary());
    }
    let mut alone = replicas::Part::alone();
    let (stop, last_val) = epoch::train(be, &mut run, &ds, &split, o, recipe.batch_size, flag, &mut alone)?;
    Ok(TrainSummary {
        stop,
        state: run.state,
        last_val,
        samples: (split.train.len(), split.val.len()),
        skipped: report.skipped.len(),
        out: o.out.clone(),
        rank: 0,
    })
}

/// A fresh run (initialised, optionally from VGG16) or the state in `out/last`.
fn start<B: Backend>(be: &B, o: &TrainOptions, r: &Recipe) -> Result<Run<B>> {
    let last = o.out.join(LAST);
    if o.resume {
        let ck = checkpoint::load(&last)?;
        let state = ck.state.ok_or_else(|| Error::Resume { path: last.clone(), reason: "no training state".into() })?;
        let model = UNet16::new(be, ck.cfg, &ck.params)?;
        let (adam_m, adam_v) = (be.alloc(model.table.len)?, be.alloc(model.table.len)?);
        be.upload(&adam_m, 0, ck.adam_m.as_deref().unwrap_or(&vec![0.0; model.table.len]))?;
        be.upload(&adam_v, 0, ck.adam_v.as_deref().unwrap_or(&vec![0.0; model.table.len]))?;
        let state = TrainState { lr: o.lr.unwrap_or(state.lr), batch_size: Some(r.batch_size), ..state };
        return Ok(Run { model, adam_m, adam_v, state });
    }
    let cfg = r.cfg;
    let table = ParamTable::new(&cfg);
    let mut flat = default_init(&table, r.seed);
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
        lr: o.lr.unwrap_or(DEFAULT_LR),
        plateau: Plateau::new(0.8, 5),
        best_val_loss: f64::INFINITY,
        best_jaccard: f64::NEG_INFINITY,
        seed: r.seed,
        size: r.size,
        batch_size: Some(r.batch_size),
        width: r.width,
        epoch_loss_sum: 0.0,
    };
    Ok(Run { model, adam_m, adam_v, state })
}

/// Writes the run's state to `path` (a checkpoint).
fn save<B: Backend>(be: &B, run: &Run<B>, path: &Path) -> Result<()> {
    let len = run.model.table.len;
    let (mut p, mut m, mut v) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
    be.download(&run.model.params, 0, &mut p)?;
    be.download(&run.adam_m, 0, &mut m)?;
    be.download(&run.adam_v, 0, &mut v)?;
    checkpoint::save(path, &run.model.table, &p, &m, &v, &run.state)
}
