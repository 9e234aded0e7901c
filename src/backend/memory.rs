//! Allocator accounting: how many bytes an executor has allocated in all, how many
//! are live, and the most that were live at once. The kernel executors (the GPU and
//! the emulator) count every buffer they hand out, the op workspaces included, so
//! `lesionseg profile` can show that a step allocates nothing once warmed up and
//! what the peak of an inference or a training step is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A snapshot of an executor's allocations, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes allocated since the executor was made (freed ones included).
    pub allocated: u64,
    /// Allocations made since the executor was made.
    pub allocations: u64,
    /// Bytes allocated and not yet freed.
    pub live: u64,
    /// The most bytes live at once since the last [`Accounting::reset_peak`].
    pub peak: u64,
}

/// Counters shared by an executor and the buffers it hands out.
#[derive(Debug, Default)]
pub struct Accounting {
    allocated: AtomicU64,
    allocations: AtomicU64,
    live: AtomicU64,
    peak: AtomicU64,
}

impl Accounting {
    /// New counters at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Accounting::default())
    }

    /// Counts an allocation of `bytes`; the returned guard uncounts it when dropped
    /// (keep it in the buffer).
    pub fn track(self: &Arc<Self>, bytes: u64) -> Tracked {
        self.allocated.fetch_add(bytes, Ordering::Relaxed);
        self.allocations.fetch_add(1, Ordering::Relaxed);
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
        Tracked { owner: Arc::clone(self), bytes }
    }

    /// The counters now.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            allocated: self.allocated.load(Ordering::Relaxed),
            allocations: self.allocations.load(Ordering::Relaxed),
            live: self.live.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
        }
    }

    /// Starts a new peak at what is live now.
    pub fn reset_peak(&self) {
        self.peak.store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// One counted allocation; uncounts itself when dropped.
#[derive(Debug)]
pub struct Tracked {
    owner: Arc<Accounting>,
    bytes: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.owner.live.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_live_peak_and_total() {
        let acc = Accounting::new();
        let a = acc.track(100);
        let b = acc.track(50);
        assert_eq!(acc.stats(), MemoryStats { allocated: 150, allocations: 2, live: 150, peak: 150 });
        drop(a);
        let c = acc.track(20);
        assert_eq!(acc.stats(), MemoryStats { allocated: 170, allocations: 3, live: 70, peak: 150 });
        acc.reset_peak();
        assert_eq!(acc.stats().peak, 70);
        drop((b, c));
        assert_eq!(acc.stats().live, 0);
    }
}
