//! The `predict` command: masks in the challenge's submission format for a folder
//! of images.
//!
//! For every `.jpg`, `.jpeg` or `.png` in the folder (sorted by name, any size): the
//! image is resized to the network's input size (the training pipeline's
//! [`crate::data::isic::load_image_resized`]), normalised with the ImageNet
//! statistics, run through the network; the sigmoid probabilities are resized back
//! to the original size bilinearly (half-pixel centres, as PyTorch's
//! `interpolate(..., align_corners=False)`) and thresholded (`p > threshold` → 255,
//! else 0). Resizing the probabilities, not the binary mask, keeps the outlines
//! smooth at the original resolution.
//!
//! Output names: `<stem>_attribute_<attribute>.png` for an input `<stem>.<ext>`, so
//! `ISIC_0012345.jpg` gives the challenge's `ISIC_0012345_attribute_streaks.png`;
//! files not named `ISIC_<id>` keep their own stem. Two inputs with the same stem
//! are an error. Files named like our outputs (`*_attribute_<attribute>.png`,
//! `*_overlay.png`) are not inputs. Images of the same original size are batched
//! together.
//!
//! With `replicas` > 1 ([`run_replicas`]) the batches are dealt round-robin to that
//! many threads, each with its own backend and model: the same batches as one
//! replica, so the same files, bit for bit.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use image::{ExtendedColorType, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::forward::download_nchw;
use crate::limits;
use crate::metrics::{ATTRIBUTES, K};
use crate::model::{UNet16, Workspace};
use crate::train::checkpoint;

/// Input size when neither the options nor the checkpoint give one (the paper's).
pub const DEFAULT_SIZE: usize = 512;
/// The probability threshold of the paper's masks.
pub const DEFAULT_THRESHOLD: f64 = 0.3;
/// Images per forward pass by default.
pub const DEFAULT_BATCH_SIZE: usize = 4;

/// What to predict, from where, to where.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictOptions {
    /// Folder of images.
    pub images: PathBuf,
    /// Weights or training checkpoint (safetensors).
    pub weights: PathBuf,
    /// Folder for the masks (created if missing).
    pub out: PathBuf,
    /// Probability above which a pixel is foreground (the paper: 0.3).
    pub threshold: f64,
    /// Network input side; `None`: the checkpoint's `size` metadata, else
    /// [`DEFAULT_SIZE`].
    pub size: Option<usize>,
    /// Images per forward pass (at most; only images of one original size share a batch).
    pub batch_size: usize,
    /// Folder for the overlays, when wanted.
    pub overlays: Option<PathBuf>,
    /// Show a progress bar (on stderr, and only when it is a terminal).
    pub progress: bool,
    /// Replicas sharing the batches ([`run_replicas`]; 1: none).
    pub replicas: usize,
}

impl PredictOptions {
    /// The defaults: threshold 0.3, size from the checkpoint, batches of 4, no
    /// overlays, a progress bar.
    pub fn new(images: impl Into<PathBuf>, weights: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        PredictOptions {
            images: images.into(),
            weights: weights.into(),
            out: out.into(),
            threshold: DEFAULT_THRESHOLD,
            size: None,
            batch_size: DEFAULT_BATCH_SIZE,
            overlays: None,
            progress: true,
            replicas: 1,
        }
    }
}

/// What a `predict` run did.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictSummary {
    /// Images processed.
    pub images: usize,
    /// Mask files written (5 per image).
    pub masks: usize,
    /// Overlay files written.
    pub overlays: usize,
    /// Network input side used.
    pub size: usize,
    /// Where the size came from: "option", "checkpoint" or "default".
    pub size_source: &'static str,
    /// Forward passes run.
    pub batches: usize,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
}

/// One input image.
struct Input {
    path: PathBuf,
    stem: String,
    width: u32,
    height: u32,
}

/// Runs `predict` on backend `be`.
pub fn run<B: Backend>(be: &B, opts: &PredictOptions) -> Result<PredictSummary> {
    let job = Job::prepare(opts)?;
    let bar = progress_bar(opts.progress, job.inputs.len());
    let all: Vec<&Vec<usize>> = job.batches.iter().collect();
    let overlays = predict_batches(be, &job, &all, &bar, &AtomicBool::new(false));
    bar.finish_and_clear();
    Ok(job.summary(overlays?))
}

