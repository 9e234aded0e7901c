//! Validation after each epoch: the loss components, the paper's per-attribute
//! Jaccard at threshold 0.3, the official (micro-averaged) score, and both heads'
//! ROC AUC per attribute, all at the training size.

use crate::backend::{At, Backend, LossParams, LossParts};
use crate::data::batch::make_batch;
use crate::data::isic::Dataset;
use crate::error::Result;
use crate::metrics::training::{EpochScores, ScoreAccumulator};
use crate::model::{UNet16, View, Workspace};

/// One validation pass.
#[derive(Clone, Debug, PartialEq)]
pub struct ValMetrics {
    /// Loss components, averaged over images.
    pub loss: LossParts,
    /// Masks counts and both heads' AUC.
    pub scores: EpochScores,
}

impl ValMetrics {
    /// The official micro-averaged Jaccard.
    pub fn micro_jaccard(&self) -> f64 {
        self.scores.counts.micro_jaccard()
    }
}

/// The probability threshold of the paper's masks.
pub const THRESHOLD: f64 = 0.3;

/// Evaluates `model` on the samples `idx` of `ds`, in batches of the training
/// workspace `train_ws` (reused, so validation needs no second arena; only a short
/// last batch gets its own).
pub fn run<B: Backend>(
    be: &B,
    model: &UNet16<B>,
    ds: &Dataset,
    idx: &[usize],
    train_ws: &Workspace<B>,
) -> Result<ValMetrics> {
    let (batch_size, size) = (train_ws.plan.n, train_ws.plan.h);
    let mut acc = ScoreAccumulator::new(THRESHOLD)?;
    let mut loss = LossParts::default();
    for chunk in idx.chunks(batch_size) {
        let ws_short;
        let ws = if chunk.len() == batch_size {
            train_ws
        } else {
            ws_short = model.workspace(be, chunk.len(), size, size)?;
            &ws_short
        };
        let batch = make_batch(ds, chunk, None)?;
        let p = &ws.plan;
        be.upload(&ws.acts, p.input.off, &batch.input)?;
        be.upload(&ws.target, 0, &batch.target)?;
        model.forward(be, ws)?;
        let m = p.mask_logits;
        let parts = be.loss(
            At::new(&ws.dacts, m.off),
            At::new(&ws.dacts, p.cls_mid.off),
            At::new(&ws.dacts, p.cls_last.off),
            At::new(&ws.acts, m.off),
            At::new(&ws.acts, p.cls_mid.off),
            At::new(&ws.acts, p.cls_last.off),
            At::new(&ws.target, 0),
            &LossParams { n: m.n, h: m.h, w: m.w, k: m.c },
        )?;
        let weight = chunk.len() as f64 / idx.len() as f64;
        loss.loss += weight * parts.loss;
        loss.loss1 += weight * parts.loss1;
        loss.loss2 += weight * parts.loss2;
        loss.loss3 += weight * parts.loss3;
        let (logits, mid, last) =
            (download(be, &ws.acts, m)?, download(be, &ws.acts, p.cls_mid)?, download(be, &ws.acts, p.cls_last)?);
        acc.add_batch(&logits, &mid, &last, &batch.target, chunk.len(), size, size)?;
    }
    Ok(ValMetrics { loss, scores: acc.finish()? })
}

fn download<B: Backend>(be: &B, buf: &B::Buf, v: View) -> Result<Vec<f32>> {
    let mut out = vec![0.0; v.n * v.h * v.w * v.c];
    be.download(buf, v.off, &mut out)?;
    Ok(out)
}
