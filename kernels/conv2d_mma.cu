// conv2d_mma.cu — the convolutions with bf16 products on tensor cores (f32 in memory,
// f32 accumulation). Reference: src/backend/cpu/conv2d.rs; f32 twins and the shared
// formulas: conv2d.cu; loaders: conv2d.cuh; launchers: src/backend/cuda/conv2d.rs
// (same arguments, grids and `vec` bits as the f32 kernels, 128 threads).
// lesionseg: min-arch sm_80
//
// conv2d_fwd_f32_mma, conv2d_bwd_data_f32_mma — the forward pass and the input
// gradient: the implicit GEMMs of conv2d_fwd_f32 / conv2d_bwd_data_f32 (same tails),
// with the operands rounded to bf16 as they are stored to shared memory and
// multiplied by mma.m16n8k16 (bf16 × bf16, f32 accumulate); activations, weights,
// bias and outputs stay f32 in global memory. About 3 significant digits per
// product: errors of ~1e-3 relative to the output scale (`Precision::Bf16`).
//   Engine MmaTile<64, 64, 32, 32, 32, m-major A>: block 128 threads (4 warps), output
//   tile 64 pixels × 64 channels; warp w computes the 32×32 quarter (rows 32(w%2),
//   channels 32(w/2)): 2 × 4 mma tiles of 16×8, 32 accumulators per thread.
//   Slices of 32, two stages in shared memory (static, 16,384 bytes), with
//   XOR-swizzled 16-byte chunks (tile.cuh: stores and ldmatrix free of bank conflicts):
//     A [64][32] bf16 (SwizzledRows), row = pixel; read with ldmatrix.x4 (the A
//       fragment of a 16×16 block)
//     B [32][64] bf16 (SwizzledStage), row = reduction element; read with
//       ldmatrix.x4.trans (the B fragments of two 8-channel tiles)
//   Loads (every main-loop load reads whole 32-byte sectors on the vector path, and
//   every shared store is conflict-free; the test of tests/kernel_counters.rs):
//   A (ConvGather): 8 adjacent lanes per pixel, one reduction quad each (a pixel's 32
//     channels of a tap: one 128-byte read), pixels t/8 + 16j (j < 4); the quad's tap
//     is stepped once per slice for all four pixels, whose tap masks and offsets are
//     computed before the K-loop; stored as 8-byte quads. Forward B (ConvWeight):
//     weight row t/4, channels 4(t%4) + 16j, stored along the row. Input-gradient B
//     (ConvWeightFlip): 8 lanes per channel of w' (flipped, transposed: 32 consecutive
//     k of one tap, one 128-byte read), channels 2(t/8) + {0, 1} + 32i (i < 2), each
//     reduction element's channel pair stored as one 4-byte word down the column.
//
// conv2d_bwd_filter_f32_mma — the weight gradient: conv2d_bwd_filter_f32's split-K
// product dw_part[z] = im2col(x)ᵀ · dy over pixel chunk z (same arguments, grid and
// partial layout; sum_partials_f32 of backward.cu sums the partials). db stays exact
// f32: each thread sums the f32 dy values it loads, and the block adds the 8
// per-thread sums of each channel in a fixed order.
//   Engine MmaTile<64, 64, 32, 32, 32, k-major A>: 128 threads, output tile 64 filter
//   rows (tap, c) × 64 channels, warp w the 32×32 quarter as above. Slices of 32
//   pixels; A and B [32][64] bf16, both [pixel][row or channel], swizzled as the
//   forward's B (16,384 bytes), read with ldmatrix.x4.trans.
//   Loads: 16 adjacent lanes per pixel (a pixel's 64 filter rows or dy channels:
//   one 256-byte read on the vector path), pixels t/16 + 8j (j < 4) of the slice;
//   filter rows row0 + 4(t%16) and channels k0 + 4(t%16), fixed for the whole
//   reduction, so their taps are decoded once, and each pixel's image coordinates are
//   stepped from slice to slice instead of divided out.
#include "conv2d.cuh"

typedef MmaTile<64, 64, 32, 32, 32, false, true> ConvMma;
typedef MmaTile<64, 64, 32, 32, 32, true, true> FilterMma;

// Four blocks per SM (16 warps): at most 128 registers a thread.
#define MMA_MIN_BLOCKS 4

// Each kernel runs its K-loop in one of two copies (VEC_FAST, tile.cuh).

