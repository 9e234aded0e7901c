//! The profile's report: what was measured, as a table and as JSON. The layout
//! and the keys are shared with `bench/pytorch_reference.py`, so lesionseg and
//! PyTorch can be compared line by line (and by a script).

use std::fmt::Write as _;

/// One row of the per-layer table (medians over the hooked steps).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRow {
    /// Stable layer name (`enc1_1`, `pool1`, … `loss`, `adam`).
    pub name: String,
    /// Forward wall time, ms.
    pub forward_ms: f64,
    /// Backward wall time (loss and optimizer included in their rows), ms.
    pub backward_ms: f64,
    /// Multiply-accumulates of the forward pass.
    pub forward_macs: u64,
    /// Multiply-accumulates of the backward pass (input and weight gradients).
    pub backward_macs: u64,
}

impl LayerRow {
    /// Forward + backward, ms.
    pub fn total_ms(&self) -> f64 {
        self.forward_ms + self.backward_ms
    }
}

/// GFLOP/s of `macs` multiply-accumulates in `ms` (2 FLOPs each); `None` without work.
pub fn gflops(macs: u64, ms: f64) -> Option<f64> {
    (macs > 0 && ms > 0.0).then(|| 2.0 * macs as f64 / (ms * 1e6))
}

/// Planned memory, bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    /// The activation arena.
    pub activations: u64,
    /// Its gradient twin.
    pub activation_grads: u64,
    /// Target masks.
    pub targets: u64,
    /// Parameters.
    pub parameters: u64,
    /// Parameter gradients.
    pub gradients: u64,
    /// Adam's two moment buffers.
    pub optimizer: u64,
    /// The process's peak resident set (Linux), which adds op scratch and code.
    pub process_peak_rss: Option<u64>,
    /// Device memory in use on the whole GPU after the timed steps (ours, op
    /// workspaces the stream-ordered allocator keeps, the CUDA context, and any
    /// other process's); `None` on the CPU.
    pub device_in_use: Option<u64>,
    /// The inference arena (tensors sharing memory by lifetime; no gradients).
    pub inference_activations: u64,
    /// The allocator during inference (parameters, arena, workspaces): `None`
    /// where the backend does not count (the CPU).
    pub inference: Option<Allocated>,
    /// The allocator during training (everything above plus gradients, Adam,
    /// targets, workspaces).
    pub training: Option<Allocated>,
}

/// What the backend's allocator did in one phase of the profile, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocated {
    /// The most bytes allocated at once (device memory at its peak, from our buffers).
    pub peak: u64,
    /// Bytes allocated per timed iteration after the warm-up (0: nothing is
    /// allocated in the steady state).
    pub per_iteration: u64,
}

impl Memory {
    /// Everything planned (not the process peak).
    pub fn total(&self) -> u64 {
        self.activations + self.activation_grads + self.targets + self.parameters + self.gradients + self.optimizer
    }
}

/// What [`super::run`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileReport {
    /// `lesionseg` (PyTorch's script writes `pytorch`).
    pub engine: String,
    /// Backend name.
    pub device: String,
    /// Host threads (rayon's pool).
    pub threads: usize,
    /// Images per batch.
    pub batch: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Channel width factor.
    pub width_factor: f64,
    /// Parameter count.
    pub parameters: usize,
    /// Untimed steps.
    pub warmup: usize,
    /// Each timed training step, ms.
    pub step_ms: Vec<f64>,
    /// Each timed inference pass, ms.
    pub forward_ms: Vec<f64>,
    /// Per-layer breakdown in [`crate::model::unet::Layer::all`] order (empty without `layers`).
    pub layers: Vec<LayerRow>,
    /// Peak GFLOP/s the percentages refer to.
    pub peak_gflops: Option<f64>,
    /// Where the peak came from.
    pub peak_source: String,
    /// Planned memory.
    pub memory: Memory,
    /// The last step's loss (a sanity check: finite).
    pub loss: f64,
    /// Kernels were not run (`Emu::memory_only`): only the memory figures hold.
    pub memory_only: bool,
}

/// Median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

