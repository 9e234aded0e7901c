//! The library side of `lesionseg profile`: time training steps and inference of
//! UNet16 on random data (random weights of the chosen width), then break a step
//! down layer by layer.
//!
//! What is measured, in order:
//! 1. on the CPU, the machine's practical peak: a large f32 GEMM with the `gemm`
//!    crate on all rayon threads (the percentage column is relative to it);
//! 2. inference as `predict` runs it (no gradients, the shared inference arena),
//!    alone on the device: one untimed pass, then `steps` timed passes;
//! 3. `warmup` untimed training steps (first-touch page faults, caches, GPU JIT),
//!    then `steps` timed training steps (forward, loss, backward, Adam), with no
//!    hook attached: the headline numbers;
//! 4. with `layers`, `steps` more training steps with a [`LayerHook`] that puts a
//!    backend mark ([`Backend::mark`]: a CUDA event on a GPU, the wall clock on the
//!    CPU) before and after every layer; per-layer figures are medians over them.
//!
//! Around 2 and 3 the backend's allocator accounting (the GPU and the emulator count
//! every buffer, the op workspaces included) gives each phase's peak and the bytes
//! allocated per timed iteration, which is 0 once warmed up.
//!
//! The same table and JSON are printed by `bench/pytorch_reference.py` for PyTorch,
//! so the two engines can be compared line by line.

use std::collections::HashMap;
use std::time::Instant;

use rand::{Rng, SeedableRng};

use crate::backend::{AdamParams, At, Backend, LossParts};
use crate::error::{Error, Result};
use crate::model::init::default_init;
use crate::model::unet::{Layer, LayerHook, NoHook, Pass};
use crate::model::{Plan, UNet16, UNetConfig, Workspace};
use crate::nvtx::{self, Nvtx, Ranges};

mod memory;
pub mod predict;
mod predict_table;
mod report;
pub use memory::Inference;
use memory::{allocator_figures, process_peak_rss};
pub use predict_table::{format_table as format_prediction, to_json as prediction_json};
pub use report::{format_table, gflops, median, to_json, Allocated, LayerRow, Memory, ProfileReport};

/// What to profile.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    /// Images per batch.
    pub batch: usize,
    /// Input height and width (a multiple of 32).
    pub size: usize,
    /// Channel width factor (1 = the paper's model).
    pub width: f64,
    /// Untimed training steps first.
    pub warmup: usize,
    /// Timed training steps and inference passes (and hooked steps for the layers).
    pub steps: usize,
    /// Break the step down per layer (costs `steps` more steps).
    pub layers: bool,
    /// Seed of the weights and the data.
    pub seed: u64,
    /// Peak GFLOP/s for the percentage column; `None` measures it on the CPU and
    /// looks a GPU up in [`gpu_peak`] (when there is a layer table to use it).
    pub peak_gflops: Option<f64>,
    /// Put every layer pass and every timed step in an NVTX range (when a tool such
    /// as Nsight Systems is attached; see [`crate::nvtx`]).
    pub nvtx: bool,
    /// The backend runs no kernels (`Emu::memory_only`): only the memory figures
    /// mean something, so only they are reported.
    pub memory_only: bool,
}

/// `profile`'s defaults, shared with the command line's `--help`.
pub mod defaults {
    /// Images per batch.
    pub const BATCH: usize = 1;
    /// Input size (square).
    pub const SIZE: usize = 256;
    /// Channel width factor.
    pub const WIDTH: f64 = 1.0;
    /// Untimed training steps.
    pub const WARMUP: usize = 1;
    /// Timed steps.
    pub const STEPS: usize = 3;
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            batch: defaults::BATCH,
            size: defaults::SIZE,
            width: defaults::WIDTH,
            warmup: defaults::WARMUP,
            steps: defaults::STEPS,
            layers: true,
            seed: 2018,
            peak_gflops: None,
            nvtx: false,
            memory_only: false,
        }
    }
}

/// A model, its workspace and Adam state on fixed random data: the unit the
/// profiler and the end-to-end benchmarks time.
pub struct Trainer<B: Backend> {
    /// The model (random weights).
    pub model: UNet16<B>,
    /// Buffers for the batch, input and targets uploaded.
    pub ws: Workspace<B>,
    adam_m: B::Buf,
    adam_v: B::Buf,
    step: u64,
}

