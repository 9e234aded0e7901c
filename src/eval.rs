//! The `eval` command: scores a folder of predicted masks against the ground truth
//! with the challenge's own metric (see [`crate::metrics::score`]).
//!
//! Truth files are found anywhere under the truth folder (so the ISIC download's
//! root works as well as `ISIC2018_Task2_Training_GroundTruth_v3/` itself), by
//! their name `<image>_attribute_<attribute>.png` (`<image>` is `ISIC_<id>` in the
//! challenge's data). Every truth file must have a prediction of the same name
//! directly in the prediction folder, of the same size. Masks may be greyscale,
//! RGB(A), palette or 16-bit PNGs: they are converted to 8-bit grey (16-bit values
//! scaled by 1/257) and binarised at `> 128`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::metrics::{attribute_index, fmt_score, Counts, RawCounts, ATTRIBUTES};

/// Missing predictions named in the error before the rest are only counted.
const MISSING_LISTED: usize = 20;

/// The result of scoring a prediction folder.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Normalised counts per attribute (Jaccard, Dice, images scored).
    pub counts: Counts,
    /// Distinct images (`<image>` parts of the truth names).
    pub images: usize,
    /// (attribute, image) pairs scored: truth files found.
    pub pairs: usize,
    /// Files in the prediction folder named like masks but without a truth file
    /// (ignored by the score; reported so that a mix-up is visible).
    pub unmatched_predictions: usize,
}

/// One truth file and the prediction it is scored against.
struct Pair {
    attr: usize,
    image: String,
    truth: PathBuf,
    pred: PathBuf,
}

/// Scores every truth mask under `truth` against the prediction of the same name in
/// `pred`, and writes the report as JSON to `json` when given (atomically).
/// Errors: no truth files; predictions missing (all named, the first
/// 20 listed); a mask that cannot be decoded or whose size differs
/// from its truth (the file is named).
pub fn run(pred: &Path, truth: &Path, json: Option<&Path>) -> Result<Report> {
    if crate::output::same_file(pred, truth) {
        return Err(Error::argument(
            "--pred",
            format!("{} is the same folder as --truth: predictions are scored against another folder", pred.display()),
        ));
    }
    let mut found = BTreeMap::new();
    // A prediction folder inside the truth folder is not searched for truth.
    let skip = fs::canonicalize(pred).ok();
    find_truth(truth, skip.as_deref(), &mut found)?;
    if found.is_empty() {
        return Err(Error::Data {
            path: truth.to_path_buf(),
            reason:
                "no ground-truth masks found (files named ISIC_<id>_attribute_<attribute>.png, searched recursively)"
                    .into(),
        });
    }
    if !pred.is_dir() {
        return Err(Error::Data { path: pred.to_path_buf(), reason: "is not a folder of predicted masks".into() });
    }
    let pairs: Vec<Pair> = found
        .into_iter()
        .map(|(name, (attr, image, truth))| Pair { attr, image, truth, pred: pred.join(name) })
        .collect();
    check_missing(pred, &pairs)?;
    if let Some(json) = json {
        let name = json.file_name().unwrap_or_default().to_string_lossy();
        if parse_mask_name(&name).is_some() {
            return Err(Error::Output {
                path: json.to_path_buf(),
                reason: "--json is named like a mask (it would be read as one); name the report *.json".into(),
            });
        }
        for p in &pairs {
            crate::output::refuse_inputs("--json", json, &[("--truth", &p.truth), ("--pred", &p.pred)])?;
        }
    }

    // Decoding dominates; each pair is independent. `collect` keeps the (sorted)
    // order, so the sums below do not depend on scheduling.
    let raws: Vec<RawCounts> = pairs.par_iter().map(score_pair).collect::<Result<_>>()?;
    let mut counts = Counts::new();
    for (p, raw) in pairs.iter().zip(raws) {
        counts.add_raw(p.attr, raw)?;
    }
    let images = pairs.iter().map(|p| p.image.as_str()).collect::<std::collections::BTreeSet<_>>().len();
    let report = Report { counts, images, pairs: pairs.len(), unmatched_predictions: unmatched(pred, &pairs)? };
    if let Some(path) = json {
        crate::output::remove_stale_temps(crate::output::folder(path));
        crate::output::write(path, to_json(&report).as_bytes(), crate::output::Sync::Rename)?;
    }
    Ok(report)
}

/// Splits `<image>_attribute_<attribute>.png` into the image and attribute index.
pub fn parse_mask_name(name: &str) -> Option<(&str, usize)> {
    let stem = name.strip_suffix(".png")?;
    let at = stem.find("_attribute_")?;
    let (image, attr) = (&stem[..at], &stem[at + "_attribute_".len()..]);
    if image.is_empty() {
        return None;
    }
    Some((image, attribute_index(attr)?))
}

/// Adds every truth mask under `dir` (but not under `skip`) to `found`, by file name.
fn find_truth(dir: &Path, skip: Option<&Path>, found: &mut BTreeMap<String, (usize, String, PathBuf)>) -> Result<()> {
    if skip.is_some() && fs::canonicalize(dir).ok().as_deref() == skip {
        return Ok(());
    }
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            find_truth(&path, skip, found)?;
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((image, attr)) = parse_mask_name(&name) else { continue };
        let image = image.to_string();
        if let Some((_, _, first)) = found.insert(name.clone(), (attr, image, path.clone())) {
            return Err(Error::Data {
                path,
                reason: format!("the same truth mask also exists as {}; keep one", first.display()),
            });
        }
    }
    Ok(())
}

