//! Validation metrics computed by the trainer each epoch, from the network's raw
//! outputs: per-attribute Jaccard of the masks at the paper's threshold (0.3 on the
//! sigmoid), the official micro-averaged Jaccard on the same masks, and the ROC AUC
//! of both classification heads against "this attribute is present".
//!
//! Layouts are the engine's: `mask_logits` and `targets` NHWC `[N,H,W,K]`, head
//! logits `[N,K]`; targets are in {0, 1} (`> 0.5` is foreground). All images of a
//! batch have the same size, so the per-image normalisation of the official score
//! changes nothing within a batch but keeps batches of different sizes comparable.

use rayon::prelude::*;

use super::auc::roc_auc;
use super::score::{Counts, RawCounts};
use super::{fmt_score, ATTRIBUTES, K};
use crate::error::{Error, Result};

/// Counts of `sigmoid(mask_logits) > threshold` against `targets > 0.5`, one
/// (attribute, image) pair per image and channel, normalised per image as the
/// challenge does. `threshold` must lie in (0, 1); the comparison is done on the
/// logit (`x > ln(t / (1 − t))`, equivalent and free of exp), NaN logits count as
/// background.
pub fn mask_counts(
    mask_logits: &[f32],
    targets: &[f32],
    n: usize,
    h: usize,
    w: usize,
    threshold: f64,
) -> Result<Counts> {
    let len = n * h * w * K;
    check_len("mask_counts: mask_logits", len, mask_logits.len())?;
    check_len("mask_counts: targets", len, targets.len())?;
    let logit_threshold = logit(threshold)?;
    let per_image = h * w * K;
    let raws: Vec<[RawCounts; K]> = if per_image == 0 {
        Vec::new()
    } else {
        mask_logits
            .par_chunks(per_image)
            .zip(targets.par_chunks(per_image))
            .map(|(x, t)| {
                let mut raw = [RawCounts::default(); K];
                for (px, pt) in x.chunks_exact(K).zip(t.chunks_exact(K)) {
                    for k in 0..K {
                        let (truth, pred) = (pt[k] > 0.5, f64::from(px[k]) > logit_threshold);
                        let c = &mut raw[k];
                        match (truth, pred) {
                            (true, true) => c.tp += 1,
                            (false, true) => c.fp += 1,
                            (true, false) => c.fn_ += 1,
                            (false, false) => c.tn += 1,
                        }
                    }
                }
                raw
            })
            .collect()
    };
    // Summed in image order, so the result does not depend on the thread count.
    let mut counts = Counts::new();
    for raw in raws {
        for (k, r) in raw.into_iter().enumerate() {
            counts.add_raw(k, r)?;
        }
    }
    Ok(counts)
}

/// `y[n][k]`: whether target channel `k` of image `n` has any foreground pixel
/// (`> 0.5`); the classification heads' labels.
pub fn presence(targets: &[f32], n: usize, h: usize, w: usize) -> Result<Vec<[bool; K]>> {
    check_len("presence: targets", n * h * w * K, targets.len())?;
    let per_image = (h * w * K).max(1);
    Ok(targets
        .chunks(per_image)
        .take(n)
        .map(|t| {
            let mut y = [false; K];
            for px in t.chunks_exact(K) {
                for k in 0..K {
                    y[k] |= px[k] > 0.5;
                }
            }
            y
        })
        .collect())
}

/// ROC AUC per attribute of a head's `[N,K]` logits against `present` (N rows).
/// Ranking logits is ranking their sigmoids (monotone), without the ties that f32
/// sigmoid saturation would create. NaN for an attribute with only one class.
pub fn head_auc(head_logits: &[f32], present: &[[bool; K]]) -> Result<[f64; K]> {
    check_len("head_auc: logits", present.len() * K, head_logits.len())?;
    let mut out = [f64::NAN; K];
    for (k, auc) in out.iter_mut().enumerate() {
        let scores: Vec<f32> = head_logits.iter().skip(k).step_by(K).copied().collect();
        let labels: Vec<bool> = present.iter().map(|y| y[k]).collect();
        *auc = roc_auc(&scores, &labels)?;
    }
    Ok(out)
}

