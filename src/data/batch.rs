//! Batches for the model: samples gathered (and augmented) in parallel, images
//! normalised with the ImageNet statistics, masks unpacked into 0/1 channels, all NHWC.
//!
//! Determinism: one seed per sample is drawn from the caller's RNG, in batch order,
//! before the parallel part; each sample's transform comes from its own seeded
//! generator, so the batch does not depend on the number of threads.

use rand::{RngCore, SeedableRng};
use rayon::prelude::*;

use super::augment::{AugmentParams, Transform};
use super::isic::Dataset;
use crate::attributes::NUM_ATTRIBUTES;
use crate::error::{Error, Result};

/// ImageNet channel means on [0, 1] pixels (R, G, B), as the VGG16 encoder expects.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations on [0, 1] pixels (R, G, B).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A batch of `n` samples at `size`x`size`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Number of samples.
    pub n: usize,
    /// Side of the images.
    pub size: usize,
    /// Normalised images, NHWC `[n][size][size][3]`.
    pub input: Vec<f32>,
    /// Attribute masks, NHWC `[n][size][size][5]`, each 0.0 or 1.0.
    pub target: Vec<f32>,
}

/// `(v / 255 - mean[c]) / std[c]` for every byte value and channel.
fn lut() -> [[f32; 256]; 3] {
    let mut t = [[0.0f32; 256]; 3];
    for (c, row) in t.iter_mut().enumerate() {
        for (v, out) in row.iter_mut().enumerate() {
            *out = (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    t
}

/// Normalises interleaved RGB bytes into `out` (same length): `(v / 255 - mean) / std`
/// per channel. Errors if the lengths differ or are not a multiple of 3.
pub fn normalize_into(rgb: &[u8], out: &mut [f32]) -> Result<()> {
    if rgb.len() != out.len() || !rgb.len().is_multiple_of(3) {
        return Err(Error::shape("normalize_into", format!("equal lengths, multiple of 3 ({})", rgb.len()), out.len()));
    }
    let t = lut();
    for (src, dst) in rgb.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
        for c in 0..3 {
            dst[c] = t[c][src[c] as usize];
        }
    }
    Ok(())
}

/// Normalises interleaved RGB bytes (HWC) into the model's input values, same layout.
/// A trailing partial pixel (length not a multiple of 3) is dropped.
pub fn normalize_image(rgb: &[u8]) -> Vec<f32> {
    let rgb = &rgb[..rgb.len() / 3 * 3];
    let mut out = vec![0.0; rgb.len()];
    // Cannot fail: the lengths match and are a multiple of 3.
    let _ = normalize_into(rgb, &mut out);
    out
}

/// Gathers samples `indices` of `ds` into a batch, augmenting each with its own
/// transform when `aug` is given (see the module doc for determinism).
pub fn make_batch(ds: &Dataset, indices: &[usize], aug: Option<(&AugmentParams, &mut dyn RngCore)>) -> Result<Batch> {
    make_batch_part(ds, indices, aug, 0..indices.len())
}

/// The samples `part` of the batch [`make_batch`] makes of `indices`, with the same
/// augmentations (every sample's transform is drawn from `aug`'s generator in
/// batch order, then only `part` is decoded): one data-parallel replica's shard.
pub fn make_batch_part(
    ds: &Dataset,
    indices: &[usize],
    aug: Option<(&AugmentParams, &mut dyn RngCore)>,
    part: std::ops::Range<usize>,
) -> Result<Batch> {
    if part.start > part.end || part.end > indices.len() {
        return Err(Error::shape("make_batch part", format!("within 0..{}", indices.len()), format!("{part:?}")));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
        return Err(Error::shape("make_batch index", format!("< {}", ds.len()), bad));
    }
    let (n, size) = (indices.len(), ds.size);
    let px = size * size;
    let transforms: Vec<Transform> = match aug {
        Some((params, rng)) => indices
            .iter()
            .map(|_| Transform::sample(params, &mut rand_chacha::ChaCha8Rng::seed_from_u64(rng.next_u64())))
            .collect(),
        None => vec![Transform::IDENTITY; n],
    };
    let (indices, transforms) = (&indices[part.clone()], &transforms[part]);
    let n = indices.len();
    let mut input = vec![0.0f32; n * px * 3];
    let mut target = vec![0.0f32; n * px * NUM_ATTRIBUTES];
    input
        .par_chunks_mut(px * 3)
        .zip(target.par_chunks_mut(px * NUM_ATTRIBUTES))
        .zip(indices.par_iter().zip(transforms))
        .try_for_each(|((input, target), (&i, t))| -> Result<()> {
            let (mut image, mut mask) = (vec![0u8; px * 3], vec![0u8; px]);
            t.apply(size, ds.image(i), ds.mask(i), &mut image, &mut mask)?;
            normalize_into(&image, input)?;
            for (bits, out) in mask.iter().zip(target.chunks_exact_mut(NUM_ATTRIBUTES)) {
                for (k, o) in out.iter_mut().enumerate() {
                    *o = ((bits >> k) & 1) as f32;
                }
            }
            Ok(())
        })?;
    Ok(Batch { n, size, input, target })
}
