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
// conv2d_fwd_bf16: the forward pass with bf16 products on tensor cores (mma.m16n8k16,
//   f32 accumulation, f32 in and out), for inference; its own header is at the end.
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
#define CONV_VEC_A 1
#define CONV_VEC_B 2
#define CONV_VEC_OUT 4
// A row "far outside the image": any tap offset keeps it out of [0, H), so pixels past
// the end load zeros through the same bounds test as the padding (no extra branch).
#define CONV_FAR (-(1 << 30))

typedef float ConvTile[CONV_BK][CONV_LD];

// One reduction index kg = tap·ch + channel of an R×R "same" convolution: the tap's
// offset (dr, ds) from the output pixel and the channel.
struct ConvTap {
    int dr, ds, ch;
};

DEVICE ConvTap conv_tap(int kg, int ch, int R) {
    const int tap = kg / ch, r = tap / R, pad = R >> 1;
    ConvTap t;
    t.dr = r - pad;
    t.ds = tap - r * R - pad;
    t.ch = kg - tap * ch;
    return t;
}

DEVICE float4 zero4() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
DEVICE float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
DEVICE void st4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// im2col(a)[pixel][kg]: the tap's neighbour of the pixel at (ph, pw) (element offset
// pbase), zero in the padding and past the reduction end Kg.
DEVICE float gather1(const float* a, int pbase, int ph, int pw, int kg, int Kg, int ch, int R, int H, int W,
                     int pitch) {
    if (kg >= Kg) return 0.0f;
    const ConvTap t = conv_tap(kg, ch, R);
    if ((unsigned)(ph + t.dr) >= (unsigned)H || (unsigned)(pw + t.ds) >= (unsigned)W) return 0.0f;
    return a[pbase + (t.dr * W + t.ds) * pitch + t.ch];
}

// Four consecutive reduction elements kg..kg+3 of one pixel. On the vector path
// ch % 4 == 0 and kg % 4 == 0, so they are 4 channels of one tap: one 16-byte load,
// wholly inside or outside the image (and Kg % 4 == 0, wholly inside or past the end).
DEVICE float4 gather4(const float* a, int pbase, int ph, int pw, int kg, int Kg, int ch, int R, int H, int W,
                      int pitch, bool vec) {
    if (vec) {
        if (kg >= Kg) return zero4();
        const ConvTap t = conv_tap(kg, ch, R);
        if ((unsigned)(ph + t.dr) >= (unsigned)H || (unsigned)(pw + t.ds) >= (unsigned)W) return zero4();
        return ld4(a + pbase + (t.dr * W + t.ds) * pitch + t.ch);
    }
    return make_float4(gather1(a, pbase, ph, pw, kg, Kg, ch, R, H, W, pitch),
                       gather1(a, pbase, ph, pw, kg + 1, Kg, ch, R, H, W, pitch),
                       gather1(a, pbase, ph, pw, kg + 2, Kg, ch, R, H, W, pitch),
                       gather1(a, pbase, ph, pw, kg + 3, Kg, ch, R, H, W, pitch));
}

// Vector-path gather without divisions: four channels ch..ch+3 of tap (tr, ts) of the
// pixel at (ph, pw); zeros in the padding and once the tap row is past R (the
// reduction's end, as Kg % 4 == 0 on this path).
DEVICE float4 gather4_tap(const float* a, int pbase, int ph, int pw, int tr, int ts, int ch, int R, int H, int W,
                          int pitch) {
    const int pad = R >> 1, dr = tr - pad, ds = ts - pad;
    if (tr >= R || (unsigned)(ph + dr) >= (unsigned)H || (unsigned)(pw + ds) >= (unsigned)W) return zero4();
    return ld4(a + pbase + (dr * W + ds) * pitch + ch);
}

// Moves a reduction index, kept as (tap row tr, tap column ts, channel ch) of a
// `c`-channel R×R gather, forward by `by` elements.
DEVICE void step_tap(int& tr, int& ts, int& ch, int c, int R, int by) {
    ch += by;
    while (ch >= c) {
        ch -= c;
        if (++ts == R) ts = 0, ++tr;
    }
}

