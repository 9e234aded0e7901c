// deconv.cu — transposed convolution 4x4, stride 2, padding 1 (fp32): forward with
// fused bias + ReLU, input gradient, weight and bias gradients.
// Semantics: DeconvParams in src/backend/mod.rs; CPU reference src/backend/cpu/deconv.rs.
//
// Output pixel (2i+a, 2j+b) reads input pixels (i-1+a+ty, j-1+b+tx) through the
// weight block w[a][b][ty][tx] ([C][K]), so each output parity (a, b) is a 2x2
// convolution of the input: four implicit GEMMs, M = N·H·W input-grid pixels,
// N = K, reduction 4·C (kk = (ty·2+tx)·C + c, which is also the row of w[a][b]).
//
// Every GEMM here runs on the same 64x64 tile engine (gemm_tile):
//   block    256 threads (1-D); thread t owns the 4x4 outputs at tile rows
//            4·(t/16)..+3 and columns 4·(t%16)..+3, accumulated in registers
//   shared   two stages of A [16][68] and B [16][68] floats (17 KiB, static); the
//            row pad of 4 keeps every row 16-byte aligned for float4 reads and
//            staggers the transposed stores over more banks
//   pipeline the next 16-deep slice is fetched into registers while the current
//            one is multiplied, then stored to the other stage: one barrier a slice
// Operands are gathered straight from NHWC memory (implicit im2col); elements
// outside the image, past M, or past a tile edge load as 0, so tails need no
// special case in the inner loop, and only the epilogue is bounds-checked.
//
// Entry points (the launcher src/backend/cuda/deconv.rs computes every geometry):
//   deconv_fwd_f32          grid (⌈M/64⌉, ⌈K/64⌉, 4 parities)
//   deconv_fwd_bf16, deconv_bwd_data_bf16, deconv_bwd_filter_bf16
//                           the same three GEMMs on tensor cores (gemm_tile_bf16):
//                           bf16 operands, f32 accumulation (`Precision::Bf16`)
//   deconv_bwd_data_f32     dx = Σ over the 16 (parity, tap) pairs that read each
//                           input pixel: a 4x4 stride-2 gather of dy, reduction 16·K,
//                           grid (⌈M/64⌉, ⌈C/64⌉); writes or adds
//   deconv_bwd_filter_f32   dw[a][b] = im2col_ab(x)ᵀ · dy_ab over one chunk of
//                           pixels per blockIdx.z / 4 (split-K), into a workspace of
//                           partials (or dw itself when there is one chunk)
//   deconv_bias_grad_f32    per-chunk column sums of dy, fixed order
//   deconv_sum_partials_f32 out[i] = Σ_s part[s·L + i] in s order
//   deconv_relu_mask_f32    dy = 0 where y <= 0 (PyTorch's threshold_backward)
// No float atomics anywhere: every sum has a fixed order, so results are identical
// run to run, on every emulator schedule, and (FMA being exact-rounded on both)
// between the emulator and a GPU.
//
// Assumptions (checked by the launcher): every operand's extent fits in int; the
// vector flags (VEC_*) are set only when the operand's address, pitch and channel
// count are multiples of 4 floats, so a float4 never straddles a tap or a pixel.
#include "common.cuh"

#define TILE 64          // output rows and columns of a block
#define SLICE 16         // reduction depth of one pipeline stage
#define ROW 68           // shared row length: TILE + 4 (16-byte aligned rows)
#define STAGE (SLICE * ROW)
#define THREADS 256
// The bf16 engine's shared rows: TILE + 8 bf16 = 144 bytes (16-byte aligned rows for
// ldmatrix; the 8 rows of an ldmatrix phase land on 8 distinct 4-bank groups).
#define ROW16 72
#define STAGE16 (SLICE * ROW16)

// Launcher flags: which operands may use 16-byte accesses.
#define VEC_A 1
#define VEC_B 2
#define VEC_OUT 4

// Member functions: DEVICE is `static inline` on the host, which a member cannot be.
#define MEMBER __device__ __forceinline__


