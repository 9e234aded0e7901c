//! Launchers of `kernels/backward.cu`, and the split-K plan: what the convolution and
//! deconvolution backward passes (`conv2d.rs`, `deconv.rs`) share.
//!
//! - [`relu_mask`]: `dy = 0` where `y <= 0`, in place, before the gradients.
//! - [`split_k`]: how a weight or bias gradient's reduction over pixels is cut into
//!   chunks reduced by separate blocks, and [`sum_partials`]: the chunks' partial
//!   results added in chunk order. No float atomics: the plan depends only on the
//!   shapes, so the summation order, and the bits, never depend on the GPU.

use super::{fits, int, stride_geometry, Arg, Executor, Kernel, Kernels};
use crate::error::Result;

const RELU_MASK: Kernel = Kernel { module: "backward", name: "relu_mask_f32" };
const SUM_PARTIALS: Kernel = Kernel { module: "backward", name: "sum_partials_f32" };

/// `relu_mask_f32`: `dy = 0` where `y <= 0` over `pixels` pixels of `c` channels, both
/// views `pitch` apart (`dya`, `ya`: checked device addresses).
pub(crate) fn relu_mask<E: Executor>(
    k: &Kernels<E>,
    op: &str,
    dya: u64,
    ya: u64,
    pixels: usize,
    c: usize,
    pitch: usize,
) -> Result<()> {
    let total = fits(op, "a masked dy", pixels.checked_mul(c))?;
    if total == 0 {
        return Ok(());
    }
    let args = [Arg::Ptr(dya), Arg::Ptr(ya), int(op, pixels)?, int(op, c)?, int(op, pitch)?];
    k.exec.launch(RELU_MASK, &stride_geometry(total), &args)
}

/// `sum_partials_f32`: `out[i] = Σ_s part[s·len + i]` over `chunks` partials of `len`
/// floats, in chunk order.
pub(crate) fn sum_partials<E: Executor>(
    k: &Kernels<E>,
    op: &str,
    out: u64,
    part: u64,
    len: usize,
    chunks: usize,
) -> Result<()> {
    fits(op, "split-K partials", len.checked_mul(chunks))?;
    if len == 0 {
        return Ok(());
    }
    let args = [Arg::Ptr(out), Arg::Ptr(part), int(op, len)?, int(op, chunks)?];
    k.exec.launch(SUM_PARTIALS, &stride_geometry(len), &args)
}

/// How a gradient's reduction over `items` (pixels) is split: `(chunks, chunk)`, each
/// chunk reduced by its own blocks into a partial result, `chunks·chunk ≥ items` and
/// no chunk empty. Enough chunks for about `target_blocks` blocks in all when each
/// chunk has `blocks_per_chunk` of them (small layers still fill the GPU), but no more
/// than ⌈items / min_chunk⌉ (each chunk costs a partial written and read back) nor
/// `max_chunks` (the grid's limit, the workspace's); the chunk a multiple of `step`
/// (the kernel's reduction slice).
pub(crate) fn split_k(
    items: usize,
    blocks_per_chunk: usize,
    target_blocks: usize,
    min_chunk: usize,
    max_chunks: usize,
    step: usize,
) -> (usize, usize) {
    let most = items.div_ceil(min_chunk.max(1)).min(max_chunks).max(1);
    let wanted = target_blocks.div_ceil(blocks_per_chunk.max(1)).clamp(1, most);
    let chunk = items.div_ceil(wanted).next_multiple_of(step.max(1)).max(step.max(1));
    (items.div_ceil(chunk).max(1), chunk)
}

#[cfg(test)]
mod tests {
    use super::split_k;

    #[test]
    fn split_k_covers_every_item_with_non_empty_chunks() {
        for items in [0, 1, 15, 16, 17, 255, 256, 297, 512, 4096, 1 << 20] {
            for bpc in [1, 3, 9, 64, 1000] {
                for (min_chunk, max_chunks, step) in [(128, 65535, 16), (256, 7, 16), (1024, 65535, 1)] {
                    let (chunks, chunk) = split_k(items, bpc, 512, min_chunk, max_chunks, step);
                    let case = format!("{items} items, {bpc} blocks a chunk: {chunks} x {chunk}");
                    assert!(chunks >= 1 && chunk % step == 0 && chunks * chunk >= items, "{case}");
                    assert!(items == 0 || (chunks - 1) * chunk < items, "an empty chunk: {case}");
                    assert!(chunks <= max_chunks.max(1) && chunks <= items.div_ceil(min_chunk).max(1), "{case}");
                }
            }
        }
        // Small layers split until about 512 blocks; a 64x64-tile layer of 512 pixels
        // and 9 tiles takes 4 chunks of 128.
        assert_eq!(split_k(512, 9, 512, 128, 65535, 16), (4, 128));
        assert_eq!(split_k(1 << 20, 64, 512, 128, 65535, 16), (8, 1 << 17));
    }
}