/// One epoch's validation metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochScores {
    /// Mask counts at the threshold (per-attribute and micro Jaccard, Dice).
    pub counts: Counts,
    /// ROC AUC of the middle head (`cls_mid_logits`) per attribute; NaN = n/a.
    pub auc_mid: [f64; K],
    /// ROC AUC of the last head (`cls_last_logits`) per attribute; NaN = n/a.
    pub auc_last: [f64; K],
}

impl EpochScores {
    /// A table: one row per attribute (Jaccard, Dice, AUC of both heads, images
    /// with the attribute), then the micro-averaged Jaccard and the paper's mean.
    pub fn table(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "{:<18} {:>8} {:>8} {:>8} {:>8} {:>9}\n",
            "attribute", "Jaccard", "Dice", "AUC mid", "AUC last", "present"
        );
        for (k, name) in ATTRIBUTES.iter().enumerate() {
            s += &format!(
                "{:<18} {:>8} {:>8} {:>8} {:>8} {:>5}/{:<3}\n",
                name,
                fmt_score(c.jaccard(k)),
                fmt_score(c.dice(k)),
                fmt_score(self.auc_mid[k]),
                fmt_score(self.auc_last[k]),
                c.nonempty_truth[k],
                c.images[k],
            );
        }
        s += &format!("micro-averaged Jaccard (the challenge's score): {}\n", fmt_score(c.micro_jaccard()));
        s += &format!("mean of per-attribute Jaccard (the paper's validation number): {}", fmt_score(c.mean_jaccard()));
        s
    }
}

/// Collects the validation metrics batch by batch: mask counts are summed at once,
/// head logits and labels are kept (N·K values each) for the AUC at the end.
#[derive(Clone, Debug)]
pub struct ScoreAccumulator {
    threshold: f64,
    counts: Counts,
    mid: Vec<f32>,
    last: Vec<f32>,
    present: Vec<[bool; K]>,
}

impl ScoreAccumulator {
    /// An empty accumulator thresholding the mask sigmoid at `threshold` (the paper:
    /// 0.3), which must lie in (0, 1).
    pub fn new(threshold: f64) -> Result<Self> {
        logit(threshold)?;
        Ok(ScoreAccumulator {
            threshold,
            counts: Counts::new(),
            mid: Vec::new(),
            last: Vec::new(),
            present: Vec::new(),
        })
    }

    /// Adds a batch of `n` images of `h`×`w`: `mask_logits` and `targets`
    /// `[N,H,W,K]`, `cls_mid` and `cls_last` `[N,K]`. Nothing is added on error.
    #[allow(clippy::too_many_arguments)]
    pub fn add_batch(
        &mut self,
        mask_logits: &[f32],
        cls_mid: &[f32],
        cls_last: &[f32],
        targets: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        check_len("ScoreAccumulator: cls_mid", n * K, cls_mid.len())?;
        check_len("ScoreAccumulator: cls_last", n * K, cls_last.len())?;
        let counts = mask_counts(mask_logits, targets, n, h, w, self.threshold)?;
        let present = presence(targets, n, h, w)?;
        self.counts.merge(&counts);
        self.mid.extend_from_slice(cls_mid);
        self.last.extend_from_slice(cls_last);
        self.present.extend(present);
        Ok(())
    }

    /// Images added so far.
    pub fn images(&self) -> usize {
        self.present.len()
    }

    /// The metrics of everything added.
    pub fn finish(&self) -> Result<EpochScores> {
        Ok(EpochScores {
            counts: self.counts.clone(),
            auc_mid: head_auc(&self.mid, &self.present)?,
            auc_last: head_auc(&self.last, &self.present)?,
        })
    }
}

/// `ln(t / (1 − t))`, the logit at which the sigmoid crosses `t`.
fn logit(t: f64) -> Result<f64> {
    crate::limits::THRESHOLD.check(t)?;
    Ok((t / (1.0 - t)).ln())
}

fn check_len(what: &str, want: usize, got: usize) -> Result<()> {
    if want != got {
        return Err(Error::shape(what, format!("{want} values"), got));
    }
    Ok(())
}
