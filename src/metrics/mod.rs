//! Metrics: the ISIC 2018 Task 2 scorer (the challenge's own definition, see
//! [`score`]), the per-epoch validation metrics of training ([`training`]) and ROC
//! AUC ([`auc`]).
//!
//! Attribute index `k` is the channel order of the model's outputs and of
//! [`ATTRIBUTES`] everywhere.

pub mod auc;
pub mod score;
pub mod training;

pub use auc::{auc, roc_auc};
pub use score::{Binary, Counts, RawCounts};
pub use training::{head_auc, mask_counts, presence, EpochScores, ScoreAccumulator};

/// Number of attributes, K ([`crate::attributes::NUM_ATTRIBUTES`]).
pub const K: usize = crate::attributes::NUM_ATTRIBUTES;

pub use crate::attributes::{attribute_index, ATTRIBUTES};

/// Formats a score for a table: four decimals, or `n/a` when undefined (NaN).
pub fn fmt_score(v: f64) -> String {
    if v.is_nan() {
        "n/a".to_string()
    } else {
        format!("{v:.4}")
    }
}