/// Runs `predict` with `opts.replicas` threads, replica `r` on the backend
/// `open(r)` (opened on its thread) taking batches `r`, `r + replicas`, …
pub fn run_replicas<B, F>(open: F, opts: &PredictOptions) -> Result<PredictSummary>
where
    B: Backend,
    F: Fn(usize) -> Result<B> + Sync,
{
    let job = Job::prepare(opts)?;
    let bar = progress_bar(opts.progress, job.inputs.len());
    let replicas = opts.replicas.min(job.batches.len()).max(1);
    // A failed replica stops the others at their next batch.
    let failed = AtomicBool::new(false);
    let (job_ref, bar_ref, failed_ref, open_ref) = (&job, &bar, &failed, &open);
    let results: Vec<Result<usize>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..replicas)
            .map(|r| {
                s.spawn(move || {
                    let mine: Vec<&Vec<usize>> = job_ref.batches.iter().skip(r).step_by(replicas).collect();
                    let out = open_ref(r).and_then(|be| predict_batches(&be, job_ref, &mine, bar_ref, failed_ref));
                    failed_ref.fetch_or(out.is_err(), Ordering::SeqCst);
                    out
                })
            })
            .collect();
        let joined = threads.into_iter().enumerate();
        joined.map(|(r, t)| t.join().unwrap_or_else(|_| Err(Error::Predict(format!("replica {r} panicked"))))).collect()
    });
    bar.finish_and_clear();
    Ok(job.summary(results.into_iter().sum::<Result<usize>>()?))
}

/// Everything a run decides before the first forward pass.
struct Job<'a> {
    opts: &'a PredictOptions,
    start: Instant,
    checkpoint: checkpoint::Checkpoint,
    size: usize,
    size_source: &'static str,
    inputs: Vec<Input>,
    /// Batches of equal original size, in name order within each size.
    batches: Vec<Vec<usize>>,
}

impl<'a> Job<'a> {
    fn prepare(opts: &'a PredictOptions) -> Result<Self> {
        let start = Instant::now();
        limits::THRESHOLD.check(opts.threshold)?;
        limits::BATCH_SIZE.check(opts.batch_size)?;
        limits::REPLICAS.check(opts.replicas)?;
        if let Some(size) = opts.size {
            limits::NET_SIZE.check(size)?;
        }
        let checkpoint = checkpoint::load(&opts.weights)?;
        let (size, size_source) = input_size(&opts.weights, opts.size, &checkpoint.metadata)?;
        let inputs = list_inputs(&opts.images)?;
        for dir in std::iter::once(&opts.out).chain(&opts.overlays) {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            crate::output::remove_stale_temps(dir);
        }
        let mut by_size: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
        for (i, input) in inputs.iter().enumerate() {
            by_size.entry((input.width, input.height)).or_default().push(i);
        }
        let batches = by_size.values().flat_map(|ids| ids.chunks(opts.batch_size).map(<[usize]>::to_vec)).collect();
        Ok(Job { opts, start, checkpoint, size, size_source, inputs, batches })
    }

    fn summary(&self, overlays: usize) -> PredictSummary {
        PredictSummary {
            images: self.inputs.len(),
            masks: self.inputs.len() * K,
            overlays,
            size: self.size,
            size_source: self.size_source,
            batches: self.batches.len(),
            seconds: self.start.elapsed().as_secs_f64(),
        }
    }
}

/// One replica's batches on `be`: the model made, a workspace per batch size, the
/// masks written; returns the overlays written. Stops early when `failed` is raised.
fn predict_batches<B: Backend>(
    be: &B,
    job: &Job,
    batches: &[&Vec<usize>],
    bar: &ProgressBar,
    failed: &AtomicBool,
) -> Result<usize> {
    let (opts, inputs, size) = (job.opts, &job.inputs[..], job.size);
    let model = UNet16::for_inference(be, job.checkpoint.cfg, &job.checkpoint.params)?;
    let mut ws: Option<Workspace<B>> = None;
    let mut overlays = 0;
    for batch in batches {
        if failed.load(Ordering::SeqCst) {
            break;
        }
        if ws.as_ref().is_none_or(|w| w.plan.n != batch.len()) {
            // Free the old arena before making the new one.
            drop(ws.take());
            ws = Some(model.inference_workspace(be, batch.len(), size, size)?);
        }
        let ws = ws.as_ref().expect("workspace created above");
        let probs = forward_batch(be, &model, ws, inputs, batch, size)?;
        let per_image = K * size * size;
        overlays += batch
            .par_iter()
            .zip(probs.par_chunks(per_image))
            .map(|(&i, p)| write_outputs(&inputs[i], p, size, opts))
            .collect::<Result<Vec<usize>>>()?
            .iter()
            .sum::<usize>();
        bar.inc(batch.len() as u64);
    }
    Ok(overlays)
}

