// conv2d.cuh — the operands of the R×R "same" convolution as implicit GEMM, shared by
// conv2d.cu (f32 products) and conv2d_mma.cu (tensor cores): the gathers that read
// the im2col matrix straight from NHWC memory, and the tile engine's loaders
// (tile.cuh) built on them. Formulas: the header of conv2d.cu.
//
// Loaders (T: the engine; each thread's elements follow from T's shape):
//   ConvGather<T>          A of the forward pass and the input gradient: rows =
//                          pixels, reduction kg = tap·ch + channel of the gathered
//                          activation (x, or the masked dy)
//   ConvWeight<T>          B of the forward pass: w[kg][K], row-major
//   ConvWeightFlip<T>      B of the input gradient: w'[kg][c] = w[R·R-1-tap][c][k],
//                          kg = tap·K + k (flipped taps, transposed)
//   ConvFilterRows<T>      A of the weight gradient: rows (tap, c) × pixels, im2col(x)ᵀ
//   ConvFilterCols<T, DB>  B of the weight gradient: pixels × channels of dy; with DB
//                          it also sums what it loads (the bias gradient)
#pragma once

#include "tile.cuh"

// A row "far outside the image": any tap offset keeps it out of [0, H), so pixels past
// the end load zeros through the same bounds test as the padding (no extra branch).
#define CONV_FAR (-(1 << 30))

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

namespace {

// A of the forward pass and the input gradient: im2col(act)[pixel][kg] for the
// block's BM pixels from m0. LANES = BK/4 adjacent threads share a pixel, one
// reduction quad each: thread t gathers quad kq = 4·(t % LANES) of every slice for
// the ROWS pixels m0 + t/LANES + PASS·j. On the vector path a pixel's slice (BK
// channels of one tap when ch % BK == 0) is then one contiguous 16·LANES-byte read by
// adjacent lanes (128 bytes with BK = 32: whole sectors). The index arithmetic is out
// of the K-loop: each pixel's element offset and a bit mask of the taps whose
// neighbour lies inside the image are computed once; the thread's quad (tap, tap
// column, channel, element offset from the pixel) is stepped by BK after each fetch
// and shared by its ROWS pixels, so a vector fetch is a bit test and a load per
// pixel. The scalar path decodes its quad's 4 elements once per slice (divisions)
// and reuses them for every pixel. R·R <= 32 (the mask's bits; the launcher allows
// R = 1 or 3).
template <class T>
struct ConvGather {
    static constexpr int LANES = T::BK / 4, PASS = T::THREADS / LANES, ROWS = T::BM / PASS;
    static_assert(T::BK % 4 == 0 && T::THREADS % LANES == 0 && T::BM % PASS == 0, "whole pixel rows per pass");
    const float* act;
    int W, R, ch, pitch, Kg;
    bool vec;
    int row, kq;            // first tile row (pixel) and the reduction quad in a slice
    int pbase[ROWS];        // each pixel's element offset
    u32 inside[ROWS];       // bit tap: that neighbour is in the image (0 past the end)
    int tap, ts, c, off;    // vector path: the quad's tap, tap column, channel, offset
    float4 v[ROWS];

