//! Emulator buffers: host memory with guard bytes before and after, so a kernel that
//! writes out of bounds is caught at the launch that did it (AddressSanitizer would
//! need annotations for every fiber switch; guards are simpler and enough for the
//! off-by-one and tail bugs kernels have).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::{Arc, Mutex, Weak};

/// Guard bytes on each side of a buffer.
pub(crate) const GUARD: usize = 256;
/// The guard pattern, one f32 word: a signalling NaN, so an out-of-bounds *read*
/// also poisons the result.
const GUARD_WORD: [u8; 4] = 0x7fa5_a5a5u32.to_le_bytes();
/// Buffers start 256-byte aligned, as `cuMemAlloc` guarantees.
const ALIGN: usize = 256;

/// One allocation: `GUARD` bytes, `len` f32, `GUARD` bytes; or, for a memory-only
/// emulator, just such a range of addresses with no memory behind it.
pub(crate) struct Alloc {
    base: *mut u8,
    len: usize,
    /// Allocation number within its `Emu`, for messages.
    pub(crate) id: u64,
    /// False for an address range only ([`Alloc::reserve`]): nothing may touch it.
    real: bool,
}

// SAFETY: the allocation is plain memory owned by this value; the executor's methods
// and kernels access it through raw pointers, one launch or copy at a time per buffer
// (the `Backend` contract), as CUDA device memory is accessed.
unsafe impl Send for Alloc {}
unsafe impl Sync for Alloc {}

impl Alloc {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(2 * GUARD + 4 * len, ALIGN).expect("buffer size overflows")
    }

    pub(crate) fn new(len: usize, id: u64) -> Option<Self> {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (2 * GUARD at least).
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            return None;
        }
        let a = Alloc { base, len, id, real: true };
        a.restore_guards();
        Some(a)
    }

    /// A range of `len` f32 (with guards) at address `base`, with no memory behind
    /// it: what a memory-only emulator hands out, so that pointer checks still see
    /// distinct buffers while nothing is allocated (nothing may read or write it).
    pub(crate) fn reserve(len: usize, id: u64, base: u64) -> Self {
        Alloc { base: base as *mut u8, len, id, real: false }
    }

    /// Bytes an allocation of `len` f32 spans, guards included.
    pub(crate) fn span(len: usize) -> usize {
        Self::layout(len).size()
    }

    /// Whether memory is behind the buffer (false for [`Alloc::reserve`]).
    pub(crate) fn is_real(&self) -> bool {
        self.real
    }

    /// Elements.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Address of element 0.
    pub(crate) fn data(&self) -> *mut u8 {
        // SAFETY: GUARD bytes into an allocation of 2 * GUARD + 4 * len bytes.
        unsafe { self.base.add(GUARD) }
    }

    /// Whether `addr` lies in the data (its end included, for empty operands).
    pub(crate) fn contains(&self, addr: u64) -> bool {
        let start = self.data() as u64;
        addr >= start && addr <= start + 4 * self.len as u64
    }

    /// The first byte of the guard before and of the guard after the data.
    fn guards(&self) -> [*mut u8; 2] {
        // SAFETY: both offsets are inside the allocation of 2 * GUARD + 4 * len bytes.
        [self.base, unsafe { self.base.add(GUARD + 4 * self.len) }]
    }

    fn restore_guards(&self) {
        for g in self.guards() {
            for i in 0..GUARD {
                // SAFETY: inside the guard; written only between launches.
                unsafe { g.add(i).write(GUARD_WORD[i % 4]) }
            }
        }
    }

    /// Offset of the first byte of guard `g` that differs from the pattern.
    fn first_changed(g: *mut u8) -> Option<usize> {
        // SAFETY: inside the guard; read only between launches.
        (0..GUARD).find(|&i| unsafe { g.add(i).read() } != GUARD_WORD[i % 4])
    }

    /// `None` if both guards are intact; otherwise a description of the damage
    /// (which side, the offset of the first changed byte), and the guards restored.
    pub(crate) fn check_guards(&self) -> Option<String> {
        if !self.real {
            return None;
        }
        let [before, after] = self.guards();
        let msg = if let Some(i) = Self::first_changed(after) {
            Some(format!(
                "wrote past the end of a buffer of {} elements (buffer #{}, first changed byte {} past the end, \
                 element {})",
                self.len,
                self.id,
                i,
                self.len + i / 4
            ))
        } else {
            Self::first_changed(before).map(|i| {
                format!(
                    "wrote before the start of a buffer of {} elements (buffer #{}, first changed byte {} before \
                     element 0)",
                    self.len,
                    self.id,
                    GUARD - i
                )
            })
        };
        if msg.is_some() {
            self.restore_guards();
        }
        msg
    }
}

impl Drop for Alloc {
    fn drop(&mut self) {
        if self.real {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.base, Self::layout(self.len)) }
        }
    }
}

/// A buffer of f32 in the emulator's "device" memory (host memory with guards).
pub struct EmuMem {
    pub(crate) alloc: Arc<Alloc>,
    /// Uncounts the buffer from the emulator's allocator figures when dropped.
    pub(crate) _tracked: crate::backend::memory::Tracked,
}

impl std::fmt::Debug for EmuMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmuMem(#{}, {} elements)", self.alloc.id, self.alloc.len)
    }
}

/// The live allocations of one executor, checked after every launch.
#[derive(Default)]
pub(crate) struct Registry {
    allocs: Mutex<Vec<Weak<Alloc>>>,
}

impl Registry {
    pub(crate) fn add(&self, a: &Arc<Alloc>) {
        let mut v = self.allocs.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(a));
    }

    /// The allocations still alive.
    pub(crate) fn live(&self) -> Vec<Arc<Alloc>> {
        let mut v = self.allocs.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.iter().filter_map(Weak::upgrade).collect()
    }
}
