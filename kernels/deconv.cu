// deconv.cu — transposed convolution 4x4, stride 2, padding 1 (f32): forward with
// fused bias + ReLU, input gradient, weight and bias gradients.
// Semantics: DeconvParams in src/backend/mod.rs; CPU reference src/backend/cpu/deconv.rs.
//
// Output pixel (2i+a, 2j+b) reads input pixels (i-1+a+ty, j-1+b+tx) through the
// weight block w[a][b][ty][tx] ([C][K]), so each output parity (a, b) is a 2x2
// convolution of the input: four implicit GEMMs, M = N·H·W input-grid pixels,
// N = K, reduction 4·C (kk = (ty·2+tx)·C + c, which is also the row of w[a][b]).
//
// Every GEMM here is the tile engine's K-loop (tile.cuh) on FmaTile<64, 64, 16> over
// two loaders of deconv.cuh, then an epilogue:
//   block    256 threads (1-D); thread t owns the 4x4 outputs at tile rows
//            4·(t/16)..+3 and columns 4·(t%16)..+3, accumulated in registers
//   shared   two stages of A [16][68] and B [16][68] floats (17 KiB, static)
//   pipeline the next 16-deep slice is fetched into registers while the current
//            one is multiplied, then stored to the other stage: one barrier a slice
// Operands are gathered straight from NHWC memory (implicit im2col); elements
// outside the image, past M, or past a tile edge load as 0, so tails need no
// special case in the inner loop, and only the epilogue is bounds-checked.
// The same three GEMMs with bf16 products on tensor cores: deconv_mma.cu.
//
// Entry points (the launcher src/backend/cuda/deconv.rs computes every geometry):
//   deconv_fwd_f32          grid (⌈M/64⌉, ⌈K/64⌉, 4 parities)
//   deconv_bwd_data_f32     dx = Σ over the 16 (parity, tap) pairs that read each
//                           input pixel: a 4x4 stride-2 gather of dy, reduction 16·K,
//                           grid (⌈M/64⌉, ⌈C/64⌉); writes or adds
//   deconv_bwd_filter_f32   dw[a][b] = im2col_ab(x)ᵀ · dy_ab over one chunk of
//                           pixels per blockIdx.z / 4 (split-K), into a workspace of
//                           partials (or dw itself when there is one chunk)
//   deconv_bias_grad_f32    per-chunk column sums of dy, fixed order
// The ReLU mask of dy and the sum of the chunks' partials: backward.cu.
// No float atomics anywhere: every sum has a fixed order, so results are identical
// run to run, on every emulator schedule, and (FMA being exact-rounded on both)
// between the emulator and a GPU.
//
// Assumptions (checked by the launcher): every operand's extent fits in int; the
// vector flags (VEC_* of tile.cuh) are set only when the operand's address, pitch
// and channel count are multiples of 4 floats, so a float4 never straddles a tap or
// a pixel.
#include "deconv.cuh"

typedef FmaTile<64, 64, 16> Deconv;

// Forward, one parity per blockIdx.z: y[n, 2i+a, 2j+b, k] = act(b[k] + Σ A·w[a][b]).
// x [N,H,W,C] x_pitch apart, y [N,2H,2W,K] y_pitch apart, w [2][2][2][2][C][K], bias [K].
KERNEL_BOUNDS(deconv_fwd_f32, Deconv::THREADS)(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                       const float* __restrict__ bias, int n, int h, int wd, int c, int k, int x_pitch,
                       int y_pitch, int relu, int flags) {
    SHARED(float, as, [2 * Deconv::STAGE_A]);
    SHARED(float, bs, [2 * Deconv::STAGE_B]);
    const int ab = blockIdx.z, a = ab >> 1, b = ab & 1;
    const int m0 = blockIdx.x * Deconv::BM, n0 = blockIdx.y * Deconv::BN, m_total = n * h * wd;
    PixelRows<Deconv::A> la;
    DenseRows<Deconv::B> lb;
    forward_operands<Deconv>(la, lb, x, w, ab, m0, n0, n, h, wd, c, k, x_pitch, flags);
    Deconv::Acc acc;
    k_loop<Deconv>(acc, la, lb, 0, 4 * c, as, bs);

    const int tm = Deconv::tm(), k_first = n0 + 4 * Deconv::tn();
    if (k_first >= k) return;
    float bv[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) bv[j] = k_first + j < k ? bias[k_first + j] : 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + 4 * tm + i;
        if (m >= m_total) continue;
        int base, pi, pj;
        split_pixel(m, h, wd, 2 * h, 2 * wd, base, pi, pj);
        float* out = y + (base + (2 * pi + a) * 2 * wd + 2 * pj + b) * y_pitch + k_first;
        float z[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            z[j] = acc[i][j] + bv[j];
            // `<=` keeps a NaN (as the CPU reference does) instead of clamping it.
            if (relu && z[j] <= 0.0f) z[j] = 0.0f;
        }
        if (flags & VEC_OUT) {
            st4(out, make_float4(z[0], z[1], z[2], z[3]));
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (k_first + j < k) out[j] = z[j];
        }
    }
}

