//! The ISIC 2018 Task 2 score, exactly as the challenge computed it.
//!
//! For every (attribute, image) pair, truth and prediction are binarised (8-bit
//! masks: `> 128`) and the pixel counts TP, FP, FN, TN are divided by that image's
//! pixel count, so that every image weighs the same whatever its size. These
//! normalised counts are summed per attribute, giving the per-attribute Jaccard
//! TP/(TP+FP+FN) and Dice 2TP/(2TP+FP+FN), and over everything (all attributes, all
//! images), giving the micro-averaged Jaccard: the leaderboard number.
//!
//! **Summation order**, so that the numbers equal the official scorer's to the last
//! bit (`isic-challenge-scoring` 5.8.0, `task2.score`): it builds one pandas row per
//! (attribute, image), in the order of the sorted truth file names, and sums the
//! normalised rows with `DataFrame.sum`. That frame's block is column-major, so
//! numpy reduces along a strided axis, which is a plain left-to-right sum (not its
//! pairwise summation of contiguous data); per attribute it sums that attribute's
//! rows in the same order. So both sums here are running sums in the order pairs are
//! added: [`Counts::total`] over every pair (the micro average), the per-attribute
//! arrays over each attribute's pairs. Adding the five per-attribute sums instead
//! differs in the last bit or two. `eval` adds pairs in file-name order;
//! `scripts/compare_official_scorer.sh` checks the result against the package.
//!
//! Beside it, [`Counts::mean_jaccard`] is the mean of the per-attribute Jaccards: the
//! number the paper reports for its validation set, a different quantity (each
//! attribute weighs the same there, however rare it is).
//!
//! **Empty attributes.** When an attribute was scored on at least one image but
//! TP+FP+FN = 0 (no truth pixel and no predicted pixel anywhere), Jaccard and Dice
//! are 0/0. The challenge's code (`isic_challenge_scoring.metrics.binaryJaccard`)
//! scores that as a perfect 1.0, and so do we, so the numbers match the official
//! scorer; [`Counts::is_vacuous`] tells a display to mark it. The micro-averaged
//! Jaccard is unaffected by this choice: it sums counts, and the attribute adds
//! zeros. An attribute scored on no image at all has no score (NaN, shown as `n/a`)
//! and is left out of the mean.

use super::K;
use crate::error::{Error, Result};

/// A mask pixel that can be read as on/off.
pub trait Binary: Copy + Sync {
    /// Whether the pixel is foreground.
    fn is_on(self) -> bool;
}

impl Binary for bool {
    fn is_on(self) -> bool {
        self
    }
}

/// 8-bit mask values, binarised the challenge's way: `> 128` is foreground. (For
/// masks stored as 0/1 bytes, pass `bool`s.)
impl Binary for u8 {
    fn is_on(self) -> bool {
        self > 128
    }
}

/// Raw pixel counts of one (attribute, image) pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawCounts {
    /// Truth on, prediction on.
    pub tp: u64,
    /// Truth off, prediction on.
    pub fp: u64,
    /// Truth on, prediction off.
    pub fn_: u64,
    /// Truth off, prediction off.
    pub tn: u64,
}

impl RawCounts {
    /// The counts of `pred` against `truth` (same length: the same image's pixels
    /// in the same order).
    pub fn of<T: Binary, P: Binary>(truth: &[T], pred: &[P]) -> Result<Self> {
        if truth.len() != pred.len() {
            return Err(Error::shape(
                "metrics: prediction mask",
                format!("{} pixels (the truth's)", truth.len()),
                pred.len(),
            ));
        }
        let mut c = RawCounts::default();
        for (&t, &p) in truth.iter().zip(pred) {
            match (t.is_on(), p.is_on()) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (true, false) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        Ok(c)
    }

    /// Pixels of the image.
    pub fn pixels(&self) -> u64 {
        self.tp + self.fp + self.fn_ + self.tn
    }
}

/// Per-attribute sums of per-image normalised counts, and how many images each
/// attribute was scored on. Build with [`Counts::add_image`] (or
/// [`Counts::add_raw`]); combine partial sums with [`Counts::merge`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// Σ over images of TP / pixels, per attribute.
    pub tp: [f64; K],
    /// Σ over images of FP / pixels.
    pub fp: [f64; K],
    /// Σ over images of FN / pixels.
    pub fn_: [f64; K],
    /// Σ over images of TN / pixels.
    pub tn: [f64; K],
    /// Images scored, per attribute.
    pub images: [usize; K],
    /// Of those, images whose truth mask has at least one foreground pixel.
    pub nonempty_truth: [usize; K],
    /// Σ over every pair added, in the order added, of TP, FP, FN, TN / pixels: the
    /// micro average's sums, in the official scorer's order (see the module doc).
    pub total: [f64; 4],
}