// The helper types live in an anonymous namespace: their inline member functions
// would otherwise have external linkage on the host, where every kernels/*.cu is
// linked into one library and another file may define a type of the same name.
namespace {

// Source-pixel offset of tap `tap` of a gather `mode`; the source pixel of grid pixel
// (i, j) is (stride·i + oy, stride·j + ox) with stride 1 (mode 0) or 2.
//   mode 0: x for parity (a, b), taps (ty, tx):          (a-1+ty, b-1+tx)
//   mode 1: dy of parity (a, b) (one tap):                (a, b)
//   mode 2: dy for the input gradient, taps (a,b,ty,tx):  (2-a-2ty, 2-b-2tx)
// Mode 2 inverts mode 0: input row i is read by output row 2i' + a of the input-grid
// row i' = i+1-a-ty, i.e. 2i + 2 - a - 2ty.
DEVICE void tap_offset(int mode, int tap, int a, int b, int& oy, int& ox) {
    if (mode == 0) {
        oy = a - 1 + (tap >> 1);
        ox = b - 1 + (tap & 1);
    } else if (mode == 1) {
        oy = a;
        ox = b;
    } else {
        oy = 2 - ((tap >> 3) & 1) - 2 * ((tap >> 1) & 1);
        ox = 2 - ((tap >> 2) & 1) - 2 * (tap & 1);
    }
}

// A gather source: an NHWC tensor on an sh x sw grid, `ch` channels `pitch` apart,
// read at the pixels of the (gh x gw) GEMM grid through the taps of `mode`.
struct Source {
    const float* p;
    int pitch, ch, sh, sw, mode, a, b;
    // Element offset of channel c of tap `tap` at grid pixel (img, i, j), or -1 when
    // that source pixel lies outside the image (it reads as the zero padding).
    MEMBER int offset(int img_base, int i, int j, int tap, int c) const {
        int oy, ox;
        tap_offset(mode, tap, a, b, oy, ox);
        const int s = mode == 0 ? 1 : 2;
        const int y = s * i + oy, x = s * j + ox;
        if (y < 0 || y >= sh || x < 0 || x >= sw) return -1;
        return (img_base + y * sw + x) * pitch + c;
    }
};

// Registers in flight between a fetch and the store to shared memory.
struct Staged {
    float r[4];
    MEMBER void zero() { r[0] = r[1] = r[2] = r[3] = 0.0f; }
    MEMBER void set4(float4 v) { r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w; }
    // "Reduction-major" operand (contiguous in memory along the reduction index):
    // scalar, thread t loaded reduction index t%16 of tile rows t/16 + 16q; vector,
    // reduction indices 4(t%4)..+3 of tile row t/4. Stored transposed, [k][row].
    MEMBER void put_kmajor(float* tile, bool vec) const {
        const int t = threadIdx.x;
        if (vec) {
#pragma unroll
            for (int e = 0; e < 4; ++e) tile[(4 * (t & 3) + e) * ROW + (t >> 2)] = r[e];
        } else {
#pragma unroll
            for (int q = 0; q < 4; ++q) tile[(t & 15) * ROW + (t >> 4) + 16 * q] = r[q];
        }
    }
    // "Row-major" operand (contiguous along the tile's output index): scalar, thread t
    // loaded column t%64 of reduction rows t/64 + 4q; vector, columns 4(t%16)..+3 of
    // reduction row t/16.
    MEMBER void put_nmajor(float* tile, bool vec) const {
        const int t = threadIdx.x;
        if (vec) {
            st4(tile + (t >> 4) * ROW + 4 * (t & 15), make_float4(r[0], r[1], r[2], r[3]));
        } else {
#pragma unroll
            for (int q = 0; q < 4; ++q) tile[((t >> 6) + 4 * q) * ROW + (t & 63)] = r[q];
        }
    }
    // The same two layouts rounded to bf16, rows ROW16 elements apart (the bf16 tile
    // engine's shared tiles).
    MEMBER void put_kmajor16(u16* tile, bool vec) const {
        const int t = threadIdx.x;
        if (vec) {
#pragma unroll
            for (int e = 0; e < 4; ++e) tile[(4 * (t & 3) + e) * ROW16 + (t >> 2)] = f32_to_bf16(r[e]);
        } else {
#pragma unroll
            for (int q = 0; q < 4; ++q) tile[(t & 15) * ROW16 + (t >> 4) + 16 * q] = f32_to_bf16(r[q]);
        }
    }
    MEMBER void put_nmajor16(u16* tile, bool vec) const {
        const int t = threadIdx.x;
        if (vec) {
#pragma unroll
            for (int e = 0; e < 4; ++e) tile[(t >> 4) * ROW16 + 4 * (t & 15) + e] = f32_to_bf16(r[e]);
        } else {
#pragma unroll
            for (int q = 0; q < 4; ++q) tile[((t >> 6) + 4 * q) * ROW16 + (t & 63)] = f32_to_bf16(r[q]);
        }
    }
};

// Grid pixel m of an N x gh x gw grid: image base (n·sh·sw of the source grid), row, column.
DEVICE void split_pixel(int m, int gh, int gw, int sh, int sw, int& base, int& i, int& j) {
    const int n = m / (gh * gw), rem = m - n * gh * gw;
    i = rem / gw;
    j = rem - i * gw;
    base = n * sh * sw;
}

// GEMM operand: tile rows = grid pixels (fixed per block), reduction = tap·ch + c.
// The im2col of x (forward) and the 16-tap gather of dy (input gradient).
struct PixelRows {
    Source src;
    int kg;  // reduction extent: taps · ch
    bool vec;
    int base[4], i[4], j[4];  // per loaded row; base -1: the row is past M
    Staged st;
    MEMBER void init(int m0, int m_total, int gh, int gw) {
        const int t = threadIdx.x;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            // Scalar: rows t/16 + 16q; vector: the one row t/4.
            const int m = m0 + (vec ? (t >> 2) : (t >> 4) + 16 * q);
            base[q] = -1, i[q] = 0, j[q] = 0;
            if (m < m_total && (q == 0 || !vec)) split_pixel(m, gh, gw, src.sh, src.sw, base[q], i[q], j[q]);
        }
    }
    MEMBER void fetch(int k0) {
        const int t = threadIdx.x;
        const int kk = k0 + (vec ? 4 * (t & 3) : (t & 15));
        st.zero();
        if (kk >= kg) return;
        const int tap = kk / src.ch, c = kk - tap * src.ch;
        if (vec) {
            // ch % 4 == 0 and kk % 4 == 0: the four channels are c..c+3 of one tap.
            const int off = base[0] < 0 ? -1 : src.offset(base[0], i[0], j[0], tap, c);
            if (off >= 0) st.set4(ld4(src.p + off));
        } else {
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int off = base[q] < 0 ? -1 : src.offset(base[q], i[q], j[q], tap, c);
                if (off >= 0) st.r[q] = src.p[off];
            }
        }
    }
    MEMBER void put(float* tile) const { st.put_kmajor(tile, vec); }
    MEMBER void put16(u16* tile) const { st.put_kmajor16(tile, vec); }
};

