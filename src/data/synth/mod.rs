//! Synthetic ISIC 2018 Task 2 data: dermoscopy-like JPEGs and their five attribute
//! masks, written in the challenge's folder layout so `train` reads them exactly as it
//! reads the real download.
//!
//! Each image is skin (beige-pink, low-frequency colour variation, fine texture), an
//! irregular brown lesion spanning 30–70% of the short side, and the attributes drawn
//! for it, each a distinct pattern whose mask is exactly the region it was drawn in
//! (see `patterns.rs` for the table); hairs (30% of images) and dark dermoscope
//! corners (25%) are distractors, not attributes. Attributes co-occur as if
//! independent, at the training set's prevalence ([`PREVALENCE`]) by construction
//! (low-discrepancy sequences, see `patterns::presence`) rather than by luck; achieved
//! over 1000 images at 256x256, seed 0 (`tests/synth.rs` checks 200 at 64x64):
//!
//! | attribute | target | achieved | mean mask area when present |
//! | --- | --- | --- | --- |
//! | pigment_network | 58.7% | 58.4% | 11.2% |
//! | negative_network | 7.3% | 7.4% | 6.8% |
//! | streaks | 2.9% | 3.0% | 9.6% |
//! | milia_like_cyst | 26.3% | 26.4% | 1.0% |
//! | globules | 23.2% | 23.2% | 4.0% |
//!
//! (A mesh region squeezed by other attributes into a sliver too small to show its
//! pattern is dropped rather than labelled, which costs the pigment network ~0.3%.)
//! Speed: 100 images at 256x256 in ~2.3 s on 2 cores, unoptimised (dev profile).
//!
//! Determinism: image `i` is rendered from its own ChaCha8 stream `i` of the seed, so
//! the same seed gives identical bytes whatever the thread count, and
//! [`sample`]`(seed, i, ..)` reproduces file `i` in memory.

mod paint;
mod patterns;
mod scene;

use std::fmt;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, GrayImage, ImageEncoder, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

pub use patterns::PREVALENCE;

use super::{image_file_name, mask_file_name, ATTRIBUTES, TRAIN_IMAGE_DIR, TRAIN_MASK_DIR};
use crate::error::{Error, Result};

/// Smallest accepted image side: below it the patterns are sub-pixel.
pub const MIN_SIZE: usize = 32;
/// Largest accepted image side (memory: ~40 bytes per pixel while rendering).
pub const MAX_SIZE: usize = 8192;
/// Ids are 7 digits, as in ISIC.
pub const MAX_COUNT: usize = 10_000_000;

/// What to generate. [`SynthOptions::new`] gives square images and a progress bar.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    /// Number of images (ids `0000000` to `count - 1`).
    pub count: usize,
    /// Short side in pixels.
    pub size: usize,
    /// Seed; the same seed gives byte-identical files.
    pub seed: u64,
    /// Width/height ratios; each image takes one at random (from its own stream), the
    /// long side being `round(size * ratio)`. `[1.0]` gives square images; ISIC's are
    /// mostly 4:3 landscape, e.g. `[1.0, 4.0 / 3.0, 1.5]`.
    pub aspect_ratios: Vec<f64>,
    /// JPEG quality (1–100).
    pub jpeg_quality: u8,
    /// Show a progress bar on stderr (for 64 images or more; hidden when stderr is not
    /// a terminal).
    pub progress: bool,
    /// Write into folders that already hold images or masks (replacing files of the
    /// same names); otherwise that is refused, since synthetic ids start at
    /// `ISIC_0000000` as the real download's do.
    pub force: bool,
}

impl SynthOptions {
    /// `count` square `size`x`size` images from `seed`, JPEG quality 90, progress bar.
    pub fn new(count: usize, size: usize, seed: u64) -> Self {
        SynthOptions { count, size, seed, aspect_ratios: vec![1.0], jpeg_quality: 90, progress: true, force: false }
    }

