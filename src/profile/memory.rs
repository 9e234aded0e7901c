//! The profile's memory side: inference as `predict` runs it (the model without
//! gradients, the shared inference arena), the allocator's figures of a phase, and
//! the process's peak resident set.

use rand::{Rng, SeedableRng};

use super::report::Allocated;
use crate::backend::Backend;
use crate::error::Result;
use crate::model::init::default_init;
use crate::model::unet::LayerHook;
use crate::model::{UNet16, UNetConfig, Workspace};

/// The model for the forward pass alone, as `predict` runs it: no gradients, the
/// inference arena (tensors share memory once their consumers have run).
pub struct Inference<B: Backend> {
    /// The model (the same random weights as [`super::Trainer::new`]'s).
    pub model: UNet16<B>,
    /// The inference arena, input uploaded.
    pub ws: Workspace<B>,
}

impl<B: Backend> Inference<B> {
    /// [`super::Trainer::new`]'s model and batch, for inference.
    pub fn new(be: &B, batch: usize, size: usize, width: f64, seed: u64) -> Result<Self> {
        let cfg = UNetConfig::scaled(width)?;
        let table = crate::model::ParamTable::new(&cfg);
        let model = UNet16::for_inference(be, cfg, &default_init(&table, seed))?;
        let ws = model.inference_workspace(be, batch, size, size)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let input: Vec<f32> = (0..ws.plan.input.len()).map(|_| rng.gen_range(-2.0..2.0)).collect();
        be.upload(&ws.acts, ws.plan.input.off, &input)?;
        Ok(Inference { model, ws })
    }

    /// One forward pass.
    pub fn infer(&self, be: &B, hook: &mut dyn LayerHook) -> Result<()> {
        self.model.forward_profiled(be, &self.ws, hook)
    }

    /// Waits for the queued work (see [`Trainer::fence`]).
    pub fn fence(&self, be: &B) -> Result<()> {
        be.download(&self.model.params, 0, &mut [0.0])
    }
}

/// What the allocator did during one phase of the profile: its peak above what was
/// live before the phase, and the bytes allocated per timed iteration.
pub(super) fn allocator_figures<B: Backend>(
    be: &B,
    base_live: u64,
    before_timed: u64,
    iterations: usize,
) -> Option<Allocated> {
    let now = be.memory_stats()?;
    Some(Allocated {
        peak: now.peak.saturating_sub(base_live),
        per_iteration: (now.allocated - before_timed) / iterations.max(1) as u64,
    })
}

/// Peak resident set of this process (`VmHWM`), Linux only.
pub(super) fn process_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
