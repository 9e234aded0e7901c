//! The ISIC 2018 Task 2 folders: discovery, decoding, the in-memory [`Dataset`] and the
//! train/validation split.
//!
//! Layout under `--data DIR` (the challenge's download, unzipped side by side):
//! - images: `ISIC2018_Task1-2_<Variant>_Input/ISIC_<id>.jpg` (`.jpeg` and `.png` too);
//! - masks: `ISIC2018_Task2_<Variant>_GroundTruth*/ISIC_<id>_attribute_<attribute>.png`,
//!   one per attribute of [`ATTRIBUTES`].
//!
//! `<Variant>` (Training, Validation, Test) pairs an input folder with its ground truth;
//! an input folder without one is ignored with a note (the test inputs ship without
//! masks). Ids are the part after `ISIC_`, sorted.
//!
//! Decoding: images are resized to `size`x`size` with a triangle filter (its support
//! widens with the reduction, so downscaling averages like an area filter); masks are
//! binarised at their own resolution, then resized with nearest neighbour so they stay
//! binary. A mask pixel is positive when any colour channel is > 127 (> 32767 for 16-bit
//! PNGs) and, where there is an alpha channel, alpha is > 127 too. This covers 8-bit
//! gray, RGB, RGBA, 16-bit, and palette PNGs (the `image` crate expands a palette to
//! RGB(A), so a palette entry counts by its colour). The five masks of a sample are
//! packed into one byte per pixel, bit `k` for attribute `k`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use image::{imageops::FilterType, DynamicImage, GenericImageView};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{mask_file_name, ATTRIBUTES};
use crate::attributes::NUM_ATTRIBUTES;
use crate::error::{Error, Result};

/// One image and the paths of its five attribute masks (which may not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The id: `0000000` for `ISIC_0000000.jpg`.
    pub id: String,
    /// The image file.
    pub image: PathBuf,
    /// Where each attribute's mask is expected, in [`ATTRIBUTES`] order.
    pub masks: [PathBuf; NUM_ATTRIBUTES],
}

/// What [`discover`] found.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Every usable sample, sorted by id.
    pub samples: Vec<Sample>,
    /// Input folders left out because no ground-truth folder of their variant exists.
    pub ignored_inputs: Vec<PathBuf>,
}

/// The decoded samples: `images` is `[n][size][size][3]` RGB, `masks` is
/// `[n][size][size]` with bit `k` set where attribute `k` is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Side of every (square) image, in pixels.
    pub size: usize,
    /// Sample ids, in order.
    pub ids: Vec<String>,
    images: Vec<u8>,
    masks: Vec<u8>,
}

impl Dataset {
    /// Assembles a dataset, checking the buffer lengths and that masks use bits 0..5 only.
    pub fn from_parts(size: usize, ids: Vec<String>, images: Vec<u8>, masks: Vec<u8>) -> Result<Self> {
        let n = ids.len();
        if images.len() != n * size * size * 3 {
            return Err(Error::shape("Dataset images", format!("{n}x{size}x{size}x3"), images.len()));
        }
        if masks.len() != n * size * size {
            return Err(Error::shape("Dataset masks", format!("{n}x{size}x{size}"), masks.len()));
        }
        if masks.iter().any(|&m| m >> NUM_ATTRIBUTES != 0) {
            return Err(Error::shape("Dataset masks", "bits of the 5 attributes only", "higher bits set"));
        }
        Ok(Dataset { size, ids, images, masks })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Sample `i`'s RGB pixels, `[size][size][3]`. Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.size * self.size * 3;
        &self.images[i * len..(i + 1) * len]
    }

    /// Sample `i`'s packed masks, `[size][size]`, bit `k` = attribute `k`. Panics if `i >= len()`.
    pub fn mask(&self, i: usize) -> &[u8] {
        let len = self.size * self.size;
        &self.masks[i * len..(i + 1) * len]
    }

    /// Sample `i`'s mask of attribute `k` as 0/1 bytes, `[size][size]`.
    pub fn mask_channel(&self, i: usize, k: usize) -> Vec<u8> {
        self.mask(i).iter().map(|&m| (m >> k) & 1).collect()
    }

    /// All images, `[n][size][size][3]`.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// All packed masks, `[n][size][size]`.
    pub fn masks(&self) -> &[u8] {
        &self.masks
    }
}

