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

/// Number of attributes, K.
pub const K: usize = crate::model::config::CLASSES;

/// The five attributes of ISIC 2018 Task 2, in the model's channel order; also the
/// `<attribute>` part of the challenge's file names (`ISIC_<id>_attribute_<attribute>.png`).
pub use crate::data::ATTRIBUTES;

/// The index of `name` in [`ATTRIBUTES`].
pub fn attribute_index(name: &str) -> Option<usize> {
    ATTRIBUTES.iter().position(|a| *a == name)
}

/// Formats a score for a table: four decimals, or `n/a` when undefined (NaN).
pub fn fmt_score(v: f64) -> String {
    if v.is_nan() {
        "n/a".to_string()
    } else {
        format!("{v:.4}")
    }
}
