//! Host tensors and the names used for dimensions everywhere in lesionseg.
//!
//! Dimensions: `N` batch, `H`×`W` input height and width, `C` input channels,
//! `K` output channels, `R`×`S` filter size, `P`×`Q` output height and width.
//! Activations are NHWC inside the engine (channels innermost, the layout tensor
//! cores want); the public tensor I/O (the `forward` command, checkpoints) is NCHW
//! with PyTorch's names and layouts. A channel slice of a wider NHWC tensor has a
//! `pitch` (elements from one pixel to the next) larger than its channel count: that
//! is how concatenation costs nothing.

use crate::error::{Error, Result};

/// Storage types a tensor may have on disk or, later, on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// 32-bit IEEE float, the engine's compute type.
    F32,
    /// IEEE half precision (`half::f16`).
    F16,
    /// bfloat16 (`half::bf16`).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// Converts little-endian bytes of `dtype` to f32 values.
pub fn f32_from_bytes(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
    }
}

/// A dense host tensor of f32 with an explicit shape (row-major, last dim fastest).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Extent of each dimension.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` holding `data`; an error if the element count differs.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let len: usize = shape.iter().product();
        if len != data.len() {
            return Err(Error::shape("Tensor::new", format!("{len} values for shape {shape:?}"), data.len()));
        }
        Ok(Tensor { shape, data })
    }

    /// A zero tensor of `shape`.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let len = shape.iter().product();
        Tensor { shape, data: vec![0.0; len] }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// NCHW → NHWC for a 4-D tensor.
    pub fn nchw_to_nhwc(&self) -> Result<Tensor> {
        let [n, c, h, w] = dims4(&self.shape, "nchw_to_nhwc")?;
        let mut out = vec![0.0; self.len()];
        for ni in 0..n {
            for ci in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        out[((ni * h + y) * w + x) * c + ci] = self.data[((ni * c + ci) * h + y) * w + x];
                    }
                }
            }
        }
        Tensor::new(vec![n, h, w, c], out)
    }

    /// NHWC → NCHW for a 4-D tensor.
    pub fn nhwc_to_nchw(&self) -> Result<Tensor> {
        let [n, h, w, c] = dims4(&self.shape, "nhwc_to_nchw")?;
        let mut out = vec![0.0; self.len()];
        for ni in 0..n {
            for ci in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        out[((ni * c + ci) * h + y) * w + x] = self.data[((ni * h + y) * w + x) * c + ci];
                    }
                }
            }
        }
        Tensor::new(vec![n, c, h, w], out)
    }
}

/// The four extents of a 4-D shape, or a shape error naming `op`.
pub fn dims4(shape: &[usize], op: &str) -> Result<[usize; 4]> {
    match shape {
        [a, b, c, d] => Ok([*a, *b, *c, *d]),
        _ => Err(Error::shape(op, "a 4-D tensor", format!("{shape:?}"))),
    }
}
