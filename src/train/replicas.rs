//! Data-parallel training on one machine: `--replicas N` runs N ranks, each a
//! thread with its own backend instance, each holding a contiguous shard of every
//! global batch.
//!
//! What makes N replicas train the single-replica objective on the same global
//! batch (docs/ARCHITECTURE.md §2):
//! - every rank draws the global batch's order and augmentations from the same
//!   `(seed, epoch, batch)` and decodes only its shard (`make_batch_part`);
//! - the loss's sums are all-reduced before the loss and its gradients
//!   ([`GroupShards`], `UNet16::backward_sharded`), which are scaled by the global
//!   batch size;
//! - the parameter gradients are summed over the ranks in buckets, in a fixed order
//!   ([`all_reduce_grads`]), then every rank takes the same Adam step.
//!
//! Rank 0 alone writes (checkpoints, the log, the split, the plot), validates (at
//! the global batch size, as one replica does) and broadcasts the learning rate the
//! schedule chose; whether to stop (Ctrl-C, the time limit) is agreed on, so every
//! rank takes the same number of steps. A rank that fails, panics or hangs makes the
//! others stop with [`Error::Collective`] within `--replica-timeout`; the run
//! reports the first rank's own error, not the echoes.

use std::sync::Arc;

use super::{TrainOptions, TrainSummary};
use crate::backend::{Backend, LossParts, LossSums};
use crate::collective::{self, local, Collective};
use crate::error::{Error, Result};
use crate::model::unet::LossShards;

/// Gradient elements per all-reduce bucket (4 MiB of f32).
const BUCKET: usize = 1 << 20;

/// What a replica reports after each optimizer step, to [`StepObserver`] (tests).
pub struct StepReport<'a> {
    /// This replica's rank.
    pub rank: usize,
    /// Ranks in all.
    pub world: usize,
    /// The step just taken (1-based, global).
    pub step: u64,
    /// The loss of the global batch.
    pub loss: LossParts,
    /// The gradient summed over the ranks (flat, the model's internal layout),
    /// when the observer asked for it.
    pub grads: Option<&'a [f32]>,
}

/// A function every replica calls after each step; an error it returns stops that
/// replica (and so, through the collective, the run).
type ObserveFn = dyn Fn(&StepReport) -> Result<()> + Send + Sync;

/// Observes every replica's steps: what the data-parallel tests compare.
#[derive(Clone)]
pub struct StepObserver {
    /// The function.
    pub f: Arc<ObserveFn>,
    /// Whether to download the summed gradient for it (a copy of the model's size).
    pub grads: bool,
}

impl std::fmt::Debug for StepObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StepObserver {{ grads: {} }}", self.grads)
    }
}

/// This replica's part in a run: rank `rank` of `world`, with the group's handle
/// when there is more than one.
pub(super) struct Part {
    pub group: Option<Box<dyn Collective>>,
}

impl Part {
    /// One replica alone.
    pub fn alone() -> Self {
        Part { group: None }
    }
    pub fn rank(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.rank())
    }
    pub fn world(&self) -> usize {
        self.group.as_ref().map_or(1, |g| g.world())
    }
    /// Rank 0: writes, validates, shows progress.
    pub fn leader(&self) -> bool {
        self.rank() == 0
    }

    /// True on every rank when `mine` is true on any (one all-reduce).
    pub fn any(&mut self, mine: bool) -> Result<bool> {
        let Some(g) = self.group.as_mut() else { return Ok(mine) };
        let mut v = [mine as u8 as f64];
        g.all_reduce_f64(&mut v)?;
        Ok(v[0] > 0.0)
    }

    /// Rank 0's `value` on every rank.
    pub fn leaders(&mut self, value: f64) -> Result<f64> {
        let Some(g) = self.group.as_mut() else { return Ok(value) };
        let mut v = [value];
        g.broadcast_f64(&mut v, 0)?;
        Ok(v[0])
    }
}

/// The loss's sums through the group: all-reduced, over a global batch `world`
/// times this replica's.
pub(super) struct GroupShards<'a> {
    pub part: &'a mut Part,
}

impl LossShards for GroupShards<'_> {
    fn total_n(&self, local_n: usize) -> usize {
        local_n * self.part.world()
    }
    fn reduce(&mut self, sums: LossSums) -> Result<LossSums> {
        let Some(g) = self.part.group.as_mut() else { return Ok(sums) };
        let mut a = sums.to_array();
        g.all_reduce_f64(&mut a)?;
        Ok(LossSums::from_array(a))
    }
}

/// Sums `grads` (`len` elements) over the ranks, in buckets of [`BUCKET`] in
/// ascending order: on the device when the collective can (NCCL, queued on the
/// backend's stream), else staged through the host.
pub(super) fn all_reduce_grads<B: Backend>(be: &B, grads: &B::Buf, len: usize, part: &mut Part) -> Result<()> {
    let Some(g) = part.group.as_mut() else { return Ok(()) };
    if len == 0 {
        return Ok(());
    }
    if let Some((ptr, stream)) = be.device_place(grads, 0)? {
        // Every rank alive and here before the device collective: NCCL would wait
        // forever for a rank that died, the host collective reports it at once.
        g.barrier()?;
        let mut done = true;
        for start in (0..len).step_by(BUCKET) {
            done &= g.all_reduce_device_f32(ptr + 4 * start as u64, BUCKET.min(len - start), stream)?;
        }
        if done {
            return Ok(());
        }
    }
    let mut host = vec![0.0f32; BUCKET.min(len)];
    for start in (0..len).step_by(BUCKET) {
        let chunk = &mut host[..BUCKET.min(len - start)];
        be.download(grads, start, chunk)?;
        g.all_reduce_f32(chunk)?;
        be.upload(grads, start, chunk)?;
    }
    Ok(())
}

