// conv2d.cu — fp32 convolution R×R (R = 1 or 3), stride 1, "same" padding R/2, NHWC, as
// IMPLICIT GEMM: the im2col matrix is never materialised; each K-slice of it is
// gathered from the activation straight into shared memory. Reference and formulas:
// src/backend/cpu/conv2d.rs; launchers (geometry, path choice): src/backend/cuda/conv2d.rs.
//
// The three products (M = N·H·W pixels, taps t = (r,s) row-major, pad = R/2):
//   forward      y[M][K]       = relu?(im2col(x)[M][R·R·C] · w[R·R·C][K] + b)
//   input grad   dx[M][C]     (=|+=) im2col(dy)[M][R·R·K] · w'[R·R·K][C],
//                w'[t][k][c] = w[R·R-1-t][c][k] (flipped taps, transposed: dx is the
//                "same" convolution of dy, a gather, so no two threads write one pixel)
//   weight grad  dw[R·R·C][K]  = im2col(x)ᵀ · dy, db[K] = Σ_pixels dy
// Each is the tile engine's K-loop (tile.cuh) over two loaders of conv2d.cuh, then an
// epilogue; the tensor-core twins are in conv2d_mma.cu.
//
// conv2d_fwd_f32, conv2d_bwd_data_f32 (one template, conv_gemm)
//   Engine FmaTile<64, 64, 16>: block 256 threads, output tile 64 pixels × 64
//   channels, grid (⌈M/64⌉, ⌈cols/64⌉); thread t (tx = t%16, ty = t/16) owns pixels
//   m0+4ty..+3 × channels n0+4tx..+3. Shared memory (static, 17,408 bytes): two
//   stages of A [16][68] (transposed: As[kk][pixel]) and B [16][68] (Bs[kk][channel]).
//   A (ConvGather): thread t gathers pixel m0 + t/4, reduction elements 4(t%4)..+3 of
//   the slice: 4 threads cover 16 consecutive channels of one pixel (64 contiguous
//   bytes). Forward B (ConvWeight): weight row t/16 of the slice, channels 4(t%16)..+3
//   (16 threads read 256 contiguous bytes). Input-gradient B (ConvWeightFlip, 4
//   threads a column): channel t/4 of w', reduction elements 4(t%4)..+3, stored
//   transposed. Rows of 68 floats put the 4 reduction quads of the transposed stores
//   4 banks apart (2-way conflicts at worst instead of 4-way with 64).
//
// conv2d_bwd_filter_f32: the same engine, rows (tap, c) and the reduction over pixels:
//   split-K, block z reduces pixels [z·chunk, (z+1)·chunk) of the dense partial
//   dw_part[z][R·R·C][K]. Blocks with blockIdx.x == 0 also sum their dy tiles into
//   db_part[z][K] (the first 64 threads, one channel each, from the shared stage,
//   pixels in order). With one split the launcher passes dw and db themselves;
//   otherwise sum_partials_f32 (backward.cu) adds the splits' partials in order.
//   Thread t loads pixel t/16 of the slice, 4 consecutive rows (ConvFilterRows) and
//   channels (ConvFilterCols) 4(t%16)..+3, stored straight (no transpose).
// The backward's ReLU mask of dy (relu_mask_f32, before the two gradients) is in
// backward.cu too.
//
// Assumptions (checked by the launcher): R ∈ {1,3}; every index of every operand,
// including base + (dr·W + ds)·pitch before the padding test, fits in int; pitches ≥
// channels; outputs do not overlap inputs. All tails (any N, H, W, C, K ≥ 0) are
// handled here: out-of-range elements load as 0 and are never stored.
// The `vec` argument (uniform over the grid, chosen by the launcher): VEC_A / VEC_B —
// 16-byte loads of 4 consecutive reduction elements (needs channels % 4 == 0 so a quad
// never straddles two taps, pitch % 4 == 0 and a 16-byte aligned base); VEC_OUT —
// 16-byte stores (output channels % 4 == 0, aligned). Otherwise the scalar path,
// which handles anything.
#include "conv2d.cuh"

typedef FmaTile<64, 64, 16> Conv;

// The forward pass (BWD = false) and the input gradient (BWD = true) are the same
// implicit GEMM with different B operands and epilogues:
//   act/a_ch/a_pitch: the gathered activation (x, C, x_pitch | dy, K, y_pitch)
//   out/o_ch/o_pitch: the output (y, K, y_pitch | dx, C, x_pitch)
template <bool BWD, class LB>
DEVICE void conv_gemm(LB& lb, float* as, float* bs, float* __restrict__ out, const float* __restrict__ act,
                      const float* __restrict__ bias, int N, int H, int W, int a_ch, int o_ch, int R, int a_pitch,
                      int o_pitch, int relu, int add, int vec) {
    const int M = N * H * W;
    const int m0 = blockIdx.x * Conv::BM, n0 = blockIdx.y * Conv::BN;
    ConvGather<Conv> la(act, m0, N, H, W, R, a_ch, a_pitch, (vec & VEC_A) != 0);
    Conv::Acc acc;
    k_loop<Conv>(acc, la, lb, 0, R * R * a_ch, as, bs);

    // Epilogue: bias + ReLU (forward) or write/add (input gradient), straight into the
    // output's channel slice; 16 threads store 64 contiguous channels of one pixel.
    const int n = n0 + 4 * Conv::tn();
    if (n >= o_ch) return;
    float bj[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (!BWD) {
#pragma unroll
        for (int j = 0; j < 4; ++j) bj[j] = n + j < o_ch ? bias[n + j] : 0.0f;
    }
    const bool vec_out = (vec & VEC_OUT) != 0;  // o_ch % 4 == 0: n..n+3 all in range
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + 4 * Conv::tm() + i;
        if (m >= M) break;
        float* o = out + m * o_pitch + n;
        float v[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            v[j] = acc[i][j] + bj[j];
            // As the CPU reference: z <= 0 → 0, so a NaN stays visible.
            if (!BWD && relu && v[j] <= 0.0f) v[j] = 0.0f;
        }
        if (vec_out) {
            if (BWD && add) {
                const float4 old = ld4(o);
                v[0] += old.x, v[1] += old.y, v[2] += old.z, v[3] += old.w;
            }
            st4(o, make_float4(v[0], v[1], v[2], v[3]));
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (n + j < o_ch) o[j] = (BWD && add) ? o[j] + v[j] : v[j];
            }
        }
    }
}