impl ProfileReport {
    /// Median training step, ms.
    pub fn step_median_ms(&self) -> f64 {
        median(&self.step_ms)
    }
    /// Median inference pass, ms.
    pub fn forward_median_ms(&self) -> f64 {
        median(&self.forward_ms)
    }
    /// Training throughput at the median step.
    pub fn train_images_per_s(&self) -> f64 {
        self.batch as f64 * 1e3 / self.step_median_ms()
    }
    /// Inference throughput at the median pass.
    pub fn infer_images_per_s(&self) -> f64 {
        self.batch as f64 * 1e3 / self.forward_median_ms()
    }
}

/// The report as a text table (the layout `bench/pytorch_reference.py` prints too).
pub fn format_table(r: &ProfileReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} profile: {}, {} threads | batch {} x {}x{} | width {} ({:.2} M parameters)",
        r.engine,
        r.device,
        r.threads,
        r.batch,
        r.height,
        r.width,
        r.width_factor,
        r.parameters as f64 / 1e6
    );
    let peak = r.peak_gflops.map_or("peak unknown".to_string(), |p| format!("peak {p:.1} GFLOP/s"));
    let _ = writeln!(s, "{} warm-up + {} timed steps; {peak} ({})", r.warmup, r.step_ms.len(), r.peak_source);
    if !r.layers.is_empty() {
        s.push('\n');
        s += &layer_table(r);
    }
    let (step, fwd) = (r.step_median_ms(), r.forward_median_ms());
    if r.memory_only {
        s.push_str("\nkernels not run (memory only): no times; the allocator's figures below are exact\n");
    } else {
        let _ = writeln!(
            s,
            "\ntraining step  {step:9.1} ms (median of {}: {}), {:.2} images/s",
            r.step_ms.len(),
            spread(&r.step_ms),
            r.train_images_per_s()
        );
        let _ = writeln!(
            s,
            "inference      {fwd:9.1} ms (median of {}: {}), {:.2} images/s",
            r.forward_ms.len(),
            spread(&r.forward_ms),
            r.infer_images_per_s()
        );
    }
    let m = &r.memory;
    let _ = write!(
        s,
        "memory         activations {} + their gradients {} + targets {}, parameters {}, gradients {}, Adam {} = {} planned",
        bytes(m.activations),
        bytes(m.activation_grads),
        bytes(m.targets),
        bytes(m.parameters),
        bytes(m.gradients),
        bytes(m.optimizer),
        bytes(m.total())
    );
    if let Some(rss) = m.process_peak_rss {
        let _ = write!(s, "; process peak RSS {}", bytes(rss));
    }
    if let Some(used) = m.device_in_use {
        let _ = write!(s, "; GPU memory in use {} (whole device)", bytes(used));
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "               inference: parameters {} + activations {} (shared arena, no gradients) = {} planned",
        bytes(m.parameters),
        bytes(m.inference_activations),
        bytes(m.parameters + m.inference_activations)
    );
    for (what, a, per) in [("training ", m.training, "step"), ("inference", m.inference, "pass")] {
        match a {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "peak {what} {} allocated (batch {}), {} B allocated per {per} after warm-up",
                    bytes(a.peak),
                    r.batch,
                    a.per_iteration
                );
            }
            None => {
                let _ = writeln!(s, "peak {what} not counted on {} (host memory; see the planned sizes)", r.device);
            }
        }
    }
    s
}

fn layer_table(r: &ProfileReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<13} {:>9} {:>9} {:>8} {:>9} {:>9} {:>7} {:>7}",
        "layer", "fwd ms", "bwd ms", "GMAC", "fwd GF/s", "bwd GF/s", "share", "% peak"
    );
    let total: f64 = r.layers.iter().map(LayerRow::total_ms).sum();
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let mut line = |name: &str, f_ms: f64, b_ms: f64, f_macs: u64, b_macs: u64| {
        let all = gflops(f_macs + b_macs, f_ms + b_ms);
        let pct = all.zip(r.peak_gflops).map(|(a, p)| 100.0 * a / p);
        let _ = writeln!(
            s,
            "{name:<13} {f_ms:>9.2} {b_ms:>9.2} {:>8.3} {:>9} {:>9} {:>6.1}% {:>7}",
            f_macs as f64 / 1e9,
            opt(gflops(f_macs, f_ms), 1),
            opt(gflops(b_macs, b_ms), 1),
            100.0 * (f_ms + b_ms) / total,
            opt(pct, 1)
        );
    };
    for l in &r.layers {
        line(&l.name, l.forward_ms, l.backward_ms, l.forward_macs, l.backward_macs);
    }
    let sum = |f: fn(&LayerRow) -> f64| r.layers.iter().map(f).sum::<f64>();
    let sum_macs = |f: fn(&LayerRow) -> u64| r.layers.iter().map(f).sum::<u64>();
    line(
        "all layers",
        sum(|l| l.forward_ms),
        sum(|l| l.backward_ms),
        sum_macs(|l| l.forward_macs),
        sum_macs(|l| l.backward_macs),
    );
    s
}