/// Trains with `o.replicas` ranks on this machine, each on a backend from
/// `open(rank)` (called on the rank's own thread), with the threads' collective.
/// One replica is [`super::run`] on `open(0)`.
pub fn run_replicas<B, F>(open: F, o: &TrainOptions) -> Result<TrainSummary>
where
    B: Backend,
    F: Fn(usize) -> Result<B> + Sync,
{
    if o.replicas <= 1 {
        return super::run(&open(0)?, o);
    }
    let handles = local::group(o.replicas, o.replica_timeout);
    let hosts = handles.into_iter().map(|h| Box::new(h) as Box<dyn Collective>).collect();
    run_group(&open, o, hosts, &|_: &B, host| Ok(host))
}

/// Makes a rank's collective from its host collective, once its backend is open
/// (NCCL joins its communicator on the rank's GPU).
pub(super) type Join<'a, B> = dyn Fn(&B, Box<dyn Collective>) -> Result<Box<dyn Collective>> + Sync + 'a;

/// The ranks of `hosts` (index = rank) as threads; the setup (checks, the run
/// folder, the data, the split) is done once, before them.
pub(super) fn run_group<B, F>(
    open: &F,
    o: &TrainOptions,
    hosts: Vec<Box<dyn Collective>>,
    join: &Join<B>,
) -> Result<TrainSummary>
where
    B: Backend,
    F: Fn(usize) -> Result<B> + Sync,
{
    o.validate()?;
    // The group's size (these threads may be part of it: one per process).
    let world = hosts.first().map_or(1, |h| h.world());
    // Only the process that holds rank 0 writes in the run folder.
    let leader_here = hosts.iter().any(|h| h.rank() == 0);
    let resumed = super::setup::check_resume(o)?;
    let recipe = super::setup::recipe(o, resumed.as_ref())?;
    collective::check_replicas(world, recipe.batch_size)?;
    if leader_here {
        super::setup::prepare_out(o)?;
    }
    let (ds, report) = super::setup::load_data(&open(0)?, o, &recipe)?;
    let split = super::setup::split(o, &ds, &recipe, leader_here)?;
    let flag = super::catch_ctrl_c();
    if !o.quiet && leader_here {
        eprintln!("{}; {world} replicas, {} images each per step", report.summary(), recipe.batch_size / world);
    }
    let results: Vec<Result<TrainSummary>> = std::thread::scope(|s| {
        let threads: Vec<_> = hosts
            .into_iter()
            .enumerate()
            .map(|(rank, host)| {
                let (ds, split, recipe, skipped) = (&ds, &split, &recipe, report.skipped.len());
                let thread = std::thread::Builder::new().name(format!("replica {rank}"));
                thread.spawn_scoped(s, move || -> Result<TrainSummary> {
                    let rank_global = host.rank();
                    let mut part = Part { group: None };
                    let out = (|| -> Result<_> {
                        let be = open(rank);
                        let mut host = host;
                        // Every rank's backend is open before any joins a group
                        // whose setup would wait for a rank that failed.
                        let ready = host.barrier();
                        let be = match (be, ready) {
                            (Ok(be), Ok(())) => be,
                            (Err(e), _) | (Ok(_), Err(e)) => {
                                host.abort(&e.to_string());
                                return Err(e);
                            }
                        };
                        part.group = Some(join(&be, host)?);
                        let mut run = super::start(&be, o, recipe)?;
                        let (stop, last_val) =
                            super::epoch::train(&be, &mut run, ds, split, o, recipe.batch_size, flag, &mut part)?;
                        Ok((stop, last_val, run.state))
                    })();
                    match out {
                        Ok((stop, last_val, state)) => Ok(TrainSummary {
                            stop,
                            state,
                            last_val,
                            samples: (split.train.len(), split.val.len()),
                            skipped,
                            out: o.out.clone(),
                            rank: rank_global,
                        }),
                        Err(e) => {
                            if let Some(g) = part.group.as_mut() {
                                g.abort(&e.to_string());
                            }
                            Err(e)
                        }
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .enumerate()
            .map(|(rank, t)| match t {
                Ok(t) => t.join().unwrap_or_else(|_| Err(collective::error(rank, "panicked"))),
                Err(e) => Err(collective::error(rank, format!("could not start its thread: {e}"))),
            })
            .collect()
    });
    first_cause(results)
}

/// Rank 0's summary when every rank succeeded; otherwise the error of the lowest
/// rank that failed on its own (not a collective's echo of another rank's failure),
/// or rank 0's.
fn first_cause(results: Vec<Result<TrainSummary>>) -> Result<TrainSummary> {
    if results.iter().all(Result::is_ok) {
        return results.into_iter().next().expect("at least one rank");
    }
    let mut errors: Vec<Error> = results.into_iter().filter_map(Result::err).collect();
    let own = errors.iter().position(|e| !matches!(e, Error::Collective { reason, .. } if reason.contains("stopped")));
    Err(errors.swap_remove(own.unwrap_or(0)))
}
