// loss.cu — the multi-task loss (fp32 tensors, f64 batch sums) and its gradients.
// Semantics: LossParams in src/backend/mod.rs; CPU reference src/backend/cpu/loss.rs,
// whose per-element formulas are repeated here operation for operation. Launcher and
// workspace layout: src/backend/cuda/loss.rs. Three launches, no float atomics:
//
// loss_partials_f32 (pass 1)   grid (chunks per sample, N), block 256
//   Block (b, n) covers elements [b·S·ITEMS, (b+1)·S·ITEMS) of sample n's H·W·K mask
//   logits and targets, where S = 256 − 256 mod K is the largest multiple of K in a
//   block. Thread t < S reads elements b·S·ITEMS + t + i·S (i < ITEMS): a warp reads
//   32 consecutive floats, and since sample and chunk starts are multiples of K, the
//   thread's channel is t mod K for every element it reads (so one flag per thread).
//   Per thread: compensated (Kahan) f32 sums of BCE, s·t, s and t over its ≤ ITEMS
//   elements — the CPU sums in f64; Kahan keeps the f32 sums within a couple of ulps
//   whatever ITEMS is — and "some target > 0.5". Per block: the sums widened to f64 and
//   added in a fixed shared-memory tree → part[block][4]; channel k's flag = OR over
//   threads k, k+K, … → flags[block][k] (0 or 1). Shared: 4×256 doubles + 256 ints.
// loss_reduce_f32   one block of 256
//   Thread t adds the partials t, t+256, … in f64, then the same fixed tree: the batch
//   sums, identical on every run and schedule. Labels y[n,k] = OR of sample n's flags;
//   the head BCEs and gradients d_mid/d_last, one thread per (n,k), scaled by the
//   launcher's 0.5/(N·K) of the global batch (data parallelism: N is every replica's
//   samples together); thread 0 then adds the head BCEs in (n,k) order in f64 (the
//   CPU's order). Writes the six f64 sums (Σ BCE, Σ s·t, Σ s, Σ t, Σ mid BCE, Σ last
//   BCE); the launcher downloads them, the replicas add theirs, and the host turns
//   the global sums into the losses and the f32 factors of pass 2 (LossSums::finish,
//   the CPU's formulas and roundings).
// loss_grad_f32 (pass 2)   grid-stride, block 256, 4 elements a thread with `vec`
//   d_mask from the recomputed sigmoid and the factors (kernel arguments): the CPU's
//   formula. Recomputing s costs one expf; parking it in d_mask (as the CPU does)
//   would cost a write.
//
// Assumptions (checked by the launcher): K ≤ 256; N·H·W·K and every workspace extent
// fit in int with room for a grid stride; `vec` only when d_mask, logits and target
// are 16-byte aligned (then any tail is done one element at a time).
#include "common.cuh"

#define LOSS_THREADS 256
// ITEMS, the elements per thread of pass 1, is the launcher's (16: enough to amortise
// the block's reduction tree, few enough for a couple of waves of blocks on a 512x512
// batch); the kernel receives chunk = S·ITEMS.

namespace {

// A compensated f32 sum. Its value is sum − c, read in f64.
struct Kahan {
    float sum, c;
};

DEVICE void kahan_add(Kahan& k, float v) {
    const float y = v - k.c;
    const float t = k.sum + y;
    k.c = (t - k.sum) - y;
    k.sum = t;
}

DEVICE double kahan_value(const Kahan& k) { return (double)k.sum - (double)k.c; }

}  // namespace

// sigmoid(x), sharing e = exp(−|x|) with the BCE; neither overflows for finite x.
DEVICE float sigmoid_of(float x, float e) { return x < 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e); }
DEVICE float exp_neg_abs(float x) { return expf(x < 0.0f ? x : -x); }

// BCE-with-logits(x, t) = max(x,0) − x·t + ln(1 + e^−|x|) (ln(1+e), not log1p: the
// CPU reference's rounding).
DEVICE float bce_of(float x, float t, float e) { return (x > 0.0f ? x : 0.0f) - x * t + logf(1.0f + e); }

// In-place fixed tree over the block: red[q][0] = Σ_t red[q][t], q < 4, the same
// additions in the same order on every run. Ends with a barrier.
DEVICE void tree_sum4(double (*red)[LOSS_THREADS], int t) {
    for (int half = LOSS_THREADS / 2; half > 0; half >>= 1) {
        __syncthreads();
        if (t < half) {
#pragma unroll
            for (int q = 0; q < 4; ++q) red[q][t] += red[q][t + half];
        }
    }
    __syncthreads();
}