/// Loads a weight file or training checkpoint (see [`checkpoint::load`]) for
/// inference (no gradient buffers): the model and the file's metadata.
pub fn load_checkpoint<B: Backend>(be: &B, path: &Path) -> Result<(UNet16<B>, HashMap<String, String>)> {
    let ck = checkpoint::load(path)?;
    Ok((UNet16::for_inference(be, ck.cfg, &ck.params)?, ck.metadata))
}

/// The input side: `size` (the option), else the checkpoint's `size` metadata, else
/// the default; a positive multiple of 32 in every case. With where it came from.
pub(crate) fn input_size(
    weights: &Path,
    size: Option<usize>,
    meta: &HashMap<String, String>,
) -> Result<(usize, &'static str)> {
    let (size, source) = match (size, meta.get("size")) {
        (Some(s), _) => (s, "option"),
        (None, Some(s)) => {
            let parsed = s.trim().parse().map_err(|_| Error::Weights {
                path: weights.to_path_buf(),
                tensor: None,
                reason: format!("metadata `size` = {s:?} is not a number; pass --size"),
            })?;
            (parsed, "checkpoint")
        }
        (None, None) => (DEFAULT_SIZE, "default"),
    };
    limits::NET_SIZE.check(size).map_err(|e| match source {
        "checkpoint" => Error::Weights {
            path: weights.to_path_buf(),
            tensor: None,
            reason: format!("metadata `size` = {size} cannot be used ({e}); pass --size"),
        },
        _ => e,
    })?;
    Ok((size, source))
}

/// The images of `dir` with their original sizes (read from the headers), sorted by
/// name; an empty folder, an unreadable image or two images with one stem are errors.
fn list_inputs(dir: &Path) -> Result<Vec<Input>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // Our own outputs, should the output folder be the input folder.
        let ours = crate::eval::parse_mask_name(&name).is_some() || name.ends_with("_overlay.png");
        if path.is_file() && matches!(ext.as_str(), "jpg" | "jpeg" | "png") && !ours {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(Error::Data {
            path: dir.to_path_buf(),
            reason: "no .jpg, .jpeg or .png images in this folder".into(),
        });
    }
    paths.sort();
    let inputs: Vec<Input> = paths
        .into_par_iter()
        .map(|path| {
            let (width, height) = image::ImageReader::open(&path)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| Error::io(&path, e))?
                .into_dimensions()
                .map_err(|e| Error::Data { path: path.clone(), reason: format!("cannot read the image: {e}") })?;
            let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            Ok(Input { path, stem, width, height })
        })
        .collect::<Result<_>>()?;
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for input in &inputs {
        if let Some(first) = seen.insert(&input.stem, &input.path) {
            return Err(Error::Data {
                path: input.path.clone(),
                reason: format!("has the same name as {}: their masks would overwrite each other", first.display()),
            });
        }
    }
    Ok(inputs)
}

/// Decodes, resizes and normalises the batch's images, runs the network and
/// returns the probabilities `[N,K,size,size]`.
fn forward_batch<B: Backend>(
    be: &B,
    model: &UNet16<B>,
    ws: &Workspace<B>,
    inputs: &[Input],
    batch: &[usize],
    size: usize,
) -> Result<Vec<f32>> {
    let images: Vec<Vec<u8>> = batch
        .par_iter()
        .map(|&i| crate::data::isic::load_image_resized(&inputs[i].path, size).map(|(rgb, _, _)| rgb))
        .collect::<Result<_>>()?;
    probabilities(be, model, ws, &images)
}