impl Counts {
    /// No images yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image's masks of attribute `attr` (same length, same pixel order).
    pub fn add_image<T: Binary, P: Binary>(&mut self, attr: usize, truth: &[T], pred: &[P]) -> Result<()> {
        self.add_raw(attr, RawCounts::of(truth, pred)?)
    }

    /// Adds one image's raw counts for attribute `attr`, normalised by its pixel
    /// count. An image without pixels is an error (it cannot be normalised).
    pub fn add_raw(&mut self, attr: usize, raw: RawCounts) -> Result<()> {
        check_attr(attr)?;
        let pixels = raw.pixels();
        if pixels == 0 {
            return Err(Error::shape("metrics: image", "at least one pixel", "0 pixels"));
        }
        let px = pixels as f64;
        self.tp[attr] += raw.tp as f64 / px;
        self.fp[attr] += raw.fp as f64 / px;
        self.fn_[attr] += raw.fn_ as f64 / px;
        self.tn[attr] += raw.tn as f64 / px;
        for (sum, count) in self.total.iter_mut().zip([raw.tp, raw.fp, raw.fn_, raw.tn]) {
            *sum += count as f64 / px;
        }
        self.images[attr] += 1;
        self.nonempty_truth[attr] += usize::from(raw.tp + raw.fn_ > 0);
        Ok(())
    }

    /// Adds `other`'s sums to these (each of its sums as one term, so the result is
    /// not bit-identical to adding its pairs one by one).
    pub fn merge(&mut self, other: &Counts) {
        for (sum, o) in self.total.iter_mut().zip(other.total) {
            *sum += o;
        }
        for k in 0..K {
            self.tp[k] += other.tp[k];
            self.fp[k] += other.fp[k];
            self.fn_[k] += other.fn_[k];
            self.tn[k] += other.tn[k];
            self.images[k] += other.images[k];
            self.nonempty_truth[k] += other.nonempty_truth[k];
        }
    }

    /// True when `attr` was scored but has TP+FP+FN = 0 (nothing in truth or
    /// prediction): its Jaccard and Dice are 1.0 by the challenge's convention.
    pub fn is_vacuous(&self, attr: usize) -> bool {
        attr < K && self.images[attr] > 0 && self.tp[attr] + self.fp[attr] + self.fn_[attr] == 0.0
    }

    /// Jaccard TP/(TP+FP+FN) of attribute `attr`: 1.0 when vacuous, NaN when the
    /// attribute was never scored (or `attr` ≥ K).
    pub fn jaccard(&self, attr: usize) -> f64 {
        if attr >= K || self.images[attr] == 0 {
            return f64::NAN;
        }
        jaccard(self.tp[attr], self.fp[attr], self.fn_[attr])
    }

    /// Dice 2TP/(2TP+FP+FN) of attribute `attr`; conventions as [`Counts::jaccard`].
    pub fn dice(&self, attr: usize) -> f64 {
        if attr >= K || self.images[attr] == 0 {
            return f64::NAN;
        }
        dice(self.tp[attr], self.fp[attr], self.fn_[attr])
    }

    /// The micro-averaged Jaccard: counts summed over all attributes and images
    /// (the challenge's leaderboard number). NaN when nothing was scored.
    pub fn micro_jaccard(&self) -> f64 {
        let (tp, fp, fn_) = self.totals();
        if self.images.iter().sum::<usize>() == 0 {
            return f64::NAN;
        }
        jaccard(tp, fp, fn_)
    }

    /// The micro-averaged Dice, like [`Counts::micro_jaccard`].
    pub fn micro_dice(&self) -> f64 {
        let (tp, fp, fn_) = self.totals();
        if self.images.iter().sum::<usize>() == 0 {
            return f64::NAN;
        }
        dice(tp, fp, fn_)
    }

    /// The mean of the per-attribute Jaccards over the attributes that were scored
    /// (the paper's validation number; vacuous attributes count as 1.0). NaN when
    /// nothing was scored.
    pub fn mean_jaccard(&self) -> f64 {
        let scored: Vec<f64> = (0..K).map(|k| self.jaccard(k)).filter(|j| !j.is_nan()).collect();
        if scored.is_empty() {
            return f64::NAN;
        }
        scored.iter().sum::<f64>() / scored.len() as f64
    }

    fn totals(&self) -> (f64, f64, f64) {
        (self.total[0], self.total[1], self.total[2])
    }
}

fn jaccard(tp: f64, fp: f64, fn_: f64) -> f64 {
    let den = tp + fp + fn_;
    // The challenge's convention for 0/0: a perfect score (see the module doc).
    if den == 0.0 {
        1.0
    } else {
        tp / den
    }
}

fn dice(tp: f64, fp: f64, fn_: f64) -> f64 {
    let den = 2.0 * tp + fp + fn_;
    if den == 0.0 {
        1.0
    } else {
        2.0 * tp / den
    }
}

fn check_attr(attr: usize) -> Result<()> {
    if attr >= K {
        return Err(Error::shape("metrics: attribute index", format!("< {K}"), attr));
    }
    Ok(())
}