/// Lists the samples under `data` (see the module doc for the layout).
pub fn discover(data: &Path) -> Result<Discovery> {
    let (mut inputs, mut truths) = (BTreeMap::new(), BTreeMap::<String, PathBuf>::new());
    for entry in std::fs::read_dir(data).map_err(|e| Error::io(data, e))? {
        let path = entry.map_err(|e| Error::io(data, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        if !path.is_dir() {
            continue;
        }
        if let Some(variant) = name.strip_prefix("ISIC2018_Task1-2_").and_then(|r| r.strip_suffix("_Input")) {
            inputs.insert(variant.to_owned(), path);
        } else if let Some((variant, _)) =
            name.strip_prefix("ISIC2018_Task2_").and_then(|r| r.split_once("_GroundTruth"))
        {
            if let Some(other) = truths.insert(variant.to_owned(), path.clone()) {
                let reason =
                    format!("two ground-truth folders for {variant}: {} and {name}; keep one", other.display());
                return Err(Error::Data { path: data.to_owned(), reason });
            }
        }
    }
    if inputs.is_empty() {
        let reason = "no ISIC2018_Task1-2_*_Input folder (expected the ISIC 2018 layout)".into();
        return Err(Error::Data { path: data.to_owned(), reason });
    }
    let mut found = Discovery::default();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for (variant, dir) in inputs {
        let Some(truth) = truths.get(&variant) else {
            found.ignored_inputs.push(dir);
            continue;
        };
        for (id, image) in list_images(&dir)? {
            if let Some(other) = seen.insert(id.clone(), image.clone()) {
                let reason = format!("id {id} also in {}", other.display());
                return Err(Error::Data { path: image, reason });
            }
            let masks = ATTRIBUTES.map(|a| truth.join(mask_file_name(&id, a)));
            found.samples.push(Sample { id, image, masks });
        }
    }
    if found.samples.is_empty() {
        let reason = "no ISIC_<id>.jpg image with a matching ISIC2018_Task2_*_GroundTruth* folder".into();
        return Err(Error::Data { path: data.to_owned(), reason });
    }
    found.samples.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// The `ISIC_<id>.{jpg,jpeg,png}` files of one folder as (id, path), sorted by id. Other
/// files (the challenge's LICENSE and ATTRIBUTION texts) are ignored.
pub fn list_images(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let (Some(stem), Some(ext)) = (path.file_stem().and_then(|s| s.to_str()), path.extension()) else { continue };
        let ext = ext.to_string_lossy().to_ascii_lowercase();
        if let (Some(id), true) = (stem.strip_prefix("ISIC_"), matches!(ext.as_str(), "jpg" | "jpeg" | "png")) {
            out.push((id.to_owned(), path));
        }
    }
    out.sort();
    Ok(out)
}

/// Why a sample could not be decoded (kept in the cache, so stored as a byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipKind {
    /// The image file does not decode.
    CorruptImage = 0,
    /// A mask file does not decode.
    CorruptMask = 1,
    /// An attribute's mask file does not exist.
    MissingMask = 2,
    /// A mask's size differs from its image's.
    SizeMismatch = 3,
    /// A file exists but cannot be read.
    Unreadable = 4,
}

impl SkipKind {
    /// The byte stored in the cache.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// The inverse of [`SkipKind::to_byte`].
    pub fn from_byte(b: u8) -> Option<Self> {
        use SkipKind::*;
        [CorruptImage, CorruptMask, MissingMask, SizeMismatch, Unreadable].get(b as usize).copied()
    }

    /// A short plural description for summaries.
    pub fn describe(self) -> &'static str {
        match self {
            SkipKind::CorruptImage => "corrupt image",
            SkipKind::CorruptMask => "corrupt mask",
            SkipKind::MissingMask => "missing mask",
            SkipKind::SizeMismatch => "mask size mismatch",
            SkipKind::Unreadable => "unreadable file",
        }
    }
}

/// A sample that could not be decoded: what, which file, and the error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The sample's id.
    pub id: String,
    /// The kind of failure.
    pub kind: SkipKind,
    /// The file at fault.
    pub path: PathBuf,
    /// The reason, as the error would state it.
    pub reason: String,
}

impl Skipped {
    /// The error this skip stands for (names the file).
    pub fn to_error(&self) -> Error {
        Error::Data { path: self.path.clone(), reason: self.reason.clone() }
    }
}

fn bad(id: &str, kind: SkipKind, path: &Path, reason: String) -> Skipped {
    Skipped { id: id.to_owned(), kind, path: path.to_owned(), reason }
}

/// Opens and decodes an image file, guessing the format from the content; a
/// truncated file is corrupt ([`super::image_file`]).
fn open(id: &str, path: &Path, corrupt: SkipKind, what: &str) -> Result<DynamicImage, Skipped> {
    use super::image_file::{decode, Failure};
    decode(path).map_err(|f| match f {
        Failure::Missing if corrupt == SkipKind::CorruptMask => {
            bad(id, SkipKind::MissingMask, path, format!("missing {what} of ISIC_{id}"))
        }
        Failure::Missing => bad(id, SkipKind::Unreadable, path, "no such file".into()),
        Failure::Unreadable(e) => bad(id, SkipKind::Unreadable, path, e),
        Failure::Corrupt(e) => bad(id, corrupt, path, format!("cannot decode {what}: {e}")),
    })
}