// GEMM operand: tile columns = reduction-free index col = tap·ch + c (fixed per
// thread), reduction = grid pixels p of [.., p_end). The weight gradient's two
// operands: the im2col of x (mode 0) and dy of one parity (mode 1).
struct PixelCols {
    Source src;
    int gh, gw, p_end;
    bool vec;
    int tap, c;  // of this thread's column; tap -1: the column is past the tile edge
    MEMBER void init(int col0, int cols) {
        const int col = col0 + (vec ? 4 * (threadIdx.x & 15) : (threadIdx.x & 63));
        tap = col < cols ? col / src.ch : -1;
        c = col - (tap < 0 ? 0 : tap) * src.ch;
    }
    Staged st;
    MEMBER void fetch(int k0) {
        const int t = threadIdx.x;
        st.zero();
        if (tap < 0) return;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int p = k0 + (vec ? (t >> 4) : (t >> 6) + 4 * q);
            if ((vec && q > 0) || p >= p_end) continue;
            int base, i, j;
            split_pixel(p, gh, gw, src.sh, src.sw, base, i, j);
            const int off = src.offset(base, i, j, tap, c);
            if (off < 0) continue;
            if (vec)
                st.set4(ld4(src.p + off));
            else
                st.r[q] = src.p[off];
        }
    }
    MEMBER void put(float* tile) const { st.put_nmajor(tile, vec); }
    MEMBER void put16(u16* tile) const { st.put_nmajor16(tile, vec); }
};

// GEMM operand: a dense row-major [rows][cols] matrix, ld apart (the forward's w[a][b]).
struct DenseRows {
    const float* p;
    int rows, cols, ld, n0;
    bool vec;
    Staged st;
    MEMBER void fetch(int k0) {
        const int t = threadIdx.x;
        st.zero();
        if (vec) {
            const int n = n0 + 4 * (t & 15), k = k0 + (t >> 4);
            if (k < rows && n < cols) st.set4(ld4(p + k * ld + n));
        } else {
            const int n = n0 + (t & 63);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int k = k0 + (t >> 6) + 4 * q;
                if (k < rows && n < cols) st.r[q] = p[k * ld + n];
            }
        }
    }
    MEMBER void put(float* tile) const { st.put_nmajor(tile, vec); }
    MEMBER void put16(u16* tile) const { st.put_nmajor16(tile, vec); }
};

