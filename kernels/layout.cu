// layout.cu — layout changes at the engine's boundary (fp32, exact: every output is a
// copy of an input, or the reference's f32 formula). Semantics and CPU reference:
// src/backend/cpu/layout.rs; launchers: src/backend/cuda/layout.rs.
//
// layout_normalize_u8_f32   grid-stride, block 256, one thread per input byte e
//   (pixel e/3, channel e%3): y[pixel·pitch + c] = (rgb[e]/255 − mean[c]) / std[c].
//   A warp reads 32 consecutive bytes (one sector) and writes ~11 pixels' channels.
//   The bytes live in an f32 buffer (the executors move f32), 4 to a word, so the
//   pointer is a byte pointer into it.
//
// layout_nchw_to_nhwc_f32 / layout_nhwc_to_nchw_f32   a tiled transpose per sample:
//   grid (⌈HW/TP⌉, ⌈C/TC⌉, N), block 256, tile TC channels × TP pixels with
//   TC = 2^tc_log2 ≤ 32 (the launcher's power of two ≥ C, so 3 or 5 channels waste
//   little) and TC·TP = 1024: 4 elements a thread and phase. Phase 1 reads the source
//   in its own order (NCHW: 32 consecutive pixels of one channel a warp; NHWC: 32/TC
//   pixels × TC channels a warp, contiguous when pitch = C) into shared memory, a
//   barrier, phase 2 writes the destination in its own order. Shared: tile[TC][TP+32/TC]
//   (4.1 KiB); the row pad 32/TC puts the 32 lanes of the NHWC-ordered phase on 32
//   different banks (lane → ci·32/TC + pi), the NCHW-ordered phase reads rows.
//   Elements past C or HW are neither read nor written; every thread reaches the barrier.
//
// Assumptions (checked by the launcher): every extent fits in int (with a grid stride
// for the normalisation); pitch ≥ C; outputs do not overlap inputs.
#include "common.cuh"

#define LAYOUT_THREADS 256
#define TILE_ELEMS 1024

// y[(e/3)·pitch + e%3] = (rgb[e] / 255 − mean[e%3]) / std[e%3] for e < 3·pixels.
KERNEL_BOUNDS(layout_normalize_u8_f32, LAYOUT_THREADS)(float* __restrict__ y, const u8* __restrict__ rgb,
                                                       int pixels, int y_pitch, float mean_r, float mean_g,
                                                       float mean_b, float std_r, float std_g, float std_b) {
    const int total = 3 * pixels;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        const int px = e / 3, c = e - 3 * px;
        const float mean = c == 0 ? mean_r : c == 1 ? mean_g : mean_b;
        const float sd = c == 0 ? std_r : c == 1 ? std_g : std_b;
        // The reference's order: divide, subtract, divide (no product for an FMA to fuse).
        y[px * y_pitch + c] = ((float)rgb[e] / 255.0f - mean) / sd;
    }
}

// One TC × TP tile of sample blockIdx.z between dense NCHW and NHWC with `pitch`.
template <bool TO_NHWC>
DEVICE void transpose_tile(float* __restrict__ y, const float* __restrict__ x, int c, int hw, int pitch,
                           int tc_log2, float* tile) {
    const int tp_log2 = 10 - tc_log2;  // TILE_ELEMS = 2^10
    const int tc = 1 << tc_log2, tp = 1 << tp_log2, ld = tp + (WARP_SIZE >> tc_log2);
    const int n = blockIdx.z, c0 = blockIdx.y * tc, p0 = blockIdx.x * tp;
    const int nchw = n * c * hw, nhwc = n * hw;

    // Phase 1: read the source in its own order.
    for (int l = threadIdx.x; l < TILE_ELEMS; l += LAYOUT_THREADS) {
        const int ci = TO_NHWC ? l >> tp_log2 : l & (tc - 1);
        const int pi = TO_NHWC ? l & (tp - 1) : l >> tc_log2;
        const int ch = c0 + ci, px = p0 + pi;
        if (ch < c && px < hw) tile[ci * ld + pi] = TO_NHWC ? x[nchw + ch * hw + px] : x[(nhwc + px) * pitch + ch];
    }
    __syncthreads();
    // Phase 2: write the destination in its own order.
    for (int l = threadIdx.x; l < TILE_ELEMS; l += LAYOUT_THREADS) {
        const int ci = TO_NHWC ? l & (tc - 1) : l >> tp_log2;
        const int pi = TO_NHWC ? l >> tc_log2 : l & (tp - 1);
        const int ch = c0 + ci, px = p0 + pi;
        if (ch < c && px < hw) {
            if (TO_NHWC)
                y[(nhwc + px) * pitch + ch] = tile[ci * ld + pi];
            else
                y[nchw + ch * hw + px] = tile[ci * ld + pi];
        }
    }
}

// y NHWC (pitch) ← x dense NCHW.
KERNEL_BOUNDS(layout_nchw_to_nhwc_f32, LAYOUT_THREADS)(float* __restrict__ y, const float* __restrict__ x, int c,
                                                       int hw, int pitch, int tc_log2) {
    SHARED(float, tile, [TILE_ELEMS + WARP_SIZE]);
    transpose_tile<true>(y, x, c, hw, pitch, tc_log2, tile);
}

// y dense NCHW ← x NHWC (pitch).
KERNEL_BOUNDS(layout_nhwc_to_nchw_f32, LAYOUT_THREADS)(float* __restrict__ y, const float* __restrict__ x, int c,
                                                       int hw, int pitch, int tc_log2) {
    SHARED(float, tile, [TILE_ELEMS + WARP_SIZE]);
    transpose_tile<false>(y, x, c, hw, pitch, tc_log2, tile);
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(layout_normalize_u8_f32, layout_nchw_to_nhwc_f32, layout_nhwc_to_nchw_f32)
