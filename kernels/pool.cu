// pool.cu — pooling (fp32): 2x2 max pooling (the encoder), global average pooling
// (the middle head) and global max pooling (the last head), forward and backward.
// Semantics: MaxPoolParams / GlobalPoolParams in src/backend/mod.rs; CPU reference
// src/backend/cpu/pool.rs.
//
// Max rule, as PyTorch's CPU kernels: scan from −∞ at the first element and take an
// element when `v > max || isnan(v)`. So the first of equal maxima wins, any NaN wins,
// the last NaN is the argmax, and a window of −∞ routes its gradient to its first
// element. For the global max the scan is split over threads; the pieces are merged
// with `beats`, a total order on (value, index) candidates whose maximum is exactly
// the sequential scan's answer (NaN by largest index > larger value > smaller index),
// so any merge tree gives the same bits.
//
// Entry points (geometry from src/backend/cuda/pool.rs):
//   maxpool_fwd_f32 / maxpool_bwd_f32   one thread per output element (or per 4
//       channels with `vec`), grid-stride over N·(H/2)·(W/2)·C; block 256. The 2x2
//       windows do not overlap, so the backward's adds into dx never collide.
//   global_avg_fwd_f32 / global_max_fwd_f32 / global_max_bwd_f32   one block per
//       (channel group, sample): grid (⌈C/G⌉, N), block 256 = G channels x 256/G
//       pixel rows (G = a power of two ≤ 32 chosen from C, so a small C still keeps
//       the block busy); each thread scans pixels row, row + 256/G, … in order, then
//       a fixed shared-memory tree (2 KiB) merges the rows. The backward adds dy at
//       the recomputed argmax from the one thread that owns (n, c).
//   global_avg_bwd_f32   one thread per dx element (or 4 channels with `vec`).
// Assumptions (checked by the launcher): extents fit in int; `vec` only when every
// address, pitch and C are multiples of 4 floats; H and W even for 2x2 pooling.
#include "common.cuh"

#define THREADS 256
#define NO_INDEX 0x7fffffff  // index of an empty candidate: loses every tie

DEVICE float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
DEVICE void st4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// PyTorch's sequential rule: does `v` replace the running maximum `best`?
DEVICE bool takes(float v, float best) { return v > best || v != v; }

// Does candidate (v, i) beat (bv, bi)? The total order of the header comment.
DEVICE bool beats(float v, int i, float bv, int bi) {
    const bool nan = v != v, bnan = bv != bv;
    if (nan || bnan) return nan && (!bnan || i > bi);
    return v > bv || (v == bv && i < bi);
}

// Max and window position (0..3, order (0,0) (0,1) (1,0) (1,1)) of one channel of a
// 2x2 window; `off` are the element offsets of the four pixels.
DEVICE void window_max(const float* x, const int off[4], int ch, float& best, int& arg) {
    best = -__int_as_float(0x7f800000);  // −∞ at position 0
    arg = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float v = x[off[k] + ch];
        if (takes(v, best)) best = v, arg = k;
    }
}

// The 2x2 window of output element e (in units of `per` channels): pixel offsets of its
// four input pixels, the output pixel, and the first channel.
DEVICE void window_of(int e, int per, int c, int w, int x_pitch, int off[4], int& out_pix, int& ch) {
    const int groups = c / per, q = w >> 1;
    out_pix = e / groups;
    ch = (e - out_pix * groups) * per;
    // Output row r = n·(H/2) + i reads input rows 2r and 2r+1 (H = 2·(H/2)).
    const int r = out_pix / q, j = out_pix - r * q;
    const int top = (2 * r * w + 2 * j) * x_pitch;
    off[0] = top, off[1] = top + x_pitch, off[2] = top + w * x_pitch, off[3] = top + (w + 1) * x_pitch;
}

// y[n,i,j,c] = max of x[n, 2i..2i+1, 2j..2j+1, c].
KERNEL(maxpool_fwd_f32)(float* __restrict__ y, const float* __restrict__ x, int n, int h, int w, int c, int x_pitch,
                        int y_pitch, int vec) {
    const int per = vec ? 4 : 1, total = n * (h >> 1) * (w >> 1) * (c / per);
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        int off[4], pix, ch;
        window_of(e, per, c, w, x_pitch, off, pix, ch);
        float m[4];
        int arg;
        // Constant trip count, so m[] stays in registers.
#pragma unroll
        for (int l = 0; l < 4; ++l)
            if (l < per) window_max(x, off, ch + l, m[l], arg);
        if (vec)
            st4(y + pix * y_pitch + ch, make_float4(m[0], m[1], m[2], m[3]));
        else
            y[pix * y_pitch + ch] = m[0];
    }
}
EMU_EXPORT(maxpool_fwd_f32)

// dx[argmax of window (n,i,j), c] += dy[n,i,j,c]; every other dx element is untouched.
KERNEL(maxpool_bwd_f32)(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x, int n,
                        int h, int w, int c, int x_pitch, int y_pitch, int vec) {
    const int per = vec ? 4 : 1, total = n * (h >> 1) * (w >> 1) * (c / per);
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        int off[4], pix, ch;
        window_of(e, per, c, w, x_pitch, off, pix, ch);
        float g[4];
        if (vec) {
            const float4 v = ld4(dy + pix * y_pitch + ch);
            g[0] = v.x, g[1] = v.y, g[2] = v.z, g[3] = v.w;
        } else {
            g[0] = dy[pix * y_pitch + ch];
        }
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            if (l >= per) continue;
            float best;
            int arg;
            window_max(x, off, ch + l, best, arg);
            dx[off[arg] + ch + l] += g[l];
        }
    }
}
EMU_EXPORT(maxpool_bwd_f32)

