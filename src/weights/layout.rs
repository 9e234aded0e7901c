//! Packing: PyTorch-layout tensors into the flat parameter buffer in the engine's
//! internal layouts, and back.
//!
//! Conv weights: PyTorch `[K][C][R][R]` ↔ internal `[R][R][C][K]` (one GEMM
//! operand per filter tap, output channels innermost, as the NHWC kernels read them).
//! Transposed-conv weights: PyTorch `[C][K][4][4]` ↔ internal parity-major
//! `[a][b][ty][tx][C][K]` with `internal[a][b][ty][tx][c][k] =
//! pytorch[c][k][3-a-2ty][3-b-2tx]`: output pixel parity (a, b) selects the 2x2 taps
//! that reach it, so each parity is a plain 2x2 conv (see `backend::DeconvParams`).
//! Biases are the same both sides.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{ParamKind, ParamSpec, ParamTable};
use crate::tensor::Tensor;

/// How much of the parameter buffer a weight file provides.
#[derive(Clone, Copy, Debug)]
pub enum PackMode<'a> {
    /// A whole UNet16: every parameter present with its exact shape, nothing else.
    Full,
    /// Only the 13 encoder convolutions (`encoder.*`, e.g. a torchvision VGG16 for
    /// initialising training); every other element keeps its value from `into`,
    /// which must hold `table.len` values. Tensors that are not encoder parameters
    /// are ignored.
    EncoderOnly {
        /// The buffer the encoder is packed into (a copy of it is returned).
        into: &'a [f32],
    },
}

/// The flat parameter buffer (`table.len` values, internal layouts) built from
/// PyTorch-layout `tensors` under canonical names (see [`super::read_tensors`]).
/// `path` is only for error messages. Callers that keep tensors of their own in a
/// checkpoint next to the parameters remove them from the map before a `Full` pack.
pub fn pack(table: &ParamTable, tensors: &BTreeMap<String, Tensor>, path: &Path, mode: PackMode) -> Result<Vec<f32>> {
    match mode {
        PackMode::Full => {
            let mut dst = vec![0.0; table.len];
            pack_into(table, tensors, path, &mut dst, false)?;
            Ok(dst)
        }
        PackMode::EncoderOnly { into } => {
            let mut dst = into.to_vec();
            pack_into(table, tensors, path, &mut dst, true)?;
            Ok(dst)
        }
    }
}

/// [`pack`] into an existing buffer of `table.len` values. With `encoder_only`, only
/// the `encoder.*` parameters are written (the rest of `dst` is left alone) and
/// other tensors are ignored; otherwise the file must match the table exactly.
/// Everything is checked before anything is written, so on error `dst` is unchanged.
pub fn pack_into(
    table: &ParamTable,
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
    dst: &mut [f32],
    encoder_only: bool,
) -> Result<()> {
    if dst.len() != table.len {
        return Err(Error::shape("weights::pack_into", format!("a buffer of {} parameters", table.len), dst.len()));
    }
    let wanted: Vec<&ParamSpec> =
        if encoder_only { table.encoder.iter().flat_map(|l| [&l.weight, &l.bias]).collect() } else { table.specs() };
    check(table, &wanted, tensors, path, encoder_only)?;
    for spec in wanted {
        to_internal(spec.kind, &tensors[&spec.name].data, &mut dst[spec.off..spec.off + spec.len()]);
    }
    Ok(())
}

/// The PyTorch-layout tensor of one parameter (or of its gradient, at the same
/// offset in the gradient buffer) from a flat buffer in internal layout.
///
/// Panics if `flat` is shorter than `spec.off + spec.len()`: the buffers are sized
/// by the same table as `spec`, so that is a bug, not bad input.
pub fn unpack(spec: &ParamSpec, flat: &[f32]) -> Tensor {
    let mut data = vec![0.0; spec.len()];
    to_pytorch(spec.kind, &flat[spec.off..spec.off + spec.len()], &mut data);
    Tensor { shape: spec.pytorch_shape(), data }
}

