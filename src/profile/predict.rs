//! `lesionseg profile --device emu --predict GPU`: one training step of UNet16 on the
//! access-tracing emulator (large launches sampled, see
//! `crate::backend::emu::trace`), every launch predicted on a GPU by
//! `crate::perfmodel`, and the predictions summed per layer and pass.

use std::collections::HashMap;
use std::time::Instant;

use crate::backend::cuda::{Kernels, Precision};
use crate::backend::emu::counters::{Banks, Counters, Traffic};
use crate::backend::emu::trace::{LaunchTrace, Sampling, TraceConfig};
use crate::backend::emu::Emu;
use crate::error::{Error, Result};
use crate::model::unet::{Layer, LayerHook, Pass};
use crate::perfmodel::kernels::{demand, static_info};
use crate::perfmodel::{predict, Bound, GpuSpec, Prediction};

use super::Trainer;

/// What to predict.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    /// The GPU.
    pub gpu: &'static GpuSpec,
    /// Images per batch.
    pub batch: usize,
    /// Input size (square, a multiple of 32).
    pub size: usize,
    /// Channel width factor.
    pub width: f64,
    /// Convolution arithmetic.
    pub precision: Precision,
    /// Launches of more blocks than this run a sample of them.
    pub max_blocks: u64,
    /// Seed of the weights and the data.
    pub seed: u64,
}

/// One pass of one layer: its launches' predictions summed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassPrediction {
    /// Predicted time, ms.
    pub ms: f64,
    /// Per resource, the ideal time summed over the launches ([`Bound::ALL`] order).
    pub ideal: [f64; 6],
    /// Launches.
    pub launches: usize,
    /// Global loads of the launches.
    pub loads: Traffic,
    /// Shared-memory accesses of the launches.
    pub shared: Banks,
    /// Multiply-accumulates of the layer pass (from the model).
    pub macs: u64,
    /// Unique bytes read and written.
    pub dram_bytes: f64,
}

impl PassPrediction {
    /// The resource whose summed ideal time is largest.
    pub fn bound(&self) -> Option<Bound> {
        (self.launches > 0).then(|| {
            let i = (0..6).max_by(|&a, &b| self.ideal[a].total_cmp(&self.ideal[b])).unwrap_or(0);
            Bound::ALL[i]
        })
    }

    /// Percent of the bounding resource's peak reached at the predicted time.
    pub fn percent_of_peak(&self) -> Option<f64> {
        let b = self.bound()?;
        let i = Bound::ALL.iter().position(|x| *x == b)?;
        (self.ms > 0.0).then(|| 100.0 * self.ideal[i] / self.ms)
    }

    fn add(&mut self, p: &Prediction, c: &Counters) {
        self.ms += p.ms;
        for (a, b) in self.ideal.iter_mut().zip(p.ideal) {
            *a += b;
        }
        self.launches += 1;
        let g = &c.global_load;
        self.loads.requests += g.requests;
        self.loads.sectors += g.sectors;
        self.loads.ideal += g.ideal;
        self.loads.bytes += g.bytes;
        let s = c.shared();
        self.shared.requests += s.requests;
        self.shared.wavefronts += s.wavefronts;
        self.shared.ideal += s.ideal;
        self.dram_bytes += c.unique_read + c.unique_written;
    }
}

/// One layer's row.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPrediction {
    /// Layer name (`enc1_1` … `adam`).
    pub name: String,
    /// The forward pass.
    pub forward: PassPrediction,
    /// The backward pass (the loss and the optimizer step in their rows).
    pub backward: PassPrediction,
}

/// One traced launch, predicted.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchRow {
    /// Layer and pass it belongs to.
    pub layer: String,
    /// `forward` or `backward`.
    pub pass: &'static str,
    /// The trace.
    pub trace: LaunchTrace,
    /// The prediction.
    pub prediction: Prediction,
}

/// What [`run`] predicted.
#[derive(Clone, Debug)]
pub struct PredictReport {
    /// The options.
    pub options: PredictOptions,
    /// Per layer, in table order.
    pub layers: Vec<LayerPrediction>,
    /// Every launch, in order.
    pub launches: Vec<LaunchRow>,
    /// Where the SASS came from, or why there is none.
    pub sass_note: String,
    /// Wall time of the emulation and the model, seconds.
    pub seconds: f64,
    /// Parameters of the model.
    pub parameters: usize,
}

impl PredictReport {
    /// Predicted training step (forward, loss, backward, Adam), ms.
    pub fn step_ms(&self) -> f64 {
        self.layers.iter().map(|l| l.forward.ms + l.backward.ms).sum()
    }
    /// Predicted inference pass (the forward pass), ms.
    pub fn forward_ms(&self) -> f64 {
        self.layers.iter().map(|l| l.forward.ms).sum()
    }
    /// Predicted training throughput.
    pub fn train_images_per_s(&self) -> f64 {
        self.options.batch as f64 * 1e3 / self.step_ms()
    }
    /// Predicted inference throughput at the same batch.
    pub fn infer_images_per_s(&self) -> f64 {
        self.options.batch as f64 * 1e3 / self.forward_ms()
    }
    /// Blocks that ran and blocks in all, over every launch.
    pub fn sampled_blocks(&self) -> (u64, u64) {
        self.launches.iter().fold((0, 0), |(a, b), l| (a + l.trace.sampled as u64, b + l.trace.blocks))
    }

