//! Area under the ROC curve, exactly: the Mann–Whitney U statistic with ties given
//! their average rank, so that a tie between a positive and a negative counts one
//! half (what `sklearn.metrics.roc_auc_score` computes).

use crate::error::{Error, Result};

/// ROC AUC of `scores` for the binary `labels` (true = positive): the probability
/// that a random positive scores above a random negative, ties counting ½.
/// NaN (shown as `n/a`) when only one class is present, or when a score is NaN (it
/// cannot be ranked). Lengths must agree.
pub fn roc_auc<S: Copy + Into<f64>>(scores: &[S], labels: &[bool]) -> Result<f64> {
    if scores.len() != labels.len() {
        return Err(Error::shape("roc_auc: scores", format!("{} (one per label)", labels.len()), scores.len()));
    }
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    let scores: Vec<f64> = scores.iter().map(|&s| s.into()).collect();
    if pos == 0 || neg == 0 || scores.iter().any(|s| s.is_nan()) {
        return Ok(f64::NAN);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Ranks are 1-based; a run of equal scores shares the mean of its ranks. Sums are
    // kept in f64, exact for any realistic count (< 2^53 / n).
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        // -0.0 and 0.0 are the same score; total_cmp orders them, == ties them.
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        let run_pos = order[i..j].iter().filter(|&&o| labels[o]).count();
        rank_sum_pos += mean_rank * run_pos as f64;
        i = j;
    }
    let (p, n) = (pos as f64, neg as f64);
    let u = rank_sum_pos - p * (p + 1.0) / 2.0;
    Ok(u / (p * n))
}

/// [`roc_auc`] of f64 scores, NaN (`n/a`) also when the lengths differ: for display
/// code that has no use for the error.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    roc_auc(scores, labels).unwrap_or(f64::NAN)
}