    /// Width and height of image `index`.
    pub fn dimensions(&self, index: usize) -> (usize, usize) {
        let ratio = match self.aspect_ratios.as_slice() {
            [] => 1.0,
            [only] => *only,
            many => {
                // A stream of its own, so the choice does not perturb the scene's.
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5EED_A5EC_7000_0000);
                rng.set_stream(index as u64);
                many[rng.gen_range(0..many.len())]
            }
        };
        let long = (self.size as f64 * ratio.max(1.0 / ratio)).round() as usize;
        if ratio >= 1.0 {
            (long, self.size)
        } else {
            (self.size, long)
        }
    }

    fn validate(&self) -> Result<()> {
        crate::limits::SYNTH_COUNT.check(self.count)?;
        crate::limits::SYNTH_SIZE.check(self.size)?;
        if self.aspect_ratios.is_empty() {
            return Err(Error::argument("aspect ratios", "at least one is needed"));
        }
        for &r in &self.aspect_ratios {
            let long = self.size as f64 * r.max(1.0 / r);
            if !(r.is_finite() && r > 0.0 && long <= MAX_SIZE as f64) {
                let reason = format!("{r} at size {} gives a side outside {MIN_SIZE}..={MAX_SIZE}", self.size);
                return Err(Error::argument("aspect ratio", reason));
            }
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(Error::argument("JPEG quality", format!("{} is out of range (1 to 100)", self.jpeg_quality)));
        }
        Ok(())
    }
}

/// One generated image in memory.
pub struct SynthSample {
    /// The dermoscopy-like image (before JPEG compression).
    pub image: RgbImage,
    /// Attribute masks (0/255) in [`ATTRIBUTES`] order.
    pub masks: [GrayImage; 5],
    /// Where the lesion is (0/255): not an ISIC output, but handy for checks.
    pub lesion: GrayImage,
}

/// Renders image `index` of `seed` at `width`x`height`, exactly as [`synthesize_with`]
/// writes it (there, compressed to JPEG).
pub fn sample(seed: u64, index: usize, width: usize, height: usize) -> Result<SynthSample> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&width.min(height)) || width.max(height) > MAX_SIZE {
        let reason = format!("{width}x{height}: image sides must be {MIN_SIZE} to {MAX_SIZE}");
        return Err(Error::argument("--size", reason));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    let scene = scene::render(&mut rng, width, height, patterns::presence(seed, index));
    let (w, h) = (width as u32, height as u32);
    // The buffers have exactly w*h (*3) bytes by construction, so these cannot fail.
    let gray = |bytes: Vec<u8>| GrayImage::from_raw(w, h, bytes).expect("mask buffer is w*h");
    let [m0, m1, m2, m3, m4] = scene.masks;
    Ok(SynthSample {
        image: RgbImage::from_raw(w, h, scene.rgb).expect("image buffer is w*h*3"),
        masks: [gray(m0), gray(m1), gray(m2), gray(m3), gray(m4)],
        lesion: gray(scene.lesion),
    })
}

/// What a [`synthesize_with`] run produced.
#[derive(Clone, Debug)]
pub struct SynthSummary {
    /// The output root.
    pub out: PathBuf,
    /// Images written.
    pub count: usize,
    /// Per attribute, images whose mask is non-empty.
    pub with_attribute: [usize; 5],
    /// Per attribute, mean fraction of the image its mask covers, over the images
    /// where it is present.
    pub mean_coverage: [f64; 5],
}

impl SynthSummary {
    /// Per attribute, the fraction of images with a non-empty mask.
    pub fn prevalence(&self) -> [f64; 5] {
        self.with_attribute.map(|n| n as f64 / self.count.max(1) as f64)
    }
}

impl fmt::Display for SynthSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} synthetic images in {}", self.count, self.out.display())?;
        writeln!(f, "{:<18} {:>8} {:>8} {:>10}", "attribute", "present", "target", "mean area")?;
        let prevalence = self.prevalence();
        for k in 0..5 {
            writeln!(
                f,
                "{:<18} {:>7.1}% {:>7.1}% {:>9.1}%",
                ATTRIBUTES[k],
                100.0 * prevalence[k],
                100.0 * PREVALENCE[k],
                100.0 * self.mean_coverage[k]
            )?;
        }
        Ok(())
    }
}

