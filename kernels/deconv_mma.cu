// deconv_mma.cu — the transposed convolution's three GEMMs (forward with fused bias +
// ReLU, input gradient, weight gradient) with bf16 products on tensor cores: f32 in
// memory, operands rounded to bf16 as they are stored to shared memory, f32
// accumulation; within ~1e-2 of the f32 kernels (`Precision::Bf16`).
// lesionseg: min-arch sm_80
// Formulas, arguments, grids and the rest of the backward (bias gradient, partial
// sums, ReLU mask): deconv.cu, whose f32 kernels these are the twins of; the operands
// (loaders) are shared through deconv.cuh. Launchers: src/backend/cuda/deconv.rs.
//
// Engine MmaTile<64, 64, 16, 16, 32, k-major A, swizzled> (tile.cuh): block 256
// threads (8 warps), the 64x64 tile of the f32 kernels; warp w computes rows
// 16(w%4)..+15 and columns 32(w/4)..+31 as four 16x8 mma tiles. Two stages of A and
// B [16][64] bf16 (8,192 bytes, static), both k-major with XOR-swizzled 16-byte
// chunks (SwizzledStage: stores and ldmatrix.x4.trans rows free of bank conflicts).
#include "deconv.cuh"

typedef MmaTile<64, 64, 16, 16, 32, true, true> DeconvMma;

// deconv_fwd_f32 with bf16 products: same arguments, grid and block.
KERNEL_BOUNDS(deconv_fwd_f32_mma, DeconvMma::THREADS)(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                        const float* __restrict__ bias, int n, int h, int wd, int c, int k, int x_pitch,
                        int y_pitch, int relu, int flags) {
    SHARED(u16, as, [2 * DeconvMma::STAGE_A]);
    SHARED(u16, bs, [2 * DeconvMma::STAGE_B]);
    const int ab = blockIdx.z, a = ab >> 1, b = ab & 1;
    const int m0 = blockIdx.x * DeconvMma::BM, n0 = blockIdx.y * DeconvMma::BN, m_total = n * h * wd;
    DeconvMma::Acc acc;
    // Two copies of the K-loop (VEC_FAST, tile.cuh).
    if (VEC_FAST(flags)) {
        PixelRows<DeconvMma::A> la;
        DenseRows<DeconvMma::B> lb;
        forward_operands<DeconvMma>(la, lb, x, w, ab, m0, n0, n, h, wd, c, k, x_pitch, VEC_A | VEC_B);
        k_loop<DeconvMma>(acc, la, lb, 0, 4 * c, as, bs);
    } else {
        PixelRows<DeconvMma::A> la;
        DenseRows<DeconvMma::B> lb;
        forward_operands<DeconvMma>(la, lb, x, w, ab, m0, n0, n, h, wd, c, k, x_pitch, flags);
        k_loop<DeconvMma>(acc, la, lb, 0, 4 * c, as, bs);
    }

#pragma unroll
    for (int j = 0; j < DeconvMma::NJ; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int m = m0 + DeconvMma::row(0, e), col = n0 + DeconvMma::col(j, e);
            if (m >= m_total || col >= k) continue;
            int base, pi, pj;
            split_pixel(m, h, wd, 2 * h, 2 * wd, base, pi, pj);
            float z = acc[0][j][e] + bias[col];
            // `<=` keeps a NaN (as the CPU reference does) instead of clamping it.
            if (relu && z <= 0.0f) z = 0.0f;
            y[(base + (2 * pi + a) * 2 * wd + 2 * pj + b) * y_pitch + col] = z;
        }
    }
}

// deconv_bwd_data_f32 with bf16 products: same arguments and grid.
KERNEL_BOUNDS(deconv_bwd_data_f32_mma, DeconvMma::THREADS)(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                             int n, int h, int wd, int c, int k, int x_pitch, int y_pitch, int add, int flags) {
    SHARED(u16, as, [2 * DeconvMma::STAGE_A]);
    SHARED(u16, bs, [2 * DeconvMma::STAGE_B]);
    const int m0 = blockIdx.x * DeconvMma::BM, n0 = blockIdx.y * DeconvMma::BN, m_total = n * h * wd;
    DeconvMma::Acc acc;
    if (VEC_FAST(flags)) {
        PixelRows<DeconvMma::A> la;
        WeightT<DeconvMma::B> lb;
        bwd_data_operands<DeconvMma>(la, lb, dy, w, m0, n0, n, h, wd, c, k, y_pitch, VEC_A | VEC_B);
        k_loop<DeconvMma>(acc, la, lb, 0, 16 * k, as, bs);
    } else {
        PixelRows<DeconvMma::A> la;
        WeightT<DeconvMma::B> lb;
        bwd_data_operands<DeconvMma>(la, lb, dy, w, m0, n0, n, h, wd, c, k, y_pitch, flags);
        k_loop<DeconvMma>(acc, la, lb, 0, 16 * k, as, bs);
    }
#pragma unroll
    for (int j = 0; j < DeconvMma::NJ; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int m = m0 + DeconvMma::row(0, e), ch = n0 + DeconvMma::col(j, e);
            if (m >= m_total || ch >= c) continue;
            float* out = dx + m * x_pitch + ch;
            *out = add ? *out + acc[0][j][e] : acc[0][j][e];
        }
    }
}

// deconv_bwd_filter_f32 with bf16 products: same arguments, grid and partial layout
// (every element of the tile inside [4C][K] written).
KERNEL_BOUNDS(deconv_bwd_filter_f32_mma, DeconvMma::THREADS)(float* __restrict__ part, const float* __restrict__ dy, const float* __restrict__ x,
                               int n, int h, int wd, int c, int k, int x_pitch, int y_pitch, int chunk_len,
                               int flags) {
    SHARED(u16, as, [2 * DeconvMma::STAGE_A]);
    SHARED(u16, bs, [2 * DeconvMma::STAGE_B]);
    const int ab = blockIdx.z & 3, chunk = blockIdx.z >> 2;
    const int m0 = blockIdx.x * DeconvMma::BM, n0 = blockIdx.y * DeconvMma::BN, m_total = n * h * wd;
    const int p0 = chunk * chunk_len, p1 = min(m_total, p0 + chunk_len);
    DeconvMma::Acc acc;
    if (VEC_FAST(flags)) {
        PixelCols<DeconvMma::A> la;
        PixelCols<DeconvMma::B> lb;
        bwd_filter_operands<DeconvMma>(la, lb, x, dy, ab, m0, n0, p0, p1, h, wd, c, k, x_pitch, y_pitch, VEC_A | VEC_B);
        k_loop<DeconvMma>(acc, la, lb, p0, p1, as, bs);
    } else {
        PixelCols<DeconvMma::A> la;
        PixelCols<DeconvMma::B> lb;
        // Both scalar (C % 4 and K % 4 both fail nearly always together): one path in
        // the loop keeps this copy from spilling.
        bwd_filter_operands<DeconvMma>(la, lb, x, dy, ab, m0, n0, p0, p1, h, wd, c, k, x_pitch, y_pitch, 0);
        k_loop<DeconvMma>(acc, la, lb, p0, p1, as, bs);
    }
    float* out = part + (chunk * 4 + ab) * 4 * c * k;
#pragma unroll
    for (int j = 0; j < DeconvMma::NJ; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = m0 + DeconvMma::row(0, e), col = n0 + DeconvMma::col(j, e);
            if (row < 4 * c && col < k) out[row * k + col] = acc[0][j][e];
        }
    }
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(deconv_fwd_f32_mma, deconv_bwd_data_f32_mma, deconv_bwd_filter_f32_mma)