    // act: N·H·W pixels of `channels`, `a_pitch` apart; R×R taps.
    MEMBER ConvGather(const float* a, int m0, int N, int H, int w, int r, int channels, int a_pitch, bool vec_)
        : act(a), W(w), R(r), ch(channels), pitch(a_pitch), Kg(r * r * channels), vec(vec_) {
        const int t = threadIdx.x, pad = r >> 1;
        row = t / LANES;
        kq = 4 * (t % LANES);
#pragma unroll
        for (int j = 0; j < ROWS; ++j) {
            const int m = m0 + row + PASS * j;
            pbase[j] = 0, inside[j] = 0;
            if (m < N * H * W) {
                const int pw = m % W, ph = (m / W) % H;
                pbase[j] = m * pitch;
                for (int tr = 0; tr < R; ++tr)
                    for (int tc = 0; tc < R; ++tc)
                        if ((unsigned)(ph + tr - pad) < (unsigned)H && (unsigned)(pw + tc - pad) < (unsigned)W)
                            inside[j] |= 1u << (tr * R + tc);
            }
        }
        tap = ch > 0 ? kq / ch : 0;
        c = kq - tap * ch;
        const int tr = R > 0 ? tap / R : 0;
        ts = tap - tr * R;
        off = ((tr - pad) * W + ts - pad) * pitch + c;
    }
    MEMBER void fetch(int k0) {
        if (vec) {
            // ch % 4 == 0 and kq % 4 == 0: the quad is 4 channels of one tap; past the
            // last tap (Kg % 4 == 0) it is zero.
            const bool live = tap < R * R;
#pragma unroll
            for (int j = 0; j < ROWS; ++j)
                v[j] = live && ((inside[j] >> tap) & 1u) ? ld4(act + pbase[j] + off) : zero4();
            c += T::BK, off += T::BK;
            while (c >= ch) {
                c -= ch, ++tap;
                // The next tap: one pixel right, or the first column of the next row.
                if (++ts == R) {
                    ts = 0, off += (W - R + 1) * pitch - ch;
                } else {
                    off += pitch - ch;
                }
            }
        } else {
            const int pad = R >> 1;
            int o[4];
            u32 bit[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int kg = k0 + kq + e;
                o[e] = 0, bit[e] = 0;
                if (kg < Kg) {
                    const int tp = kg / ch, tr = tp / R, tc = tp - tr * R;
                    o[e] = ((tr - pad) * W + tc - pad) * pitch + kg - tp * ch;
                    bit[e] = 1u << tp;
                }
            }
#pragma unroll
            for (int j = 0; j < ROWS; ++j) {
                float x[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) x[e] = inside[j] & bit[e] ? act[pbase[j] + o[e]] : 0.0f;
                v[j] = make_float4(x[0], x[1], x[2], x[3]);
            }
        }
    }
    MEMBER void put(typename T::Elem* s) const {
#pragma unroll
        for (int j = 0; j < ROWS; ++j) T::A::put4_k(s, kq, row + PASS * j, v[j]);
    }
};

// B of the forward pass: w[kg][n], row-major [Kg][K], for the block's BN channels from
// n0. TPK threads share a reduction row of a slice: thread t reads row t/TPK, QUADS
// quads of channels 4·(t%TPK) + 4·TPK·j (TPK adjacent threads read 16·TPK contiguous
// bytes of a weight row).
template <class T>
struct ConvWeight {
    static constexpr int TPK = T::THREADS / T::BK, QUADS = T::BN / (4 * TPK);
    static_assert(T::THREADS % T::BK == 0 && QUADS >= 1, "whole quads per thread");
    const float* w;
    int Kg, K, n0;
    bool vec;
    int k, n;  // this thread's slice row and first tile column
    float4 v[QUADS];

    MEMBER ConvWeight(const float* w_, int n0_, int Kg_, int K_, bool vec_)
        : w(w_), Kg(Kg_), K(K_), n0(n0_), vec(vec_), k(threadIdx.x / TPK), n(4 * (threadIdx.x % TPK)) {}
    MEMBER void fetch(int k0) {
#pragma unroll
        for (int j = 0; j < QUADS; ++j) v[j] = weight_row4(w, k0 + k, Kg, n0 + n + 4 * TPK * j, K, vec);
    }
    MEMBER void put(typename T::Elem* s) const {
#pragma unroll
        for (int j = 0; j < QUADS; ++j) T::B::put4_i(s, k, n + 4 * TPK * j, v[j]);
    }
};

// B of the input gradient: w'[kg][c] for the block's BN channels from n0. A column's
// slice (BK consecutive k of one tap when K % BK == 0) is contiguous in w: LANES =
// BK/4 adjacent threads read it, one reduction quad each (128 contiguous bytes with
// BK = 32), stored down the column. Thread t has quad kq = 4·(t % LANES) of COLS
// columns of group g = t / LANES: g + GROUPS·j, or, with PAIRS (bf16 stages), the
// adjacent pairs 2g, 2g+1 (+ 2·GROUPS·i), whose elements it stores as one 4-byte word
// per reduction element (put4_k2: a warp's stores are conflict-free, see SwizzledStage).
// The quad's (tap, k, offset) is stepped by BK after each fetch (vector path); the
// scalar path decodes its 4 elements once per slice.
template <class T>
struct ConvWeightFlip {
    static constexpr int LANES = T::BK / 4, GROUPS = T::THREADS / LANES, COLS = T::BN / GROUPS;
    static constexpr bool PAIRS = sizeof(typename T::Elem) == 2 && COLS % 2 == 0;
    static_assert(T::BK % 4 == 0 && T::THREADS % LANES == 0 && T::BN % GROUPS == 0 && COLS <= 32,
                  "whole columns per thread");
    const float* w;
    int Kg, C, K, RR;
    bool vec;
    int n0, col, kq;      // the tile's first channel; this thread's first column and quad
    u32 cols;             // bit j: column j is inside C
    int tap, k, off;      // vector path: the quad's tap, k, and w offset of column 0
    float4 v[COLS];