// The forward pass (BWD = false) and the input gradient (BWD = true) on tensor cores:
// conv_gemm's two products (conv2d.cu) with bf16 operands. Argument roles as there
// (act/a_ch/a_pitch gathered, out/o_ch/o_pitch written).
template <bool BWD, class LB>
DEVICE void conv_gemm_mma(LB& lb, u16* as, u16* bs, float* __restrict__ out, const float* __restrict__ act,
                          const float* __restrict__ bias, int N, int H, int W, int a_ch, int o_ch, int R,
                          int a_pitch, int o_pitch, int relu, int add, int vec) {
    const int M = N * H * W;
    const int m0 = blockIdx.x * ConvMma::BM, n0 = blockIdx.y * ConvMma::BN;
    ConvGather<ConvMma> la(act, m0, N, H, W, R, a_ch, a_pitch, (vec & VEC_A) != 0);
    ConvMma::Acc acc;
    k_loop<ConvMma>(acc, la, lb, 0, R * R * a_ch, as, bs);

    // Epilogue: forward, bias and ReLU; input gradient, written or added. f32 stores,
    // two adjacent channels per accumulator pair.
#pragma unroll
    for (int j = 0; j < ConvMma::NJ; ++j) {
        const int col = n0 + ConvMma::col(j, 0);
        if (col >= o_ch) continue;
        const bool second = col + 1 < o_ch;
        const float b0 = BWD ? 0.0f : bias[col], b1 = !BWD && second ? bias[col + 1] : 0.0f;
#pragma unroll
        for (int i = 0; i < ConvMma::MI; ++i) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int m = m0 + ConvMma::row(i, 2 * half);
                if (m >= M) continue;
                float v0 = acc[i][j][2 * half] + b0, v1 = acc[i][j][2 * half + 1] + b1;
                // As the CPU reference: z <= 0 → 0, so a NaN stays visible.
                if (!BWD && relu && v0 <= 0.0f) v0 = 0.0f;
                if (!BWD && relu && v1 <= 0.0f) v1 = 0.0f;
                float* o = out + m * o_pitch + col;
                o[0] = BWD && add ? o[0] + v0 : v0;
                if (second) o[1] = BWD && add ? o[1] + v1 : v1;
            }
        }
    }
}

// y[N,H,W,K] (pixels y_pitch apart) = relu?(conv(x, w) + b) with bf16 products.
// Grid (⌈N·H·W/64⌉, ⌈K/64⌉), 128 threads.
KERNEL_BOUNDS_MIN(conv2d_fwd_f32_mma, ConvMma::THREADS, MMA_MIN_BLOCKS)(float* __restrict__ y, const float* __restrict__ x,
                                                    const float* __restrict__ w, const float* __restrict__ b,
                                                    int n, int h, int wd, int c, int k, int r, int x_pitch,
                                                    int y_pitch, int relu, int vec) {
    SHARED(u16, as, [2 * ConvMma::STAGE_A]);
    SHARED(u16, bs, [2 * ConvMma::STAGE_B]);
    if (VEC_FAST(vec)) {
        ConvWeight<ConvMma> lb(w, blockIdx.y * ConvMma::BN, r * r * c, k, true);
        conv_gemm_mma<false>(lb, as, bs, y, x, b, n, h, wd, c, k, r, x_pitch, y_pitch, relu, 0, VEC_A | VEC_B);
    } else {
        ConvWeight<ConvMma> lb(w, blockIdx.y * ConvMma::BN, r * r * c, k, (vec & VEC_B) != 0);
        conv_gemm_mma<false>(lb, as, bs, y, x, b, n, h, wd, c, k, r, x_pitch, y_pitch, relu, 0, vec);
    }
}

// dx[N,H,W,C] (x_pitch) = (add ? dx : 0) + conv(dy, w') with bf16 products, dy already
// ReLU-masked. Same arguments as conv2d_bwd_data_f32. Grid (⌈N·H·W/64⌉, ⌈C/64⌉), 128 threads.
KERNEL_BOUNDS_MIN(conv2d_bwd_data_f32_mma, ConvMma::THREADS, MMA_MIN_BLOCKS)(float* __restrict__ dx, const float* __restrict__ dy,
                                                         const float* __restrict__ w, int n, int h, int wd, int c,
                                                         int k, int r, int x_pitch, int y_pitch, int add,
                                                         int vec) {
    SHARED(u16, as, [2 * ConvMma::STAGE_A]);
    SHARED(u16, bs, [2 * ConvMma::STAGE_B]);
    if (VEC_FAST(vec)) {
        ConvWeightFlip<ConvMma> lb(w, blockIdx.y * ConvMma::BN, c, k, r, true);
        conv_gemm_mma<true>(lb, as, bs, dx, dy, nullptr, n, h, wd, k, c, r, y_pitch, x_pitch, 0, add, VEC_A | VEC_B);
    } else {
        // Both operands scalar: dy and w' are gathered along K, so both are 16-byte
        // loadable or, nearly always, neither (K % 4); one path in the loop keeps the
        // copy within the fast one's registers.
        ConvWeightFlip<ConvMma> lb(w, blockIdx.y * ConvMma::BN, c, k, r, false);
        conv_gemm_mma<true>(lb, as, bs, dx, dy, nullptr, n, h, wd, k, c, r, y_pitch, x_pitch, 0, add, 0);
    }
}

