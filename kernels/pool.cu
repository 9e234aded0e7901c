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
//       (channel group, pixel chunk, sample): grid (⌈C/G⌉, chunks, N), block 256 = G
//       channels x 256/G pixel rows (G = a power of two ≤ 32 chosen from C, so a small
//       C still keeps the block busy); each thread scans pixels row, row + 256/G, … of
//       its chunk in order, then a fixed shared-memory tree (1-2 KiB) merges the rows.
//       With one chunk the block writes the result (the backward adds dy at the
//       argmax from the one thread that owns (n, c)). Large maps (the last head pools
//       the full-resolution mask logits, C = 5) are split into chunks so the whole GPU
//       works: each chunk's sum or (max, argmax) candidate goes to a workspace and
//       global_avg_finish_f32 / global_max_finish_f32 (one thread per (n, c)) merge
//       them in chunk order. The chunk count depends only on the shape.
//   global_avg_bwd_f32   one thread per dx element (or 4 channels with `vec`).
// Assumptions (checked by the launcher): extents fit in int; `vec` only when every
// address, pitch and C are multiples of 4 floats; H and W even for 2x2 pooling.
#include "common.cuh"

#define THREADS 256
#define NO_INDEX 0x7fffffff  // index of an empty candidate: loses every tie


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

// The pixels [p0, p1) of sample blockIdx.z that this block reduces: chunk blockIdx.y
// of `chunk_len` pixels (the whole sample when the grid has one chunk).
DEVICE void chunk_pixels(int hw, int chunk_len, int& p0, int& p1) {
    p0 = blockIdx.y * chunk_len;
    p1 = min(hw, p0 + chunk_len);
}

// Sum over the block's pixels of channel blockIdx.x·G + lane: y[n·C + c] = sum / count
// with one chunk; otherwise the chunk's sum goes to part[(n·chunks + chunk)·C + c] for
// global_avg_finish_f32. `group` = G channels per block.
KERNEL(global_avg_fwd_f32)(float* __restrict__ y, float* __restrict__ part, const float* __restrict__ x, int hw,
                           int c, int x_pitch, int group, int chunk_len, float count) {
    SHARED(float, sums, [THREADS]);
    const int t = threadIdx.x, lane = t & (group - 1), row = t / group, rows = THREADS / group;
    const int n = blockIdx.z, ch = blockIdx.x * group + lane;
    int p0, p1;
    chunk_pixels(hw, chunk_len, p0, p1);
    float s = 0.0f;
    if (ch < c) {
        const float* xs = x + n * hw * x_pitch + ch;
        for (int px = p0 + row; px < p1; px += rows) s += xs[px * x_pitch];
    }
    sums[t] = s;
    // Fixed tree over the rows: row r adds row r + half, halving each round.
    for (int half = rows >> 1; half > 0; half >>= 1) {
        __syncthreads();
        if (row < half) sums[t] += sums[t + half * group];
    }
    if (row != 0 || ch >= c) return;
    if (gridDim.y == 1)
        y[n * c + ch] = sums[t] / count;
    else
        part[(n * gridDim.y + blockIdx.y) * c + ch] = sums[t];
}

// y[n·C + c] = (Σ over chunks, in chunk order, of part) / count; one thread per (n, c).
KERNEL(global_avg_finish_f32)(float* __restrict__ y, const float* __restrict__ part, int nc, int c, int chunks,
                              float count) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < nc; e += gridDim.x * blockDim.x) {
        const int n = e / c, ch = e - n * c;
        const float* p = part + n * chunks * c + ch;
        float s = p[0];
        for (int k = 1; k < chunks; ++k) s += p[k * c];
        y[e] = s / count;
    }
}

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