/// Writes `count` square `size`x`size` images and their masks under `out` (see
/// [`synthesize_with`]).
pub fn synthesize(out: &Path, count: usize, size: usize, seed: u64) -> Result<SynthSummary> {
    synthesize_with(out, &SynthOptions::new(count, size, seed))
}

/// Writes `out/ISIC2018_Task1-2_Training_Input/ISIC_<id>.jpg` and
/// `out/ISIC2018_Task2_Training_GroundTruth_v3/ISIC_<id>_attribute_<attribute>.png`
/// (8-bit gray, 0/255) for ids `0000000`.., in parallel, each file written under a
/// temporary name and renamed ([`crate::output`]), so a reader never sees a partial
/// file. Folders that already hold files are refused unless `opts.force`.
pub fn synthesize_with(out: &Path, opts: &SynthOptions) -> Result<SynthSummary> {
    opts.validate()?;
    let (image_dir, mask_dir) = (out.join(TRAIN_IMAGE_DIR), out.join(TRAIN_MASK_DIR));
    for dir in [&image_dir, &mask_dir] {
        crate::output::remove_stale_temps(dir);
        if !opts.force {
            refuse_existing(out, dir)?;
        }
    }
    for dir in [&image_dir, &mask_dir] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let bar = if opts.progress && opts.count >= 64 {
        let style = ProgressStyle::with_template("synth {bar:40} {pos}/{len} images ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressBar::new(opts.count as u64).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    let coverage: Vec<[f64; 5]> = (0..opts.count)
        .into_par_iter()
        .map(|index| {
            let id = format!("{index:07}");
            let (w, h) = opts.dimensions(index);
            let sample = sample(opts.seed, index, w, h)?;
            let path = image_dir.join(image_file_name(&id));
            write_atomic(&path, |file| {
                JpegEncoder::new_with_quality(file, opts.jpeg_quality).encode_image(&sample.image)
            })?;
            for (mask, attribute) in sample.masks.iter().zip(ATTRIBUTES) {
                let path = mask_dir.join(mask_file_name(&id, attribute));
                write_atomic(&path, |file| {
                    PngEncoder::new(file).write_image(mask.as_raw(), w as u32, h as u32, ExtendedColorType::L8)
                })?;
            }
            bar.inc(1);
            let pixels = (w * h) as f64;
            Ok(sample.masks.map(|m| m.as_raw().iter().filter(|&&v| v > 0).count() as f64 / pixels))
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let mut summary =
        SynthSummary { out: out.to_path_buf(), count: opts.count, with_attribute: [0; 5], mean_coverage: [0.0; 5] };
    for image in &coverage {
        for (k, &area) in image.iter().enumerate().filter(|(_, &area)| area > 0.0) {
            summary.with_attribute[k] += 1;
            summary.mean_coverage[k] += area;
        }
    }
    for (mean, &n) in summary.mean_coverage.iter_mut().zip(&summary.with_attribute) {
        *mean /= n.max(1) as f64;
    }
    Ok(summary)
}

/// Refuses to write into `dir` (under `out`) when it already holds files.
fn refuse_existing(out: &Path, dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let files = entries.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count();
    if files == 0 {
        return Ok(());
    }
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    Err(Error::Output {
        path: out.to_path_buf(),
        reason: format!(
            "already holds a dataset ({files} files in {name}); synthetic ids start at ISIC_0000000 as the real \
             download's do, so its images would be overwritten: choose another --out, or pass --force to replace \
             them"
        ),
    })
}

/// Encodes into a temporary file and renames it to `path` ([`crate::output`]).
fn write_atomic(
    path: &Path,
    encode: impl FnOnce(&mut BufWriter<File>) -> std::result::Result<(), image::ImageError>,
) -> Result<()> {
    let mut encode_error = None;
    let written = crate::output::write_with(path, crate::output::Sync::Rename, |w| {
        encode(w).map_err(|e| match e {
            image::ImageError::IoError(e) => e,
            other => {
                encode_error = Some(other.to_string());
                std::io::Error::other("encoding failed")
            }
        })
    });
    match encode_error {
        Some(reason) => Err(Error::Data { path: path.to_path_buf(), reason: format!("encoding failed: {reason}") }),
        None => written,
    }
}
