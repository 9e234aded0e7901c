// adam.cu — one Adam step over the flat parameter buffer (fp32 params, moments, grads).
// Semantics: AdamParams in src/backend/mod.rs; CPU reference src/backend/cpu/adam.rs,
// which rounds as torch.optim.Adam does on a CPU tensor. Launcher (the scalars):
// src/backend/cuda/adam.rs.
//
// adam_step_f32   grid-stride, block 256; with `vec` thread i updates elements
//   4i..4i+3 through 16-byte loads and stores (every operand 16-byte aligned), and the
//   len % 4 tail one element at a time; without it, one element at a time.
//   No shared memory, no barriers: elements are independent.
// The bias corrections and every other scalar are computed on the host in f64 from
// the hyper-parameters read as Python floats, and rounded to f32 once, exactly as the
// CPU reference does; the kernel then repeats the reference's f32 operations in the
// same order:
//   m ← m + w1·(g − m)   (lerp with weight w1 = 1−β1 < 0.5; else g − (g − m)·(1 − w1))
//   v ← v·β2 + (c2·g)·g  (c2 = 1−β2)
//   p ← p + (−lr/bc1 · m) / (sqrt(v)/sqrt(bc2) + eps)
// NVRTC fuses a product feeding an add into one FMA by default (one rounding instead
// of two), which would make the GPU differ from the CPU in the last bit: the products
// that feed an add go through MUL_RN (__fmul_rn, never fused). GCC contracts too: its
// default for C++ is -ffp-contract=fast (the `off` default is for ISO C, not C++), so
// the emulator matched the CPU on x86-64 only because the baseline x86-64 has no FMA
// instruction to contract into. build.rs builds the emulator with
// -ffp-contract=off, so a*b+c rounds twice there on every host, as in the Rust
// reference (Rust never contracts). sqrtf and '/' are IEEE on both (no
// --use_fast_math), so the step is bit-exact against the CPU reference.
//
// Assumptions (checked by the launcher): len + a grid stride fits in int; the four
// operands do not overlap.
#include "common.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MUL_RN(a, b) __fmul_rn(a, b)
#else
#define MUL_RN(a, b) ((a) * (b))
#endif

// The per-element scalars, rounded to f32 by the launcher.
namespace {
struct AdamScalars {
    float w1, b2, c2, bc2_sqrt, neg_step, eps;
    int small_w1;
};
}  // namespace

DEVICE void adam_update(float& p, float& m, float& v, float g, const AdamScalars& s) {
    m = s.small_w1 ? m + MUL_RN(s.w1, g - m) : g - MUL_RN(g - m, 1.0f - s.w1);
    v = MUL_RN(v, s.b2) + MUL_RN(MUL_RN(s.c2, g), g);
    const float denom = sqrtf(v) / s.bc2_sqrt + s.eps;
    p = p + MUL_RN(s.neg_step, m) / denom;
}

KERNEL_BOUNDS(adam_step_f32, 256)(float* __restrict__ param, float* __restrict__ m, float* __restrict__ v,
                                  const float* __restrict__ grad, int len, float w1, int small_w1, float b2,
                                  float c2, float bc2_sqrt, float neg_step, float eps, int vec) {
    const AdamScalars s = {w1, b2, c2, bc2_sqrt, neg_step, eps, small_w1};
    const int first = blockIdx.x * blockDim.x + threadIdx.x, step = gridDim.x * blockDim.x;
    const int quads = vec ? len >> 2 : 0;
    for (int i = first; i < quads; i += step) {
        float4 pv = reinterpret_cast<float4*>(param)[i];
        float4 mv = reinterpret_cast<float4*>(m)[i];
        float4 vv = reinterpret_cast<float4*>(v)[i];
        const float4 gv = reinterpret_cast<const float4*>(grad)[i];
        adam_update(pv.x, mv.x, vv.x, gv.x, s);
        adam_update(pv.y, mv.y, vv.y, gv.y, s);
        adam_update(pv.z, mv.z, vv.z, gv.z, s);
        adam_update(pv.w, mv.w, vv.w, gv.w, s);
        reinterpret_cast<float4*>(param)[i] = pv;
        reinterpret_cast<float4*>(m)[i] = mv;
        reinterpret_cast<float4*>(v)[i] = vv;
    }
    for (int e = 4 * quads + first; e < len; e += step) {
        float pe = param[e], me = m[e], ve = v[e];
        adam_update(pe, me, ve, grad[e], s);
        param[e] = pe;
        m[e] = me;
        v[e] = ve;
    }
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(adam_step_f32)
