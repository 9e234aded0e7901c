// common.cuh — the vocabulary every kernel in kernels/ is written in: the first header
// each kernel file includes (directly, or through tile.cuh and the op headers built
// on it: conv2d.cuh, deconv.cuh).
//
// The same kernel source is compiled two ways: by NVRTC for a GPU (no include path,
// no CUDA toolkit headers: the headers of kernels/ are passed in memory), and by the
// host C++ compiler for the emulator (src/backend/emu: each block's threads run as
// fibers). Only the primitives below differ between the two branches; the helpers
// at the end are written once on top of them, so the emulator checks the code the
// GPU runs.
//
// Vocabulary (usable identically in both branches)
// -------------------------------------------------
// Types        u8 u16 u32 u64 i32 i64 (NVRTC has no <stdint.h>); float2/float4/int2/
//              int4/uint2/uint4 and make_*; dim3/uint3.
// Kernels      KERNEL(name)(params) { ... }
//              KERNEL_BOUNDS(name, max_threads)(params) { ... }
//              Device: extern "C" __global__ void name (with __launch_bounds__). Host:
//              a static function; the emulator refuses a launch of more threads a
//              block than max_threads, as the driver does. Kernel parameters are
//              pointers, int and float only (the Rust `Arg` kinds).
//              ENTRY_POINTS(name, ...) — the last thing in every kernel file: the
//              list of its entry points. build.rs reads it (the line starts with
//              `ENTRY_POINTS(`) and generates from it the NVRTC entry-point table and
//              the emulator's exports (`extern "C" int emu_entry_<name>(const
//              EmuLaunch*, void** args)`, args being one pointer per argument value
//              as for cuLaunchKernel); the macro itself expands to nothing.
// Helpers      DEVICE int f(...) — device functions (__device__ __forceinline__ / inline).
// Indices      threadIdx blockIdx blockDim gridDim (.x .y .z), WARP_SIZE.
// Barriers     __syncthreads(), __syncwarp(mask).
// Warp ops     __shfl_sync __shfl_xor_sync __shfl_up_sync __shfl_down_sync (float,
//              int, unsigned; optional width), __ballot_sync __any_sync __all_sync.
//              PTX .sync rules: every lane named in `mask` (and not exited) must call
//              the same op with the same mask; reading a lane outside it is an error.
// Atomics      atomicAdd (float, int, unsigned), atomicMax / atomicMin (int, unsigned),
//              atomicCAS (int, unsigned), atomicExch (int, unsigned, float).
// Math         expf logf log1pf sqrtf rsqrtf fmaxf fminf fabsf floorf ceilf tanhf powf
//              fmaf __expf __logf __fdividef, max/min on int and unsigned,
//              __float_as_uint __uint_as_float __float_as_int __int_as_float __ldg.
// Qualifiers   __restrict__ __forceinline__ __launch_bounds__(...) compile on both.
//              `__shared__` does NOT exist on the host: declare shared memory with
//              SHARED(type, name, dims)   e.g. SHARED(float, tile, [32][33]);
//              DYN_SHARED(type, name)     e.g. DYN_SHARED(float, buf); (dynamic, sized
//                                         by the launch, 128-byte aligned)
//              Every SHARED array is 16-byte aligned on both branches (so ldmatrix and
//              cp.async rows can live in any of them). On the host, shared memory is
//              filled with 0xFF at every block start (an unwritten float reads as NaN)
//              and a canary after each array catches overruns.
// bf16 / f16   u16 f32_to_bf16(float) (round to nearest even), float bf16_to_f32(u16),
//              u32 pack_bf16x2(float lo, float hi) (lo in bits 0..15), float2
//              unpack_bf16x2(u32); f32_to_f16, f16_to_f32, pack_f16x2, unpack_f16x2.
//              Device: cvt.rn PTX. Host: bit-exact; NaN becomes the canonical 0x7FFF.
// Matrix       Destination first, as in ThunderKittens. All are WARP COLLECTIVES: the
//              32 lanes of the warp must all call them (mma, ldmatrix).
//              mma_16816_bf16(float d[4], const u32 a[4], const u32 b[2], const float c[4])
//              mma_16816_f16(...)  — mma.sync.aligned.m16n8k16.row.col.f32.X.X.f32, with
//                the PTX ISA fragment layout (g = lane/4, t = lane%4, halves packed low
//                element first):
//                  a[0]: A[g][2t..2t+1]    a[1]: A[g+8][2t..2t+1]
//                  a[2]: A[g][2t+8..+9]    a[3]: A[g+8][2t+8..+9]
//                  b[0]: B[2t..2t+1][g]    b[1]: B[2t+8..2t+9][g]
//                  c,d[0..1]: C[g][2t..2t+1]   c,d[2..3]: C[g+8][2t..2t+1]
//                d may alias c (accumulate in place).
//              ldmatrix_x4(u32 r[4], const void* smem_row), ldmatrix_x2(u32 r[2], ...),
//              ldmatrix_x4_trans, ldmatrix_x2_trans — ldmatrix.sync.aligned.m8n8.x{4,2}
//                [.trans].shared.b16: lane i gives the address of row i%8 of matrix i/8
//                (16 bytes, 16-byte aligned, in shared memory); r[j] of lane l receives
//                row l/4, columns 2(l%4)..+1 of matrix j (with .trans: column l/4, rows
//                2(l%4)..+1). Matrices 0..3 = the four 8x8 quadrants of a 16x16 tile
//                in the order (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15),
//                (8-15, 8-15) give exactly the mma A fragment a[0..3].
//              mma_a_frag, mma_a_frag_kmajor, mma_b_frags_kmajor (shared helpers
//                below): the fragments of a 16x16 block of a bf16 tile, m- or k-major.
//              mma, ldmatrix and cp.async need sm_80: a kernel file that uses them
//                (directly or through tile.cuh's MmaTile) holds nothing else and says
//                `// lesionseg: min-arch sm_80` within its first 20 lines, so the f32
//                modules load on older GPUs.
//              cp_async_16(void* smem_dst, const void* gmem_src) (cp.async.cg, 16 bytes,
//                both 16-byte aligned), cp_async_commit(), cp_async_wait_all(),
//                cp_async_wait<N>() (at most N committed groups still in flight). The
//                host copies at the wait, so data read before it is stale (0xFF).
// Checks       EMU_ASSERT(cond): the emulator reports the failing thread and stops the
//              launch; the GPU traps.
// Shared       warp_sum(float), warp_max(float) (every lane gets the result; all 32
//              lanes must call), block_sum(float, float* scratch) (scratch: 32 floats of
//              shared memory; block size a multiple of 32; every thread must call; all
//              get the sum). Lanes of a partial last warp do not exist: a full-mask
//              collective in such a warp is an error.
//              zero4(), ld4(p), st4(p, v): 16-byte float4 helpers (p 16-byte aligned).
//
// Not available on purpose: __activemask (meaningless under independent thread
// scheduling), spin-waits on shared flags (they deadlock under the emulator's
// cooperative scheduler and are rarely right on a GPU).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// ============================== device branch (NVRTC) ==============================

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int i32;
typedef long long i64;