impl<B: Backend> Trainer<B> {
    /// A model of `width` with default-initialised weights and a random batch of
    /// `batch` images of `size`×`size` (inputs uniform in ±2, rectangular masks).
    pub fn new(be: &B, batch: usize, size: usize, width: f64, seed: u64) -> Result<Self> {
        let cfg = UNetConfig::scaled(width)?;
        let table = crate::model::ParamTable::new(&cfg);
        let model = UNet16::new(be, cfg, &default_init(&table, seed))?;
        let ws = model.workspace(be, batch, size, size)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let input: Vec<f32> = (0..ws.plan.input.len()).map(|_| rng.gen_range(-2.0..2.0)).collect();
        be.upload(&ws.acts, ws.plan.input.off, &input)?;
        be.upload(&ws.target, 0, &random_masks(&mut rng, batch, size, cfg.classes))?;
        let (adam_m, adam_v) = (be.alloc(table.len)?, be.alloc(table.len)?);
        Ok(Trainer { model, ws, adam_m, adam_v, step: 0 })
    }

    /// One training step: forward, loss, backward and an Adam step (lr 1e-3).
    pub fn train_step(&mut self, be: &B, hook: &mut dyn LayerHook) -> Result<LossParts> {
        self.model.forward_profiled(be, &self.ws, hook)?;
        let loss = self.model.backward_profiled(be, &self.ws, false, hook)?;
        self.step += 1;
        let m = &self.model;
        let p = AdamParams { len: m.table.len, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: self.step };
        hook.begin(Layer::Adam, Pass::Backward, 0);
        be.adam(At::new(&m.params, 0), At::new(&self.adam_m, 0), At::new(&self.adam_v, 0), At::new(&m.grads, 0), &p)?;
        hook.end(Layer::Adam, Pass::Backward);
        Ok(loss)
    }

    /// One inference pass (the forward pass alone).
    pub fn infer(&self, be: &B, hook: &mut dyn LayerHook) -> Result<()> {
        self.model.forward_profiled(be, &self.ws, hook)
    }

    /// Waits for the backend's queued work (a one-element download, which every
    /// backend completes in order).
    pub fn fence(&self, be: &B) -> Result<()> {
        be.download(&self.model.params, 0, &mut [0.0])
    }

    /// The planned buffers' sizes, and what the process and the device use now.
    pub fn memory(&self, be: &B) -> Memory {
        let f = std::mem::size_of::<f32>() as u64;
        let (arena, params) = (self.ws.plan.len as u64 * f, self.model.table.len as u64 * f);
        let p = &self.ws.plan;
        Memory {
            activations: arena,
            activation_grads: arena,
            targets: (p.n * p.h * p.w * self.model.cfg.classes) as u64 * f,
            parameters: params,
            gradients: params,
            optimizer: 2 * params,
            process_peak_rss: process_peak_rss(),
            device_in_use: be.device_memory_in_use(),
            ..Memory::default()
        }
    }
}

/// Per channel of each image, a random rectangle, or nothing one time in three.
fn random_masks(rng: &mut impl Rng, n: usize, size: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0.0; n * size * size * k];
    for img in 0..n {
        for c in 0..k {
            if rng.gen_range(0..3) == 0 {
                continue;
            }
            let (y0, x0) = (rng.gen_range(0..size / 2), rng.gen_range(0..size / 2));
            let (y1, x1) = (y0 + rng.gen_range(1..=size / 2), x0 + rng.gen_range(1..=size / 2));
            for y in y0..y1 {
                for x in x0..x1 {
                    t[((img * size + y) * size + x) * k + c] = 1.0;
                }
            }
        }
    }
    t
}

/// A layer pass: what the profile times.
type Key = (Layer, Pass);

/// Times each layer with the backend's marks (CUDA events on a GPU, the wall clock
/// on the CPU): a mark where a layer's work begins and one where it ends, read
/// back when the step is over, so timing adds no wait between layers.
struct Recorder<'a, B: Backend> {
    be: &'a B,
    /// The open layer: its key and start mark.
    open: Option<(Key, B::Mark)>,
    /// (layer, pass, start, end) of the current step, in order.
    marks: Vec<(Key, B::Mark, B::Mark)>,
    /// (layer, pass) → MACs, counted in the first step.
    macs: HashMap<Key, usize>,
    /// Every finished step: (layer, pass) → milliseconds.
    steps: Vec<HashMap<Key, f64>>,
    /// The first failed mark (a hook cannot return it): reported by `finish_step`.
    error: Option<Error>,
}

