//! Weight files: safetensors import and export, the mapping from the names found in
//! the wild to the canonical PyTorch names, and packing into the flat parameter
//! buffer.
//!
//! The boundary is PyTorch's: names of the paper's `state_dict`, layouts `[K,C,R,S]`
//! for convs and `[C,K,4,4]` for transposed convs, f32 on export. Internal layouts
//! exist only in the flat buffer ([`pack`], [`unpack`]).

pub mod file;
mod json;
mod layout;
mod names;

pub use layout::{pack, pack_into, unpack, PackMode};
pub use names::canonical_name;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, View};

use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::tensor::Tensor;
use file::{Role, TensorFile};

/// Every tensor of the safetensors file at `path`, as f32 host tensors in the file's
/// (PyTorch) layout, under canonical names ([`canonical_name`]): a `module.` prefix
/// removed, the paper's `convB.J` aliases and torchvision's `features.N` renamed to
/// `encoder.N`. When the file is a full torchvision VGG16 (it has `features.*`
/// tensors), its `classifier.*` tensors (the fully connected layers) are dropped
/// without being read.
///
/// f32, f16 and bf16 are accepted; any other dtype is an error naming the tensor, and
/// so is a NaN or infinite value. A name and its alias both present (as in a real
/// `state_dict` of the paper's model) must hold identical values; one is kept. A file
/// that is missing, truncated, not safetensors or whose header disagrees with its
/// size is an error naming the path, never a panic; nothing is read beyond what the
/// header describes (see [`file`]).
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    Ok(read_weights(path)?.0)
}

/// [`read_tensors`] and the header's string metadata, from one reading.
pub fn read_weights(path: &Path) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let mut file = TensorFile::open(path, Role::Weights)?;
    // Sorted, so that which of two disagreeing aliases an error names first does
    // not depend on the header's order.
    let mut wanted: Vec<String> = file.entries().iter().map(|e| e.name.clone()).collect();
    wanted.sort();
    let vgg = wanted.iter().any(|name| names::is_torchvision_features(name));
    wanted.retain(|name| !(vgg && names::is_torchvision_classifier(name)));
    file.check_memory(&wanted.iter().map(String::as_str).collect::<Vec<_>>())?;

    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for name in wanted {
        let tensor = file.read(&name)?;
        check_finite(path, &name, &tensor)?;
        let canonical = canonical_name(&name);
        if let Some(kept) = out.get(&canonical) {
            if !same(kept, &tensor) {
                let first = &origin[&canonical];
                return Err(weights_error(
                    path,
                    Some(first),
                    format!("differs from `{name}`: both name `{canonical}` and must hold the same tensor"),
                ));
            }
            continue;
        }
        origin.insert(canonical.clone(), name);
        out.insert(canonical, tensor);
    }
    Ok((out, file.metadata().clone()))
}

/// A NaN or infinity in weights is an error naming the tensor and the first place.
fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    let Some(i) = t.data.iter().position(|v| !v.is_finite()) else { return Ok(()) };
    let bad = t.data.iter().filter(|v| !v.is_finite()).count();
    let reason = format!(
        "holds {} at element {i} ({bad} of {} values are not finite); the weights are unusable (a diverged \
         training run?)",
        t.data[i],
        t.data.len()
    );
    Err(weights_error(path, Some(name), reason))
}