    /// Checks that no layer pass is predicted faster than its FLOPs at the tensor
    /// peak or its unique bytes at the DRAM bandwidth allow; the offending rows.
    pub fn floor_violations(&self) -> Vec<String> {
        let g = self.options.gpu;
        let mut bad = Vec::new();
        for l in &self.layers {
            for (pass, p) in [("forward", &l.forward), ("backward", &l.backward)] {
                let flops_ms = 2.0 * p.macs as f64 / (g.tensor_tflops * 1e12) * 1e3;
                let dram_ms = p.dram_bytes / (g.dram_gbs * 1e9) * 1e3;
                let floor = flops_ms.max(dram_ms);
                if p.ms < floor * (1.0 - 1e-9) {
                    bad.push(format!("{} {pass}: {:.4} ms < floor {:.4} ms", l.name, p.ms, floor));
                }
            }
        }
        bad
    }
}

/// Which launches each layer pass issued: (layer, pass, first launch, end, MACs).
struct Tagger<'a> {
    emu: &'a Emu,
    open: Option<(Layer, Pass, usize, usize)>,
    spans: Vec<(Layer, Pass, usize, usize, usize)>,
}

impl LayerHook for Tagger<'_> {
    fn begin(&mut self, layer: Layer, pass: Pass, macs: usize) {
        self.open = Some((layer, pass, self.emu.traced_launches(), macs));
    }
    fn end(&mut self, layer: Layer, pass: Pass) {
        if let Some((l, p, start, macs)) = self.open.take() {
            debug_assert_eq!((l, p), (layer, pass));
            self.spans.push((l, p, start, self.emu.traced_launches(), macs));
        }
    }
}

/// One training step's launches, grouped by the layer pass that issued them.
pub struct TracedStep {
    /// (layer, pass, the pass's MACs, its launches) in issue order; a layer bracketed
    /// twice in one pass (head_mid) has two entries.
    pub passes: Vec<(Layer, Pass, usize, Vec<LaunchTrace>)>,
    /// Parameters of the model.
    pub parameters: usize,
}

/// One training step of UNet16 (`width`, `batch` × `size`², random weights and
/// data) on a traced emulator with `config`, the convolutions in `precision`.
pub fn trace_step(
    config: TraceConfig,
    precision: Precision,
    batch: usize,
    size: usize,
    width: f64,
    seed: u64,
) -> Result<TracedStep> {
    let mut be = Kernels::new(Emu::traced(config));
    be.precision = precision;
    let mut t = Trainer::new(&be, batch, size, width, seed)?;
    be.exec.take_traces();
    let mut tagger = Tagger { emu: &be.exec, open: None, spans: Vec::new() };
    t.train_step(&be, &mut tagger)?;
    let spans = std::mem::take(&mut tagger.spans);
    let mut traces = be.exec.take_traces().into_iter();
    let mut passes = Vec::with_capacity(spans.len());
    let mut at = 0;
    for (layer, pass, a, b, macs) in spans {
        if a < at || b < a {
            return Err(Error::Predict("launch bookkeeping out of order".into()));
        }
        // Launches between layer brackets (none today) are skipped.
        traces.by_ref().take(a - at).for_each(drop);
        passes.push((layer, pass, macs, traces.by_ref().take(b - a).collect()));
        at = b;
    }
    Ok(TracedStep { passes, parameters: t.model.table.len })
}

/// Traces one training step on the emulator and predicts it on `o.gpu`.
pub fn run(o: &PredictOptions) -> Result<PredictReport> {
    let start = Instant::now();
    let config = TraceConfig { sampling: Sampling::Sample(o.max_blocks), races: false };
    let step = trace_step(config, o.precision, o.batch, o.size, o.width, o.seed)?;
    let info = static_info(o.gpu.arch);

    let mut rows: HashMap<(Layer, Pass), PassPrediction> = HashMap::new();
    let mut launches = Vec::new();
    for (layer, pass, macs, traces) in step.passes {
        let row = rows.entry((layer, pass)).or_default();
        row.macs += macs as u64;
        for tr in traces {
            let p = predict(o.gpu, &demand(&tr, info.kernels.get(tr.kernel.name)));
            row.add(&p, &Counters::of(&tr, false));
            let pass_name = if pass == Pass::Forward { "forward" } else { "backward" };
            launches.push(LaunchRow { layer: layer.to_string(), pass: pass_name, trace: tr, prediction: p });
        }
    }
    let layers = Layer::all()
        .into_iter()
        .map(|l| LayerPrediction {
            name: l.to_string(),
            forward: rows.remove(&(l, Pass::Forward)).unwrap_or_default(),
            backward: rows.remove(&(l, Pass::Backward)).unwrap_or_default(),
        })
        .collect();
    let report = PredictReport {
        options: o.clone(),
        layers,
        launches,
        sass_note: info.note.clone(),
        seconds: start.elapsed().as_secs_f64(),
        parameters: step.parameters,
    };
    if let Some(v) = report.floor_violations().first() {
        return Err(Error::Predict(format!("performance model inconsistent: {v}")));
    }
    Ok(report)
}
