// deconv.cuh — the operands of the transposed convolution's implicit GEMMs, shared by
// deconv.cu (f32 products) and deconv_mma.cu (tensor cores): gather sources, the tile
// engine's loaders (tile.cuh) and each GEMM's operand setup. Formulas: the header of
// deconv.cu.
//
// Every loader here is for a 256-thread block, 64x64 tile and 16-deep slices (both
// deconv engines); L is the shared layout it stores into (the engine's A or B). Each
// has a scalar and a 16-byte (vec) thread mapping: scalar loads are coalesced along
// the operand's contiguous index, one element per thread per row; a vector load is a
// quad of 4 consecutive elements of one tap, so it needs the channel count, pitch and
// address to be multiples of 4 floats.
#pragma once

#include "tile.cuh"

namespace {

// The thread mapping every loader here assumes.
template <class T>
DEVICE void deconv_engine_check() {
    static_assert(T::THREADS == 256 && T::BM == 64 && T::BN == 64 && T::BK == 16, "the deconv loaders' mapping");
}

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
    // The vector path's split of `offset`: the element offset of grid pixel (img, i, j)
    // without its tap, and a tap's offset from it, (oy·sw + ox)·pitch.
    MEMBER int pixel(int img_base, int i, int j) const {
        const int s = mode == 0 ? 1 : 2;
        return (img_base + s * i * sw + s * j) * pitch;
    }
    MEMBER int tap_delta(int tap) const {
        int oy, ox;
        tap_offset(mode, tap, a, b, oy, ox);
        return (oy * sw + ox) * pitch;
    }
    // Whether tap `tap`'s source pixel of grid pixel (i, j) lies inside the image.
    MEMBER bool inside(int i, int j, int tap) const {
        int oy, ox;
        tap_offset(mode, tap, a, b, oy, ox);
        const int s = mode == 0 ? 1 : 2;
        const int y = s * i + oy, x = s * j + ox;
        return y >= 0 && y < sh && x >= 0 && x < sw;
    }
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
    // An operand contiguous in memory along the reduction index: scalar, thread t
    // loaded reduction index t%16 of tile rows t/16 + 16q; vector, reduction indices
    // 4(t%4)..+3 of tile row t/4.
    template <class L>
    MEMBER void put_kmajor(typename L::Elem* s, bool vec) const {
        const int t = threadIdx.x;
        if (vec) {
            L::put4_k(s, 4 * (t & 3), t >> 2, make_float4(r[0], r[1], r[2], r[3]));
        } else {
#pragma unroll
            for (int q = 0; q < 4; ++q) L::put(s, t & 15, (t >> 4) + 16 * q, r[q]);
        }
    }
    // An operand contiguous along the tile's row/column index: scalar, thread t loaded
    // index t%64 of reduction rows t/64 + 4q; vector, indices 4(t%16)..+3 of reduction
    // row t/16.
    template <class L>
    MEMBER void put_nmajor(typename L::Elem* s, bool vec) const {
        const int t = threadIdx.x;
        if (vec) {
            L::put4_i(s, t >> 4, 4 * (t & 15), make_float4(r[0], r[1], r[2], r[3]));
        } else {
#pragma unroll
            for (int q = 0; q < 4; ++q) L::put(s, (t >> 6) + 4 * q, t & 63, r[q]);
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
template <class L>
struct PixelRows {
    Source src;
    int kg;  // reduction extent: taps · ch
    bool vec;
    int base[4], i[4], j[4];  // per loaded row; base -1: the row is past M
    // Vector path, out of the K-loop: the pixel's element offset, a bit per tap whose
    // source pixel is inside the image (0 past M), and the quad's tap, channel and tap
    // offset, stepped by 16 after each fetch (no division per slice).
    int vpix, vtap, vc, vdelta;
    u32 vmask;
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
        vpix = 0, vmask = 0, vtap = 0, vc = 0, vdelta = 0;
        if (vec && src.ch > 0) {
            if (base[0] >= 0) {
                vpix = src.pixel(base[0], i[0], j[0]);
                for (int tp = 0; tp < kg / src.ch; ++tp)
                    if (src.inside(i[0], j[0], tp)) vmask |= 1u << tp;
            }
            const int kq = 4 * (t & 3);
            vtap = kq / src.ch;
            vc = kq - vtap * src.ch;
            vdelta = src.tap_delta(vtap);
        }
    }
    MEMBER void fetch(int k0) {
        const int t = threadIdx.x;
        const int kk = k0 + (vec ? 4 * (t & 3) : (t & 15));
        st.zero();
        if (vec) {
            // ch % 4 == 0 and kk % 4 == 0: the four channels are c..c+3 of one tap.
            if (kk < kg && ((vmask >> vtap) & 1u)) st.set4(ld4(src.p + vpix + vdelta + vc));
            vc += 16;
            if (vc >= src.ch) {
                while (vc >= src.ch) vc -= src.ch, ++vtap;
                vdelta = src.tap_delta(vtap);
            }
            return;
        }
        if (kk >= kg) return;
        const int tap = kk / src.ch, c = kk - tap * src.ch;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int off = base[q] < 0 ? -1 : src.offset(base[q], i[q], j[q], tap, c);
            if (off >= 0) st.r[q] = src.p[off];
        }
    }
    MEMBER void put(typename L::Elem* s) const { st.put_kmajor<L>(s, vec); }
};

// GEMM operand: tile columns = reduction-free index col = tap·ch + c (fixed per
// thread), reduction = grid pixels p of [.., p_end). The weight gradient's two
// operands: the im2col of x (mode 0) and dy of one parity (mode 1).
template <class L>
struct PixelCols {
    Source src;
    int gh, gw, p_end;
    bool vec;
    int tap, c;  // of this thread's column; tap -1: the column is past the tile edge
    // Vector path (one pixel a fetch), out of the K-loop: the column's tap offset and
    // the pixel's grid coordinates, divided out once (the first slice's pixel, from
    // p_begin) and stepped by 16 pixels after each fetch.
    int voy, vox, vs, vbase, vi, vj, step_i, step_j;
    MEMBER void init(int col0, int cols, int p_begin) {
        const int col = col0 + (vec ? 4 * (threadIdx.x & 15) : (threadIdx.x & 63));
        tap = col < cols ? col / src.ch : -1;
        c = col - (tap < 0 ? 0 : tap) * src.ch;
        tap_offset(src.mode, tap < 0 ? 0 : tap, src.a, src.b, voy, vox);
        vs = src.mode == 0 ? 1 : 2;
        vbase = 0, vi = 0, vj = 0;
        if (vec && gh > 0 && gw > 0) split_pixel(p_begin + (threadIdx.x >> 4), gh, gw, src.sh, src.sw, vbase, vi, vj);
        step_i = gw > 0 ? 16 / gw : 0;
        step_j = 16 - step_i * gw;
    }
    Staged st;
    MEMBER void fetch(int k0) {
        const int t = threadIdx.x;
        st.zero();
        if (tap < 0) return;
        if (vec) {
            const int p = k0 + (t >> 4);
            const int y = vs * vi + voy, x = vs * vj + vox;
            if (p < p_end && (unsigned)y < (unsigned)src.sh && (unsigned)x < (unsigned)src.sw)
                st.set4(ld4(src.p + (vbase + y * src.sw + x) * src.pitch + c));
            // The pixel 16 further on (wrapping into the next image).
            vj += step_j, vi += step_i;
            if (vj >= gw) vj -= gw, ++vi;
            while (vi >= gh && gh > 0) vi -= gh, vbase += src.sh * src.sw;
            return;
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int p = k0 + (t >> 6) + 4 * q;
            if (p >= p_end) continue;
            int base, i, j;
            split_pixel(p, gh, gw, src.sh, src.sw, base, i, j);
            const int off = src.offset(base, i, j, tap, c);
            if (off >= 0) st.r[q] = src.p[off];
        }
    }
    MEMBER void put(typename L::Elem* s) const { st.put_nmajor<L>(s, vec); }
};

// GEMM operand: a dense row-major [rows][cols] matrix, ld apart (the forward's w[a][b]).
template <class L>
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
    MEMBER void put(typename L::Elem* s) const { st.put_nmajor<L>(s, vec); }
};

