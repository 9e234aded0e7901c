//! The `demo` command: the whole job end to end with no data and no network.
//! Synthesises a small ISIC-layout dataset and a held-back set, trains a narrow
//! model for a fixed time, predicts the held-back images at their own size, scores
//! them with the challenge's scorer, and writes overlays and the training curves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::data::{synth, TRAIN_IMAGE_DIR, TRAIN_MASK_DIR};
use crate::error::{Error, Result};
use crate::train::{self, TrainOptions};
use crate::{eval, predict};

/// What the demo does; [`DemoOptions::default`] fits in about three minutes on 2 CPU cores.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Everything goes under this folder.
    pub out: PathBuf,
    /// Training time budget (epochs are not started after it).
    pub train_time: Duration,
    /// Synthetic training + validation images.
    pub train_images: usize,
    /// Held-back images to predict and score.
    pub test_images: usize,
    /// Training size.
    pub size: usize,
    /// Model width factor.
    pub width: f64,
    /// Seed of data, initialisation and training.
    pub seed: u64,
}

/// Where the demo writes by default.
pub const DEFAULT_OUT: &str = "lesionseg-demo";
/// The demo's training time by default, in seconds.
pub const DEFAULT_SECONDS: u64 = 120;

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: PathBuf::from(DEFAULT_OUT),
            train_time: Duration::from_secs(DEFAULT_SECONDS),
            train_images: 240,
            test_images: 40,
            size: 128,
            width: 0.25,
            seed: 2018,
        }
    }
}

/// Marks a folder as the demo's, so a second demo replaces its files and nothing
/// else is ever replaced.
const MARKER: &str = ".lesionseg-demo";

/// Refuses a non-empty `out` the demo did not make; marks it as the demo's.
fn claim(out: &Path) -> Result<()> {
    let mut entries = std::fs::read_dir(out).map(|d| d.flatten().count()).unwrap_or(0);
    if out.join(MARKER).exists() {
        entries = 0;
    }
    if entries > 0 {
        return Err(Error::Output {
            path: out.to_path_buf(),
            reason: "exists and was not made by the demo (which replaces what it made before); choose another --out"
                .into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::output::write(&out.join(MARKER), b"made by lesionseg demo\n", crate::output::Sync::Rename)
}

/// Runs the demo on `be`, printing what it does and where everything went.
pub fn run<B: Backend>(be: &B, o: &DemoOptions) -> Result<()> {
    let start = Instant::now();
    crate::limits::DEMO_SECONDS.check(o.train_time.as_secs())?;
    claim(&o.out)?;
    let (data, heldout, run_dir) = (o.out.join("data"), o.out.join("heldout"), o.out.join("run"));
    let (pred_dir, overlay_dir) = (o.out.join("predictions"), o.out.join("overlays"));
    println!("lesionseg demo on {}: synthetic ISIC 2018 Task 2 data, UNet16 at width {}", be.name(), o.width);
    let synth_opts =
        |count, size, seed| synth::SynthOptions { force: true, ..synth::SynthOptions::new(count, size, seed) };
    let summary = synth::synthesize_with(&data, &synth_opts(o.train_images, o.size, o.seed))?;
    println!("1. synthesised {} training images in {}", summary.count, data.display());
    // Held-back images at another size, to show masks come back at the original size.
    let test_size = o.size + o.size / 4;
    synth::synthesize_with(&heldout, &synth_opts(o.test_images, test_size, o.seed + 1))?;
    println!("   and {} held-back {test_size}x{test_size} images in {}", o.test_images, heldout.display());

    println!("2. training for about {} s (80/20 train/validation split)", o.train_time.as_secs());
    let mut t = TrainOptions::new(data.clone(), run_dir.clone());
    t.epochs = 1000;
    t.size = Some(o.size);
    t.width = Some(o.width);
    t.seed = Some(o.seed);
    t.force = true;
    t.time_limit = Some(o.train_time);
    let trained = train::run(be, &t)?;
    println!(
        "   {} epochs, {} steps; best validation score {:.4}",
        trained.state.epoch, trained.state.step, trained.state.best_jaccard
    );

    let weights = run_dir.join(train::BEST_JACCARD);
    println!("3. predicting the held-back images with {}", weights.display());
    let mut p = predict::PredictOptions::new(heldout.join(TRAIN_IMAGE_DIR), weights, pred_dir.clone());
    p.overlays = Some(overlay_dir.clone());
    let predicted = predict::run(be, &p)?;
    println!("   {} images → {} masks", predicted.images, predicted.masks);

    println!("4. scoring with the ISIC 2018 Task 2 scorer:");
    let report = eval::run(&pred_dir, &heldout.join(TRAIN_MASK_DIR), Some(&o.out.join("score.json")))?;
    println!("{}", eval::format_table(&report));
    println!("   (empty masks score 0.0000: no true positives)");
    println!("\nEverything is under {} ({:.0} s):", o.out.display(), start.elapsed().as_secs_f64());
    for (what, path) in [
        ("training data", data.as_path()),
        ("held-back data", heldout.as_path()),
        ("checkpoints, metrics.csv", run_dir.as_path()),
        ("training curves", &run_dir.join("curves.png")),
        ("predicted masks", pred_dir.as_path()),
        ("overlays", overlay_dir.as_path()),
        ("score", &o.out.join("score.json")),
    ] {
        println!("  {what:<26} {}", path.display());
    }
    Ok(())
}