/// Decodes the image at `path` (any format the crate reads; a truncated file is an
/// error naming it).
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    open("", path, SkipKind::CorruptImage, "image").map_err(|s| s.to_error())
}

/// Decodes `path` and resizes it to `size`x`size` RGB. Returns the pixels and the
/// original width and height (prediction resizes its masks back to them).
pub fn load_image_resized(path: &Path, size: usize) -> Result<(Vec<u8>, u32, u32)> {
    let img = load_image(path)?;
    let (w, h) = img.dimensions();
    Ok((resize_rgb(img, size), w, h))
}

fn resize_rgb(img: DynamicImage, size: usize) -> Vec<u8> {
    resize_rgb8(img.into_rgb8(), size)
}

/// An RGB image resized to `size`×`size` as training and prediction see it
/// (bilinear, `Triangle`; unchanged when already that size), row-major RGB bytes.
pub fn resize_rgb8(rgb: image::RgbImage, size: usize) -> Vec<u8> {
    if rgb.dimensions() == (size as u32, size as u32) {
        return rgb.into_raw();
    }
    image::imageops::resize(&rgb, size as u32, size as u32, FilterType::Triangle).into_raw()
}

/// The positive pixels of a mask (see the module doc for the rule), row-major.
fn binarize(img: &DynamicImage) -> Vec<bool> {
    fn any<P: Copy + PartialOrd>(px: &[P], colour: usize, t: P) -> bool {
        px[..colour].iter().any(|&v| v > t) && px[colour..].iter().all(|&a| a > t)
    }
    match img {
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().map(|&v| v > 127).collect(),
        DynamicImage::ImageLumaA8(b) => b.as_raw().chunks_exact(2).map(|p| any(p, 1, 127)).collect(),
        DynamicImage::ImageRgb8(b) => b.as_raw().chunks_exact(3).map(|p| any(p, 3, 127)).collect(),
        DynamicImage::ImageRgba8(b) => b.as_raw().chunks_exact(4).map(|p| any(p, 3, 127)).collect(),
        DynamicImage::ImageLuma16(b) => b.as_raw().iter().map(|&v| v > 32767).collect(),
        DynamicImage::ImageLumaA16(b) => b.as_raw().chunks_exact(2).map(|p| any(p, 1, 32767)).collect(),
        DynamicImage::ImageRgb16(b) => b.as_raw().chunks_exact(3).map(|p| any(p, 3, 32767)).collect(),
        DynamicImage::ImageRgba16(b) => b.as_raw().chunks_exact(4).map(|p| any(p, 3, 32767)).collect(),
        // Float images do not come out of PNG; the crate's 8-bit conversion covers them.
        other => other.to_rgba8().as_raw().chunks_exact(4).map(|p| any(p, 3, 127)).collect(),
    }
}

/// Decodes sample `s` into `image_out` (`[size][size][3]`) and `mask_out`
/// (`[size][size]`, packed bits).
pub(crate) fn decode_sample(s: &Sample, size: usize, image_out: &mut [u8], mask_out: &mut [u8]) -> Result<(), Skipped> {
    let img = open(&s.id, &s.image, SkipKind::CorruptImage, "image")?;
    let (w, h) = img.dimensions();
    image_out.copy_from_slice(&resize_rgb(img, size));
    mask_out.fill(0);
    for (k, path) in s.masks.iter().enumerate() {
        let what = format!("{} mask", ATTRIBUTES[k]);
        let mask = open(&s.id, path, SkipKind::CorruptMask, &what)?;
        if mask.dimensions() != (w, h) {
            let (mw, mh) = mask.dimensions();
            let reason = format!("{what} is {mw}x{mh} but its image {} is {w}x{h}", s.image.display());
            return Err(bad(&s.id, SkipKind::SizeMismatch, path, reason));
        }
        let on = binarize(&mask);
        // Nearest neighbour at pixel centres: output (x, y) reads source
        // (floor((x + 0.5) * w / size), ...), which never blends 0 and 1.
        let (w, h) = (w as usize, h as usize);
        let cols: Vec<usize> = (0..size).map(|x| ((2 * x + 1) * w / (2 * size)).min(w - 1)).collect();
        for y in 0..size {
            let sy = ((2 * y + 1) * h / (2 * size)).min(h - 1);
            let (src, dst) = (&on[sy * w..(sy + 1) * w], &mut mask_out[y * size..(y + 1) * size]);
            for (d, &sx) in dst.iter_mut().zip(&cols) {
                *d |= (src[sx] as u8) << k;
            }
        }
    }
    Ok(())
}

/// The train/validation(/test) partition of a dataset, as sorted sample indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// Training samples.
    pub train: Vec<usize>,
    /// Validation samples.
    pub val: Vec<usize>,
    /// Held-out samples (only from a split CSV): used for neither training nor validation.
    pub test: Vec<usize>,
}