// dw_part[z][R·R·C][K] and db_part[z][K] as conv2d_bwd_filter_f32, with bf16 products:
// same arguments, grid and chunks, 128 threads.
KERNEL_BOUNDS_MIN(conv2d_bwd_filter_f32_mma, FilterMma::THREADS, MMA_MIN_BLOCKS)(float* __restrict__ dw_part,
                                                             float* __restrict__ db_part,
                                                             const float* __restrict__ x,
                                                             const float* __restrict__ dy, int n, int h, int wd,
                                                             int c, int k, int r, int x_pitch, int y_pitch,
                                                             int chunk, int vec) {
    SHARED(u16, as, [2 * FilterMma::STAGE_A]);
    SHARED(u16, bs, [2 * FilterMma::STAGE_B]);
    typedef ConvFilterCols<FilterMma, true> Cols;
    SHARED(float, db_red, [Cols::PASS][FilterMma::BN]);
    const int t = threadIdx.x, P = n * h * wd, Kg = r * r * c;
    const int row0 = blockIdx.x * FilterMma::BM, k0 = blockIdx.y * FilterMma::BN, z = blockIdx.z;
    const int p_begin = z * chunk, p_end = min(P, p_begin + chunk);

    FilterMma::Acc acc;
    float db[4];
    if (VEC_FAST(vec)) {
        ConvFilterRows<FilterMma> la(x, row0, p_begin, p_end, h, wd, r, c, x_pitch, true);
        Cols lb(dy, k0, p_end, k, y_pitch, true);
        k_loop<FilterMma>(acc, la, lb, p_begin, p_end, as, bs);
#pragma unroll
        for (int e = 0; e < 4; ++e) db[e] = lb.db[e];
    } else {
        ConvFilterRows<FilterMma> la(x, row0, p_begin, p_end, h, wd, r, c, x_pitch, (vec & VEC_A) != 0);
        Cols lb(dy, k0, p_end, k, y_pitch, (vec & VEC_B) != 0);
        k_loop<FilterMma>(acc, la, lb, p_begin, p_end, as, bs);
#pragma unroll
        for (int e = 0; e < 4; ++e) db[e] = lb.db[e];
    }

    // db: the PASS threads with the same channels (one per pixel slot group) add their
    // sums in slot order, then one thread per channel writes the block's partial (only
    // the blocks with blockIdx.x == 0).
    if (blockIdx.x == 0) {
#pragma unroll
        for (int e = 0; e < 4; ++e) db_red[Cols::Slots::pix()][4 * (t % Cols::LANES) + e] = db[e];
        __syncthreads();
        if (t < FilterMma::BN && k0 + t < k) {
            float s = 0.0f;
            for (int row = 0; row < Cols::PASS; ++row) s += db_red[row][t];
            db_part[z * k + k0 + t] = s;
        }
    }

    // Epilogue: the partial tile, dense [z][Kg][K]; every element inside Kg × K is
    // written (zeros for an empty chunk), so nothing needs clearing first.
#pragma unroll
    for (int j = 0; j < FilterMma::NJ; ++j) {
        const int col = k0 + FilterMma::col(j, 0);
        if (col >= k) continue;
#pragma unroll
        for (int i = 0; i < FilterMma::MI; ++i) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row = row0 + FilterMma::row(i, 2 * half);
                if (row >= Kg) continue;
                float* o = dw_part + (z * Kg + row) * k + col;
                o[0] = acc[i][j][2 * half];
                if (col + 1 < k) o[1] = acc[i][j][2 * half + 1];
            }
        }
    }
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(conv2d_fwd_f32_mma, conv2d_bwd_data_f32_mma, conv2d_bwd_filter_f32_mma)
