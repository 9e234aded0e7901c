//! The `--predict` report as a table and as JSON.

use std::fmt::Write as _;

use super::predict::{PassPrediction, PredictReport};

fn cells(p: &PassPrediction) -> String {
    if p.launches == 0 {
        return format!("{:>9} {:>6} {:>5} {:>5} {:>5}", "-", "", "", "", "");
    }
    let pct = p.percent_of_peak().map_or("-".into(), |v| format!("{v:.0}%"));
    let coal = p.loads.efficiency().map_or("-".into(), |v| format!("{:.0}%", 100.0 * v));
    let bank = p.shared.degree().map_or("-".into(), |v| format!("{v:.2}"));
    format!("{:>9.4} {:>6} {:>5} {:>5} {:>5}", p.ms, p.bound().map_or("-", |b| b.name()), pct, coal, bank)
}

/// The per-layer table, the totals and how the numbers were made.
pub fn format_table(r: &PredictReport) -> String {
    let (o, g) = (&r.options, r.options.gpu);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "lesionseg predicted on {} ({}, {} SMs at {:.2} GHz; tensor {:.0} TFLOP/s, FP32 {:.1} TFLOP/s, DRAM {:.0} \
         GB/s, L2 {:.0} GB/s)",
        g.name, g.arch, g.sms, g.clock_ghz, g.tensor_tflops, g.fp32_tflops, g.dram_gbs, g.l2_gbs
    );
    let (ran, all) = r.sampled_blocks();
    let _ = writeln!(
        s,
        "batch {} x {}x{} | width {} ({:.2} M parameters) | {} convolutions | {} launches, {ran} of {all} blocks \
         emulated ({:.1} s)",
        o.batch,
        o.size,
        o.size,
        o.width,
        r.parameters as f64 / 1e6,
        o.precision,
        r.launches.len(),
        r.seconds
    );
    let _ = writeln!(s, "{}", r.sass_note);
    let _ = writeln!(
        s,
        "\n{:<13} {:>8} | {:>9} {:>6} {:>5} {:>5} {:>5} | {:>9} {:>6} {:>5} {:>5} {:>5}",
        "layer", "GMAC", "fwd ms", "bound", "%peak", "coal", "bank", "bwd ms", "bound", "%peak", "coal", "bank"
    );
    for l in &r.layers {
        let macs = (l.forward.macs + l.backward.macs) as f64 / 1e9;
        let _ = writeln!(s, "{:<13} {:>8.3} | {} | {}", l.name, macs, cells(&l.forward), cells(&l.backward));
    }
    let _ = writeln!(
        s,
        "\npredicted training step {:9.3} ms, {:8.1} images/s (batch {})",
        r.step_ms(),
        r.train_images_per_s(),
        o.batch
    );
    let _ = writeln!(
        s,
        "predicted inference     {:9.3} ms, {:8.1} images/s (batch {})",
        r.forward_ms(),
        r.infer_images_per_s(),
        o.batch
    );
    s += "\nms: the larger of the launches' bounds, summed; bound: the resource with the most summed ideal time \
          (tensor, fp32, DRAM, L2, smem, issue); %peak: that resource's ideal time / the predicted time; coal: \
          global-load coalescing (ideal sectors / sectors touched); bank: shared-memory wavefronts / ideal (1.00 = \
          conflict-free). Not modelled: latency, launch overhead, L1 hits, DRAM re-reads, clocks below boost, \
          mma.sync below the wgmma peak on Hopper (README, \"Predicting a GPU without one\").\n";
    s
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

fn pass_json(p: &PassPrediction) -> String {
    let opt = |v: Option<f64>| v.map_or("null".into(), num);
    format!(
        "{{\"ms\": {}, \"bound\": {}, \"percent_of_peak\": {}, \"coalescing\": {}, \"bank_conflict_degree\": {}, \
         \"launches\": {}, \"macs\": {}, \"dram_bytes\": {}}}",
        num(p.ms),
        p.bound().map_or("null".into(), |b| format!("\"{}\"", b.name())),
        opt(p.percent_of_peak()),
        opt(p.loads.efficiency()),
        opt(p.shared.degree()),
        p.launches,
        p.macs,
        num(p.dram_bytes)
    )
}

/// The report as one JSON object: the GPU, the totals, every layer and every launch.
pub fn to_json(r: &PredictReport) -> String {
    let (o, g) = (&r.options, r.options.gpu);
    let layers: Vec<String> = r
        .layers
        .iter()
        .map(|l| {
            format!(
                "{{\"name\": \"{}\", \"forward\": {}, \"backward\": {}}}",
                l.name,
                pass_json(&l.forward),
                pass_json(&l.backward)
            )
        })
        .collect();
    let launches: Vec<String> = r
        .launches
        .iter()
        .map(|l| {
            let (t, p) = (&l.trace, &l.prediction);
            format!(
                "{{\"layer\": \"{}\", \"pass\": \"{}\", \"kernel\": \"{}\", \"grid\": {:?}, \"block\": {:?}, \
                 \"blocks_emulated\": {}, \"ms\": {}, \"bound\": \"{}\", \"bounds_ms\": [{}], \"blocks_per_sm\": {}, \
                 \"waves\": {}}}",
                l.layer,
                l.pass,
                t.kernel.name,
                t.geometry.grid,
                t.geometry.block,
                t.sampled,
                num(p.ms),
                p.bound.name(),
                p.times.iter().map(|&v| num(v)).collect::<Vec<_>>().join(", "),
                p.occupancy.blocks,
                p.waves
            )
        })
        .collect();
    let (ran, all) = r.sampled_blocks();
    format!(
        "{{\n  \"engine\": \"lesionseg\",\n  \"mode\": \"predict\",\n  \"gpu\": \"{}\",\n  \"gpu_name\": \"{}\",\n  \
         \"arch\": \"{}\",\n  \"precision\": \"{}\",\n  \"batch\": {},\n  \"height\": {},\n  \"width\": {},\n  \
         \"width_factor\": {},\n  \"step_ms\": {},\n  \"forward_ms\": {},\n  \"train_images_per_s\": {},\n  \
         \"infer_images_per_s\": {},\n  \"blocks_emulated\": {ran},\n  \"blocks\": {all},\n  \"seconds\": {},\n  \
         \"sass\": \"{}\",\n  \"layers\": [\n    {}\n  ],\n  \"launches\": [\n    {}\n  ]\n}}\n",
        g.key,
        g.name,
        g.arch,
        o.precision,
        o.batch,
        o.size,
        o.size,
        num(o.width),
        num(r.step_ms()),
        num(r.forward_ms()),
        num(r.train_images_per_s()),
        num(r.infer_images_per_s()),
        num(r.seconds),
        r.sass_note.replace('\\', "\\\\").replace('"', "\\\""),
        layers.join(",\n    "),
        launches.join(",\n    ")
    )
}