/// An error listing the predictions that do not exist, if any.
fn check_missing(pred: &Path, pairs: &[Pair]) -> Result<()> {
    let missing: Vec<String> = pairs
        .iter()
        .filter(|p| !p.pred.is_file())
        .map(|p| p.pred.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut list = missing.iter().take(MISSING_LISTED).cloned().collect::<Vec<_>>().join(", ");
    if missing.len() > MISSING_LISTED {
        list += &format!(" … and {} more", missing.len() - MISSING_LISTED);
    }
    Err(Error::Data {
        path: pred.to_path_buf(),
        reason: format!(
            "{} of {} predictions missing (each truth mask needs a prediction of the same name): {list}",
            missing.len(),
            pairs.len()
        ),
    })
}

/// Counts of one pair; a decode failure or a size mismatch names the file.
fn score_pair(p: &Pair) -> Result<RawCounts> {
    let truth = load_mask(&p.truth)?;
    let pred = load_mask(&p.pred)?;
    if truth.dimensions() != pred.dimensions() {
        let ((tw, th), (pw, ph)) = (truth.dimensions(), pred.dimensions());
        return Err(Error::Data {
            path: p.pred.clone(),
            reason: format!(
                "is {pw}x{ph} but its truth {} is {tw}x{th}; predictions are scored at the original image size",
                p.truth.display()
            ),
        });
    }
    RawCounts::of(truth.as_raw(), pred.as_raw())
}

/// Decodes a mask as 8-bit grey (a truncated file is an error).
pub fn load_mask(path: &Path) -> Result<image::GrayImage> {
    use crate::data::image_file::{decode, Failure};
    let img = decode(path).map_err(|f| {
        let reason = match f {
            Failure::Missing => "no such file".to_string(),
            Failure::Unreadable(e) => format!("cannot read: {e}"),
            Failure::Corrupt(e) => format!("cannot decode: {e}"),
        };
        Error::Data { path: path.to_path_buf(), reason }
    })?;
    Ok(img.to_luma8())
}

/// Files directly in `pred` that are named like masks but have no truth.
fn unmatched(pred: &Path, pairs: &[Pair]) -> Result<usize> {
    let expected: std::collections::HashSet<&Path> = pairs.iter().map(|p| p.pred.as_path()).collect();
    let mut n = 0;
    for entry in fs::read_dir(pred).map_err(|e| Error::io(pred, e))? {
        let path = entry.map_err(|e| Error::io(pred, e))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        n += usize::from(parse_mask_name(&name).is_some() && !expected.contains(path.as_path()));
    }
    Ok(n)
}

/// The report as a table: per attribute Jaccard, Dice, images with the attribute
/// in the truth and images scored; then the micro-averaged Jaccard (the
/// leaderboard number) and the paper's mean of per-attribute Jaccards.
pub fn format_table(r: &Report) -> String {
    let c = &r.counts;
    let mut s = format!("{:<18} {:>8} {:>8} {:>16}\n", "attribute", "Jaccard", "Dice", "truth non-empty");
    let mut vacuous = false;
    for (k, name) in ATTRIBUTES.iter().enumerate() {
        let mark = if c.is_vacuous(k) { "*" } else { " " };
        vacuous |= c.is_vacuous(k);
        let nonempty = format!("{} / {}", c.nonempty_truth[k], c.images[k]);
        s += &format!(
            "{name:<18} {:>7}{mark} {:>7}{mark} {nonempty:>16}\n",
            fmt_score(c.jaccard(k)),
            fmt_score(c.dice(k))
        );
    }
    s += &format!("\n{} images, {} masks scored", r.images, r.pairs);
    if r.unmatched_predictions > 0 {
        s += &format!(" ({} prediction files without a truth file ignored)", r.unmatched_predictions);
    }
    s += &format!("\nmicro-averaged Jaccard (the challenge's leaderboard score): {}", fmt_score(c.micro_jaccard()));
    s += &format!("\nmean of per-attribute Jaccard (the paper's validation number): {}", fmt_score(c.mean_jaccard()));
    if vacuous {
        s += "\n* no truth and no predicted pixel in any image: scored 1.0, as the challenge's scorer does";
    }
    s
}

/// The report as JSON (undefined scores are `null`).
pub fn to_json(r: &Report) -> String {
    let c = &r.counts;
    let num = |v: f64| if v.is_finite() { format!("{v}") } else { "null".to_string() };
    let attrs: Vec<String> = ATTRIBUTES
        .iter()
        .enumerate()
        .map(|(k, name)| {
            format!(
                "    \"{name}\": {{\"jaccard\": {}, \"dice\": {}, \"images\": {}, \"truth_nonempty\": {}, \"vacuous\": {}, \
                 \"tp\": {}, \"fp\": {}, \"fn\": {}, \"tn\": {}}}",
                num(c.jaccard(k)),
                num(c.dice(k)),
                c.images[k],
                c.nonempty_truth[k],
                c.is_vacuous(k),
                num(c.tp[k]),
                num(c.fp[k]),
                num(c.fn_[k]),
                num(c.tn[k]),
            )
        })
        .collect();
    format!(
        "{{\n  \"images\": {},\n  \"masks\": {},\n  \"unmatched_predictions\": {},\n  \"attributes\": {{\n{}\n  }},\n  \
         \"micro_average\": {{\"jaccard\": {}, \"dice\": {}}},\n  \"mean_per_attribute_jaccard\": {}\n}}\n",
        r.images,
        r.pairs,
        r.unmatched_predictions,
        attrs.join(",\n"),
        num(c.micro_jaccard()),
        num(c.micro_dice()),
        num(c.mean_jaccard()),
    )
}