    // Column j relative to the thread's first.
    MEMBER static constexpr int delta(int j) { return PAIRS ? (j & 1) + 2 * GROUPS * (j >> 1) : GROUPS * j; }

    // w: [R·R][C][K]; the reduction runs over R·R·K.
    MEMBER ConvWeightFlip(const float* w_, int n0_, int C_, int K_, int R, bool vec_)
        : w(w_), Kg(R * R * K_), C(C_), K(K_), RR(R * R), vec(vec_), n0(n0_) {
        const int t = threadIdx.x, g = t / LANES;
        col = PAIRS ? 2 * g : g;
        kq = 4 * (t % LANES);
        cols = 0;
#pragma unroll
        for (int j = 0; j < COLS; ++j)
            if (n0 + col + delta(j) < C) cols |= 1u << j;
        tap = K > 0 ? kq / K : 0;
        k = kq - tap * K;
        off = ((RR - 1 - tap) * C + n0 + col) * K + k;
    }
    MEMBER void fetch(int k0) {
        if (vec) {
            const bool live = tap < RR;
#pragma unroll
            for (int j = 0; j < COLS; ++j)
                v[j] = live && ((cols >> j) & 1u) ? ld4(w + off + delta(j) * K) : zero4();
            k += T::BK, off += T::BK;
            // The next tap is the previous block of w (flipped): C·K back, and k wraps.
            while (k >= K) k -= K, ++tap, off -= (C + 1) * K;
        } else {
            int o[4];
            bool live[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int kg = k0 + kq + e, tp = kg / K;
                live[e] = kg < Kg;
                o[e] = ((RR - 1 - tp) * C + n0 + col) * K + kg - tp * K;
            }
#pragma unroll
            for (int j = 0; j < COLS; ++j) {
                float x[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) x[e] = live[e] && ((cols >> j) & 1u) ? w[o[e] + delta(j) * K] : 0.0f;
                v[j] = make_float4(x[0], x[1], x[2], x[3]);
            }
        }
    }
    MEMBER void put(typename T::Elem* s) const {
        if constexpr (PAIRS) {
#pragma unroll
            for (int j = 0; j < COLS; j += 2) T::B::put4_k2(s, kq, col + delta(j), v[j], v[j + 1]);
        } else {
#pragma unroll
            for (int j = 0; j < COLS; ++j) T::B::put4_k(s, kq, col + delta(j), v[j]);
        }
    }
};

// The pixel slots of the weight-gradient loaders: LANES adjacent threads share a
// pixel, thread t has the PIX pixels p0 + t/LANES + PASS·j of the slice from p0.
template <int THREADS, int LANES, int BK>
struct PixelSlots {
    static constexpr int PASS = THREADS / LANES, PIX = BK / PASS;
    static_assert(THREADS % LANES == 0 && BK % PASS == 0, "whole pixels per pass");
    MEMBER static int pix() { return threadIdx.x / LANES; }
};

// A of the weight gradient: im2col(x)ᵀ, rows = the block's BM filter rows (tap, c) from
// row0, reduction = pixels [p_begin, p_end). LANES = BM/4 adjacent threads share a
// pixel, one row quad each (rq = 4·(t % LANES), fixed for the whole reduction): on the
// vector path a pixel's 64 rows are 64 channels of one tap when C % 64 == 0, one
// contiguous 256-byte read. The quad's taps are decoded once (every element's, 12
// registers: the scalar path then divides nothing; the vector path uses element 0's).
// With several pixels per thread (STEP) each slot's image coordinates are kept and
// stepped by BK pixels after each fetch, no division in the K-loop; with one (the f32
// kernel, whose 64-register budget has no room for them) they are divided out per
// fetch. Past Kg, dr is CONV_FAR: it fails every bounds test.
template <class T>
struct ConvFilterRows {
    static constexpr int LANES = T::BM / 4;
    typedef PixelSlots<T::THREADS, LANES, T::BK> Slots;
    static constexpr int PASS = Slots::PASS, PIX = Slots::PIX;
    static constexpr bool STEP = PIX > 1;
    const float* x;
    int H, W, pitch, p_end;
    bool vec;
    int pix, rq;                   // this thread's first pixel in a slice and tile row
    int off[4], dr[4], ds[4];      // the quad's elements
    int ph[PIX], pw[PIX];          // each slot's pixel in its image (next fetch; STEP)
    int step_h, step_w;            // BK pixels as whole rows and the rest (STEP)
    float4 v[PIX];