// Input gradient: dx[n,i,j,c] (=|+=) Σ_{t,k} dy[n, 2i+oy_t, 2j+ox_t, k] · w[t][c][k], the
// 16 taps t = (a,b,ty,tx) of tap_offset mode 2. One thread writes each element.
KERNEL_BOUNDS(deconv_bwd_data_f32, Deconv::THREADS)(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                            int n, int h, int wd, int c, int k, int x_pitch, int y_pitch, int add, int flags) {
    SHARED(float, as, [2 * Deconv::STAGE_A]);
    SHARED(float, bs, [2 * Deconv::STAGE_B]);
    const int m0 = blockIdx.x * Deconv::BM, n0 = blockIdx.y * Deconv::BN, m_total = n * h * wd;
    PixelRows<Deconv::A> la;
    WeightT<Deconv::B> lb;
    bwd_data_operands<Deconv>(la, lb, dy, w, m0, n0, n, h, wd, c, k, y_pitch, flags);
    Deconv::Acc acc;
    k_loop<Deconv>(acc, la, lb, 0, 16 * k, as, bs);

    const int tm = Deconv::tm(), c_first = n0 + 4 * Deconv::tn();
    if (c_first >= c) return;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + 4 * tm + i;
        if (m >= m_total) continue;
        float* out = dx + m * x_pitch + c_first;
        if (flags & VEC_OUT) {
            float4 v = make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
            if (add) {
                const float4 o = ld4(out);
                v.x += o.x, v.y += o.y, v.z += o.z, v.w += o.w;
            }
            st4(out, v);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (c_first + j < c) out[j] = add ? out[j] + acc[i][j] : acc[i][j];
        }
    }
}

// Weight gradient, split-K: blockIdx.z = chunk·4 + parity; the block reduces grid
// pixels [chunk·chunk_len, min(M, +chunk_len)) and writes its [4C][K] tile of
// part[chunk][parity] (every element, zeros included, so no clearing is needed).
KERNEL_BOUNDS_MIN(deconv_bwd_filter_f32, Deconv::THREADS, 4)(float* __restrict__ part, const float* __restrict__ dy, const float* __restrict__ x,
                              int n, int h, int wd, int c, int k, int x_pitch, int y_pitch, int chunk_len,
                              int flags) {
    SHARED(float, as, [2 * Deconv::STAGE_A]);
    SHARED(float, bs, [2 * Deconv::STAGE_B]);
    const int ab = blockIdx.z & 3, chunk = blockIdx.z >> 2;
    const int m0 = blockIdx.x * Deconv::BM, n0 = blockIdx.y * Deconv::BN, m_total = n * h * wd;
    const int p0 = chunk * chunk_len, p1 = min(m_total, p0 + chunk_len);
    PixelCols<Deconv::A> la;
    PixelCols<Deconv::B> lb;
    bwd_filter_operands<Deconv>(la, lb, x, dy, ab, m0, n0, p0, p1, h, wd, c, k, x_pitch, y_pitch, flags);
    Deconv::Acc acc;
    k_loop<Deconv>(acc, la, lb, p0, p1, as, bs);

    const int tm = Deconv::tm(), k_first = n0 + 4 * Deconv::tn();
    if (k_first >= k) return;
    float* out = part + (chunk * 4 + ab) * 4 * c * k;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = m0 + 4 * tm + i;
        if (row >= 4 * c) continue;
        if (flags & VEC_OUT) {
            st4(out + row * k + k_first, make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (k_first + j < k) out[row * k + k_first + j] = acc[i][j];
        }
    }
}

// Bias gradient partials: part[chunk·K + k] = Σ dy[p, k] over output pixels
// p ∈ [chunk·chunk_len, +chunk_len). Block 256 = 32 channels x 8 pixel lanes
// (a warp reads 32 consecutive channels of one pixel); grid (⌈K/32⌉, chunks).
// Each lane sums pixels lane, lane+8, … in order, then the 8 lanes are added in
// lane order: a fixed summation order.
KERNEL_BOUNDS(deconv_bias_grad_f32, 256)(float* __restrict__ part, const float* __restrict__ dy, int pixels,
                                          int k, int y_pitch, int chunk_len) {
    SHARED(float, sums, [8][32]);
    const int ch = blockIdx.x * 32 + (threadIdx.x & 31), lane = threadIdx.x >> 5;
    const int p0 = blockIdx.y * chunk_len, p1 = min(pixels, p0 + chunk_len);
    float s = 0.0f;
    if (ch < k)
        for (int p = p0 + lane; p < p1; p += 8) s += dy[p * y_pitch + ch];
    sums[lane][threadIdx.x & 31] = s;
    __syncthreads();
    if (lane == 0 && ch < k) {
        float t = sums[0][threadIdx.x];
        for (int l = 1; l < 8; ++l) t += sums[l][threadIdx.x];
        part[blockIdx.y * k + ch] = t;
    }
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(deconv_fwd_f32, deconv_bwd_data_f32, deconv_bwd_filter_f32, deconv_bias_grad_f32)