#define KERNEL(name) extern "C" __global__ void name
#define KERNEL_BOUNDS(name, max_threads) extern "C" __global__ void __launch_bounds__(max_threads) name
// With a residency target: ptxas keeps registers to what min_blocks blocks per SM allow.
#define KERNEL_BOUNDS_MIN(name, max_threads, min_blocks) \
    extern "C" __global__ void __launch_bounds__(max_threads, min_blocks) name
#define ENTRY_POINTS(...)
#define DEVICE __device__ __forceinline__
#define WARP_SIZE 32

// 16-byte alignment matches the host branch, so a layout that works in the emulator
// (ldmatrix rows, cp.async destinations) works on the GPU.
#define SHARED(type, name, dims) __shared__ __attribute__((aligned(16))) type name dims
#define DYN_SHARED(type, name)                                                       \
    extern __shared__ __attribute__((aligned(128))) unsigned char name##_dyn_raw_[]; \
    type* name = reinterpret_cast<type*>(name##_dyn_raw_)

#define EMU_ASSERT(cond)                  \
    do {                                  \
        if (!(cond)) asm volatile("trap;"); \
    } while (0)

// Generic → shared-window address, the form ldmatrix and cp.async take.
DEVICE u32 smem_addr(const void* p) {
    u64 a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (u32)a;
}

DEVICE u16 f32_to_bf16(float x) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
DEVICE float bf16_to_f32(u16 h) {
    // bf16 is the top half of an f32: widening is exact.
    return __uint_as_float((u32)h << 16);
}
DEVICE u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    // cvt packs its FIRST source into the UPPER half.
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
DEVICE u16 f32_to_f16(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
DEVICE float f16_to_f32(u16 h) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
    return r;
}
DEVICE u32 pack_f16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

DEVICE void mma_16816_bf16(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
}
DEVICE void mma_16816_f16(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
}

DEVICE void ldmatrix_x4(u32 r[4], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
}
DEVICE void ldmatrix_x2(u32 r[2], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(smem)));
}
DEVICE void ldmatrix_x4_trans(u32 r[4], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
}
DEVICE void ldmatrix_x2_trans(u32 r[2], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(smem)));
}