// GEMM operand of the input gradient: B[kk][c] = w[t][c][k] with kk = t·K + k, the 16
// weight blocks transposed on the fly (contiguous along k, the reduction index).
template <class L>
struct WeightT {
    const float* p;
    int c_total, k_total, n0;
    bool vec;
    // Vector path: the quad's k and its element offset in w, stepped by 16 after each
    // fetch (the next tap's block is c_total·k_total further on, k wraps).
    int vk, voff;
    Staged st;
    MEMBER void init() {
        const int t = threadIdx.x, kq = 4 * (t & 3);
        const int tap = k_total > 0 ? kq / k_total : 0;
        vk = kq - tap * k_total;
        voff = (tap * c_total + n0 + (t >> 2)) * k_total + vk;
    }
    MEMBER void fetch(int k0) {
        const int t = threadIdx.x;
        const int kk = k0 + (vec ? 4 * (t & 3) : (t & 15));
        st.zero();
        if (vec) {
            if (kk < 16 * k_total && n0 + (t >> 2) < c_total) st.set4(ld4(p + voff));
            vk += 16, voff += 16;
            while (vk >= k_total) vk -= k_total, voff += (c_total - 1) * k_total;
            return;
        }
        if (kk >= 16 * k_total) return;
        const int tap = kk / k_total, k = kk - tap * k_total;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int c = n0 + (t >> 4) + 16 * q;
            if (c < c_total) st.r[q] = p[(tap * c_total + c) * k_total + k];
        }
    }
    MEMBER void put(typename L::Elem* s) const { st.put_kmajor<L>(s, vec); }
};

