// conv2d_bf16.cu — the convolutions on tensor cores (bf16 products, f32 accumulation).
// Reference: src/backend/cpu/conv2d.rs; f32 twins and the shared formulas: conv2d.cu;
// launchers: src/backend/cuda/conv2d.rs (same arguments and grids as the f32 kernels).
//
// conv2d_fwd_bf16, conv2d_bwd_data_bf16 — the forward pass and the input gradient
// on tensor cores: the same implicit GEMMs as conv2d_fwd_f32 / conv2d_bwd_data_f32
// (same arguments, same `vec` bits, same tails), with the operands rounded to bf16 as
// they are stored to shared memory and multiplied by mma.m16n8k16 (bf16 × bf16, f32
// accumulate); activations, weights, bias and outputs stay f32 in global memory.
// About 3 significant digits per product: errors of ~1e-3 relative to the output
// scale (`Precision::Bf16`).
//   Block 128 threads (4 warps), output tile 64 pixels × 64 channels, grid as the f32
//   kernels. Warp w computes the 32×32 quarter (rows 32(w%2), channels 32(w/2)): 2 × 4
//   mma tiles of 16×8, 32 accumulators per thread.
//   Reduction in K-tiles of 32, double-buffered in shared memory (static, 19,456 bytes):
//     As[2][64][40]  A as bf16 (20 words of bf16 pairs per row), row = pixel, 32
//                    reduction elements + 8 pad: rows 80 bytes apart, so the 8 rows
//                    of an ldmatrix phase hit 8 distinct 4-bank groups (conflict-
//                    free); read with ldmatrix.x4 (the A fragment of a 16×16 block)
//     Bs[2][32][72]  B as bf16 elements, row = reduction element, 64 channels + 8 pad
//                    (144 bytes: conflict-free likewise); read with ldmatrix.x4.trans
//                    (the B fragments of two 8-channel tiles)
//   Loads: thread t gathers pixel t/2, reduction quads 16(t%2) + 4j (j < 4), packed
//   into two bf16x2 words each. Forward B: weight row t/4, channels 4(t%4) + 16j,
//   stored along the row; input-gradient B: channel t%64 of w' (flipped, transposed),
//   reduction quads t/64 + 2j, stored down the column. As in the f32 kernels, the next
//   tile's global loads are in flight in registers while the current tile is
//   multiplied; one barrier per tile.
#include "common.cuh"

#define CB_TILE 64
#define CB_BK 32
#define CB_THREADS 128
// Row lengths: A in 32-bit words (bf16 pairs, low element first), 40 bf16; B in
// bf16 elements, 72.
#define CB_LDA ((CB_BK + 8) / 2)
#define CB_LDB16 (CB_TILE + 8)

// Four f32 rounded to bf16 into two words: elements 0,1 and 2,3.
DEVICE void stash4_bf16(u32* dst, float4 v) {
    dst[0] = pack_bf16x2(v.x, v.y);
    dst[1] = pack_bf16x2(v.z, v.w);
}

// acc[i][j] += A[wm + 16i .. +15][all 32] · B[all 32][wn + 8j .. +7] for one K-tile.
// Columns below are in bf16 elements; an A word holds two, so A column q is word q/2.
DEVICE void mma_tile_bf16(float acc[2][4][4], const u32 (*a_s)[CB_LDA], const u16 (*b_s)[CB_LDB16], int wm,
                          int wn) {
#pragma unroll
    for (int ks = 0; ks < CB_BK; ks += 16) {
        u32 af[2][4], bf[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
            mma_a_frag(af[i], reinterpret_cast<const u16*>(a_s[wm + 16 * i]) + ks, 2 * CB_LDA);
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) mma_b_frags_kmajor(&bf[2 * jj], &b_s[ks][wn + 16 * jj], CB_LDB16);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) mma_16816_bf16(acc[i][j], af[i], bf[j], acc[i][j]);
        }
    }
}