DEVICE void cp_async_16(void* smem_dst, const void* gmem_src) {
    // .cg: bypass L1, the right choice for tiles streamed once into shared memory.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(smem_dst)), "l"(gmem_src)
                 : "memory");
}
DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
DEVICE void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
template <int N>
DEVICE void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

#else
// ============================== host branch (emulator) ==============================
// The primitives are implemented by the emulator's runtime; this header only declares
// them. See src/backend/emu/host.h.
#include "../src/backend/emu/host.h"
#endif

// ============================== shared helpers (both branches) ==============================

DEVICE float2 unpack_bf16x2(u32 v) { return make_float2(bf16_to_f32((u16)(v & 0xFFFFu)), bf16_to_f32((u16)(v >> 16))); }
DEVICE float2 unpack_f16x2(u32 v) { return make_float2(f16_to_f32((u16)(v & 0xFFFFu)), f16_to_f32((u16)(v >> 16))); }

// mma.m16n8k16 operand fragments from bf16 tiles in shared memory. Warp collectives of
// 1-D blocks (all 32 lanes call). `base` is the block's element (row 0, column 0), `ld`
// the tile's row length in bf16 elements (a multiple of 8: rows stay 16-byte aligned).
// ldmatrix: lane l gives the address of row l%8 of 8x8 matrix l/8.
//
// A (16 m × 16 k) from an m-major tile (rows m, k contiguous): matrices (m 0-7, k 0-7),
// (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) are exactly a[0..3].
DEVICE void mma_a_frag(u32 a[4], const u16* base, int ld) {
    const int l = threadIdx.x & 31;
    ldmatrix_x4(a, base + ((l & 7) + ((l >> 3) & 1) * 8) * ld + (l >> 4) * 8);
}
// The same A from a k-major tile (rows k, m contiguous): .trans hands lane l row m =
// l/4, k = 2(l%4)..+1; matrix bit 0 is the second 8 m, bit 1 the second 8 k.
DEVICE void mma_a_frag_kmajor(u32 a[4], const u16* base, int ld) {
    const int l = threadIdx.x & 31;
    ldmatrix_x4_trans(a, base + ((l & 7) + ((l >> 4) & 1) * 8) * ld + ((l >> 3) & 1) * 8);
}
// B (16 k × 8 n) of two adjacent 8-column tiles from a k-major tile (rows k, n
// contiguous): .trans hands lane l column n = l/4, k = 2(l%4)..+1, the col-major
// fragment; matrix bit 0 is the second 8 k, bit 1 the second 8 columns. b[0]: columns
// 0-7, b[1]: columns 8-15.
DEVICE void mma_b_frags_kmajor(u32 b[2][2], const u16* base, int ld) {
    const int l = threadIdx.x & 31;
    u32 r[4];
    ldmatrix_x4_trans(r, base + ((l & 7) + ((l >> 3) & 1) * 8) * ld + ((l >> 4) & 1) * 8);
    b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

// 16-byte vector helpers (the address 16-byte aligned).
DEVICE float4 zero4() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
DEVICE float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
DEVICE void st4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// Butterfly reductions: every lane ends with the result, in the same order on every
// lane, so the value is bit-identical across the warp.
DEVICE float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
DEVICE float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (a multiple of 32 threads, all of which must call). `scratch` is
// 32 floats of shared memory; it is reused, so a second call needs no extra barrier
// from the caller (the leading __syncthreads protects it).
DEVICE float block_sum(float v, float* scratch) {
    const u32 tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const u32 nthreads = blockDim.x * blockDim.y * blockDim.z;
    const u32 nwarps = (nthreads + 31) / 32;
    v = warp_sum(v);
    __syncthreads();  // a previous call may still be reading scratch
    if ((tid & 31) == 0) scratch[tid >> 5] = v;
    __syncthreads();
    float t = (tid & 31) < nwarps ? scratch[tid & 31] : 0.0f;
    return warp_sum(t);
}
