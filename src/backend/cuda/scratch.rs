//! Op workspaces: planned per call from the shapes ([`Regions`]), served from one
//! buffer per backend that is allocated once, grown only when a larger plan comes
//! along, and never zeroed (each op writes every element it later reads).
//!
//! So after the first step of a shape nothing is allocated: the split-K partials of
//! the convolutions and deconvolutions, the pooling candidates and the loss's block
//! sums all reuse the same memory, one op after another. Reuse is safe because every
//! op's launches go to one stream (the GPU) or run to completion (the emulator), and
//! the buffer is held by the op ([`Workspace`]) from its plan to its last launch.
//! The emulator fills the workspace with NaN each time it is handed out
//! (`Executor::fresh_scratch`), so a kernel that reads an element its op did not
//! write fails its test.

use std::sync::{Mutex, MutexGuard};

use super::{fits, Executor, Kernels};
use crate::error::{Error, Result};

/// Words every region starts on a multiple of (256 bytes: 16-byte vector access
/// and f64 alignment in every region).
const REGION_ALIGN: usize = 64;

/// The backend's workspace buffer (none until the first op needs one).
pub(crate) struct Scratch<M> {
    buf: Mutex<Option<M>>,
}

impl<M> Default for Scratch<M> {
    fn default() -> Self {
        Scratch { buf: Mutex::new(None) }
    }
}

/// A workspace held by one op: its device address; the memory is the op's until
/// this is dropped.
pub(crate) struct Workspace<'a, M> {
    _held: MutexGuard<'a, Option<M>>,
    /// Device address of word 0.
    pub(crate) base: u64,
}

impl<M> Workspace<'_, M> {
    /// The buffer (for a download of what the op left in it).
    pub(crate) fn mem(&self) -> &M {
        self._held.as_ref().expect("a workspace holds its buffer")
    }

    /// Device address of word `off`.
    pub(crate) fn at(&self, off: usize) -> u64 {
        self.base + 4 * off as u64
    }
}

impl<E: Executor> Kernels<E> {
    /// A workspace of `len` f32 for one op of name `op` (its contents undefined).
    pub(crate) fn scratch(&self, op: &str, len: usize) -> Result<Workspace<'_, E::Mem>> {
        let len = fits(op, "the workspace", Some(len))?;
        let mut held = self
            .scratch
            .buf
            .lock()
            .map_err(|_| Error::Cuda(format!("{op}: the workspace lock was poisoned by an earlier panic")))?;
        if held.as_ref().is_none_or(|m| self.exec.len(m) < len) {
            // Free the old buffer first, so the peak never holds both.
            *held = None;
            *held = Some(self.exec.alloc_scratch(len)?);
        }
        let mem = held.as_ref().expect("allocated above");
        self.exec.fresh_scratch(mem, len)?;
        let base = self.exec.addr(mem);
        Ok(Workspace { _held: held, base })
    }
}

/// The regions of one op's workspace, laid out in order: each call returns the
/// word offset of a new region. The sizes come from the op's shapes, so the plan is
/// the same on every call with the same shapes (and the workspace is reused).
#[derive(Debug, Default)]
pub(crate) struct Regions {
    words: usize,
    overflowed: bool,
}

impl Regions {
    /// A region of `n` f32.
    pub(crate) fn f32s(&mut self, n: usize) -> usize {
        let start = self.words.checked_next_multiple_of(REGION_ALIGN);
        match start.and_then(|s| Some((s, s.checked_add(n)?))) {
            Some((start, end)) => {
                self.words = end;
                start
            }
            None => {
                self.overflowed = true;
                0
            }
        }
    }

    /// A region of `n` f64 (two words each).
    pub(crate) fn f64s(&mut self, n: usize) -> usize {
        match n.checked_mul(2) {
            Some(words) => self.f32s(words),
            None => {
                self.overflowed = true;
                0
            }
        }
    }

    /// Words the regions span (`None`: it overflowed).
    pub(crate) fn len(&self) -> Option<usize> {
        (!self.overflowed).then_some(self.words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    /// One buffer, reused while it is large enough, grown (old one freed first) when
    /// not, poisoned with NaN on the emulator each time it is handed out.
    #[test]
    fn the_workspace_is_reused_and_poisoned() {
        let k = crate::backend::emu::backend();
        let first = k.scratch("t", 100).unwrap().base;
        let stats = k.memory_stats().unwrap();
        assert_eq!((stats.allocations, stats.live), (1, 400));
        {
            let ws = k.scratch("t", 60).unwrap();
            assert_eq!(ws.base, first, "a smaller request reuses the buffer");
            k.exec.upload(ws.mem(), 0, &[1.0; 100]).unwrap();
        }
        let ws = k.scratch("t", 100).unwrap();
        let mut back = vec![0.0; 100];
        k.exec.download(ws.mem(), 0, &mut back).unwrap();
        assert!(back.iter().all(|v| v.is_nan()), "handed out poisoned, all of it");
        drop(ws);
        let _grown = k.scratch("t", 1000).unwrap();
        let stats = k.memory_stats().unwrap();
        assert_eq!((stats.allocations, stats.live, stats.peak), (2, 4000, 4000), "{stats:?}");
    }

    #[test]
    fn regions_are_aligned_and_disjoint() {
        let mut r = Regions::default();
        let a = r.f64s(3);
        let b = r.f32s(3);
        let c = r.f64s(10);
        assert_eq!((a, b, c), (0, 64, 128));
        assert_eq!(r.len(), Some(148));
        let mut big = Regions::default();
        big.f32s(usize::MAX - 10);
        big.f32s(100);
        assert_eq!(big.len(), None);
    }
}