// The forward pass (BWD = false) and the input gradient (BWD = true) on tensor cores:
// conv_gemm's two products with bf16 operands. Argument roles as in conv_gemm
// (act/a_ch/a_pitch gathered, out/o_ch/o_pitch written). B tiles are stored
// [reduction][channel] in both: the forward reads a weight row of 4 channels per
// quad (stored along the row); the input gradient reads w' = the flipped transposed
// weight, 4 consecutive reduction elements of one channel per quad (stored down a
// column), so Bs is kept in 16-bit elements.
template <bool BWD>
DEVICE void conv_gemm_bf16(u32 (*As)[CB_TILE][CB_LDA], u16 (*Bs)[CB_BK][CB_LDB16], float* __restrict__ out,
                           const float* __restrict__ act, const float* __restrict__ w,
                           const float* __restrict__ bias, int N, int H, int W, int a_ch, int o_ch, int R,
                           int a_pitch, int o_pitch, int relu, int add, int vec) {
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int M = N * H * W, Kg = R * R * a_ch;
    const int m0 = blockIdx.x * CB_TILE, n0 = blockIdx.y * CB_TILE;
    const bool vec_a = (vec & CONV_VEC_A) != 0, vec_b = (vec & CONV_VEC_B) != 0;
    const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;

    // Gather role: one pixel per thread for the whole reduction, decoded once.
    const int a_row = t >> 1, a_k = (t & 1) * 16;
    int ph = CONV_FAR, pw = 0, pbase = 0;
    if (m0 + a_row < M) {
        const int m = m0 + a_row;
        pw = m % W;
        ph = (m / W) % H;
        pbase = m * a_pitch;
    }
    // On the vector path each gathered quad is 4 channels of one tap; its (tap row,
    // tap column, channel) is decoded once here and stepped by CB_BK after every
    // fetch (integer division is dozens of instructions on a GPU; this loop would
    // otherwise do two per quad per tile). The scalar path divides (gather4).
    int q_tr[4], q_ts[4], q_ch[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int kg = a_k + 4 * j, tap = kg / a_ch;
        q_ch[j] = kg - tap * a_ch;
        q_tr[j] = tap / R;
        q_ts[j] = tap - q_tr[j] * R;
    }
    // B role. Forward: reduction row t/4 of the K-tile, channels 4(t%4) + 16j.
    // Input gradient: channel t%64, reduction quads (t/64) + 2j (elements 4·that..+3).
    const int b_row = BWD ? 4 * (t >> 6) : t >> 2, b_col = BWD ? t & 63 : (t & 3) * 4;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
        }
    }

    const int ntiles = (Kg + CB_BK - 1) / CB_BK;
    float4 ra[4], rb[4];
#define CB_FETCH(k0)                                                                                        \
    do {                                                                                                    \
        for (int j = 0; j < 4; ++j) {                                                                       \
            if (vec_a) {                                                                                    \
                ra[j] = gather4_tap(act, pbase, ph, pw, q_tr[j], q_ts[j], q_ch[j], R, H, W, a_pitch);       \
                step_tap(q_tr[j], q_ts[j], q_ch[j], a_ch, R, CB_BK);                                        \
            } else {                                                                                        \
                ra[j] = gather4(act, pbase, ph, pw, (k0) + a_k + 4 * j, Kg, a_ch, R, H, W, a_pitch, false); \
            }                                                                                               \
            if (BWD)                                                                                        \
                rb[j] = wflip4(w, (k0) + b_row + 8 * j, Kg, n0 + b_col, o_ch, a_ch, R * R, vec_b);          \
            else                                                                                            \
                rb[j] = weight_row4(w, (k0) + b_row, Kg, n0 + b_col + 16 * j, o_ch, vec_b);                 \
        }                                                                                                   \
    } while (0)
#define CB_STASH(buf)                                                                                       \
    do {                                                                                                    \
        for (int j = 0; j < 4; ++j) {                                                                       \
            stash4_bf16(&As[buf][a_row][(a_k + 4 * j) / 2], ra[j]);                                          \
            const float e4[4] = {rb[j].x, rb[j].y, rb[j].z, rb[j].w};                                       \
            for (int e = 0; e < 4; ++e) {                                                                   \
                if (BWD)                                                                                    \
                    Bs[buf][b_row + 8 * j + e][b_col] = f32_to_bf16(e4[e]);                                 \
                else                                                                                        \
                    Bs[buf][b_row][b_col + 16 * j + e] = f32_to_bf16(e4[e]);                                \
            }                                                                                               \
        }                                                                                                   \
    } while (0)

    if (ntiles > 0) {
        CB_FETCH(0);
        CB_STASH(0);
        __syncthreads();
    }
    for (int tile = 0; tile < ntiles; ++tile) {
        const int cur = tile & 1;
        const bool more = tile + 1 < ntiles;
        if (more) CB_FETCH((tile + 1) * CB_BK);
        mma_tile_bf16(acc, As[cur], Bs[cur], wm, wn);
        // Buffer cur^1 was last read in the previous iteration, before its barrier.
        if (more) CB_STASH(cur ^ 1);
        __syncthreads();
    }