/// Missing, misshapen and (for a full pack) unexpected tensors, in that order.
fn check(
    table: &ParamTable,
    wanted: &[&ParamSpec],
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
    encoder_only: bool,
) -> Result<()> {
    let err = |tensor: &str, reason: String| Error::Weights {
        path: path.to_path_buf(),
        tensor: Some(tensor.to_string()),
        reason,
    };
    let all = table.specs();
    // Tensors that are no parameter at all (in encoder-only mode the decoder's
    // parameters are merely unused, not unknown).
    let unknown: Vec<&str> =
        tensors.keys().map(String::as_str).filter(|name| !all.iter().any(|s| s.name == *name)).collect();

    let missing: Vec<&ParamSpec> = wanted.iter().copied().filter(|s| !tensors.contains_key(&s.name)).collect();
    if let Some(first) = missing.first() {
        let mut reason = format!("missing (expected shape {:?})", first.pytorch_shape());
        if missing.len() > 1 {
            let names = name_list(missing.iter().map(|s| s.name.as_str()));
            reason += &format!("; {} of the {} tensors needed are missing: {names}", missing.len(), wanted.len());
        }
        // Every encoder tensor there and nothing else: a VGG16 given where a whole
        // model was expected.
        let only_encoder = missing.len() == wanted.len() - 2 * table.encoder.len()
            && missing.iter().all(|s| !s.name.starts_with("encoder."));
        if !encoder_only && only_encoder {
            reason += "; the file holds the VGG16 encoder but not the decoder: use it to initialise training \
                       (`--init`) instead";
        } else if !unknown.is_empty() {
            reason += &format!(
                "; the file has tensors that are not UNet16 parameters: {}",
                name_list(unknown.iter().copied())
            );
        }
        return Err(err(&first.name, reason));
    }

    for spec in wanted {
        let t = &tensors[&spec.name];
        let expected = spec.pytorch_shape();
        if t.shape != expected {
            let mut reason = format!("expected shape {expected:?} (PyTorch layout), found {:?}", t.shape);
            if matches!(spec.kind, ParamKind::Deconv { .. }) && t.shape == [expected[1], expected[0], 4, 4] {
                reason += " (PyTorch stores a transposed conv as [in, out, 4, 4])";
            }
            return Err(err(&spec.name, reason));
        }
        if t.data.len() != spec.len() {
            return Err(err(&spec.name, format!("holds {} values for shape {expected:?}", t.data.len())));
        }
    }

    if !encoder_only {
        if let Some(first) = unknown.first() {
            let mut reason = "unexpected tensor (not a parameter of UNet16)".to_string();
            if unknown.len() > 1 {
                reason += &format!("; {} unexpected tensors: {}", unknown.len(), name_list(unknown.iter().copied()));
            }
            return Err(err(first, reason));
        }
    }
    Ok(())
}

/// The first few names, quoted, and how many more there are.
fn name_list<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    const SHOWN: usize = 4;
    let total = names.len();
    let mut s = names.take(SHOWN).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if total > SHOWN {
        s += &format!(" and {} more", total - SHOWN);
    }
    s
}

/// Calls `f(internal_index, pytorch_index)` for every element of a parameter.
fn for_each_index(kind: ParamKind, mut f: impl FnMut(usize, usize)) {
    match kind {
        ParamKind::Conv { r, c, k } => {
            for ry in 0..r {
                for rx in 0..r {
                    for ci in 0..c {
                        let internal = ((ry * r + rx) * c + ci) * k;
                        for ki in 0..k {
                            f(internal + ki, ((ki * c + ci) * r + ry) * r + rx);
                        }
                    }
                }
            }
        }
        ParamKind::Deconv { c, k } => {
            for (parity, (a, b, ty, tx)) in deconv_taps().enumerate() {
                let (ky, kx) = (3 - a - 2 * ty, 3 - b - 2 * tx);
                for ci in 0..c {
                    let internal = (parity * c + ci) * k;
                    for ki in 0..k {
                        f(internal + ki, ((ci * k + ki) * 4 + ky) * 4 + kx);
                    }
                }
            }
        }
        ParamKind::Bias { k } => (0..k).for_each(|i| f(i, i)),
    }
}

/// (a, b, ty, tx) in internal order, a outermost.
fn deconv_taps() -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..16).map(|i| (i >> 3 & 1, i >> 2 & 1, i >> 1 & 1, i & 1))
}

/// PyTorch layout → internal layout for one parameter.
fn to_internal(kind: ParamKind, pytorch: &[f32], internal: &mut [f32]) {
    for_each_index(kind, |i, p| internal[i] = pytorch[p]);
}

/// Internal layout → PyTorch layout for one parameter.
fn to_pytorch(kind: ParamKind, internal: &[f32], pytorch: &mut [f32]) {
    for_each_index(kind, |i, p| pytorch[p] = internal[i]);
}
