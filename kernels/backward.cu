// backward.cu — the two helpers of the convolution and deconvolution backward passes
// (launchers: src/backend/cuda/backward.rs, called from cuda/conv2d.rs and
// cuda/deconv.rs), grid-stride, 256 threads a block:
//
// relu_mask_f32     dy[p][c] = 0 where y[p][c] <= 0 (PyTorch's threshold_backward: a
//                   NaN y keeps its gradient, as in the CPU reference), in place,
//                   before the GEMMs: the Backend contract masks dy in place, and
//                   masking once is cheaper than masking at every one of the GEMMs'
//                   reads of each dy element (and reading y as often).
// sum_partials_f32  out[i] = part[i] + part[L + i] + … + part[(S-1)·L + i], in chunk
//                   order: the split-K weight and bias gradients' partial results.
//                   No float atomics: each sum has one fixed order, so the bits depend
//                   only on the shapes (the launcher's split), never on timing or the
//                   emulator's schedule.
//
// Assumptions (checked by the launchers): every index, plus a grid stride, fits in int.
#include "common.cuh"

// dy[p, c] = 0 where y[p, c] <= 0, over `pixels` pixels of `c` channels, both views
// `pitch` apart; one element per thread and step.
KERNEL_BOUNDS(relu_mask_f32, 256)(float* __restrict__ dy, const float* __restrict__ y, int pixels, int c,
                                  int pitch) {
    const int total = pixels * c;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        const int p = e / c, off = p * pitch + (e - p * c);
        if (y[off] <= 0.0f) dy[off] = 0.0f;
    }
}

// out[i] = Σ_s part[s·len + i] for i < len, s ascending over `chunks` partials; one
// element per thread and step (a warp reads consecutive elements of each partial).
KERNEL_BOUNDS(sum_partials_f32, 256)(float* __restrict__ out, const float* __restrict__ part, int len,
                                     int chunks) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        float s = part[i];
        for (int c = 1; c < chunks; ++c) s += part[c * len + i];
        out[i] = s;
    }
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(relu_mask_f32, sum_partials_f32)
