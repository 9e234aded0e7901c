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
//   ConvWeightFlip<T, TPC> B of the input gradient: w'[kg][c] = w[R·R-1-tap][c][k],
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

namespace {

// A of the forward pass and the input gradient: im2col(act)[pixel][kg] for the
// block's BM pixels from m0. TPR threads share a pixel; thread t gathers pixel
// m0 + t/TPR, QUADS consecutive quads from reduction element 4·QUADS·(t%TPR) of each
// slice, decoded once. On the vector path each quad is 4 channels of one tap, whose
// (tap row, tap column, channel) is stepped by BK after every fetch (integer division
// costs dozens of instructions on a GPU); the scalar path divides (gather4).
template <class T>
struct ConvGather {
    static constexpr int TPR = T::THREADS / T::BM, QUADS = T::BK / (4 * TPR);
    static_assert(T::THREADS % T::BM == 0 && QUADS >= 1, "whole quads per thread");
    const float* act;
    int H, W, R, ch, pitch, Kg;
    bool vec;
    int row, kq;          // tile row (pixel) and first reduction element in a slice
    int ph, pw, pbase;    // the pixel; ph CONV_FAR past the end (every load is zero)
    int tr[QUADS], ts[QUADS], c[QUADS];
    float4 v[QUADS];

    // act: N·H·W pixels of `channels`, `a_pitch` apart; R×R taps.
    MEMBER ConvGather(const float* a, int m0, int N, int h, int w, int r, int channels, int a_pitch, bool vec_)
        : act(a), H(h), W(w), R(r), ch(channels), pitch(a_pitch), Kg(r * r * channels), vec(vec_) {
        const int t = threadIdx.x;
        row = t / TPR;
        kq = (t % TPR) * 4 * QUADS;
        const int m = m0 + row;
        ph = CONV_FAR, pw = 0, pbase = 0;
        if (m < N * H * W) {
            pw = m % W;
            ph = (m / W) % H;
            pbase = m * pitch;
        }
#pragma unroll
        for (int j = 0; j < QUADS; ++j) {
            const int kg = kq + 4 * j, tap = kg / ch;
            c[j] = kg - tap * ch;
            tr[j] = tap / R;
            ts[j] = tap - tr[j] * R;
        }
    }
    MEMBER void fetch(int k0) {
#pragma unroll
        for (int j = 0; j < QUADS; ++j) {
            if (vec) {
                v[j] = gather4_tap(act, pbase, ph, pw, tr[j], ts[j], c[j], R, H, W, pitch);
                step_tap(tr[j], ts[j], c[j], ch, R, T::BK);
            } else {
                v[j] = gather4(act, pbase, ph, pw, k0 + kq + 4 * j, Kg, ch, R, H, W, pitch, false);
            }
        }
    }
    MEMBER void put(typename T::Elem* s) const {
        if constexpr (T::A::PAIRS) {
            // Whole 16-byte chunks (kq is a multiple of 8): see the stage's layout.
            static_assert(QUADS % 2 == 0, "quads in pairs");
#pragma unroll
            for (int j = 0; j < QUADS; j += 2) T::A::put8_k(s, kq + 4 * j, row, v[j], v[j + 1]);
        } else {
#pragma unroll
            for (int j = 0; j < QUADS; ++j) T::A::put4_k(s, kq + 4 * j, row, v[j]);
        }
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

// B of the input gradient: w'[kg][c] (wflip4) for the block's BN channels from n0.
// Quads run along the reduction (contiguous in w) and are stored down a column. TPC
// threads side by side share a column: thread t reads column (t/TPC) % BN, quads
// q0 + (THREADS/BN)·j of each slice, q0 = t%TPC + TPC·(t / (TPC·BN)). TPC = 4: a
// column's 16 reduction elements are one 64-byte read; TPC = 1: a warp's stores fill
// one shared row.
template <class T, int TPC>
struct ConvWeightFlip {
    static constexpr int GROUPS = T::THREADS / (TPC * T::BN), QUADS = T::BK / 4 / (TPC * GROUPS);
    static_assert(T::THREADS % (TPC * T::BN) == 0 && QUADS >= 1, "whole quads per thread");
    const float* w;
    int Kg, C, K, RR, n0;
    bool vec;
    int col, kq;  // tile column; first reduction element of this thread in a slice
    float4 v[QUADS];

    // w: [R·R][C][K]; the reduction runs over R·R·K.
    MEMBER ConvWeightFlip(const float* w_, int n0_, int C_, int K_, int R, bool vec_)
        : w(w_), Kg(R * R * K_), C(C_), K(K_), RR(R * R), n0(n0_), vec(vec_) {
        const int t = threadIdx.x;
        col = (t / TPC) % T::BN;
        kq = 4 * (t % TPC + TPC * (t / (TPC * T::BN)));
    }
    MEMBER void fetch(int k0) {
#pragma unroll
        for (int j = 0; j < QUADS; ++j) v[j] = wflip4(w, k0 + kq + 4 * TPC * GROUPS * j, Kg, n0 + col, C, K, RR, vec);
    }
    MEMBER void put(typename T::Elem* s) const {
#pragma unroll
        for (int j = 0; j < QUADS; ++j) T::B::put4_k(s, kq + 4 * TPC * GROUPS * j, col, v[j]);
    }
};

// A of the weight gradient: im2col(x)ᵀ, rows = the block's BM filter rows (tap, c) from
// row0, reduction = pixels [.., p_end). Thread t reads pixel t/TPK of each slice and
// the QUADS row quads 4·(t%TPK) + 4·TPK·j, fixed for the whole reduction, so their
// taps are decoded once: every element's (12 registers) for a one-quad loader, which
// then needs no division on the scalar path either; a wider loader decodes each quad
// for the vector path and divides on the scalar path (gather4). Past Kg, dr is
// CONV_FAR: it fails every bounds test.
template <class T>
struct ConvFilterRows {
    static constexpr int TPK = T::THREADS / T::BK, QUADS = T::BM / (4 * TPK);
    static constexpr bool PER_ELEMENT = QUADS == 1;
    static constexpr int NDEC = PER_ELEMENT ? 4 : QUADS;
    static_assert(T::THREADS % T::BK == 0 && QUADS >= 1, "whole quads per thread");
    const float* x;
    int H, W, R, C, pitch, Kg, p_end, row0;
    bool vec;
    int pix, rq;  // this thread's pixel in a slice and first tile row
    int off[NDEC], dr[NDEC], ds[NDEC];
    float4 v[QUADS];

    MEMBER ConvFilterRows(const float* x_, int row0_, int p_end_, int h, int w, int r, int c, int x_pitch, bool vec_)
        : x(x_), H(h), W(w), R(r), C(c), pitch(x_pitch), Kg(r * r * c), p_end(p_end_), row0(row0_), vec(vec_) {
        pix = threadIdx.x / TPK;
        rq = 4 * (threadIdx.x % TPK);
#pragma unroll
        for (int d = 0; d < NDEC; ++d) {
            const int kg = row0 + rq + (PER_ELEMENT ? d : 4 * TPK * d);
            off[d] = 0, dr[d] = CONV_FAR, ds[d] = 0;
            if ((PER_ELEMENT || vec) && kg < Kg) {
                const ConvTap tp = conv_tap(kg, C, R);
                off[d] = (tp.dr * W + tp.ds) * pitch + tp.ch;
                dr[d] = tp.dr, ds[d] = tp.ds;
            }
        }
    }
    MEMBER bool inside(int ph, int pw, int d) const {
        return (unsigned)(ph + dr[d]) < (unsigned)H && (unsigned)(pw + ds[d]) < (unsigned)W;
    }
    MEMBER void fetch(int p0) {
        const int p = p0 + pix;
#pragma unroll
        for (int j = 0; j < QUADS; ++j) v[j] = zero4();
        if (p >= p_end) return;
        const int pw = p % W, ph = (p / W) % H;
        const float* xp = x + p * pitch;
#pragma unroll
        for (int j = 0; j < QUADS; ++j) {
            const int d = PER_ELEMENT ? 0 : j;  // the quad's first element
            if (vec) {
                if (inside(ph, pw, d)) v[j] = ld4(xp + off[d]);
            } else if constexpr (PER_ELEMENT) {
                float e[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) e[i] = inside(ph, pw, i) ? xp[off[i]] : 0.0f;
                v[j] = make_float4(e[0], e[1], e[2], e[3]);
            } else {
                v[j] = gather4(x, p * pitch, ph, pw, row0 + rq + 4 * TPK * j, Kg, C, R, H, W, pitch, false);
            }
        }
    }
    MEMBER void put(typename T::Elem* s) const {
#pragma unroll
        for (int j = 0; j < QUADS; ++j) T::A::put4_i(s, pix, rq + 4 * TPK * j, v[j]);
    }
};

// B of the weight gradient: dy, pixels [.., p_end) × the block's BN channels from k0;
// the same thread mapping as ConvFilterRows (pixel t/TPK, quads 4·(t%TPK) + 4·TPK·j).
// With DB, put also adds every value it stores, in f32, into db[j][e] (channel
// k0 + 4·(t%TPK) + 4·TPK·j + e): this thread's share of the bias gradient, in pixel
// order.
template <class T, bool DB>
struct ConvFilterCols {
    static constexpr int TPK = T::THREADS / T::BK, QUADS = T::BN / (4 * TPK);
    static_assert(T::THREADS % T::BK == 0 && QUADS >= 1, "whole quads per thread");
    const float* dy;
    int K, pitch, p_end, k0;
    bool vec;
    int pix, n;  // this thread's pixel in a slice and first tile column
    float4 v[QUADS];
    float db[DB ? QUADS : 1][4];

    MEMBER ConvFilterCols(const float* dy_, int k0_, int p_end_, int K_, int y_pitch, bool vec_)
        : dy(dy_), K(K_), pitch(y_pitch), p_end(p_end_), k0(k0_), vec(vec_) {
        pix = threadIdx.x / TPK;
        n = 4 * (threadIdx.x % TPK);
#pragma unroll
        for (int j = 0; j < (DB ? QUADS : 1); ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) db[j][e] = 0.0f;
    }
    MEMBER void fetch(int p0) {
        const int p = p0 + pix;
#pragma unroll
        for (int j = 0; j < QUADS; ++j) v[j] = zero4();
        if (p >= p_end) return;
#pragma unroll
        for (int j = 0; j < QUADS; ++j) v[j] = channel_quad(dy + p * pitch, k0 + n + 4 * TPK * j, K, vec);
    }
    MEMBER void put(typename T::Elem* s) {
#pragma unroll
        for (int j = 0; j < QUADS; ++j) {
            T::B::put4_i(s, pix, n + 4 * TPK * j, v[j]);
            if constexpr (DB) {
                db[j][0] += v[j].x, db[j][1] += v[j].y, db[j][2] += v[j].z, db[j][3] += v[j].w;
            }
        }
    }
};

}  // namespace
