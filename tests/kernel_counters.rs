//! The real kernels' memory-access counters at the model's layer shapes: one training
//! step of the full-width UNet16 (batch 1, 64x64, every channel count of the paper's
//! model) on the access-tracing emulator, large launches sampled (corner, edge and
//! interior blocks). The per-kernel table is printed (with `--nocapture`) and written
//! to `target/tmp/kernel-counters.txt`, which `scripts/test.sh` shows at the end.
//!
//! The gate: in a tensor-core kernel (one that issues mma), the main loop must be
//! free of bank conflicts (wavefronts / ideal = 1 for every kind of shared access)
//! and its global loads at least 80% coalesced. Kernels are found by name at run
//! time, so renamed or new kernels are held to the same rule. Today's kernels miss
//! it in the ways listed in [`KNOWN`]: each entry is a measured figure that the
//! kernel must not get worse than, until it is fixed (then its entry goes). No
//! shared-memory race may appear in any kernel.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use lesionseg::backend::cuda::Precision;
use lesionseg::backend::emu::counters::Counters;
use lesionseg::backend::emu::trace::{symbolize, LaunchTrace, Sampling, TraceConfig};
use lesionseg::profile::predict::trace_step;

/// The gate's thresholds.
const MAX_DEGREE: f64 = 1.0;
const MIN_LOAD_EFFICIENCY: f64 = 0.8;

/// Which figure a known failure is about.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Figure {
    /// Worst bank-conflict degree of the main loop's shared accesses (at most this).
    Degree,
    /// Coalescing efficiency of the main loop's global loads (at least this).
    LoadEfficiency,
}

/// Known failures of the gate, measured at this test's shapes: (kernel, figure, the
/// measured value it must not get worse than, why). To be fixed with the tile
/// engine rework; a fixed kernel's entry is then removed.
const KNOWN: &[(&str, Figure, f64, &str)] = &[
    ("conv2d_fwd_f32_mma", Figure::LoadEfficiency, 0.381, "A gather: 16 B per lane, two lanes per pixel 64 B apart"),
    (
        "conv2d_bwd_data_f32_mma",
        Figure::LoadEfficiency,
        0.5,
        "flipped-weight quads: one lane per channel, K floats apart",
    ),
    ("conv2d_bwd_filter_f32_mma", Figure::LoadEfficiency, 0.707, "x and dy quads of 16 B, 4 lanes per pixel"),
];

/// Per kernel: the worst main-loop figures over its launches, and where.
#[derive(Default)]
struct Worst {
    launches: usize,
    blocks: (u64, u64),
    mma: f64,
    all: Counters,
    degree: Option<(f64, String)>,
    efficiency: Option<(f64, String)>,
}