/// Every tensor of a safetensors file under the names the file gives them (no
/// aliasing, nothing dropped), as f32: for files of data rather than parameters.
/// Dtypes and the reading as [`read_tensors`]; errors name the file as data.
pub fn read_plain(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let mut file = TensorFile::open(path, Role::Data)?;
    let names: Vec<String> = file.entries().iter().map(|e| e.name.clone()).collect();
    file.check_memory(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
    names.into_iter().map(|name| Ok((name.clone(), file.read(&name)?))).collect()
}

/// The shape of every tensor, by name (the input of `UNetConfig::from_shapes`).
pub fn shapes(tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<usize>> {
    tensors.iter().map(|(name, t)| (name.clone(), t.shape.clone())).collect()
}

/// Writes `tensors` as f32 to a safetensors file, with optional string `metadata`.
/// The file is written under a temporary name in the same directory, synced and
/// renamed, so `path` never holds a half-written file (an interrupted checkpoint
/// leaves the previous one intact). 0-d tensors (shape `[]`, one value) are allowed.
/// Duplicate names, and a tensor whose data does not fill its shape, are errors.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_views(path, tensors.iter().map(|(n, t)| (n.as_str(), t)).collect(), metadata)
}

/// Writes every parameter of `flat` (internal layout, `table.len` values) in
/// PyTorch layout under its canonical name, then the `extra` tensors (gradients,
/// losses, …), with the metadata `format = pt` that PyTorch tooling expects.
pub fn save_params(path: &Path, table: &ParamTable, flat: &[f32], extra: &[(String, Tensor)]) -> Result<()> {
    save_params_with_metadata(path, table, flat, extra, HashMap::new())
}

/// [`save_params`] with string `metadata` added to the header (checkpoints record
/// their training state and input size there).
pub fn save_params_with_metadata(
    path: &Path,
    table: &ParamTable,
    flat: &[f32],
    extra: &[(String, Tensor)],
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    if flat.len() != table.len {
        return Err(Error::shape("weights::save_params", format!("{} parameters", table.len), flat.len()));
    }
    let specs = table.specs();
    let params: Vec<Tensor> = specs.iter().map(|s| unpack(s, flat)).collect();
    let mut views: Vec<(&str, &Tensor)> = specs.iter().map(|s| s.name.as_str()).zip(&params).collect();
    views.extend(extra.iter().map(|(n, t)| (n.as_str(), t)));
    metadata.insert("format".to_string(), "pt".to_string());
    write_views(path, views, Some(metadata))
}

/// The string metadata of a safetensors file's header (empty when it has none);
/// only the header is read.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    Ok(TensorFile::open(path, Role::Weights)?.metadata().clone())
}

/// An f32 tensor borrowed for serialisation.
struct F32View<'a>(&'a Tensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // safetensors is little-endian; so is every machine we run on, where the
        // f32s can be written as they lie in memory.
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(&self.0.data))
        } else {
            Cow::Owned(self.0.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        4 * self.0.data.len()
    }
}

/// Checks, serialises and atomically writes named tensors.
fn write_views(path: &Path, tensors: Vec<(&str, &Tensor)>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let mut seen = BTreeSet::new();
    for &(name, t) in &tensors {
        if !seen.insert(name) || name == "__metadata__" {
            let why = if name == "__metadata__" { "is reserved by safetensors" } else { "appears twice" };
            return Err(weights_error(path, Some(name), format!("cannot be written: the name {why}")));
        }
        let len: usize = t.shape.iter().product();
        if len != t.data.len() {
            let reason = format!("holds {} values but its shape {:?} needs {len}", t.data.len(), t.shape);
            return Err(weights_error(path, Some(name), reason));
        }
    }
    let views = tensors.into_iter().map(|(n, t)| (n, F32View(t)));
    let bytes = safetensors::serialize(views, &metadata)
        .map_err(|e| weights_error(path, None, format!("cannot serialise: {e}")))?;

    crate::output::write(path, &bytes, crate::output::Sync::Durable)
}

/// Bitwise equality, so that identical tensors holding NaNs still compare equal.
fn same(a: &Tensor, b: &Tensor) -> bool {
    a.shape == b.shape
        && a.data.len() == b.data.len()
        && a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// An `Error::Weights` for `path`.
fn weights_error(path: &Path, tensor: Option<&str>, reason: String) -> Error {
    Error::Weights { path: path.to_path_buf(), tensor: tensor.map(str::to_string), reason }
}