// GEMM operand of the input gradient: B[kk][c] = w[t][c][k] with kk = t·K + k, the 16
// weight blocks transposed on the fly (contiguous along k, the reduction index).
struct WeightT {
    const float* p;
    int c_total, k_total, n0;
    bool vec;
    Staged st;
    MEMBER void fetch(int k0) {
        const int t = threadIdx.x;
        const int kk = k0 + (vec ? 4 * (t & 3) : (t & 15));
        st.zero();
        if (kk >= 16 * k_total) return;
        const int tap = kk / k_total, k = kk - tap * k_total;
        if (vec) {
            const int c = n0 + (t >> 2);
            if (c < c_total) st.set4(ld4(p + (tap * c_total + c) * k_total + k));
        } else {
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int c = n0 + (t >> 4) + 16 * q;
                if (c < c_total) st.r[q] = p[(tap * c_total + c) * k_total + k];
            }
        }
    }
    MEMBER void put(float* tile) const { st.put_kmajor(tile, vec); }
    MEMBER void put16(u16* tile) const { st.put_kmajor16(tile, vec); }
};

// The 64x64 tile product acc = A[rows][k0..k1) · B[k0..k1)[cols] on the two-stage
// pipeline described at the top. `as`/`bs`: 2·STAGE floats of shared memory each.
// All threads must call it (it has barriers); the loaders zero what is out of range.
template <class LA, class LB>
DEVICE void gemm_tile(float acc[4][4], LA& la, LB& lb, int k0, int k1, float* as, float* bs) {
    const int tm = threadIdx.x >> 4, tn = threadIdx.x & 15;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    const int slices = (k1 - k0 + SLICE - 1) / SLICE;
    if (slices <= 0) return;
    la.fetch(k0);
    lb.fetch(k0);
    la.put(as);
    lb.put(bs);
    __syncthreads();
    for (int s = 0; s < slices; ++s) {
        const int cur = (s & 1) * STAGE;
        const bool more = s + 1 < slices;
        // Global loads of the next slice overlap the arithmetic on this one.
        if (more) {
            la.fetch(k0 + (s + 1) * SLICE);
            lb.fetch(k0 + (s + 1) * SLICE);
        }
#pragma unroll
        for (int k = 0; k < SLICE; ++k) {
            const float4 a4 = ld4(as + cur + k * ROW + 4 * tm);
            const float4 b4 = ld4(bs + cur + k * ROW + 4 * tn);
            const float av[4] = {a4.x, a4.y, a4.z, a4.w};
            const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        if (more) {
            // The other stage was last read in slice s-1, before the previous barrier.
            la.put(as + (STAGE - cur));
            lb.put(bs + (STAGE - cur));
            __syncthreads();
        }
    }
}

// gemm_tile on tensor cores: the same loaders, slices and pipeline, the operands
// rounded to bf16 as they are stored ([k][row] and [k][col], ROW16 apart) and
// multiplied by mma.m16n8k16 with f32 accumulation. Warp w (of 8) computes rows
// 16(w%4)..+15 and columns 32(w/4)..+31 of the 64x64 tile: acc[j][e] is row
// 16(w%4) + g + 8(e/2), column 32(w/4) + 8j + 2(l%4) + e%2 (g = l/4, l the lane).
template <class LA, class LB>
DEVICE void gemm_tile_bf16(float acc[4][4], LA& la, LB& lb, int k0, int k1, u16* as, u16* bs) {
    const int warp = threadIdx.x >> 5;
    const int wm = (warp & 3) * 16, wn = (warp >> 2) * 32;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
    const int slices = (k1 - k0 + SLICE - 1) / SLICE;
    if (slices <= 0) return;
    la.fetch(k0);
    lb.fetch(k0);
    la.put16(as);
    lb.put16(bs);
    __syncthreads();
    for (int s = 0; s < slices; ++s) {
        const int cur = (s & 1) * STAGE16;
        const bool more = s + 1 < slices;
        if (more) {
            la.fetch(k0 + (s + 1) * SLICE);
            lb.fetch(k0 + (s + 1) * SLICE);
        }
        // Both tiles are [k][·] (k-major).
        u32 af[4], bf[4][2];
        mma_a_frag_kmajor(af, as + cur + wm, ROW16);
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) mma_b_frags_kmajor(&bf[2 * jj], bs + cur + wn + 16 * jj, ROW16);
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_16816_bf16(acc[j], af, bf[j], acc[j]);
        if (more) {
            // The other stage was last read in slice s-1, before the previous barrier.
            la.put16(as + (STAGE16 - cur));
            lb.put16(bs + (STAGE16 - cur));
            __syncthreads();
        }
    }
}

}  // namespace

