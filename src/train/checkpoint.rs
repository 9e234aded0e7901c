//! Training checkpoints: the model's parameters under their PyTorch names (so a
//! checkpoint is also a weight file for `predict`, `forward` and PyTorch), Adam's
//! moment buffers as two flat tensors, and the rest of the training state in the
//! safetensors header. Written through [`crate::output`]: a temporary name, fsync,
//! rename, fsync of the folder.

use std::collections::HashMap;
use std::path::Path;

use super::schedule::Plateau;
use crate::error::{Error, Result};
use crate::model::{ParamTable, UNetConfig};
use crate::tensor::Tensor;
use crate::weights;

/// Prefixes of tensors in a checkpoint that are training state, not parameters; a
/// weight file may carry them and every loader ignores them.
pub const NON_PARAMETER_PREFIXES: [&str; 2] = ["adam.", "train."];

/// Names of the optimizer tensors (flat, internal layout, `table.len` values).
pub const ADAM_M: &str = "adam.exp_avg";
/// See [`ADAM_M`].
pub const ADAM_V: &str = "adam.exp_avg_sq";

/// Everything besides tensors that `--resume` needs to continue exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainState {
    /// Optimizer steps taken (Adam's t).
    pub step: u64,
    /// Epochs completed.
    pub epoch: u32,
    /// Batches completed in the current, unfinished epoch.
    pub batch_in_epoch: u32,
    /// Current learning rate.
    pub lr: f64,
    /// The plateau scheduler.
    pub plateau: Plateau,
    /// Best validation loss so far.
    pub best_val_loss: f64,
    /// Best validation micro Jaccard so far.
    pub best_jaccard: f64,
    /// Seed of the shuffles and augmentations.
    pub seed: u64,
    /// Training image size (square).
    pub size: usize,
    /// Images per step (`None` in checkpoints older than this field).
    pub batch_size: Option<usize>,
    /// The model's width factor, as given to a fresh run (`None` in older checkpoints).
    pub width: Option<f64>,
    /// Sum of the training losses of the batches done in the current, unfinished
    /// epoch (`batch_in_epoch` of them), so a resumed run logs the same epoch loss.
    pub epoch_loss_sum: f64,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    /// Widths read from the parameter shapes.
    pub cfg: UNetConfig,
    /// Parameters, internal layout.
    pub params: Vec<f32>,
    /// Adam's first moments, when the file has them.
    pub adam_m: Option<Vec<f32>>,
    /// Adam's second moments.
    pub adam_v: Option<Vec<f32>>,
    /// The training state, when the file is a training checkpoint.
    pub state: Option<TrainState>,
    /// The file's string metadata (e.g. `size`, the training input size).
    pub metadata: HashMap<String, String>,
}

/// Writes a checkpoint to `path` (atomically).
pub fn save(path: &Path, table: &ParamTable, params: &[f32], m: &[f32], v: &[f32], s: &TrainState) -> Result<()> {
    let flat = |name: &str, data: &[f32]| (name.to_string(), Tensor { shape: vec![data.len()], data: data.to_vec() });
    let extra = [flat(ADAM_M, m), flat(ADAM_V, v)];
    let meta: HashMap<String, String> = [
        ("step", s.step.to_string()),
        ("epoch", s.epoch.to_string()),
        ("batch_in_epoch", s.batch_in_epoch.to_string()),
        ("lr", format!("{:e}", s.lr)),
        ("plateau_factor", s.plateau.factor.to_string()),
        ("plateau_patience", s.plateau.patience.to_string()),
        ("plateau_best", format!("{:e}", s.plateau.best)),
        ("plateau_bad_epochs", s.plateau.bad_epochs.to_string()),
        ("best_val_loss", format!("{:e}", s.best_val_loss)),
        ("best_jaccard", format!("{:e}", s.best_jaccard)),
        ("seed", s.seed.to_string()),
        ("size", s.size.to_string()),
        // Rust prints the shortest text that parses back to the same f64.
        ("epoch_loss_sum", format!("{:e}", s.epoch_loss_sum)),
        ("producer", format!("lesionseg {} train", env!("CARGO_PKG_VERSION"))),
    ]
    .into_iter()
    .chain(s.batch_size.map(|b| ("batch_size", b.to_string())))
    .chain(s.width.map(|w| ("width", format!("{w:e}"))))
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    weights::save_params_with_metadata(path, table, params, &extra, meta)
}