#undef CB_FETCH
#undef CB_STASH

    // Epilogue: accumulator e of tile (i, j) is row g + 8(e/2), channel 2(l%4) + e%2
    // of that 16×8 tile (the mma C layout). Forward: bias and ReLU; input gradient:
    // written or added. f32 stores.
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = n0 + wn + 8 * j + 2 * tq;
        if (col >= o_ch) continue;
        const bool second = col + 1 < o_ch;
        const float b0 = BWD ? 0.0f : bias[col], b1 = !BWD && second ? bias[col + 1] : 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int m = m0 + wm + 16 * i + g + 8 * half;
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
KERNEL_BOUNDS(conv2d_fwd_bf16, CB_THREADS)(float* __restrict__ y, const float* __restrict__ x,
                                           const float* __restrict__ w, const float* __restrict__ b, int n, int h,
                                           int wd, int c, int k, int r, int x_pitch, int y_pitch, int relu,
                                           int vec) {
    SHARED(u32, As, [2][CB_TILE][CB_LDA]);
    SHARED(u16, Bs, [2][CB_BK][CB_LDB16]);
    conv_gemm_bf16<false>(As, Bs, y, x, w, b, n, h, wd, c, k, r, x_pitch, y_pitch, relu, 0, vec);
}
EMU_EXPORT(conv2d_fwd_bf16)

// dx[N,H,W,C] (x_pitch) = (add ? dx : 0) + conv(dy, w') with bf16 products, dy already
// ReLU-masked. Same arguments as conv2d_bwd_data_f32. Grid (⌈N·H·W/64⌉, ⌈C/64⌉), 128 threads.
KERNEL_BOUNDS(conv2d_bwd_data_bf16, CB_THREADS)(float* __restrict__ dx, const float* __restrict__ dy,
                                                const float* __restrict__ w, int n, int h, int wd, int c, int k,
                                                int r, int x_pitch, int y_pitch, int add, int vec) {
    SHARED(u32, As, [2][CB_TILE][CB_LDA]);
    SHARED(u16, Bs, [2][CB_BK][CB_LDB16]);
    conv_gemm_bf16<true>(As, Bs, dx, dy, w, nullptr, n, h, wd, k, c, r, y_pitch, x_pitch, 0, add, vec);
}
EMU_EXPORT(conv2d_bwd_data_bf16)

// conv2d_bwd_filter_bf16 — the weight gradient on tensor cores: conv2d_bwd_filter_f32's
// split-K product dw_part[z] = im2col(x)ᵀ · dy over pixel chunk z (same arguments,
// grid and partial layout; conv2d_bwd_filter_reduce_f32 sums the partials), with both
// operands rounded to bf16 in shared memory and multiplied by mma.m16n8k16 with f32
// accumulation. db stays exact f32: each thread sums the f32 dy values it loads, and
// the block adds the 32 per-thread sums of each channel in a fixed order.
//   Block 128 threads (4 warps), output tile 64 filter rows (tap, c) × 64 channels,
//   warp w the 32×32 quarter (rows 32(w%2), channels 32(w/2)).
//   K-tiles of 32 pixels, double-buffered: As[2][32][72], Bs[2][32][72] bf16, both
//   [pixel][row or channel] (18,432 bytes), read with ldmatrix.x4.trans: for A, matrix
//   bit 0 is the second 8 filter rows and bit 1 the second 8 pixels (the A fragment
//   order); for B, bit 0 the second 8 pixels, bit 1 the second 8 channels.
//   Loads: thread t reads pixel t/4 of the tile; filter rows row0 + 4(t%4) + 16j and
//   channels k0 + 4(t%4) + 16j (j < 4), fixed for the whole reduction: on the vector
//   path each row quad is 4 channels of one tap, decoded once.
KERNEL_BOUNDS(conv2d_bwd_filter_bf16, CB_THREADS)(float* __restrict__ dw_part, float* __restrict__ db_part,
                                                  const float* __restrict__ x, const float* __restrict__ dy,
                                                  int n, int h, int wd, int c, int k, int r, int x_pitch,
                                                  int y_pitch, int chunk, int vec) {
    SHARED(u16, As, [2][CB_BK][CB_LDB16]);
    SHARED(u16, Bs, [2][CB_BK][CB_LDB16]);
    SHARED(float, db_red, [CB_BK][CB_TILE]);
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int P = n * h * wd, Kg = r * r * c;
    const int row0 = blockIdx.x * CB_TILE, k0 = blockIdx.y * CB_TILE, z = blockIdx.z;
    const int p_begin = z * chunk, p_end = min(P, p_begin + chunk);
    const bool vec_a = (vec & CONV_VEC_A) != 0, vec_b = (vec & CONV_VEC_B) != 0;
    const bool db_block = blockIdx.x == 0;
    const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;

    // Load role: pixel l_pix of each tile; row/channel quads l_col + 16j.
    const int l_pix = t >> 2, l_col = (t & 3) * 4;
    // Vector path: the tap offset of each row quad, decoded once (dr CONV_FAR past Kg:
    // it fails every bounds test).
    int off[4], dr[4], ds[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int kg = row0 + l_col + 16 * j;
        off[j] = 0, dr[j] = CONV_FAR, ds[j] = 0;
        if (vec_a && kg < Kg) {
            const ConvTap tp = conv_tap(kg, c, r);
            off[j] = (tp.dr * wd + tp.ds) * x_pitch + tp.ch;
            dr[j] = tp.dr, ds[j] = tp.ds;
        }
    }

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
        }
    }
    float db_acc[4][4];  // [quad j][element]: channel k0 + l_col + 16j + e
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) db_acc[j][e] = 0.0f;
    }

    const int ntiles = p_end > p_begin ? (p_end - p_begin + CB_BK - 1) / CB_BK : 0;
    float4 ra[4], rb[4];
