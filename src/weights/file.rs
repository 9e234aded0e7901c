//! Reading a safetensors file no further than its header says, and only what is
//! asked for: the 8-byte header length and the header are read first and every
//! tensor's extent is checked against the file's size; a tensor's bytes are read
//! (with one seek) only when it is asked for, after the memory it needs has been
//! checked against what the machine has. So `/dev/zero`, a 50 GB sparse file or a
//! header that promises more than the file holds is one clear error, not an
//! exhausted machine.
//!
//! Errors name the file and, when it is a model's weights, say so: [`Role`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::json::{self, Json};
use crate::error::{Error, Result};
use crate::tensor::{f32_from_bytes, DType, Tensor};

/// safetensors' own limit on the header.
const MAX_HEADER: u64 = 100_000_000;

/// What the file is to the command, for the wording of errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A model's weights or a checkpoint: errors are [`Error::Weights`].
    Weights,
    /// Data (the `forward` command's input): errors are [`Error::Data`].
    Data,
}

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its name, as written.
    pub name: String,
    /// safetensors' dtype name (`F32`, `BF16`, `I64`, …).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub begin: u64,
    /// End of the byte range (exclusive).
    pub end: u64,
}

impl Entry {
    /// Elements of the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open safetensors file whose header has been read and checked.
pub struct TensorFile {
    path: PathBuf,
    role: Role,
    file: File,
    /// Offset of the data section in the file.
    data_start: u64,
    /// Tensors, in the order of their data.
    entries: Vec<Entry>,
    metadata: HashMap<String, String>,
}

/// Bytes per element of a safetensors dtype.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

impl TensorFile {
    /// Opens `path` and reads and checks its header (nothing else).
    pub fn open(path: &Path, role: Role) -> Result<Self> {
        let fail = |reason: String| error(path, role, None, reason);
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(fail("no such file".into())),
            Err(e) => return Err(Error::io(path, e)),
        };
        if meta.is_dir() {
            return Err(fail("is a folder, not a safetensors file".into()));
        }
        if !meta.is_file() {
            // The format needs the file's size to check the header against.
            let kind = crate::output::kind(path);
            return Err(fail(format!("is {kind}, not a regular file; save the tensors to a file first")));
        }
        let len = meta.len();
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut head = [0u8; 8];
        let got = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
        if is_torch_save(&head[..got]) {
            return Err(fail(format!("a PyTorch checkpoint (torch.save), not a safetensors file; {}", hint(role))));
        }
        if got < 8 {
            let what = if len == 0 { "the file is empty".to_string() } else { format!("the file is {len} bytes long") };
            return Err(not_safetensors(path, role, format!("{what}, shorter than the 8-byte header length")));
        }
        let n = u64::from_le_bytes(head);
        if n > MAX_HEADER {
            let reason = format!("the header length field says {n} bytes, beyond safetensors' 100 MB limit");
            return Err(not_safetensors(path, role, reason));
        }
        if n > len - 8 {
            let reason = format!("the header length field says {n} bytes but only {} follow it", len - 8);
            return Err(not_safetensors(path, role, reason));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&header)
            .map_err(|_| not_safetensors(path, role, "the header is not UTF-8 text".into()))?;
        let json = json::parse(text)
            .map_err(|e| not_safetensors(path, role, format!("the header is not safetensors JSON ({e})")))?;
        let (entries, metadata) = entries(path, role, json, len - 8 - n)?;
        Ok(TensorFile { path: path.to_path_buf(), role, file, data_start: 8 + n, entries, metadata })
    }

    /// The tensors, in the order of their data.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The header's string metadata (`__metadata__`).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Checks that the tensors `names` fit in memory as f32 (their bytes are read
    /// and then converted, so both count).
    pub fn check_memory(&self, names: &[&str]) -> Result<()> {
        let bytes: u64 = names.iter().filter_map(|n| self.entry(n)).map(|e| e.end - e.begin + 4 * e.len() as u64).sum();
        crate::resources::check_memory(&format!("reading {}", self.path.display()), bytes)
    }

    /// Reads tensor `name` as f32 (f32, f16 and bf16 are accepted).
    pub fn read(&mut self, name: &str) -> Result<Tensor> {
        let Some(e) = self.entry(name).cloned() else {
            return Err(error(&self.path, self.role, Some(name), "no such tensor in the file".into()));
        };
        let dtype = match e.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => {
                let reason =
                    format!("dtype {other} is not supported (f32, f16 or bf16 only); convert it with .float()");
                return Err(error(&self.path, self.role, Some(name), reason));
            }
        };
        let mut bytes = vec![0u8; (e.end - e.begin) as usize];
        self.file
            .seek(SeekFrom::Start(self.data_start + e.begin))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .map_err(|err| Error::io(&self.path, err))?;
        Ok(Tensor { shape: e.shape, data: f32_from_bytes(dtype, &bytes) })
    }
}