fn add(sum: &mut Counters, c: &Counters) {
    let t = |a: &mut lesionseg::backend::emu::counters::Traffic, b: &lesionseg::backend::emu::counters::Traffic| {
        a.requests += b.requests;
        a.sectors += b.sectors;
        a.ideal += b.ideal;
        a.bytes += b.bytes;
    };
    t(&mut sum.global_load, &c.global_load);
    t(&mut sum.global_store, &c.global_store);
    for (a, b) in [
        (&mut sum.shared_load, &c.shared_load),
        (&mut sum.shared_store, &c.shared_store),
        (&mut sum.ldmatrix, &c.ldmatrix),
        (&mut sum.async_store, &c.async_store),
    ] {
        a.requests += b.requests;
        a.wavefronts += b.wavefronts;
        a.ideal += b.ideal;
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.0}%", 100.0 * v))
}
fn deg(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// The table of every kernel, and the tensor-core kernels' worst main-loop figures.
fn table(launches: &[(String, LaunchTrace)]) -> (String, BTreeMap<String, Worst>) {
    let mut by: BTreeMap<String, Worst> = BTreeMap::new();
    for (layer, t) in launches {
        let w = by.entry(t.kernel.name.to_string()).or_default();
        w.launches += 1;
        w.blocks.0 += t.sampled as u64;
        w.blocks.1 += t.blocks;
        w.mma += t.mma;
        add(&mut w.all, &Counters::of(t, false));
        let lp = Counters::of(t, true);
        if let Some(d) = lp.worst_degree() {
            if w.degree.as_ref().is_none_or(|(x, _)| d > *x) {
                w.degree = Some((d, layer.clone()));
            }
        }
        if let Some(e) = lp.global_load.efficiency() {
            if w.efficiency.as_ref().is_none_or(|(x, _)| e < *x) {
                w.efficiency = Some((e, layer.clone()));
            }
        }
    }
    let mut s = format!(
        "{:<30} {:>4} {:>12} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5} {:>5} {:>9} | main loop: {:>5} {:>6}  (worst layer)\n",
        "kernel", "runs", "blocks", "ld", "ld/req", "st", "LDS", "STS", "LDSM", "cpas", "mma", "bank", "ld"
    );
    for (k, w) in &by {
        let a = &w.all;
        let _ = writeln!(
            s,
            "{:<30} {:>4} {:>12} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5} {:>5} {:>9.3e} | {:>16} {:>6}  ({}; {})",
            k,
            w.launches,
            format!("{}/{}", w.blocks.0, w.blocks.1),
            pct(a.global_load.efficiency()),
            a.global_load.sectors_per_request().map_or("-".into(), |v| format!("{v:.1}")),
            pct(a.global_store.efficiency()),
            deg(a.shared_load.degree()),
            deg(a.shared_store.degree()),
            deg(a.ldmatrix.degree()),
            deg(a.async_store.degree()),
            w.mma,
            deg(w.degree.as_ref().map(|d| d.0)),
            pct(w.efficiency.as_ref().map(|e| e.0)),
            w.degree.as_ref().map_or("-", |d| d.1.as_str()),
            w.efficiency.as_ref().map_or("-", |e| e.1.as_str()),
        );
    }
    s += "ld/st: global coalescing (ideal sectors / sectors touched), ld/req: sectors per load request; LDS, STS, \
          LDSM, cpas: shared-memory bank-conflict degree (wavefronts / ideal, 1.00 = conflict-free); blocks: \
          emulated / in the grid; main loop: the instructions executed in two or more barrier intervals.\n";
    (s, by)
}

#[test]
fn kernel_counters_at_the_model_shapes() {
    let config = TraceConfig { sampling: Sampling::Sample(16), races: true };
    let mut report = String::from(
        "Kernel counters: one training step of the full-width UNet16, batch 1, 64x64, on the access-tracing \
         emulator\n",
    );
    let mut problems = Vec::new();
    let mut tensor = BTreeMap::new();
    // Both precisions at once: one core each.
    let steps: Vec<_> = std::thread::scope(|s| {
        let run = |p: Precision| {
            s.spawn(move || {
                let start = std::time::Instant::now();
                (p, trace_step(config, p, 1, 64, 1.0, 11).expect("traced training step"), start.elapsed())
            })
        };
        let handles = [run(Precision::F32), run(Precision::Bf16)];
        handles.into_iter().map(|h| h.join().expect("trace thread")).collect()
    });
    for (precision, step, took) in steps {
        let launches: Vec<(String, LaunchTrace)> = step
            .passes
            .into_iter()
            .flat_map(|(l, p, _, ts)| ts.into_iter().map(move |t| (format!("{l} {p:?}").to_lowercase(), t)))
            .collect();
        for (layer, t) in &launches {
            if let Some(r) = t.races.first() {
                let names = symbolize(&[r.first.1, r.second.1]);
                problems.push(format!(
                    "{} ({layer}): shared-memory race on `{}`+{}: thread {} at {} and thread {} at {}",
                    t.kernel.name,
                    r.array,
                    r.offset,
                    r.first.0,
                    names[&r.first.1].join(" / "),
                    r.second.0,
                    names[&r.second.1].join(" / ")
                ));
            }
        }
        let (text, by) = table(&launches);
        let _ = write!(report, "\n{precision} convolutions ({:.1} s):\n{text}", took.as_secs_f64());
        tensor.extend(by.into_iter().filter(|(_, w)| w.mma > 0.0));
    }
    for (k, w) in &tensor {
        let known = |f: Figure| KNOWN.iter().find(|(n, g, _, _)| n == k && *g == f).map(|(_, _, v, _)| *v);
        if let Some((d, layer)) = &w.degree {
            let limit = known(Figure::Degree).unwrap_or(MAX_DEGREE);
            if *d > limit + 1e-6 {
                problems.push(format!("{k}: main-loop bank-conflict degree {d:.3} at {layer} (limit {limit})"));
            }
        }
        if let Some((e, layer)) = &w.efficiency {
            let limit = known(Figure::LoadEfficiency).unwrap_or(MIN_LOAD_EFFICIENCY);
            if *e < limit - 1e-6 {
                problems.push(format!(
                    "{k}: main-loop global-load efficiency {:.1}% at {layer} (limit {:.1}%)",
                    100.0 * e,
                    100.0 * limit
                ));
            }
        }
    }
    let _ = writeln!(
        report,
        "\ngate (tensor-core kernels' main loops: bank degree <= {MAX_DEGREE}, load efficiency >= {:.0}%):",
        100.0 * MIN_LOAD_EFFICIENCY
    );
    for (k, f, v, why) in KNOWN {
        let _ = writeln!(report, "  known failure: {k} {f:?} {v} ({why})");
    }
    let _ = writeln!(
        report,
        "  {}",
        if problems.is_empty() { "PASS".to_string() } else { format!("{} problem(s)", problems.len()) }
    );
    for p in &problems {
        let _ = writeln!(report, "  FAIL {p}");
    }
    println!("{report}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-counters.txt");
    let _ = std::fs::write(path, &report);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