impl<'a, B: Backend> Recorder<'a, B> {
    fn new(be: &'a B) -> Self {
        Recorder { be, open: None, marks: Vec::new(), macs: HashMap::new(), steps: Vec::new(), error: None }
    }

    fn mark(&mut self) -> Option<B::Mark> {
        self.be.mark().map_err(|e| self.error.get_or_insert(e)).ok()
    }

    /// Reads the current step's marks (waiting for its work) and files its times.
    fn finish_step(&mut self) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut step = HashMap::new();
        for (key, start, end) in self.marks.drain(..) {
            // A layer bracketed twice in one pass (head_mid: conv + pool) adds up.
            *step.entry(key).or_insert(0.0) += self.be.elapsed_ms(&start, &end)?;
        }
        self.steps.push(step);
        Ok(())
    }

    /// Medians over the finished steps, in table order.
    fn rows(&self) -> Vec<LayerRow> {
        let stat = |l: Layer, pass: Pass| -> (f64, u64) {
            let ms: Vec<f64> = self.steps.iter().filter_map(|s| s.get(&(l, pass)).copied()).collect();
            let macs = self.macs.get(&(l, pass)).map_or(0, |&m| m as u64);
            (if ms.is_empty() { 0.0 } else { median(&ms) }, macs)
        };
        Layer::all()
            .into_iter()
            .map(|l| {
                let ((forward_ms, forward_macs), (backward_ms, backward_macs)) =
                    (stat(l, Pass::Forward), stat(l, Pass::Backward));
                LayerRow { name: l.to_string(), forward_ms, backward_ms, forward_macs, backward_macs }
            })
            .collect()
    }
}

impl<B: Backend> LayerHook for Recorder<'_, B> {
    fn begin(&mut self, layer: Layer, pass: Pass, macs: usize) {
        if self.steps.is_empty() {
            *self.macs.entry((layer, pass)).or_insert(0) += macs;
        }
        self.open = self.mark().map(|m| ((layer, pass), m));
    }

    fn end(&mut self, layer: Layer, pass: Pass) {
        let Some((key, start)) = self.open.take() else { return };
        debug_assert_eq!(key, (layer, pass), "layer brackets do not nest");
        if let Some(end) = self.mark() {
            self.marks.push((key, start, end));
        }
    }
}

impl ProfileOptions {
    /// Checks every value against its range ([`crate::limits`]).
    pub fn validate(&self) -> Result<()> {
        use crate::limits::{BATCH_SIZE, NET_SIZE, PEAK_GFLOPS, STEPS, WARMUP, WIDTH};
        BATCH_SIZE.check(self.batch)?;
        NET_SIZE.check(self.size)?;
        WIDTH.check(self.width)?;
        WARMUP.check(self.warmup)?;
        STEPS.check(self.steps)?;
        self.peak_gflops.map(|p| PEAK_GFLOPS.check(p)).transpose()?;
        Ok(())
    }
}

