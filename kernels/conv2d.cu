// conv2d.cu — fp32 convolution R×R (R = 1 or 3), stride 1, "same" padding R/2, NHWC, as
// IMPLICIT GEMM: the im2col matrix is never materialised; each K-tile of it is gathered
// from the activation straight into shared memory. Reference and formulas:
// src/backend/cpu/conv2d.rs; launchers (geometry, path choice): src/backend/cuda/conv2d.rs.
//
// The three products (M = N·H·W pixels, taps t = (r,s) row-major, pad = R/2):
//   forward      y[M][K]       = relu?(im2col(x)[M][R·R·C] · w[R·R·C][K] + b)
//   input grad   dx[M][C]     (=|+=) im2col(dy)[M][R·R·K] · w'[R·R·K][C],
//                w'[t][k][c] = w[R·R-1-t][c][k] (flipped taps, transposed: dx is the
//                "same" convolution of dy, a gather, so no two threads write one pixel)
//   weight grad  dw[R·R·C][K]  = im2col(x)ᵀ · dy, db[K] = Σ_pixels dy
//
// conv2d_fwd_f32, conv2d_bwd_data_f32 (one template, conv_gemm)
//   Block 256 threads, output tile 64 pixels × 64 channels, grid (⌈M/64⌉, ⌈cols/64⌉).
//   Thread t (tx = t%16, ty = t/16) owns the 4×4 micro-tile pixels m0+4ty..+3 ×
//   channels n0+4tx..+3, accumulated in registers.
//   Reduction in K-tiles of 16. Shared memory (static, 17,408 bytes):
//     As[2][16][68]  A transposed (As[kk][pixel]): the multiply reads 4 pixels as a float4
//     Bs[2][16][68]  B (Bs[kk][channel])
//   double-buffered: the next tile's global loads are in flight in registers while the
//   current tile is multiplied, one __syncthreads per tile. Rows of 68 floats stay
//   16-byte aligned and put the 4 reduction quads of the transposed stores 4 banks
//   apart (2-way conflicts at worst instead of 4-way with 64).
//   Gather: thread t reads pixel m0 + t/4, reduction elements 4(t%4)..+3 of the tile:
//   4 threads cover 16 consecutive channels of one pixel (64 contiguous bytes). On the
//   vector path the quad's tap and channel are stepped from tile to tile (step_tap),
//   not divided out of the reduction index at every load.
//
// conv2d_bwd_filter_f32: the same 64×64 tile and micro-tile, but rows are (tap, c)
//   and the reduction runs over pixels: split-K, block z reduces pixels
//   [z·chunk, (z+1)·chunk) of the dense partial dw_part[z][R·R·C][K]. Blocks with
//   blockIdx.x == 0 also sum their dy tiles into db_part[z][K]. With one split the
//   launcher passes dw and db themselves. Shared: As[2][16][68] (As[pixel][row]),
//   Bs[2][16][68] (Bs[pixel][k]); both loaded straight (no transpose): thread t
//   reads pixel t/16 of the tile, 4 consecutive rows (or channels) 4(t%16)..+3.
// conv2d_bwd_filter_reduce_f32: dw = Σ_z dw_part[z], db = Σ_z db_part[z], one thread per
//   output element, z ascending: no float atomics, so the bits depend only on the
//   shapes (the launcher's split count), never on timing or the emulator's schedule.
// The bf16 tensor-core twins of the three GEMM kernels are in conv2d_bf16.cu; the
// gathers both files use (conv_tap, gather4, gather4_tap/step_tap, weight_row4,
// wflip4, channel_quad) are in common.cuh.
// conv2d_relu_mask_f32: dy = 0 where y <= 0, in place, one thread per element (the
//   Backend contract masks dy in place; masking once is also cheaper than masking at
//   every one of the R·R·⌈C/64⌉ (dx) or ⌈R·R·C/64⌉ (dw) reads of each dy element).
//
// Assumptions (checked by the launcher): R ∈ {1,3}; every index of every operand,
// including base + (dr·W + ds)·pitch before the padding test, fits in int; pitches ≥
// channels; outputs do not overlap inputs. All tails (any N, H, W, C, K ≥ 0) are
// handled here: out-of-range elements load as 0 and are never stored.
// The `vec` argument (uniform over the grid, chosen by the launcher): CONV_VEC_A /
// CONV_VEC_B — 16-byte loads of 4 consecutive reduction elements (needs channels % 4 ==
// 0 so a quad never straddles two taps, pitch % 4 == 0 and a 16-byte aligned base);
// CONV_VEC_OUT — 16-byte stores (output channels % 4 == 0, aligned). Otherwise the
// scalar path, which handles anything.
#include "common.cuh"

#define CONV_TILE 64
#define CONV_BK 16
#define CONV_THREADS 256
#define CONV_LD 68
typedef float ConvTile[CONV_BK][CONV_LD];