// The operands of each GEMM on engine T, shared by the f32 kernels and their
// tensor-core twins.
// Forward, parity ab: A = im2col_ab(x) (rows = input-grid pixels), B = w[a][b].
template <class T>
DEVICE void forward_operands(PixelRows<typename T::A>& la, DenseRows<typename T::B>& lb, const float* x,
                             const float* w, int ab, int m0, int n0, int n, int h, int wd, int c, int k, int x_pitch,
                             int flags) {
    deconv_engine_check<T>();
    la.src = Source{x, x_pitch, c, h, wd, 0, ab >> 1, ab & 1};
    la.kg = 4 * c;
    la.vec = (flags & VEC_A) != 0;
    la.init(m0, n * h * wd, h, wd);
    lb.p = w + ab * 4 * c * k, lb.rows = 4 * c, lb.cols = k, lb.ld = k, lb.n0 = n0;
    lb.vec = (flags & VEC_B) != 0;
}
// Input gradient: A = the 16-tap gather of dy, B = the weight blocks transposed.
template <class T>
DEVICE void bwd_data_operands(PixelRows<typename T::A>& la, WeightT<typename T::B>& lb, const float* dy,
                              const float* w, int m0, int n0, int n, int h, int wd, int c, int k, int y_pitch,
                              int flags) {
    deconv_engine_check<T>();
    la.src = Source{dy, y_pitch, k, 2 * h, 2 * wd, 2, 0, 0};
    la.kg = 16 * k;
    la.vec = (flags & VEC_A) != 0;
    la.init(m0, n * h * wd, h, wd);
    lb.p = w, lb.c_total = c, lb.k_total = k, lb.n0 = n0;
    lb.vec = (flags & VEC_B) != 0;
    lb.init();
}
// Weight gradient of parity ab over grid pixels [p_begin, p_end): A = im2col_ab(x)ᵀ,
// B = dy of the parity.
template <class T>
DEVICE void bwd_filter_operands(PixelCols<typename T::A>& la, PixelCols<typename T::B>& lb, const float* x,
                                const float* dy, int ab, int m0, int n0, int p_begin, int p_end, int h, int wd,
                                int c, int k, int x_pitch, int y_pitch, int flags) {
    deconv_engine_check<T>();
    la.src = Source{x, x_pitch, c, h, wd, 0, ab >> 1, ab & 1};
    la.gh = h, la.gw = wd, la.p_end = p_end;
    la.vec = (flags & VEC_A) != 0;
    la.init(m0, 4 * c, p_begin);
    lb.src = Source{dy, y_pitch, k, 2 * h, 2 * wd, 1, ab >> 1, ab & 1};
    lb.gh = h, lb.gw = wd, lb.p_end = p_end;
    lb.vec = (flags & VEC_B) != 0;
    lb.init(n0, k, p_begin);
}

}  // namespace