// part[blk][0..3] = (Σ BCE, Σ s·t, Σ s, Σ t) and flags[blk][k] over block blk = n·chunks + b.
// `stride` = S, `chunk` = S·ITEMS, `hwk` = H·W·K.
KERNEL_BOUNDS(loss_partials_f32, LOSS_THREADS)(double* __restrict__ part, float* __restrict__ flags,
                                               const float* __restrict__ logits, const float* __restrict__ target,
                                               int hwk, int k, int stride, int chunk) {
    SHARED(double, red, [4][LOSS_THREADS]);
    SHARED(int, seen, [LOSS_THREADS]);
    const int t = threadIdx.x, blk = blockIdx.y * gridDim.x + blockIdx.x;
    const int start = blockIdx.x * chunk;
    const int end = hwk - start < chunk ? hwk : start + chunk;
    const float* x = logits + blockIdx.y * hwk;
    const float* tg = target + blockIdx.y * hwk;

    Kahan bce = {0.0f, 0.0f}, inter = {0.0f, 0.0f}, sum_s = {0.0f, 0.0f}, sum_t = {0.0f, 0.0f};
    int pos = 0;
    if (t < stride) {
#pragma unroll 4
        for (int e = start + t; e < end; e += stride) {
            const float xv = x[e], tv = tg[e];
            const float ex = exp_neg_abs(xv);
            const float s = sigmoid_of(xv, ex);
            kahan_add(bce, bce_of(xv, tv, ex));
            kahan_add(inter, s * tv);
            kahan_add(sum_s, s);
            kahan_add(sum_t, tv);
            pos |= tv > 0.5f;
        }
    }
    red[0][t] = kahan_value(bce);
    red[1][t] = kahan_value(inter);
    red[2][t] = kahan_value(sum_s);
    red[3][t] = kahan_value(sum_t);
    seen[t] = pos;
    tree_sum4(red, t);  // its barriers also publish `seen`
    if (t < 4) part[blk * 4 + t] = red[t][0];
    if (t < k) {
        int any = 0;
        for (int j = t; j < stride; j += k) any |= seen[j];
        flags[blk * k + t] = any ? 1.0f : 0.0f;
    }
}

// The batch sums, labels and the heads; see the header. `out` = the six f64 sums;
// `head_bce` = 2·N·K scratch. `scale` = 0.5/(N·K) of the global batch comes from the
// launcher, rounded from f64 as the CPU rounds it.
KERNEL_BOUNDS(loss_reduce_f32, LOSS_THREADS)(double* __restrict__ out, float* __restrict__ head_bce,
                                             float* __restrict__ d_mid, float* __restrict__ d_last,
                                             const double* __restrict__ part, const float* __restrict__ flags,
                                             const float* __restrict__ cls_mid, const float* __restrict__ cls_last,
                                             int chunks, int n, int k, float scale) {
    SHARED(double, red, [4][LOSS_THREADS]);
    const int t = threadIdx.x, blocks = chunks * n, heads = n * k;

    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int b = t; b < blocks; b += LOSS_THREADS) {
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[q] += part[b * 4 + q];
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) red[q][t] = acc[q];
    tree_sum4(red, t);

    for (int h = t; h < heads; h += LOSS_THREADS) {
        const int img = h / k, ch = h - img * k;
        int pos = 0;
        for (int b = 0; b < chunks; ++b) pos |= flags[(img * chunks + b) * k + ch] > 0.5f;
        const float y = pos ? 1.0f : 0.0f;
        const float xm = cls_mid[h], em = exp_neg_abs(xm);
        d_mid[h] = (sigmoid_of(xm, em) - y) * scale;
        head_bce[h] = bce_of(xm, y, em);
        const float xl = cls_last[h], el = exp_neg_abs(xl);
        d_last[h] = (sigmoid_of(xl, el) - y) * scale;
        head_bce[heads + h] = bce_of(xl, y, el);
    }
    __syncthreads();  // head_bce (global) written by the whole block, read by thread 0

    // Two threads of different warps finish: the head sums in (n, k) order, as the
    // CPU adds them; and the mask sums.
    if (t == 0) {
        double mid = 0.0, last = 0.0;
        for (int h = 0; h < heads; ++h) mid += (double)head_bce[h];
        for (int h = 0; h < heads; ++h) last += (double)head_bce[heads + h];
        out[4] = mid;
        out[5] = last;
    } else if (t == WARP_SIZE) {
#pragma unroll
        for (int q = 0; q < 4; ++q) out[q] = red[q][0];
    }
}

DEVICE float mask_grad(float x, float t, float inv_m, float inv_outside, float inv_inter) {
    const float s = sigmoid_of(x, exp_neg_abs(x));
    return (s - t) * inv_m + s * (1.0f - s) * ((1.0f - t) * inv_outside - t * inv_inter);
}

// d_mask[e] = ∂loss1/∂logits[e] over the `total` = N·H·W·K dense elements.
KERNEL_BOUNDS(loss_grad_f32, LOSS_THREADS)(float* __restrict__ d_mask, const float* __restrict__ logits,
                                           const float* __restrict__ target, float inv_m, float inv_outside,
                                           float inv_inter, int total, int vec) {
    const int first = blockIdx.x * blockDim.x + threadIdx.x, step = gridDim.x * blockDim.x;
    const int quads = vec ? total >> 2 : 0;
    for (int i = first; i < quads; i += step) {
        const float4 x = reinterpret_cast<const float4*>(logits)[i];
        const float4 tv = reinterpret_cast<const float4*>(target)[i];
        reinterpret_cast<float4*>(d_mask)[i] = make_float4(mask_grad(x.x, tv.x, inv_m, inv_outside, inv_inter),
                                                           mask_grad(x.y, tv.y, inv_m, inv_outside, inv_inter),
                                                           mask_grad(x.z, tv.z, inv_m, inv_outside, inv_inter),
                                                           mask_grad(x.w, tv.w, inv_m, inv_outside, inv_inter));
    }
    for (int e = 4 * quads + first; e < total; e += step)
        d_mask[e] = mask_grad(logits[e], target[e], inv_m, inv_outside, inv_inter);
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(loss_partials_f32, loss_reduce_f32, loss_grad_f32)
