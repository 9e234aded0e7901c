//! Weight files: safetensors import and export, the mapping from the names found in
//! the wild to the canonical PyTorch names, and packing into the flat parameter
//! buffer.
//!
//! The boundary is PyTorch's: names of the paper's `state_dict`, layouts `[K,C,R,S]`
//! for convs and `[C,K,4,4]` for transposed convs, f32 on export. Internal layouts
//! exist only in the flat buffer ([`pack`], [`unpack`]).

mod layout;
mod names;

pub use layout::{pack, pack_into, unpack, PackMode};
pub use names::canonical_name;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::tensor::{Dtype, SafeTensorError, View};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::tensor::{f32_from_bytes, DType, Tensor};

/// What to tell the user whose file could not be parsed.
const RE_EXPORT: &str = "re-export it with safetensors.torch.save_file(model.state_dict(), path)";

/// Every tensor of the safetensors file at `path`, as f32 host tensors in the file's
/// (PyTorch) layout, under canonical names ([`canonical_name`]): a `module.` prefix
/// removed, the paper's `convB.J` aliases and torchvision's `features.N` renamed to
/// `encoder.N`. When the file is a full torchvision VGG16 (it has `features.*`
/// tensors), its `classifier.*` tensors (the fully connected layers) are dropped.
///
/// f32, f16 and bf16 are accepted; any other dtype is an error naming the tensor.
/// A name and its alias both present (as in a real `state_dict` of the paper's
/// model) must hold identical values; one is kept. A file that is missing,
/// truncated, not safetensors or whose header disagrees with its size is an error
/// naming the path, never a panic. The whole file is read into memory.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let entries = parse(path, &bytes)?;
    let vgg = entries.iter().any(|(name, _)| names::is_torchvision_features(name));

    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (name, tensor) in entries {
        if vgg && names::is_torchvision_classifier(&name) {
            continue;
        }
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
    Ok(out)
}

/// Every tensor of a safetensors file under the names the file gives them (no
/// aliasing, nothing dropped), as f32: for files of data rather than parameters,
/// such as the `forward` command's inputs. Dtypes and errors as [`read_tensors`].
pub fn read_plain(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(parse(path, &bytes)?.into_iter().collect())
}

/// The tensors of a safetensors file's bytes, converted to f32, sorted by name (so
/// that which of two disagreeing aliases an error names first does not depend on
/// the header's order).
fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| not_safetensors(path, bytes, &e))?;
    let mut entries = file.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
                other => {
                    let reason =
                        format!("dtype {other:?} is not supported (f32, f16 or bf16 only); convert it with .float()");
                    return Err(weights_error(path, Some(&name), reason));
                }
            };
            let tensor = Tensor { shape: view.shape().to_vec(), data: f32_from_bytes(dtype, view.data()) };
            Ok((name, tensor))
        })
        .collect()
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

/// The string metadata of a safetensors file's header (empty when it has none).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| not_safetensors(path, &bytes, &e))?;
    Ok(meta.metadata().clone().unwrap_or_default())
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

    let tmp = temp_path(path)?;
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        // Best effort: the temporary file is ours and useless now.
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// A name next to `path`, unique within this process and among processes, for
/// writing before the rename (same directory, so the rename cannot cross devices).
fn temp_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let file =
        path.file_name().ok_or_else(|| weights_error(path, None, "is not a file path".to_string()))?.to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{file}.tmp.{}.{n}", std::process::id())))
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

/// The error for bytes the safetensors parser rejected, saying what is wrong in
/// the user's terms and what to do about it.
fn not_safetensors(path: &Path, bytes: &[u8], e: &SafeTensorError) -> Error {
    // torch.save writes a zip archive (since PyTorch 1.6) or, before, a pickle that
    // starts with protocol 2 and the long magic number; read as a safetensors
    // header length either would be implausibly large.
    let torch_save = bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]);
    if torch_save {
        let reason = format!("a PyTorch checkpoint (torch.save), not a safetensors file; {RE_EXPORT}");
        return weights_error(path, None, reason);
    }
    let header_len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let after_len = bytes.len().saturating_sub(8);
    let detail = match e {
        _ if bytes.is_empty() => "the file is empty".to_string(),
        SafeTensorError::HeaderTooSmall => {
            format!("the file is {} bytes long, shorter than the 8-byte header length", bytes.len())
        }
        SafeTensorError::HeaderTooLarge => {
            format!("the header length field says {} bytes, beyond safetensors' 100 MB limit", header_len.unwrap_or(0))
        }
        SafeTensorError::InvalidHeaderLength => {
            format!("the header length field says {} bytes but only {after_len} follow it", header_len.unwrap_or(0))
        }
        SafeTensorError::InvalidHeader => "the header is not UTF-8 text".to_string(),
        SafeTensorError::InvalidHeaderDeserialization => "the header is not safetensors JSON".to_string(),
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor `{name}`'s data offsets leave a gap or overlap the previous tensor")
        }
        SafeTensorError::TensorInvalidInfo => "a tensor's byte range does not match its shape and dtype".to_string(),
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "the {} bytes of tensor data after the header are not what the header describes",
            after_len.saturating_sub(header_len.unwrap_or(0) as usize)
        ),
        SafeTensorError::ValidationOverflow => "a tensor's shape is too large to address".to_string(),
        other => format!("{other:?}"),
    };
    weights_error(path, None, format!("not a safetensors file or truncated: {detail}; {RE_EXPORT}"))
}
