//! A launch's traced accesses summed into the figures Nsight Compute shows: per
//! global direction the requests, sectors and the coalescing efficiency; per kind of
//! shared-memory access the wavefronts and the bank-conflict degree; mma and FLOPs;
//! the unique bytes. Either over the whole kernel or over its main loop alone.

use super::trace::{AccessKind, LaunchTrace};

/// FLOPs of one `mma.m16n8k16` (2 · 16 · 8 · 16).
pub const MMA_FLOPS: f64 = 4096.0;

/// Global memory traffic of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    /// Warp-level requests.
    pub requests: f64,
    /// 32-byte sectors touched (what the L2 serves).
    pub sectors: f64,
    /// The fewest sectors that hold the bytes asked.
    pub ideal: f64,
    /// Unique bytes asked, per request, summed.
    pub bytes: f64,
}

impl Traffic {
    /// Coalescing efficiency: ideal sectors / sectors touched (1 = perfect); `None`
    /// without requests.
    pub fn efficiency(&self) -> Option<f64> {
        (self.sectors > 0.0).then(|| self.ideal / self.sectors)
    }
    /// Sectors per request.
    pub fn sectors_per_request(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.sectors / self.requests)
    }
}

/// Shared-memory accesses of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Banks {
    /// Warp-level requests.
    pub requests: f64,
    /// Wavefronts (cycles of the 32 banks) they took.
    pub wavefronts: f64,
    /// The fewest wavefronts that move their bytes.
    pub ideal: f64,
}

impl Banks {
    /// Bank-conflict degree: wavefronts / ideal (1 = conflict-free); `None` without requests.
    pub fn degree(&self) -> Option<f64> {
        (self.ideal > 0.0).then(|| self.wavefronts / self.ideal)
    }

    fn add(&mut self, o: &Banks) {
        self.requests += o.requests;
        self.wavefronts += o.wavefronts;
        self.ideal += o.ideal;
    }
}

/// The counters of one launch (or of its main loop), scaled to the whole grid.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// Global loads, `cp.async` sources included (LDG, LDGSTS).
    pub global_load: Traffic,
    /// Global stores (STG).
    pub global_store: Traffic,
    /// LDS.
    pub shared_load: Banks,
    /// STS.
    pub shared_store: Banks,
    /// LDSM.
    pub ldmatrix: Banks,
    /// The shared-memory side of `cp.async`.
    pub async_store: Banks,
    /// Warp-level mma.m16n8k16 (the whole launch, also for the main loop).
    pub mma: f64,
    /// Block barriers (the whole launch).
    pub barriers: f64,
    /// Unique bytes read (the whole launch).
    pub unique_read: f64,
    /// Unique bytes written (the whole launch).
    pub unique_written: f64,
}

impl Counters {
    /// The counters of `t`, over every instruction or (`main_loop`) those of the main loop.
    pub fn of(t: &LaunchTrace, main_loop: bool) -> Counters {
        let mut c = Counters {
            mma: t.mma,
            barriers: t.barriers,
            unique_read: t.unique_read,
            unique_written: t.unique_written,
            ..Default::default()
        };
        for s in t.sites.iter().filter(|s| !main_loop || s.main_loop) {
            let banks = Banks { requests: s.requests, wavefronts: s.wavefronts, ideal: s.ideal };
            let traffic = |g: &mut Traffic| {
                g.requests += s.requests;
                g.sectors += s.sectors;
                g.ideal += s.ideal;
                g.bytes += s.bytes;
            };
            match s.kind {
                AccessKind::GlobalLoad | AccessKind::AsyncLoad => traffic(&mut c.global_load),
                AccessKind::GlobalStore => traffic(&mut c.global_store),
                AccessKind::SharedLoad => c.shared_load.add(&banks),
                AccessKind::SharedStore => c.shared_store.add(&banks),
                AccessKind::Ldmatrix => c.ldmatrix.add(&banks),
                AccessKind::AsyncStore => c.async_store.add(&banks),
            }
        }
        c
    }

    /// Tensor-core FLOPs (mma count × 4096).
    pub fn tensor_flops(&self) -> f64 {
        self.mma * MMA_FLOPS
    }

    /// Every shared-memory access together.
    pub fn shared(&self) -> Banks {
        let mut b = Banks::default();
        for k in [&self.shared_load, &self.shared_store, &self.ldmatrix, &self.async_store] {
            b.add(k);
        }
        b
    }

    /// The worst bank-conflict degree over the four kinds of shared access.
    pub fn worst_degree(&self) -> Option<f64> {
        [self.shared_load, self.shared_store, self.ldmatrix, self.async_store]
            .iter()
            .filter_map(Banks::degree)
            .reduce(f64::max)
    }

    /// L2 sectors requested (loads and stores).
    pub fn l2_sectors(&self) -> f64 {
        self.global_load.sectors + self.global_store.sectors
    }
}