/// Reads into `buf` until it is full or the file ends; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The tensor entries and metadata of a parsed header, each extent checked against
/// the `data_len` bytes that follow the header.
fn entries(path: &Path, role: Role, json: Json, data_len: u64) -> Result<(Vec<Entry>, HashMap<String, String>)> {
    let bad = |reason: String| not_safetensors(path, role, format!("the header is not safetensors JSON ({reason})"));
    let Json::Object(fields) = json else { return Err(bad("not an object".into())) };
    let (mut out, mut metadata) = (Vec::new(), HashMap::new());
    for (name, value) in fields {
        if name == "__metadata__" {
            let Json::Object(kv) = value else { return Err(bad("`__metadata__` is not an object".into())) };
            for (k, v) in kv {
                let v = v.as_str().ok_or_else(|| bad(format!("metadata `{k}` is not a string")))?;
                metadata.insert(k, v.to_string());
            }
            continue;
        }
        let tensor_err = |reason: &str| error(path, role, Some(&name), reason.to_string());
        let Json::Object(info) = value else { return Err(tensor_err("its header entry is not an object")) };
        let field = |key: &str| info.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let dtype = field("dtype").and_then(Json::as_str).ok_or_else(|| tensor_err("no `dtype` string"))?;
        let ints = |key: &str| -> Option<Vec<u64>> {
            match field(key)? {
                Json::Array(items) => items.iter().map(Json::as_u64).collect(),
                _ => None,
            }
        };
        let shape = ints("shape").ok_or_else(|| tensor_err("no `shape` of whole numbers"))?;
        let offsets =
            ints("data_offsets").filter(|o| o.len() == 2).ok_or_else(|| tensor_err("no `data_offsets` pair"))?;
        let size = dtype_size(dtype).ok_or_else(|| tensor_err(&format!("unknown dtype `{dtype}`")))?;
        let bytes = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
        let shape_text = format!("{shape:?}");
        let Some(bytes) = bytes.filter(|&b| usize::try_from(b).is_ok()) else {
            return Err(tensor_err(&format!("shape {shape_text} is too large to address")));
        };
        let (begin, end) = (offsets[0], offsets[1]);
        if end < begin || end - begin != bytes {
            return Err(tensor_err(&format!(
                "{dtype} {shape_text} needs {bytes} bytes but its data_offsets [{begin}, {end}] span {}",
                end.saturating_sub(begin)
            )));
        }
        if end > data_len {
            return Err(tensor_err(&format!(
                "{dtype} {shape_text} lies at bytes {begin}..{end} of the data, but the file holds only {data_len} \
                 bytes of data: it is truncated, or not what its header describes; {}",
                hint(role)
            )));
        }
        let shape = shape.into_iter().map(|d| d as usize).collect();
        out.push(Entry { name, dtype: dtype.to_string(), shape, begin, end });
    }
    // As safetensors requires: the tensors tile the data section, in order.
    out.sort_by_key(|e| (e.begin, e.end));
    let mut at = 0;
    for e in &out {
        if e.begin != at {
            let reason = format!("its data offsets leave a gap or overlap the previous tensor (at byte {at})");
            return Err(error(path, role, Some(&e.name), reason));
        }
        at = e.end;
    }
    if at != data_len {
        let reason = format!("{} bytes of data follow the last tensor", data_len - at);
        return Err(not_safetensors(path, role, reason));
    }
    Ok((out, metadata))
}

/// torch.save writes a zip archive (since PyTorch 1.6) or, before, a pickle that
/// starts with protocol 2 and the long magic number.
fn is_torch_save(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.starts_with(&[0x80, 0x02, 0x8a, 0x0a])
}

/// What to tell the user whose file could not be used.
fn hint(role: Role) -> &'static str {
    match role {
        Role::Weights => "re-export it with safetensors.torch.save_file(model.state_dict(), path)",
        Role::Data => "write it with safetensors.torch.save_file({\"input\": x}, path)",
    }
}

fn not_safetensors(path: &Path, role: Role, detail: String) -> Error {
    error(path, role, None, format!("not a safetensors file or truncated: {detail}; {}", hint(role)))
}

/// The error for `path` in its role, about `tensor` when there is one.
pub(crate) fn error(path: &Path, role: Role, tensor: Option<&str>, reason: String) -> Error {
    match role {
        Role::Weights => Error::Weights { path: path.to_path_buf(), tensor: tensor.map(str::to_string), reason },
        Role::Data => {
            let reason = match tensor {
                Some(t) => format!("tensor `{t}`: {reason}"),
                None => reason,
            };
            Error::Data { path: path.to_path_buf(), reason }
        }
    }
}