/// The network's probabilities `[N,K,size,size]` for `images`, each `size`×`size`
/// RGB bytes (the plan's input size): normalised, run, sigmoid. Shared by `predict`
/// and [`crate::predictor::Predictor`], so both give the same bits.
pub fn probabilities<B: Backend>(be: &B, model: &UNet16<B>, ws: &Workspace<B>, images: &[Vec<u8>]) -> Result<Vec<f32>> {
    let p = &ws.plan;
    if images.len() != p.n || images.iter().any(|rgb| rgb.len() != 3 * p.h * p.w) {
        return Err(Error::shape("predict batch", format!("{} images of {}x{} RGB", p.n, p.w, p.h), images.len()));
    }
    let mut input = Vec::with_capacity(images.len() * p.h * p.w * 3);
    for rgb in images {
        input.extend(crate::data::batch::normalize_image(rgb));
    }
    be.upload(&ws.acts, p.input.off, &input)?;
    model.forward(be, ws)?;
    let mut probs = download_nchw(be, &ws.acts, p.mask_logits)?.data;
    probs.par_iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()));
    Ok(probs)
}

/// One attribute's mask at an image's own size: the `size`×`size` probabilities
/// resized bilinearly to `width`×`height`, then 255 where `p > threshold`, else 0.
pub fn mask_at_size(probs: &[f32], size: usize, width: usize, height: usize, threshold: f64) -> Vec<u8> {
    let prob = resize_bilinear(probs, size, size, width, height);
    prob.iter().map(|&p| if f64::from(p) > threshold { 255 } else { 0 }).collect()
}

/// Writes one image's five masks (and overlay); returns the overlays written.
fn write_outputs(input: &Input, probs: &[f32], size: usize, opts: &PredictOptions) -> Result<usize> {
    let (w, h) = (input.width as usize, input.height as usize);
    // Attributes in parallel too: a batch may hold a single large image.
    let masks: Vec<Vec<u8>> = (0..K)
        .into_par_iter()
        .map(|k| {
            let mask = mask_at_size(&probs[k * size * size..(k + 1) * size * size], size, w, h, opts.threshold);
            let path = opts.out.join(format!("{}_attribute_{}.png", input.stem, ATTRIBUTES[k]));
            crate::plot::write_png(&path, &mask, input.width, input.height, ExtendedColorType::L8)?;
            Ok(mask)
        })
        .collect::<Result<_>>()?;
    let Some(dir) = &opts.overlays else { return Ok(0) };
    let rgb = decode_rgb(&input.path)?;
    if rgb.dimensions() != (input.width, input.height) {
        return Err(Error::Data { path: input.path.clone(), reason: "changed size while being read".into() });
    }
    crate::overlay::write_overlay(&dir.join(format!("{}_overlay.png", input.stem)), &rgb, &masks)?;
    Ok(1)
}

fn decode_rgb(path: &Path) -> Result<RgbImage> {
    crate::data::isic::load_image(path).map(|img| img.into_rgb8())
}

/// Bilinear resize of a `src_w`×`src_h` plane to `dst_w`×`dst_h`, with half-pixel
/// centres and edge clamping (PyTorch's `interpolate(mode="bilinear",
/// align_corners=False)`, OpenCV's `INTER_LINEAR`).
pub fn resize_bilinear(src: &[f32], src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Vec<f32> {
    let taps = |dst: usize, src_n: usize| -> Vec<(usize, usize, f32)> {
        let scale = src_n as f64 / dst as f64;
        (0..dst)
            .map(|o| {
                let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(src_n - 1);
                let i1 = (i0 + 1).min(src_n - 1);
                (i0, i1, (s - i0 as f64).clamp(0.0, 1.0) as f32)
            })
            .collect()
    };
    if dst_w == 0 || dst_h == 0 || src_w == 0 || src_h == 0 {
        return vec![0.0; dst_w * dst_h];
    }
    let (xs, ys) = (taps(dst_w, src_w), taps(dst_h, src_h));
    let mut out = vec![0.0; dst_w * dst_h];
    for (row, &(y0, y1, fy)) in out.chunks_exact_mut(dst_w).zip(&ys) {
        let (r0, r1) = (&src[y0 * src_w..(y0 + 1) * src_w], &src[y1 * src_w..(y1 + 1) * src_w]);
        for (o, &(x0, x1, fx)) in row.iter_mut().zip(&xs) {
            let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
            let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
            *o = top + (bottom - top) * fy;
        }
    }
    out
}

fn progress_bar(show: bool, images: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(images as u64);
    bar.set_style(
        ProgressStyle::with_template("predict [{bar:30}] {pos}/{len} images ({elapsed}<{eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