// Column `col` of a K-tile receives the quad v along the reduction (rows q..q+3): the
// transposed store of A (and of the input-gradient B).
DEVICE void stash_t(ConvTile& s, int q, int col, float4 v) {
    s[q][col] = v.x;
    s[q + 1][col] = v.y;
    s[q + 2][col] = v.z;
    s[q + 3][col] = v.w;
}

// acc[i][j] += Σ_kk A[kk][4ty+i] · B[kk][4tx+j] over one K-tile. Two float4 shared
// loads feed 16 FMAs; within a warp the A loads are broadcasts (2 distinct ty) and
// the B loads read 256 contiguous bytes.
DEVICE void multiply_tile(float acc[4][4], const ConvTile& a, const ConvTile& b, int tx, int ty) {
#pragma unroll
    for (int kk = 0; kk < CONV_BK; ++kk) {
        const float4 av = ld4(&a[kk][4 * ty]);
        const float4 bv = ld4(&b[kk][4 * tx]);
        const float ai[4] = {av.x, av.y, av.z, av.w};
        const float bj[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] += ai[i] * bj[j];
        }
    }
}

// The forward pass (BWD = false) and the input gradient (BWD = true) are the same
// implicit GEMM with different B operands and epilogues:
//   act/a_ch/a_pitch: the gathered activation (x, C, x_pitch | dy, K, y_pitch)
//   out/o_ch/o_pitch: the output (y, K, y_pitch | dx, C, x_pitch)
template <bool BWD>
DEVICE void conv_gemm(ConvTile* As, ConvTile* Bs, float* __restrict__ out, const float* __restrict__ act,
                      const float* __restrict__ w, const float* __restrict__ bias, int N, int H, int W, int a_ch,
                      int o_ch, int R, int a_pitch, int o_pitch, int relu, int add, int vec) {
    const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
    const int M = N * H * W, Kg = R * R * a_ch;
    const int m0 = blockIdx.x * CONV_TILE, n0 = blockIdx.y * CONV_TILE;
    const bool vec_a = (vec & CONV_VEC_A) != 0, vec_b = (vec & CONV_VEC_B) != 0;

    // Gather role: one pixel per thread for the whole reduction, decoded once.
    const int g_row = t >> 2, g_q = (t & 3) << 2;
    int ph = CONV_FAR, pw = 0, pbase = 0;
    if (m0 + g_row < M) {
        const int m = m0 + g_row;
        pw = m % W;
        ph = (m / W) % H;
        pbase = m * a_pitch;
    }
    // Forward weight role: row t/16 of the K-tile, channels 4(t%16)..+3 (16 threads
    // read 256 contiguous bytes of a weight row).
    const int b_row = t >> 4, b_col = (t & 15) << 2;
    // Vector path: the gathered quad's tap (row, column) and channel, decoded once and
    // stepped by CONV_BK after every fetch instead of divided out at every load.
    int q_tr, q_ts, q_ch;
    {
        const int tap = g_q / a_ch;
        q_ch = g_q - tap * a_ch;
        q_tr = tap / R;
        q_ts = tap - q_tr * R;
    }

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    }

    const int ntiles = (Kg + CONV_BK - 1) / CONV_BK;
    float4 ra = zero4(), rb = zero4();
    // Registers ← K-tile k0 (global loads; they complete while the tile before is multiplied).
#define CONV_FETCH(k0)                                                                          \
    do {                                                                                        \
        if (vec_a) {                                                                            \
            ra = gather4_tap(act, pbase, ph, pw, q_tr, q_ts, q_ch, R, H, W, a_pitch);           \
            step_tap(q_tr, q_ts, q_ch, a_ch, R, CONV_BK);                                       \
        } else {                                                                                \
            ra = gather4(act, pbase, ph, pw, (k0) + g_q, Kg, a_ch, R, H, W, a_pitch, false);   \
        }                                                                                       \
        if (BWD)                                                                                \
            rb = wflip4(w, (k0) + g_q, Kg, n0 + g_row, o_ch, a_ch, R * R, vec_b);               \
        else                                                                                    \
            rb = weight_row4(w, (k0) + b_row, Kg, n0 + b_col, o_ch, vec_b);                     \
    } while (0)
    // Registers → shared buffer `buf`.
#define CONV_STASH(buf)                                   \
    do {                                                  \
        stash_t(As[buf], g_q, g_row, ra);                 \
        if (BWD)                                          \
            stash_t(Bs[buf], g_q, g_row, rb);             \
        else                                              \
            st4(&Bs[buf][b_row][b_col], rb);              \
    } while (0)

    if (ntiles > 0) {
        CONV_FETCH(0);
        CONV_STASH(0);
        __syncthreads();
    }
    for (int tile = 0; tile < ntiles; ++tile) {
        const int cur = tile & 1;
        const bool more = tile + 1 < ntiles;
        if (more) CONV_FETCH((tile + 1) * CONV_BK);
        multiply_tile(acc, As[cur], Bs[cur], tx, ty);
        // Buffer cur^1 was last read in the previous iteration, before its barrier.
        if (more) CONV_STASH(cur ^ 1);
        __syncthreads();
    }