// The max and argmax (pixel index in the sample) of channel blockIdx.x·G + lane over
// the block's pixels, returned to the row-0 thread of each lane; `vals`/`idxs`:
// THREADS entries of shared memory. Every thread of the block must call it.
DEVICE void block_argmax(const float* x, int hw, int c, int x_pitch, int group, int chunk_len, float* vals,
                         int* idxs, float& best, int& arg) {
    const int t = threadIdx.x, lane = t & (group - 1), row = t / group, rows = THREADS / group;
    const int ch = blockIdx.x * group + lane;
    int p0, p1;
    chunk_pixels(hw, chunk_len, p0, p1);
    // A thread's first pixel starts its scan at −∞: the same as the sequential
    // scan restricted to the thread's pixels. A thread without pixels offers a
    // candidate that loses to every real one.
    best = -__int_as_float(0x7f800000);
    arg = p0 + row < p1 ? p0 + row : NO_INDEX;
    if (ch < c) {
        const float* xs = x + blockIdx.z * hw * x_pitch + ch;
        for (int px = p0 + row; px < p1; px += rows) {
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

// Global max over the block's pixels: y[n·C + c] = max with one chunk; otherwise the
// chunk's candidate (value, index bits) goes to part[((n·chunks + chunk)·C + c)·2 + 0/1]
// for global_max_finish_f32.
KERNEL(global_max_fwd_f32)(float* __restrict__ y, float* __restrict__ part, const float* __restrict__ x, int hw,
                           int c, int x_pitch, int group, int chunk_len) {
    SHARED(float, vals, [THREADS]);
    SHARED(int, idxs, [THREADS]);
    float best;
    int arg;
    block_argmax(x, hw, c, x_pitch, group, chunk_len, vals, idxs, best, arg);
    const int n = blockIdx.z, ch = blockIdx.x * group + (threadIdx.x & (group - 1));
    if (threadIdx.x >= (unsigned)group || ch >= c) return;
    if (gridDim.y == 1) {
        y[n * c + ch] = best;
    } else {
        float* cand = part + ((n * gridDim.y + blockIdx.y) * c + ch) * 2;
        cand[0] = best, cand[1] = __int_as_float(arg);
    }
}

// With one chunk: dx[n, argmax, c] += dy[n·C + c]; one thread per (n, c), so no two
// threads touch the same element. (With several, the launcher runs global_max_fwd_f32
// for the candidates and global_max_finish_f32 adds.)
KERNEL(global_max_bwd_f32)(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x, int hw,
                           int c, int x_pitch, int group) {
    SHARED(float, vals, [THREADS]);
    SHARED(int, idxs, [THREADS]);
    float best;
    int arg;
    block_argmax(x, hw, c, x_pitch, group, hw, vals, idxs, best, arg);
    const int n = blockIdx.z, ch = blockIdx.x * group + (threadIdx.x & (group - 1));
    if (threadIdx.x < (unsigned)group && ch < c) dx[(n * hw + arg) * x_pitch + ch] += dy[n * c + ch];
}

// Merges the chunks' candidates of each (n, c) with `beats` (a total order, so the
// result is exact whatever the order) and then, forward, writes y[n·C + c] = max or,
// backward, adds dy[n·C + c] into dx at the argmax. One thread per (n, c).
KERNEL(global_max_finish_f32)(float* __restrict__ y, float* __restrict__ dx, const float* __restrict__ dy,
                              const float* __restrict__ part, int nc, int hw, int c, int x_pitch, int chunks,
                              int backward) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < nc; e += gridDim.x * blockDim.x) {
        const int n = e / c, ch = e - n * c;
        const float* cand = part + (n * chunks * c + ch) * 2;
        float best = cand[0];
        int arg = __float_as_int(cand[1]);
        for (int k = 1; k < chunks; ++k) {
            const float v = cand[k * c * 2];
            const int i = __float_as_int(cand[k * c * 2 + 1]);
            if (beats(v, i, best, arg)) best = v, arg = i;
        }
        if (backward)
            dx[(n * hw + arg) * x_pitch + ch] += dy[e];
        else
            y[e] = best;
    }
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(maxpool_fwd_f32, maxpool_bwd_f32, global_avg_fwd_f32, global_avg_finish_f32, global_avg_bwd_f32,
             global_max_fwd_f32, global_max_bwd_f32, global_max_finish_f32)