// Where accumulator e of mma tile j of this thread lands in gemm_tile_bf16's 64x64
// block tile: row (tile-relative) and column.
DEVICE int bf16_row(int e) { return ((threadIdx.x >> 5) & 3) * 16 + ((threadIdx.x & 31) >> 2) + 8 * (e >> 1); }
DEVICE int bf16_col(int j, int e) { return (threadIdx.x >> 7) * 32 + 8 * j + 2 * (threadIdx.x & 3) + (e & 1); }

// The operands of each GEMM, shared by the f32 kernels and their bf16 twins.
// Forward, parity ab: A = im2col_ab(x) (rows = input-grid pixels), B = w[a][b].
DEVICE void forward_operands(PixelRows& la, DenseRows& lb, const float* x, const float* w, int ab, int m0, int n0,
                             int n, int h, int wd, int c, int k, int x_pitch, int flags) {
    la.src = Source{x, x_pitch, c, h, wd, 0, ab >> 1, ab & 1};
    la.kg = 4 * c;
    la.vec = (flags & VEC_A) != 0;
    la.init(m0, n * h * wd, h, wd);
    lb.p = w + ab * 4 * c * k, lb.rows = 4 * c, lb.cols = k, lb.ld = k, lb.n0 = n0;
    lb.vec = (flags & VEC_B) != 0;
}
// Input gradient: A = the 16-tap gather of dy, B = the weight blocks transposed.
DEVICE void data_grad_operands(PixelRows& la, WeightT& lb, const float* dy, const float* w, int m0, int n0, int n,
                               int h, int wd, int c, int k, int y_pitch, int flags) {
    la.src = Source{dy, y_pitch, k, 2 * h, 2 * wd, 2, 0, 0};
    la.kg = 16 * k;
    la.vec = (flags & VEC_A) != 0;
    la.init(m0, n * h * wd, h, wd);
    lb.p = w, lb.c_total = c, lb.k_total = k, lb.n0 = n0;
    lb.vec = (flags & VEC_B) != 0;
}
// Weight gradient of parity ab over grid pixels [.., p_end): A = im2col_ab(x)ᵀ,
// B = dy of the parity.
DEVICE void filter_grad_operands(PixelCols& la, PixelCols& lb, const float* x, const float* dy, int ab, int m0,
                                 int n0, int p_end, int h, int wd, int c, int k, int x_pitch, int y_pitch, int flags) {
    la.src = Source{x, x_pitch, c, h, wd, 0, ab >> 1, ab & 1};
    la.gh = h, la.gw = wd, la.p_end = p_end;
    la.vec = (flags & VEC_A) != 0;
    la.init(m0, 4 * c);
    lb.src = Source{dy, y_pitch, k, 2 * h, 2 * wd, 1, ab >> 1, ab & 1};
    lb.gh = h, lb.gw = wd, lb.p_end = p_end;
    lb.vec = (flags & VEC_B) != 0;
    lb.init(n0, k);
}