/// Reads a checkpoint or a plain weight file (then without optimizer and state):
/// the one loader behind `train --resume`, `predict` and `forward`. Tensors named
/// with a [`NON_PARAMETER_PREFIXES`] prefix are training state; the rest must be
/// exactly the model's parameters (any naming and dtype `weights` accepts).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let (mut tensors, metadata) = weights::read_weights(path)?;
    let adam_m = tensors.remove(ADAM_M).map(|t| t.data);
    let adam_v = tensors.remove(ADAM_V).map(|t| t.data);
    tensors.retain(|name, _| !NON_PARAMETER_PREFIXES.iter().any(|p| name.starts_with(p)));
    let cfg = UNetConfig::from_shapes(&weights::shapes(&tensors)).map_err(|(tensor, reason)| Error::Weights {
        path: path.to_path_buf(),
        tensor: Some(tensor),
        reason,
    })?;
    let table = ParamTable::new(&cfg);
    let params = weights::pack(&table, &tensors, path, weights::PackMode::Full)?;
    for (name, buf) in [(ADAM_M, &adam_m), (ADAM_V, &adam_v)] {
        if buf.as_ref().is_some_and(|b| b.len() != table.len) {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                tensor: Some(name.into()),
                reason: format!("expected {} values (one per parameter)", table.len),
            });
        }
    }
    let state = if metadata.contains_key("step") { Some(parse_state(path, &metadata)?) } else { None };
    Ok(Checkpoint { cfg, params, adam_m, adam_v, state, metadata })
}

/// A checkpoint's model shape and training state from its header alone (nothing
/// else is read): what `--resume` checks the options against before any work.
pub fn peek(path: &Path) -> Result<(UNetConfig, Option<TrainState>)> {
    let file = weights::file::TensorFile::open(path, weights::file::Role::Weights)?;
    let shapes = file
        .entries()
        .iter()
        .filter(|e| !NON_PARAMETER_PREFIXES.iter().any(|p| e.name.starts_with(p)))
        .map(|e| (weights::canonical_name(&e.name), e.shape.clone()))
        .collect();
    let cfg = UNetConfig::from_shapes(&shapes).map_err(|(tensor, reason)| Error::Weights {
        path: path.to_path_buf(),
        tensor: Some(tensor),
        reason,
    })?;
    let meta = file.metadata();
    let state = if meta.contains_key("step") { Some(parse_state(path, meta)?) } else { None };
    Ok((cfg, state))
}

fn parse_state(path: &Path, meta: &HashMap<String, String>) -> Result<TrainState> {
    fn malformed(path: &Path, key: &str) -> Error {
        Error::Weights {
            path: path.to_path_buf(),
            tensor: None,
            reason: format!("checkpoint metadata `{key}` is missing or malformed"),
        }
    }
    /// A key added after the first checkpoints: absent is allowed, malformed is not.
    fn optional<T: std::str::FromStr>(path: &Path, meta: &HashMap<String, String>, key: &str) -> Result<Option<T>> {
        meta.get(key).map(|v| v.parse().map_err(|_| malformed(path, key))).transpose()
    }
    fn get<T: std::str::FromStr>(path: &Path, meta: &HashMap<String, String>, key: &str) -> Result<T> {
        optional(path, meta, key)?.ok_or_else(|| malformed(path, key))
    }
    Ok(TrainState {
        step: get(path, meta, "step")?,
        epoch: get(path, meta, "epoch")?,
        batch_in_epoch: get(path, meta, "batch_in_epoch")?,
        lr: get(path, meta, "lr")?,
        plateau: Plateau {
            factor: get(path, meta, "plateau_factor")?,
            patience: get(path, meta, "plateau_patience")?,
            best: get(path, meta, "plateau_best")?,
            bad_epochs: get(path, meta, "plateau_bad_epochs")?,
        },
        best_val_loss: get(path, meta, "best_val_loss")?,
        best_jaccard: get(path, meta, "best_jaccard")?,
        seed: get(path, meta, "seed")?,
        size: get(path, meta, "size")?,
        batch_size: optional(path, meta, "batch_size")?,
        width: optional(path, meta, "width")?,
        epoch_loss_sum: optional(path, meta, "epoch_loss_sum")?.unwrap_or(0.0),
    })
}