#undef CONV_FETCH
#undef CONV_STASH

    // Epilogue: bias + ReLU (forward) or write/add (input gradient), straight into the
    // output's channel slice; 16 threads store 64 contiguous channels of one pixel.
    const int n = n0 + 4 * tx;
    if (n >= o_ch) return;
    float bj[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (!BWD) {
#pragma unroll
        for (int j = 0; j < 4; ++j) bj[j] = n + j < o_ch ? bias[n + j] : 0.0f;
    }
    const bool vec_out = (vec & CONV_VEC_OUT) != 0;  // o_ch % 4 == 0: n..n+3 all in range
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + 4 * ty + i;
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
KERNEL_BOUNDS(conv2d_fwd_f32, CONV_THREADS)(float* __restrict__ y, const float* __restrict__ x,
                                            const float* __restrict__ w, const float* __restrict__ b, int n,
                                            int h, int wd, int c, int k, int r, int x_pitch, int y_pitch, int relu,
                                            int vec) {
    SHARED(float, As, [2][CONV_BK][CONV_LD]);
    SHARED(float, Bs, [2][CONV_BK][CONV_LD]);
    conv_gemm<false>(As, Bs, y, x, w, b, n, h, wd, c, k, r, x_pitch, y_pitch, relu, 0, vec);
}
EMU_EXPORT(conv2d_fwd_f32)

// dx[N,H,W,C] (x_pitch) = (add ? dx : 0) + conv(dy, w'), dy already ReLU-masked.
// Grid (⌈N·H·W/64⌉, ⌈C/64⌉), 256 threads.
KERNEL_BOUNDS(conv2d_bwd_data_f32, CONV_THREADS)(float* __restrict__ dx, const float* __restrict__ dy,
                                                 const float* __restrict__ w, int n, int h, int wd, int c, int k,
                                                 int r, int x_pitch, int y_pitch, int add, int vec) {
    SHARED(float, As, [2][CONV_BK][CONV_LD]);
    SHARED(float, Bs, [2][CONV_BK][CONV_LD]);
    conv_gemm<true>(As, Bs, dx, dy, w, nullptr, n, h, wd, k, c, r, y_pitch, x_pitch, 0, add, vec);
}
EMU_EXPORT(conv2d_bwd_data_f32)

// dw_part[z][R·R·C][K] = Σ over pixels [z·chunk, (z+1)·chunk) of im2col(x)ᵀ · dy, and
// (blocks with blockIdx.x == 0) db_part[z][K] = Σ dy over the same pixels.
// Grid (⌈R·R·C/64⌉, ⌈K/64⌉, splits), 256 threads; chunk % 16 == 0.
KERNEL_BOUNDS(conv2d_bwd_filter_f32, CONV_THREADS)(float* __restrict__ dw_part, float* __restrict__ db_part,
                                                   const float* __restrict__ x, const float* __restrict__ dy,
                                                   int n, int h, int wd, int c, int k, int r, int x_pitch,
                                                   int y_pitch, int chunk, int vec) {
    SHARED(float, As, [2][CONV_BK][CONV_LD]);
    SHARED(float, Bs, [2][CONV_BK][CONV_LD]);
    const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
    const int P = n * h * wd, Kg = r * r * c;
    const int row0 = blockIdx.x * CONV_TILE, k0 = blockIdx.y * CONV_TILE, z = blockIdx.z;
    const int p_begin = z * chunk, p_end = min(P, p_begin + chunk);
    const bool vec_a = (vec & CONV_VEC_A) != 0, vec_b = (vec & CONV_VEC_B) != 0;
    const bool db_block = blockIdx.x == 0;

    // Load role: pixel t/16 of each tile; rows (and channels) 4(t%16)..+3, fixed for the
    // whole reduction, so their taps are decoded once: offset from the pixel, (dr, ds).
    const int l_row = t >> 4, l_col = (t & 15) << 2;
    int off[4], dr[4], ds[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int kg = row0 + l_col + j;
        off[j] = 0, dr[j] = CONV_FAR, ds[j] = 0;  // past Kg: fails every bounds test
        if (kg < Kg) {
            const ConvTap tp = conv_tap(kg, c, r);
            off[j] = (tp.dr * wd + tp.ds) * x_pitch + tp.ch;
            dr[j] = tp.dr, ds[j] = tp.ds;
        }
    }
    const int kc = k0 + l_col;  // the channels of dy this thread loads

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    }
    float db_acc = 0.0f;

    const int ntiles = p_end > p_begin ? (p_end - p_begin + CONV_BK - 1) / CONV_BK : 0;
    float4 ra = zero4(), rb = zero4();
#define WGRAD_FETCH(p0)                                                                             \
    do {                                                                                            \
        const int p = (p0) + l_row;                                                                 \
        ra = zero4(), rb = zero4();                                                                 \
        if (p < p_end) {                                                                            \
            const int pw = p % wd, ph = (p / wd) % h;                                               \
            const float* xp = x + p * x_pitch;                                                      \
            if (vec_a) {                                                                            \
                if ((unsigned)(ph + dr[0]) < (unsigned)h && (unsigned)(pw + ds[0]) < (unsigned)wd) \
                    ra = ld4(xp + off[0]);                                                          \
            } else {                                                                                \
                float e[4];                                                                         \
                for (int j = 0; j < 4; ++j)                                                         \
                    e[j] = (unsigned)(ph + dr[j]) < (unsigned)h && (unsigned)(pw + ds[j]) < (unsigned)wd \
                               ? xp[off[j]]                                                         \
                               : 0.0f;                                                              \
                ra = make_float4(e[0], e[1], e[2], e[3]);                                           \
            }                                                                                       \
            rb = channel_quad(dy + p * y_pitch, kc, k, vec_b);                                     \
        }                                                                                           \
    } while (0)
#define WGRAD_STASH(buf)                    \
    do {                                    \
        st4(&As[buf][l_row][l_col], ra);    \
        st4(&Bs[buf][l_row][l_col], rb);    \
    } while (0)

    if (ntiles > 0) {
        WGRAD_FETCH(p_begin);
        WGRAD_STASH(0);
        __syncthreads();
    }
    for (int tile = 0; tile < ntiles; ++tile) {
        const int cur = tile & 1;
        const bool more = tile + 1 < ntiles;
        if (more) WGRAD_FETCH(p_begin + (tile + 1) * CONV_BK);
        multiply_tile(acc, As[cur], Bs[cur], tx, ty);
        // db: the first 64 threads (two whole warps) each sum one dy column of the tile,
        // pixels in order; only one block per (k-tile, split) does it.
        if (db_block && t < CONV_TILE) {
#pragma unroll
            for (int pp = 0; pp < CONV_BK; ++pp) db_acc += Bs[cur][pp][t];
        }
        if (more) WGRAD_STASH(cur ^ 1);
        __syncthreads();
    }
#undef WGRAD_FETCH
#undef WGRAD_STASH

    // Epilogue: the partial tile, dense [z][Kg][K]; every element of the tile inside
    // Kg × K is written (zeros for an empty chunk), so nothing needs clearing first.
    const int kn = k0 + 4 * tx;
    if (db_block && t < CONV_TILE && k0 + t < k) db_part[z * k + k0 + t] = db_acc;
    if (kn >= k) return;
    const bool vec_out = (vec & CONV_VEC_OUT) != 0;  // k % 4 == 0: kn..kn+3 all in range
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + 4 * ty + i;
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
EMU_EXPORT(conv2d_bwd_filter_f32)

// dw[i] = Σ_z dw_part[z][i] (i < wlen = R·R·C·K), db[j] = Σ_z db_part[z][j] (j < K),
// db_part following dw_part in the workspace. One thread per output element; the
// threads of a warp read consecutive elements of each partial (coalesced).
KERNEL_BOUNDS(conv2d_bwd_filter_reduce_f32, CONV_THREADS)(float* __restrict__ dw, float* __restrict__ db,
                                                          const float* __restrict__ part, int splits, int wlen,
                                                          int k) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= wlen + k) return;
    const bool is_w = i < wlen;
    const float* src = is_w ? part + i : part + splits * wlen + (i - wlen);
    const int stride = is_w ? wlen : k;
    // Fixed order, z ascending: the same bits on every run.
    float s = 0.0f;
    for (int zz = 0; zz < splits; ++zz) s += src[zz * stride];
    if (is_w)
        dw[i] = s;
    else
        db[i - wlen] = s;
}
EMU_EXPORT(conv2d_bwd_filter_reduce_f32)

// dy[p][c] = 0 where y[p][c] <= 0 (PyTorch's threshold_backward; a NaN y keeps dy), for
// pixels p < pixels, channels c < k, both views `pitch` apart. One thread per element.
KERNEL_BOUNDS(conv2d_relu_mask_f32, CONV_THREADS)(float* __restrict__ dy, const float* __restrict__ y, int pixels,
                                                  int k, int pitch) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pixels * k) return;
    const int p = i / k, at = p * pitch + (i - p * k);
    if (y[at] <= 0.0f) dy[at] = 0.0f;
}
EMU_EXPORT(conv2d_relu_mask_f32)