// Forward, one parity per blockIdx.z: y[n, 2i+a, 2j+b, k] = act(b[k] + Σ A·w[a][b]).
// x [N,H,W,C] x_pitch apart, y [N,2H,2W,K] y_pitch apart, w [2][2][2][2][C][K], bias [K].
KERNEL(deconv_fwd_f32)(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                       const float* __restrict__ bias, int n, int h, int wd, int c, int k, int x_pitch,
                       int y_pitch, int relu, int flags) {
    SHARED(float, as, [2 * STAGE]);
    SHARED(float, bs, [2 * STAGE]);
    const int ab = blockIdx.z, a = ab >> 1, b = ab & 1;
    const int m0 = blockIdx.x * TILE, n0 = blockIdx.y * TILE, m_total = n * h * wd;
    PixelRows la;
    DenseRows lb;
    forward_operands(la, lb, x, w, ab, m0, n0, n, h, wd, c, k, x_pitch, flags);
    float acc[4][4];
    gemm_tile(acc, la, lb, 0, 4 * c, as, bs);

    const int tm = threadIdx.x >> 4, k_first = n0 + 4 * (threadIdx.x & 15);
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
EMU_EXPORT(deconv_fwd_f32)

// deconv_fwd_f32 with bf16 products on tensor cores (gemm_tile_bf16): same arguments,
// grid and block; for inference (`Precision::Bf16`), within ~1e-3 of f32.
KERNEL(deconv_fwd_bf16)(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                        const float* __restrict__ bias, int n, int h, int wd, int c, int k, int x_pitch,
                        int y_pitch, int relu, int flags) {
    SHARED(u16, as, [2 * STAGE16]);
    SHARED(u16, bs, [2 * STAGE16]);
    const int ab = blockIdx.z, a = ab >> 1, b = ab & 1;
    const int m0 = blockIdx.x * TILE, n0 = blockIdx.y * TILE, m_total = n * h * wd;
    PixelRows la;
    DenseRows lb;
    forward_operands(la, lb, x, w, ab, m0, n0, n, h, wd, c, k, x_pitch, flags);
    float acc[4][4];
    gemm_tile_bf16(acc, la, lb, 0, 4 * c, as, bs);

#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int m = m0 + bf16_row(e), col = n0 + bf16_col(j, e);
            if (m >= m_total || col >= k) continue;
            int base, pi, pj;
            split_pixel(m, h, wd, 2 * h, 2 * wd, base, pi, pj);
            float z = acc[j][e] + bias[col];
            // `<=` keeps a NaN (as the CPU reference does) instead of clamping it.
            if (relu && z <= 0.0f) z = 0.0f;
            y[(base + (2 * pi + a) * 2 * wd + 2 * pj + b) * y_pitch + col] = z;
        }
    }
}
EMU_EXPORT(deconv_fwd_bf16)

// Input gradient: dx[n,i,j,c] (=|+=) Σ_{t,k} dy[n, 2i+oy_t, 2j+ox_t, k] · w[t][c][k], the
// 16 taps t = (a,b,ty,tx) of tap_offset mode 2. One thread writes each element.
KERNEL(deconv_bwd_data_f32)(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                            int n, int h, int wd, int c, int k, int x_pitch, int y_pitch, int add, int flags) {
    SHARED(float, as, [2 * STAGE]);
    SHARED(float, bs, [2 * STAGE]);
    const int m0 = blockIdx.x * TILE, n0 = blockIdx.y * TILE, m_total = n * h * wd;
    PixelRows la;
    WeightT lb;
    data_grad_operands(la, lb, dy, w, m0, n0, n, h, wd, c, k, y_pitch, flags);
    float acc[4][4];
    gemm_tile(acc, la, lb, 0, 16 * k, as, bs);

    const int tm = threadIdx.x >> 4, c_first = n0 + 4 * (threadIdx.x & 15);
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
EMU_EXPORT(deconv_bwd_data_f32)

// Weight gradient, split-K: blockIdx.z = chunk·4 + parity; the block reduces grid
// pixels [chunk·chunk_len, min(M, +chunk_len)) and writes its [4C][K] tile of
// part[chunk][parity] (every element, zeros included, so no clearing is needed).
KERNEL(deconv_bwd_filter_f32)(float* __restrict__ part, const float* __restrict__ dy, const float* __restrict__ x,
                              int n, int h, int wd, int c, int k, int x_pitch, int y_pitch, int chunk_len,
                              int flags) {
    SHARED(float, as, [2 * STAGE]);
    SHARED(float, bs, [2 * STAGE]);
    const int ab = blockIdx.z & 3, chunk = blockIdx.z >> 2;
    const int m0 = blockIdx.x * TILE, n0 = blockIdx.y * TILE, m_total = n * h * wd;
    const int p0 = chunk * chunk_len, p1 = min(m_total, p0 + chunk_len);
    PixelCols la, lb;
    filter_grad_operands(la, lb, x, dy, ab, m0, n0, p1, h, wd, c, k, x_pitch, y_pitch, flags);
    float acc[4][4];
    gemm_tile(acc, la, lb, p0, p1, as, bs);

    const int tm = threadIdx.x >> 4, k_first = n0 + 4 * (threadIdx.x & 15);
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
EMU_EXPORT(deconv_bwd_filter_f32)

// deconv_bwd_data_f32 on tensor cores (gemm_tile_bf16): same arguments and grid.
KERNEL(deconv_bwd_data_bf16)(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                             int n, int h, int wd, int c, int k, int x_pitch, int y_pitch, int add, int flags) {
    SHARED(u16, as, [2 * STAGE16]);
    SHARED(u16, bs, [2 * STAGE16]);
    const int m0 = blockIdx.x * TILE, n0 = blockIdx.y * TILE, m_total = n * h * wd;
    PixelRows la;
    WeightT lb;
    data_grad_operands(la, lb, dy, w, m0, n0, n, h, wd, c, k, y_pitch, flags);
    float acc[4][4];
    gemm_tile_bf16(acc, la, lb, 0, 16 * k, as, bs);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int m = m0 + bf16_row(e), ch = n0 + bf16_col(j, e);
            if (m >= m_total || ch >= c) continue;
            float* out = dx + m * x_pitch + ch;
            *out = add ? *out + acc[j][e] : acc[j][e];
        }
    }
}
EMU_EXPORT(deconv_bwd_data_bf16)