/// A seeded random split: `round(n * val_fraction)` samples (at least one when `n >= 2`
/// and `val_fraction > 0`) go to validation, the rest to training. The same ids and
/// seed always give the same split.
pub fn split_seeded(n: usize, val_fraction: f64, seed: u64) -> Split {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut n_val = ((n as f64 * val_fraction.clamp(0.0, 1.0)).round() as usize).min(n);
    if n >= 2 && val_fraction > 0.0 {
        n_val = n_val.clamp(1, n - 1);
    }
    let (mut val, mut train) = (order[..n_val].to_vec(), order[n_val..].to_vec());
    val.sort_unstable();
    train.sort_unstable();
    Split { train, val, test: Vec::new() }
}

/// The split to train with: the CSV at `csv` when given (see [`read_split_csv`]), else
/// [`split_seeded`] over `ids` with `val_fraction` (0.2 for the paper's 80/20) and `seed`.
pub fn make_split(ids: &[String], csv: Option<&Path>, val_fraction: f64, seed: u64) -> Result<Split> {
    match csv {
        Some(path) => read_split_csv(path, ids),
        None => Ok(split_seeded(ids.len(), val_fraction, seed)),
    }
}

/// Reads a split CSV: a header with columns `ID` and `Split` (any order, other columns
/// ignored), then one row per sample. `ID` is `ISIC_0000000` or `0000000`; `Split` is
/// `train`, `val`/`valid`/`validation` or `test` (case-insensitive; `test` rows are held
/// out of both). Rows for ids not in `ids` are ignored (e.g. samples skipped as bad);
/// an id of `ids` missing from the file is an error.
pub fn read_split_csv(path: &Path, ids: &[String]) -> Result<Split> {
    let text = super::read_text(path, 64 << 20)?;
    let err =
        |line: usize, reason: String| Error::Data { path: path.to_owned(), reason: format!("line {line}: {reason}") };
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let header = lines.next().map(|(_, l)| l.trim_start_matches('\u{feff}')).unwrap_or("");
    let cols: Vec<String> = header.split(',').map(|c| c.trim().trim_matches('"').to_ascii_lowercase()).collect();
    let (Some(id_col), Some(split_col)) = (cols.iter().position(|c| c == "id"), cols.iter().position(|c| c == "split"))
    else {
        return Err(err(1, format!("expected a header with columns ID,Split, got `{header}`")));
    };
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let (mut split, mut seen) = (Split::default(), HashSet::new());
    for (no, line) in lines {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim().trim_matches('"')).collect();
        let (Some(id), Some(part)) = (fields.get(id_col), fields.get(split_col)) else {
            return Err(err(no + 1, format!("expected {} fields, got `{line}`", cols.len())));
        };
        let id = id.strip_prefix("ISIC_").unwrap_or(id);
        if !seen.insert(id.to_owned()) {
            return Err(err(no + 1, format!("ISIC_{id} listed twice")));
        }
        let Some(&i) = index.get(id) else { continue };
        match part.to_ascii_lowercase().as_str() {
            "train" => split.train.push(i),
            "val" | "valid" | "validation" => split.val.push(i),
            "test" => split.test.push(i),
            other => return Err(err(no + 1, format!("split `{other}` is not train, val, validation or test"))),
        }
    }
    if let Some(missing) = ids.iter().find(|id| !seen.contains(id.as_str())) {
        let n = ids.iter().filter(|id| !seen.contains(id.as_str())).count();
        let reason = format!("ISIC_{missing} is not listed ({n} of the dataset's ids are missing)");
        return Err(Error::Data { path: path.to_owned(), reason });
    }
    for part in [&mut split.train, &mut split.val, &mut split.test] {
        part.sort_unstable();
    }
    Ok(split)
}

/// Writes `split` as a CSV that [`read_split_csv`] reads back (`ID,Split`, ids as
/// `ISIC_<id>`, rows in id order), through [`crate::output`].
pub fn write_split_csv(path: &Path, ids: &[String], split: &Split) -> Result<()> {
    let mut parts = vec![None; ids.len()];
    for (list, name) in [(&split.train, "train"), (&split.val, "val"), (&split.test, "test")] {
        for &i in list {
            let slot =
                parts.get_mut(i).ok_or_else(|| Error::shape("write_split_csv", format!("index < {}", ids.len()), i))?;
            *slot = Some(name);
        }
    }
    let mut text = String::from("ID,Split\n");
    for (id, part) in ids.iter().zip(parts) {
        if let Some(part) = part {
            text.push_str(&format!("ISIC_{id},{part}\n"));
        }
    }
    crate::output::write(path, text.as_bytes(), crate::output::Sync::Rename)
}