/// Runs the profile of [`ProfileOptions`] on `be`.
pub fn run<B: Backend>(be: &B, o: &ProfileOptions) -> Result<ProfileReport> {
    o.validate()?;
    let (peak_gflops, peak_source) = match o.peak_gflops {
        Some(p) => (Some(p), "given".to_string()),
        // Only the layer table has a percentage column.
        None if !o.layers => (None, "not measured".to_string()),
        None if be.name() == "cpu" => {
            let (p, how) = measure_cpu_peak();
            (Some(p), how)
        }
        None => match gpu_peak(&be.describe()) {
            Some((p, what)) => (Some(p), what),
            None => (None, format!("unknown for {}", be.describe())),
        },
    };
    let nvtx = if o.nvtx { Nvtx::attached()? } else { None };
    let mut plain = Ranges { nvtx, inner: &mut NoHook };
    let allocated = |be: &B| be.memory_stats().map_or(0, |m| m.allocated);
    let live = |be: &B| be.memory_stats().map_or(0, |m| m.live);

    // Inference first, alone on the device, as `predict` runs it (its peak is its own).
    let (forward_ms, inference) = {
        be.reset_peak_memory();
        let base = live(be);
        let inf = Inference::new(be, o.batch, o.size, o.width, o.seed)?;
        // One untimed pass: first-touch, the kernels, the workspace's first plan.
        inf.infer(be, &mut plain)?;
        inf.fence(be)?;
        let before = allocated(be);
        let mut forward_ms = Vec::with_capacity(o.steps);
        for _ in 0..o.steps {
            let _r = nvtx::range(nvtx, c"inference");
            let start = Instant::now();
            inf.infer(be, &mut plain)?;
            inf.fence(be)?;
            forward_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        (forward_ms, allocator_figures(be, base, before, o.steps))
    };

    be.reset_peak_memory();
    let base = live(be);
    let mut t = Trainer::new(be, o.batch, o.size, o.width, o.seed)?;
    let mut loss = LossParts::default();
    {
        let _r = nvtx::range(nvtx, c"warm-up");
        for _ in 0..o.warmup {
            loss = t.train_step(be, &mut plain)?;
        }
        t.fence(be)?;
    }
    let before = allocated(be);
    let mut step_ms = Vec::with_capacity(o.steps);
    for _ in 0..o.steps {
        let _r = nvtx::range(nvtx, c"train_step");
        let start = Instant::now();
        loss = t.train_step(be, &mut plain)?;
        t.fence(be)?;
        step_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let training = allocator_figures(be, base, before, o.steps);
    let layers = if o.layers { profile_layers(be, &mut t, o.steps, nvtx)? } else { Vec::new() };
    Ok(ProfileReport {
        engine: "lesionseg".into(),
        device: be.describe(),
        threads: rayon::current_num_threads(),
        batch: o.batch,
        height: o.size,
        width: o.size,
        width_factor: o.width,
        parameters: t.model.table.len,
        warmup: o.warmup,
        step_ms,
        forward_ms,
        layers,
        peak_gflops,
        peak_source,
        memory: Memory {
            inference_activations: (Plan::inference(&t.model.cfg, o.batch, o.size, o.size)?.len * 4) as u64,
            inference,
            training,
            ..t.memory(be)
        },
        loss: loss.loss,
        memory_only: o.memory_only,
    })
}

/// `steps` hooked training steps; per-layer medians with each layer's MACs.
fn profile_layers<B: Backend>(be: &B, t: &mut Trainer<B>, steps: usize, nvtx: Option<&Nvtx>) -> Result<Vec<LayerRow>> {
    let mut rec = Recorder::new(be);
    for _ in 0..steps.max(1) {
        let _r = nvtx::range(nvtx, c"train_step (per-layer marks)");
        t.train_step(be, &mut Ranges { nvtx, inner: &mut rec })?;
        rec.finish_step()?;
    }
    Ok(rec.rows())
}

/// Datasheet fp32 peaks (non-tensor FMA throughput at boost clock, dense), TFLOP/s,
/// by a part of the name the driver reports; the first match wins, so variants come
/// before their family. Our kernels are fp32 SIMT, so this is the ceiling they aim at.
const GPU_FP32_TFLOPS: &[(&str, f64)] = &[
    ("GH200", 66.9),
    ("H200 NVL", 60.0),
    ("H200", 66.9),
    ("H100 PCIe", 51.2),
    ("H100 NVL", 60.0),
    ("H100", 66.9),
    ("H800 PCIe", 51.2),
    ("H800", 66.9),
    ("A100", 19.5),
    ("A800", 19.5),
    ("A40", 37.4),
    ("A30", 10.3),
    ("A10G", 31.2),
    ("A10", 31.2),
    ("L40S", 91.6),
    ("L40", 90.5),
    ("L4", 30.3),
    ("RTX 6000 Ada", 91.1),
    ("RTX 4090", 82.6),
    ("RTX 3090", 35.6),
    ("V100", 15.7),
    ("T4", 8.1),
];

/// Datasheet dense bf16 tensor-core peaks (f32 accumulate, boost clock, no
/// sparsity), TFLOP/s, as [`GPU_FP32_TFLOPS`]: the ceiling of `--precision bf16`.
const GPU_BF16_TFLOPS: &[(&str, f64)] = &[
    ("GH200", 989.4),
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("A40", 149.7),
    ("A30", 165.0),
    ("L40S", 362.0),
    ("L4", 121.0),
];

/// The peak in GFLOP/s of a GPU described as `desc` (`cuda: NVIDIA H100 80GB HBM3`,
/// with ` (bf16 convolutions)` for the tensor-core path), and the table entry it
/// matched with the kind of peak; `None` for a GPU not in the table.
pub fn gpu_peak(desc: &str) -> Option<(f64, String)> {
    let name = desc.strip_prefix("cuda: ")?;
    let (table, kind) = match name.strip_suffix(" (bf16 convolutions)") {
        Some(_) => (GPU_BF16_TFLOPS, "dense bf16 tensor-core"),
        None => (GPU_FP32_TFLOPS, "fp32 (non-tensor)"),
    };
    table
        .iter()
        .find(|(part, _)| name.contains(part))
        .map(|&(part, tf)| (tf * 1e3, format!("{kind} datasheet peak of the {part}")))
}

/// The practical f32 peak of this CPU: the best of 5 products of two 2048×2048
/// matrices with `gemm` on all rayon threads (after one untimed). GFLOP/s and a
/// description of how it was measured.
pub fn measure_cpu_peak() -> (f64, String) {
    const N: usize = 2048;
    let a: Vec<f32> = (0..N * N).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..N * N).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut c = vec![0f32; N * N];
    let threads = rayon::current_num_threads();
    let mut best = f64::INFINITY;
    for rep in 0..6 {
        let start = Instant::now();
        // SAFETY: a, b and c are N×N row-major (row stride N, column stride 1), all
        // in bounds; c is uniquely borrowed and read_dst = false never reads it.
        unsafe {
            gemm::gemm(
                N,
                N,
                N,
                c.as_mut_ptr(),
                1,
                N as isize,
                false,
                a.as_ptr(),
                1,
                N as isize,
                b.as_ptr(),
                1,
                N as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            )
        };
        if rep > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&c);
    let gf = 2.0 * (N * N * N) as f64 / best / 1e9;
    (gf, format!("f32 gemm {N}x{N}x{N}, {threads} threads, best of 5"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    #[test]
    fn gpu_peaks_come_from_the_table_by_name() {
        let peak = |d: &str| gpu_peak(d).map(|p| p.0);
        let entry = |d: &str| gpu_peak(d).map(|p| p.1);
        assert_eq!(peak("cuda: NVIDIA H100 80GB HBM3"), Some(66_900.0));
        assert_eq!(
            entry("cuda: NVIDIA H100 80GB HBM3").as_deref(),
            Some("fp32 (non-tensor) datasheet peak of the H100")
        );
        assert_eq!(peak("cuda: NVIDIA H100 PCIe"), Some(51_200.0));
        assert_eq!(peak("cuda: NVIDIA H200"), Some(66_900.0));
        assert!(entry("cuda: NVIDIA GH200 480GB").unwrap().ends_with("GH200"));
        assert!(entry("cuda: NVIDIA L4").unwrap().ends_with("L4"));
        assert!(entry("cuda: NVIDIA A100-SXM4-80GB").unwrap().ends_with("A100"));
        assert_eq!(peak("cuda: NVIDIA H100 80GB HBM3 (bf16 convolutions)"), Some(989_400.0));
        assert!(entry("cuda: NVIDIA H200 (bf16 convolutions)").unwrap().starts_with("dense bf16"));
        assert_eq!(peak("cuda: Some Future GPU"), None);
        assert_eq!(peak("cpu"), None);
        assert_eq!(peak("emu"), None);
        assert_eq!(peak("emu (bf16 convolutions)"), None);
    }

    #[test]
    fn tiny_profile_names_every_layer_and_counts_the_model_macs() {
        let o = ProfileOptions {
            size: 32,
            width: 0.125,
            warmup: 0,
            steps: 1,
            peak_gflops: Some(100.0),
            ..ProfileOptions::default()
        };
        let r = run(&Cpu, &o).unwrap();
        assert!(r.loss.is_finite());
        let names: Vec<&str> = r.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names.len(), 13 + 5 + 10 + 6);
        for want in ["enc1_1", "enc5_3", "pool5", "center_conv", "center_up", "dec2_up", "dec1", "final", "adam"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // enc1_1 skips its input gradient: backward = 1x forward; other convs 2x.
        let row = |n: &str| r.layers.iter().find(|l| l.name == n).unwrap();
        assert_eq!(row("enc1_1").backward_macs, row("enc1_1").forward_macs);
        assert_eq!(row("enc1_2").backward_macs, 2 * row("enc1_2").forward_macs);
        assert_eq!(row("enc1_2").forward_macs, 32 * 32 * 9 * 8 * 8);
        assert!(row("loss").backward_ms > 0.0 && row("loss").forward_ms == 0.0);
        let table = format_table(&r);
        assert!(table.contains("all layers") && table.contains("images/s"), "{table}");
        let json = to_json(&r);
        assert!(json.contains("\"name\": \"head_mid\"") && json.contains("\"step_median_ms\""), "{json}");
    }
}