// y[n·C + c] = (Σ over pixels of x[n, :, :, c]) / count. `group` = G channels per block.
KERNEL(global_avg_fwd_f32)(float* __restrict__ y, const float* __restrict__ x, int hw, int c, int x_pitch, int group,
                           float count) {
    SHARED(float, part, [THREADS]);
    const int t = threadIdx.x, lane = t & (group - 1), row = t / group, rows = THREADS / group;
    const int n = blockIdx.y, ch = blockIdx.x * group + lane;
    float s = 0.0f;
    if (ch < c) {
        const float* xs = x + n * hw * x_pitch + ch;
        for (int px = row; px < hw; px += rows) s += xs[px * x_pitch];
    }
    part[t] = s;
    // Fixed tree over the rows: row r adds row r + half, halving each round.
    for (int half = rows >> 1; half > 0; half >>= 1) {
        __syncthreads();
        if (row < half) part[t] += part[t + half * group];
    }
    if (row == 0 && ch < c) y[n * c + ch] = part[t] / count;
}
EMU_EXPORT(global_avg_fwd_f32)

// dx[n,h,w,c] = dy[n·C + c] / count over every pixel (overwrites; gaps untouched).
KERNEL(global_avg_bwd_f32)(float* __restrict__ dx, const float* __restrict__ dy, int n, int hw, int c, int x_pitch,
                           float count, int vec) {
    const int per = vec ? 4 : 1, groups = c / per, total = n * hw * groups;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        const int pix = e / groups, ch = (e - pix * groups) * per, img = pix / hw;
        if (vec) {
            const float4 g = ld4(dy + img * c + ch);
            st4(dx + pix * x_pitch + ch, make_float4(g.x / count, g.y / count, g.z / count, g.w / count));
        } else {
            dx[pix * x_pitch + ch] = dy[img * c + ch] / count;
        }
    }
}
EMU_EXPORT(global_avg_bwd_f32)

// The max and argmax (pixel index in the sample) of channel `ch` of sample blockIdx.y,
// returned to the row-0 thread of each channel lane; `vals`/`idxs`: THREADS entries
// of shared memory. Every thread of the block must call it.
DEVICE void global_argmax(const float* x, int hw, int c, int x_pitch, int group, float* vals, int* idxs, float& best,
                          int& arg) {
    const int t = threadIdx.x, lane = t & (group - 1), row = t / group, rows = THREADS / group;
    const int ch = blockIdx.x * group + lane;
    // A thread's first pixel starts its scan at −∞: the same as the sequential
    // scan restricted to the thread's pixels. A thread without pixels offers a
    // candidate that loses to every real one.
    best = -__int_as_float(0x7f800000);
    arg = row < hw ? row : NO_INDEX;
    if (ch < c) {
        const float* xs = x + blockIdx.y * hw * x_pitch + ch;
        for (int px = row; px < hw; px += rows) {
            const float v = xs[px * x_pitch];
            if (takes(v, best)) best = v, arg = px;
        }
    }
    vals[t] = best, idxs[t] = arg;
    for (int half = rows >> 1; half > 0; half >>= 1) {
        __syncthreads();
        if (row < half) {
            const int o = t + half * group;
            if (beats(vals[o], idxs[o], vals[t], idxs[t])) vals[t] = vals[o], idxs[t] = idxs[o];
        }
    }
    best = vals[t], arg = idxs[t];
}

// y[n·C + c] = max over pixels of x[n, :, :, c].
KERNEL(global_max_fwd_f32)(float* __restrict__ y, const float* __restrict__ x, int hw, int c, int x_pitch,
                           int group) {
    SHARED(float, vals, [THREADS]);
    SHARED(int, idxs, [THREADS]);
    float best;
    int arg;
    global_argmax(x, hw, c, x_pitch, group, vals, idxs, best, arg);
    const int ch = blockIdx.x * group + (threadIdx.x & (group - 1));
    if (threadIdx.x < (unsigned)group && ch < c) y[blockIdx.y * c + ch] = best;
}
EMU_EXPORT(global_max_fwd_f32)

// dx[n, argmax, c] += dy[n·C + c]; one thread per (n, c), so no two threads touch
// the same element.
KERNEL(global_max_bwd_f32)(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x, int hw,
                           int c, int x_pitch, int group) {
    SHARED(float, vals, [THREADS]);
    SHARED(int, idxs, [THREADS]);
    float best;
    int arg;
    global_argmax(x, hw, c, x_pitch, group, vals, idxs, best, arg);
    const int n = blockIdx.y, ch = blockIdx.x * group + (threadIdx.x & (group - 1));
    if (threadIdx.x < (unsigned)group && ch < c) dx[(n * hw + arg) * x_pitch + ch] += dy[n * c + ch];
}
EMU_EXPORT(global_max_bwd_f32)