// deconv_bwd_filter_f32 on tensor cores (gemm_tile_bf16): same arguments, grid and
// partial layout (every element of the tile inside [4C][K] written).
KERNEL(deconv_bwd_filter_bf16)(float* __restrict__ part, const float* __restrict__ dy, const float* __restrict__ x,
                               int n, int h, int wd, int c, int k, int x_pitch, int y_pitch, int chunk_len,
                               int flags) {
    SHARED(u16, as, [2 * STAGE16]);
    SHARED(u16, bs, [2 * STAGE16]);
    const int ab = blockIdx.z & 3, chunk = blockIdx.z >> 2;
    const int m0 = blockIdx.x * TILE, n0 = blockIdx.y * TILE, m_total = n * h * wd;
    const int p0 = chunk * chunk_len, p1 = min(m_total, p0 + chunk_len);
    PixelCols la, lb;
    filter_grad_operands(la, lb, x, dy, ab, m0, n0, p1, h, wd, c, k, x_pitch, y_pitch, flags);
    float acc[4][4];
    gemm_tile_bf16(acc, la, lb, p0, p1, as, bs);
    float* out = part + (chunk * 4 + ab) * 4 * c * k;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = m0 + bf16_row(e), col = n0 + bf16_col(j, e);
            if (row < 4 * c && col < k) out[row * k + col] = acc[j][e];
        }
    }
}
EMU_EXPORT(deconv_bwd_filter_bf16)

// Bias gradient partials: part[chunk·K + k] = Σ dy[p, k] over output pixels
// p ∈ [chunk·chunk_len, +chunk_len). Block 256 = 32 channels x 8 pixel lanes
// (a warp reads 32 consecutive channels of one pixel); grid (⌈K/32⌉, chunks).
// Each lane sums pixels lane, lane+8, … in order, then the 8 lanes are added in
// lane order: a fixed summation order.
KERNEL(deconv_bias_grad_f32)(float* __restrict__ part, const float* __restrict__ dy, int pixels, int k,
                             int y_pitch, int chunk_len) {
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
EMU_EXPORT(deconv_bias_grad_f32)

// out[i] = part[i] + part[L + i] + … + part[(S-1)·L + i], in chunk order; one thread
// per element (grid-stride), so each sum has one fixed order.
KERNEL(deconv_sum_partials_f32)(float* __restrict__ out, const float* __restrict__ part, int len, int chunks) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        float s = part[i];
        for (int c = 1; c < chunks; ++c) s += part[c * len + i];
        out[i] = s;
    }
}
EMU_EXPORT(deconv_sum_partials_f32)

// dy[p, k] = 0 where y[p, k] <= 0, over `pixels` pixels of K channels `pitch` apart;
// one thread per element. A NaN y keeps its gradient, as in the CPU reference.
KERNEL(deconv_relu_mask_f32)(float* __restrict__ dy, const float* __restrict__ y, int pixels, int k, int pitch) {
    const int total = pixels * k;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        const int p = e / k, off = p * pitch + (e - p * k);
        if (y[off] <= 0.0f) dy[off] = 0.0f;
    }
}
EMU_EXPORT(deconv_relu_mask_f32)