    MEMBER ConvFilterRows(const float* x_, int row0, int p_begin, int p_end_, int h, int w, int r, int c,
                          int x_pitch, bool vec_)
        : x(x_), H(h), W(w), pitch(x_pitch), p_end(p_end_), vec(vec_) {
        pix = Slots::pix();
        rq = 4 * (threadIdx.x % LANES);
        const int Kg = r * r * c;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int kg = row0 + rq + e;
            off[e] = 0, dr[e] = CONV_FAR, ds[e] = 0;
            if (kg < Kg) {
                const ConvTap tp = conv_tap(kg, c, r);
                off[e] = (tp.dr * W + tp.ds) * pitch + tp.ch;
                dr[e] = tp.dr, ds[e] = tp.ds;
            }
        }
        if constexpr (STEP) {
            step_h = W > 0 ? T::BK / W : 0;
            step_w = T::BK - step_h * W;
#pragma unroll
            for (int j = 0; j < PIX; ++j) locate(p_begin + pix + PASS * j, j);
        }
    }
    // Slot j's coordinates from its pixel p.
    MEMBER void locate(int p, int j) {
        pw[j] = W > 0 ? p % W : 0;
        ph[j] = W > 0 && H > 0 ? (p / W) % H : 0;
    }
    MEMBER bool inside(int j, int e) const {
        return (unsigned)(ph[j] + dr[e]) < (unsigned)H && (unsigned)(pw[j] + ds[e]) < (unsigned)W;
    }
    MEMBER void fetch(int p0) {
#pragma unroll
        for (int j = 0; j < PIX; ++j) {
            const int p = p0 + pix + PASS * j;
            v[j] = zero4();
            if constexpr (!STEP) locate(p, j);
            if (p < p_end) {
                const float* xp = x + p * pitch;
                if (vec) {
                    if (inside(j, 0)) v[j] = ld4(xp + off[0]);
                } else {
                    float e4[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e) e4[e] = inside(j, e) ? xp[off[e]] : 0.0f;
                    v[j] = make_float4(e4[0], e4[1], e4[2], e4[3]);
                }
            }
            if constexpr (STEP) {
                // The slot's pixel BK further on (wrapping into the next image).
                pw[j] += step_w, ph[j] += step_h;
                if (pw[j] >= W) pw[j] -= W, ++ph[j];
                while (ph[j] >= H && H > 0) ph[j] -= H;
            }
        }
    }
    MEMBER void put(typename T::Elem* s) const {
#pragma unroll
        for (int j = 0; j < PIX; ++j) T::A::put4_i(s, pix + PASS * j, rq, v[j]);
    }
};

// B of the weight gradient: dy, pixels [.., p_end) × the block's BN channels from k0;
// LANES = BN/4 adjacent threads share a pixel (channels k0 + 4·(t % LANES)..+3, a
// pixel's 64 channels one contiguous 256-byte read), slots as ConvFilterRows'. With
// DB, put also adds every value it stores, in f32, into db[e] (channel
// k0 + 4·(t % LANES) + e): this thread's share of the bias gradient, slots in order.
template <class T, bool DB>
struct ConvFilterCols {
    static constexpr int LANES = T::BN / 4;
    typedef PixelSlots<T::THREADS, LANES, T::BK> Slots;
    static constexpr int PASS = Slots::PASS, PIX = Slots::PIX;
    const float* dy;
    int K, pitch, p_end, k0;
    bool vec;
    int pix, n;  // this thread's first pixel in a slice and tile column
    float4 v[PIX];
    float db[4];

    MEMBER ConvFilterCols(const float* dy_, int k0_, int p_end_, int K_, int y_pitch, bool vec_)
        : dy(dy_), K(K_), pitch(y_pitch), p_end(p_end_), k0(k0_), vec(vec_) {
        pix = Slots::pix();
        n = 4 * (threadIdx.x % LANES);
#pragma unroll
        for (int e = 0; e < 4; ++e) db[e] = 0.0f;
    }
    MEMBER void fetch(int p0) {
#pragma unroll
        for (int j = 0; j < PIX; ++j) {
            const int p = p0 + pix + PASS * j;
            v[j] = p < p_end ? channel_quad(dy + p * pitch, k0 + n, K, vec) : zero4();
        }
    }
    MEMBER void put(typename T::Elem* s) {
#pragma unroll
        for (int j = 0; j < PIX; ++j) {
            T::B::put4_i(s, pix + PASS * j, n, v[j]);
            if constexpr (DB) {
                db[0] += v[j].x, db[1] += v[j].y, db[2] += v[j].z, db[3] += v[j].w;
            }
        }
    }
};

}  // namespace