#define WB_FETCH(p0)                                                                                         \
    do {                                                                                                     \
        const int p = (p0) + l_pix;                                                                          \
        for (int j = 0; j < 4; ++j) ra[j] = zero4(), rb[j] = zero4();                                        \
        if (p < p_end) {                                                                                     \
            const int pw = p % wd, ph = (p / wd) % h;                                                        \
            for (int j = 0; j < 4; ++j) {                                                                    \
                if (vec_a) {                                                                                 \
                    if ((unsigned)(ph + dr[j]) < (unsigned)h && (unsigned)(pw + ds[j]) < (unsigned)wd)      \
                        ra[j] = ld4(x + p * x_pitch + off[j]);                                               \
                } else {                                                                                     \
                    ra[j] = gather4(x, p * x_pitch, ph, pw, row0 + l_col + 16 * j, Kg, c, r, h, wd, x_pitch, \
                                    false);                                                                  \
                }                                                                                            \
                rb[j] = channel_quad(dy + p * y_pitch, k0 + l_col + 16 * j, k, vec_b);                       \
            }                                                                                                \
        }                                                                                                    \
    } while (0)
#define WB_STASH(buf)                                                                                        \
    do {                                                                                                     \
        for (int j = 0; j < 4; ++j) {                                                                        \
            const float av[4] = {ra[j].x, ra[j].y, ra[j].z, ra[j].w};                                        \
            const float bv[4] = {rb[j].x, rb[j].y, rb[j].z, rb[j].w};                                        \
            for (int e = 0; e < 4; ++e) {                                                                    \
                As[buf][l_pix][l_col + 16 * j + e] = f32_to_bf16(av[e]);                                     \
                Bs[buf][l_pix][l_col + 16 * j + e] = f32_to_bf16(bv[e]);                                     \
                db_acc[j][e] += bv[e];                                                                       \
            }                                                                                                \
        }                                                                                                    \
    } while (0)

    if (ntiles > 0) {
        WB_FETCH(p_begin);
        WB_STASH(0);
        __syncthreads();
    }
    for (int tile = 0; tile < ntiles; ++tile) {
        const int cur = tile & 1;
        const bool more = tile + 1 < ntiles;
        if (more) WB_FETCH(p_begin + (tile + 1) * CB_BK);
#pragma unroll
        for (int ks = 0; ks < CB_BK; ks += 16) {
            u32 af[2][4], bf[4][2];
            // Both tiles are [pixel][·]: A (filter rows × pixels) is k-major too.
#pragma unroll
            for (int i = 0; i < 2; ++i) mma_a_frag_kmajor(af[i], &As[cur][ks][wm + 16 * i], CB_LDB16);
#pragma unroll
            for (int jj = 0; jj < 2; ++jj) mma_b_frags_kmajor(&bf[2 * jj], &Bs[cur][ks][wn + 16 * jj], CB_LDB16);
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_16816_bf16(acc[i][j], af[i], bf[j], acc[i][j]);
            }
        }
        // Buffer cur^1 was last read in the previous iteration, before its barrier.
        if (more) WB_STASH(cur ^ 1);
        __syncthreads();
    }
#undef WB_FETCH
#undef WB_STASH

    // db: the 32 threads with the same channels (one per pixel row) add their sums in
    // pixel-row order, then one thread per channel writes the block's partial.
    if (db_block) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) db_red[l_pix][l_col + 16 * j + e] = db_acc[j][e];
        }
        __syncthreads();
        if (t < CB_TILE && k0 + t < k) {
            float s = 0.0f;
            for (int row = 0; row < CB_BK; ++row) s += db_red[row][t];
            db_part[z * k + k0 + t] = s;
        }
    }

    // Epilogue: the partial tile, dense [z][Kg][K]; every element inside Kg × K is
    // written (zeros for an empty chunk), so nothing needs clearing first.
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = k0 + wn + 8 * j + 2 * tq;
        if (col >= k) continue;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row = row0 + wm + 16 * i + g + 8 * half;
                if (row >= Kg) continue;
                float* o = dw_part + (z * Kg + row) * k + col;
                o[0] = acc[i][j][2 * half];
                if (col + 1 < k) o[1] = acc[i][j][2 * half + 1];
            }
        }
    }
}
EMU_EXPORT(conv2d_bwd_filter_bf16)