// y[N,H,W,K] (pixels y_pitch apart) = relu?(conv(x, w) + b). Grid (⌈N·H·W/64⌉, ⌈K/64⌉), 256 threads.
KERNEL_BOUNDS(conv2d_fwd_f32, Conv::THREADS)(float* __restrict__ y, const float* __restrict__ x,
                                             const float* __restrict__ w, const float* __restrict__ b, int n,
                                             int h, int wd, int c, int k, int r, int x_pitch, int y_pitch, int relu,
                                             int vec) {
    SHARED(float, as, [2 * Conv::STAGE_A]);
    SHARED(float, bs, [2 * Conv::STAGE_B]);
    ConvWeight<Conv> lb(w, blockIdx.y * Conv::BN, r * r * c, k, (vec & VEC_B) != 0);
    conv_gemm<false>(lb, as, bs, y, x, b, n, h, wd, c, k, r, x_pitch, y_pitch, relu, 0, vec);
}

// dx[N,H,W,C] (x_pitch) = (add ? dx : 0) + conv(dy, w'), dy already ReLU-masked.
// Grid (⌈N·H·W/64⌉, ⌈C/64⌉), 256 threads.
KERNEL_BOUNDS(conv2d_bwd_data_f32, Conv::THREADS)(float* __restrict__ dx, const float* __restrict__ dy,
                                                  const float* __restrict__ w, int n, int h, int wd, int c, int k,
                                                  int r, int x_pitch, int y_pitch, int add, int vec) {
    SHARED(float, as, [2 * Conv::STAGE_A]);
    SHARED(float, bs, [2 * Conv::STAGE_B]);
    ConvWeightFlip<Conv> lb(w, blockIdx.y * Conv::BN, c, k, r, (vec & VEC_B) != 0);
    conv_gemm<true>(lb, as, bs, dx, dy, nullptr, n, h, wd, k, c, r, y_pitch, x_pitch, 0, add, vec);
}

// dw_part[z][R·R·C][K] = Σ over pixels [z·chunk, (z+1)·chunk) of im2col(x)ᵀ · dy, and
// (blocks with blockIdx.x == 0) db_part[z][K] = Σ dy over the same pixels.
// Grid (⌈R·R·C/64⌉, ⌈K/64⌉, splits), 256 threads; chunk % 16 == 0.
KERNEL_BOUNDS(conv2d_bwd_filter_f32, Conv::THREADS)(float* __restrict__ dw_part, float* __restrict__ db_part,
                                                    const float* __restrict__ x, const float* __restrict__ dy,
                                                    int n, int h, int wd, int c, int k, int r, int x_pitch,
                                                    int y_pitch, int chunk, int vec) {
    SHARED(float, as, [2 * Conv::STAGE_A]);
    SHARED(float, bs, [2 * Conv::STAGE_B]);
    const int t = threadIdx.x, P = n * h * wd, Kg = r * r * c;
    const int row0 = blockIdx.x * Conv::BM, k0 = blockIdx.y * Conv::BN, z = blockIdx.z;
    const int p_begin = z * chunk, p_end = min(P, p_begin + chunk);
    const bool db_block = blockIdx.x == 0;

    ConvFilterRows<Conv> la(x, row0, p_begin, p_end, h, wd, r, c, x_pitch, (vec & VEC_A) != 0);
    ConvFilterCols<Conv, false> lb(dy, k0, p_end, k, y_pitch, (vec & VEC_B) != 0);
    Conv::Acc acc;
    // db: the first 64 threads (two whole warps) each sum one dy column of every slice,
    // pixels in order; only one block per (k-tile, split) does it.
    float db_acc = 0.0f;
    auto db_sum = [&](const float*, const float* b_stage) {
        if (db_block && t < Conv::BN) {
#pragma unroll
            for (int pp = 0; pp < Conv::BK; ++pp) db_acc += b_stage[pp * Conv::B::LD + t];
        }
    };
    k_loop<Conv>(acc, la, lb, p_begin, p_end, as, bs, db_sum);

    // Epilogue: the partial tile, dense [z][Kg][K]; every element of the tile inside
    // Kg × K is written (zeros for an empty chunk), so nothing needs clearing first.
    const int kn = k0 + 4 * Conv::tn();
    if (db_block && t < Conv::BN && k0 + t < k) db_part[z * k + k0 + t] = db_acc;
    if (kn >= k) return;
    const bool vec_out = (vec & VEC_OUT) != 0;  // k % 4 == 0: kn..kn+3 all in range
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + 4 * Conv::tm() + i;
        if (row >= Kg) break;
        float* o = dw_part + (z * Kg + row) * k + kn;
        if (vec_out) {
            st4(o, make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (kn + j < k) o[j] = acc[i][j];
            }
        }
    }
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(conv2d_fwd_f32, conv2d_bwd_data_f32, conv2d_bwd_filter_f32)