/// `min … max` of samples.
fn spread(v: &[f64]) -> String {
    let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    format!("{lo:.1} … {hi:.1}")
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    match b {
        _ if b >= (1u64 << 30) as f64 => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        _ if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        _ => format!("{:.1} KiB", b / 1024.0),
    }
}

/// The report as one JSON object (the keys `bench/pytorch_reference.py --json`
/// writes too; numbers that are not finite become `null`).
pub fn to_json(r: &ProfileReport) -> String {
    let num = |v: f64| if v.is_finite() { format!("{v}") } else { "null".to_string() };
    let list = |v: &[f64]| format!("[{}]", v.iter().map(|&x| num(x)).collect::<Vec<_>>().join(", "));
    let opt = |v: Option<f64>| v.map_or("null".to_string(), num);
    let layers: Vec<String> = r
        .layers
        .iter()
        .map(|l| {
            format!(
                "{{\"name\": {}, \"forward_ms\": {}, \"backward_ms\": {}, \"forward_macs\": {}, \"backward_macs\": {}}}",
                json_str(&l.name),
                num(l.forward_ms),
                num(l.backward_ms),
                l.forward_macs,
                l.backward_macs
            )
        })
        .collect();
    let m = &r.memory;
    let phase = |a: Option<Allocated>| {
        a.map_or("null".to_string(), |a| format!("{{\"peak\": {}, \"per_iteration\": {}}}", a.peak, a.per_iteration))
    };
    let memory = format!(
        "{{\"activations\": {}, \"activation_grads\": {}, \"targets\": {}, \"parameters\": {}, \"gradients\": {}, \
         \"optimizer\": {}, \"total\": {}, \"process_peak_rss\": {}, \"device_in_use\": {}, \
         \"inference_activations\": {}, \"training_allocated\": {}, \"inference_allocated\": {}}}",
        m.activations,
        m.activation_grads,
        m.targets,
        m.parameters,
        m.gradients,
        m.optimizer,
        m.total(),
        m.process_peak_rss.map_or("null".to_string(), |v| v.to_string()),
        m.device_in_use.map_or("null".to_string(), |v| v.to_string()),
        m.inference_activations,
        phase(m.training),
        phase(m.inference)
    );
    let fields = [
        ("engine", json_str(&r.engine)),
        ("mode", json_str("fp32")),
        ("device", json_str(&r.device)),
        ("threads", r.threads.to_string()),
        ("batch", r.batch.to_string()),
        ("height", r.height.to_string()),
        ("width", r.width.to_string()),
        ("width_factor", num(r.width_factor)),
        ("parameters", r.parameters.to_string()),
        ("warmup", r.warmup.to_string()),
        ("step_ms", list(&r.step_ms)),
        ("step_median_ms", num(r.step_median_ms())),
        ("forward_ms", list(&r.forward_ms)),
        ("forward_median_ms", num(r.forward_median_ms())),
        ("train_images_per_s", num(r.train_images_per_s())),
        ("infer_images_per_s", num(r.infer_images_per_s())),
        ("peak_gflops", opt(r.peak_gflops)),
        ("peak_source", json_str(&r.peak_source)),
        ("loss", num(r.loss)),
        ("memory", memory),
        ("layers", format!("[{}]", layers.join(",\n    "))),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("  \"{k}\": {v}")).collect();
    format!("{{\n{}\n}}\n", body.join(",\n"))
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
