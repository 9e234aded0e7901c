//! Collectives for data-parallel training: every replica (rank) holds a
//! [`Collective`] and calls the same operations in the same order; each returns
//! when every rank has contributed, or with [`Error::Collective`] when a rank has
//! died, failed, or not arrived within the timeout: never a hang.
//!
//! Implementations:
//! - [`local`]: ranks are threads of one process sharing a rendezvous (the CPU
//!   backend and the emulator; what `cargo test` runs);
//! - [`tcp`]: ranks that are processes, on one machine or several, started by a
//!   launcher (torchrun's environment), through rank 0;
//! - [`nccl`]: NCCL, loaded at run time (one GPU per rank: a thread per GPU, or a
//!   process per GPU with the unique id sent over [`tcp`]), for the gradients; the
//!   small host values go through the host collective beside it.
//!
//! Sums are deterministic: the local collective adds the ranks' buffers in rank
//! order on every rank, so every rank gets the same bits, run after run.

pub mod local;
pub mod nccl;
pub mod tcp;

use std::time::Duration;

use crate::error::{Error, Result};
use crate::limits;

/// How long a rank waits for the others at a collective by default: longer than
/// rank 0's validation pass and checkpoint on a slow machine, short enough that a
/// lost rank is reported while someone is looking.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank's handle on a group of ranks. Every rank calls the same operations, in
/// the same order, with buffers of the same length.
pub trait Collective: Send {
    /// This rank, 0-based.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank by the element-wise sum over the ranks.
    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank by the element-wise sum over the ranks.
    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()>;
    /// Copies `root`'s `buf` into every rank's.
    fn broadcast_f64(&mut self, buf: &mut [f64], root: usize) -> Result<()>;
    /// Sums `len` f32 at device address `ptr` over the ranks, in place, queued on
    /// the CUDA stream `stream`; `Ok(false)` (nothing done) where this collective
    /// works on host memory only, and the caller stages through the host.
    fn all_reduce_device_f32(&mut self, _ptr: u64, _len: usize, _stream: u64) -> Result<bool> {
        Ok(false)
    }
    /// Returns when every rank has called it.
    fn barrier(&mut self) -> Result<()> {
        self.all_reduce_f64(&mut [])
    }
    /// Tells the other ranks that this one stops, and why (they return an error at
    /// their next collective instead of waiting for it). Dropping a handle without
    /// calling it says "stopped" without a reason.
    fn abort(&mut self, reason: &str);
}

/// The error a rank returns when the group cannot complete an operation.
pub(crate) fn error(rank: usize, reason: impl Into<String>) -> Error {
    Error::Collective { rank, reason: reason.into() }
}

/// The sum of `bufs` in rank order, into `out` (every rank computes the same bits).
pub(crate) fn sum_in_order<T: Copy + std::ops::AddAssign>(out: &mut [T], bufs: &[&[T]]) {
    if let Some((first, rest)) = bufs.split_first() {
        out.copy_from_slice(first);
        for b in rest {
            for (o, &v) in out.iter_mut().zip(b.iter()) {
                *o += v;
            }
        }
    }
}

/// `--replicas N` checked: at least 1, at most [`limits::REPLICAS`], and a divisor of
/// the global batch.
pub fn check_replicas(replicas: usize, batch_size: usize) -> Result<()> {
    limits::REPLICAS.check(replicas)?;
    if !batch_size.is_multiple_of(replicas) {
        return Err(Error::argument(
            "--replicas",
            format!(
                "{replicas} replicas cannot share a global batch of {batch_size} equally; \
                 choose a --batch-size that is a multiple of {replicas}"
            ),
        ));
    }
    Ok(())
}