// Channels kc..kc+3 of one pixel (`px` its channel 0), zero past `k`; `vec`: one
// 16-byte load (k % 4 == 0, so the quad is wholly in or out).
DEVICE float4 channel_quad(const float* px, int kc, int k, bool vec) {
    if (vec) return kc < k ? ld4(px + kc) : zero4();
    return make_float4(kc < k ? px[kc] : 0.0f, kc + 1 < k ? px[kc + 1] : 0.0f, kc + 2 < k ? px[kc + 2] : 0.0f,
                       kc + 3 < k ? px[kc + 3] : 0.0f);
}

// Forward B: w[kg][n..n+3] (row-major [R·R·C][K]), zero past K and past Kg.
DEVICE float4 weight_row4(const float* w, int kg, int Kg, int n, int K, bool vec) {
    return kg < Kg ? channel_quad(w + kg * K, n, K, vec) : zero4();
}

// Input-gradient B: w'[kg][c] = w[R·R-1-tap][c][k] with kg = tap·K + k, for kg..kg+3.
// Consecutive kg are consecutive k: contiguous in w, so this is loaded like A (a quad
// along the reduction) and stored transposed.
DEVICE float wflip1(const float* w, int kg, int Kg, int c, int C, int K, int RR) {
    if (kg >= Kg || c >= C) return 0.0f;
    const int tap = kg / K;
    return w[((RR - 1 - tap) * C + c) * K + (kg - tap * K)];
}
DEVICE float4 wflip4(const float* w, int kg, int Kg, int c, int C, int K, int RR, bool vec) {
    if (vec) {
        if (kg >= Kg || c >= C) return zero4();
        const int tap = kg / K;
        return ld4(w + ((RR - 1 - tap) * C + c) * K + (kg - tap * K));
    }
    return make_float4(wflip1(w, kg, Kg, c, C, K, RR), wflip1(w, kg + 1, Kg, c, C, K, RR),
                       wflip1(w, kg + 2, Kg, c, C, K, RR), wflip1(w, kg + 3, Kg, c, C, K, RR));
}

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
DEVICE void mma_tile_bf16(float acc[2][4][4], const u32 (*a_s)[CB_LDA], const u16 (*b_s)[CB_LDB16], int lane,
                          int wm, int wn) {
    // ldmatrix: lane l addresses row l%8 of matrix l/8; matrix bit 0 selects the
    // second 8 rows, bit 1 the second 8 columns.
    const int l_row = (lane & 7) + ((lane >> 3) & 1) * 8, l_col = (lane >> 4) * 8;
#pragma unroll
    for (int ks = 0; ks < CB_BK; ks += 16) {
        u32 af[2][4], bf[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) ldmatrix_x4(af[i], &a_s[wm + 16 * i + l_row][(ks + l_col) / 2]);
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
            // Stored rows are reduction elements: .trans hands each lane channel l/4,
            // elements 2(l%4)..+1, the col-major B fragment. Matrices 0,1: channels
            // 0-7 (elements 0-7, 8-15); 2,3: channels 8-15.
            u32 r4[4];
            ldmatrix_x4_trans(r4, &b_s[ks + l_row][wn + 16 * jj + l_col]);
            bf[2 * jj][0] = r4[0], bf[2 * jj][1] = r4[1];
            bf[2 * jj + 1][0] = r4[2], bf[2 * jj + 1][1] = r4[3];
        }
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
        mma_tile_bf16(acc, As[cur], Bs[cur], lane, wm, wn);
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

    // ldmatrix.trans lane addresses (see the header): A rows are pixels, columns filter rows.
    const int a_k = (lane & 7) + ((lane >> 4) & 1) * 8, a_m = ((lane >> 3) & 1) * 8;
    const int b_k = (lane & 7) + ((lane >> 3) & 1) * 8, b_n = ((lane >> 4) & 1) * 8;
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
#pragma unroll
            for (int i = 0; i < 2; ++i) ldmatrix_x4_trans(af[i], &As[cur][ks + a_k][wm + 16 * i + a_m]);
#pragma unroll
            for (int jj = 0; jj < 2; ++jj) {
                u32 r4[4];
                ldmatrix_x4_trans(r4, &Bs[cur][ks + b_k][wn + 16 * jj + b_n]);
                bf[2 * jj][0] = r4[0], bf[2 * jj][1] = r4[1];
                bf[2 * jj + 1][0] = r4[2], bf[2 * jj + 1][1] = r4[3];
            }
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
