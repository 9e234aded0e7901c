// host.h — the host branch of kernels/common.cuh: what a kernel sees when it is
// compiled by the host C++ compiler for the emulator.
//
// Cheap things (types, math, atomics, bf16/f16 conversions, index registers) are
// inline here; everything that synchronises or needs the block's state (barriers, warp
// collectives, shared memory, cp.async) calls into the runtime (sched.cpp, warp.cpp,
// memory.cpp). A block's threads run as fibers on one OS thread, one at a time, and
// switch only inside those runtime calls, so plain memory operations (atomics
// included) never race within a launch.
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cstddef>
#include <utility>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int32_t i32;
typedef int64_t i64;

// ---- CUDA vector and index types (layout and alignment as in CUDA) ----
struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };  // an aggregate: it lives in __thread storage
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return {x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
static inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---- launch descriptor, shared with the Rust side (#[repr(C)] EmuLaunch) ----
extern "C" {
struct EmuLaunch {
    u32 grid[3];
    u32 block[3];
    u32 smem_bytes;  // dynamic shared memory
    u32 schedule;    // 0 forward, 1 reverse, 2 seeded random
    u64 seed;
    u32 nargs;
    const u32* arg_sizes;  // bytes of each argument value, to check against the kernel
};
// The message of the last launch on this OS thread ("" when it succeeded).
const char* emu_last_error(void);
}

namespace emu {
// Per-thread registers; the runtime points emu_cur_thread at the running fiber's.
struct ThreadRegs {
    uint3 thread_idx;
    u32 linear;  // x + y*bx + z*bx*by
    u32 lane;
    u32 warp;
};
struct BlockRegs {
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};
}  // namespace emu

// __thread, not thread_local: no TLS wrapper call on each access. initial-exec: the
// library is always linked statically into an executable.
extern __thread emu::ThreadRegs* emu_cur_thread __attribute__((tls_model("initial-exec")));
extern __thread emu::BlockRegs emu_block __attribute__((tls_model("initial-exec")));

#define threadIdx (emu_cur_thread->thread_idx)
#define blockIdx (emu_block.block_idx)
#define blockDim (emu_block.block_dim)
#define gridDim (emu_block.grid_dim)
#define WARP_SIZE 32

// ---- qualifiers ----
#define __device__
#define __global__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// static: two .cu files may each have a helper of the same name (one GPU module each);
// with external linkage the linker would silently keep only one of them.
#define DEVICE static inline

// ---- runtime entry points (the runtime's .cpp files) ----
namespace emu {
void syncthreads();
void syncwarp(u32 mask);
// One shuffle: `src` is the lane this lane reads (already resolved by the PTX rules;
// its own lane when out of range). Returns the source's bits.
u64 shfl(u32 mask, u64 bits, int src);
// Returns the ballot in the low word and the participating lanes in the high word.
u64 vote(u32 mask, bool pred);
void mma_16816(int kind, float d[4], const u32 a[4], const u32 b[2], const float c[4]);
void ldmatrix(u32* r, int count, bool trans, const void* smem);
void cp_async_16(void* smem_dst, const void* gmem_src);
void cp_async_commit();
void cp_async_wait(int groups_left);  // -1: wait_all
int shared_slot_id();
void* shared_ptr(int slot, size_t bytes, const char* name);
void* dyn_shared();
[[noreturn]] void assert_failed(const char* cond, const char* file, int line);
// Runs a launch; `thunk(ctx)` runs one thread. Returns 0, or 1 with emu_last_error set.
// `max_threads`: the kernel's launch bounds (KERNEL_BOUNDS), 1024 without.
int run_launch(const EmuLaunch* l, const char* kernel, void (*thunk)(void*), void* ctx, const u32* param_sizes,
               u32 nparams, u32 max_threads);

// Not instrumented in the traced build (trace.cpp): these templates are instantiated
// identically by both builds of a kernel file, and the linker keeps one copy.
#define EMU_NO_TRACE __attribute__((no_sanitize_address))

// The kernel's own parameter list, read from args[] exactly as cuLaunchKernel does.
template <typename... P>
struct Entry {
    void (*fn)(P...);
    void** args;
    template <size_t... I>
    EMU_NO_TRACE void call(std::index_sequence<I...>) {
        fn(*static_cast<P*>(args[I])...);
    }
    EMU_NO_TRACE static void thunk(void* self) { static_cast<Entry*>(self)->call(std::index_sequence_for<P...>{}); }
};
template <typename... P>
EMU_NO_TRACE int launch(const EmuLaunch* l, const char* kernel, void (*fn)(P...), void** args, u32 max_threads) {
    // The trailing 0 keeps the array non-empty for a kernel without parameters.
    static const u32 sizes[] = {static_cast<u32>(sizeof(P))..., 0};
    Entry<P...> e{fn, args};
    return run_launch(l, kernel, &Entry<P...>::thunk, &e, sizes, sizeof...(P), max_threads);
}
}  // namespace emu

// A kernel is a static function; its launch bounds (the driver's 1024 without) go
// with it, for the export to check.
#define KERNEL(name)                                  \
    static constexpr u32 name##_emu_max_threads = 1024; \
    static void name
#define KERNEL_BOUNDS(name, max_threads)                         \
    static constexpr u32 name##_emu_max_threads = (max_threads); \
    static void name
// The residency target is the GPU compiler's business only.
#define KERNEL_BOUNDS_MIN(name, max_threads, min_blocks) KERNEL_BOUNDS(name, max_threads)
// The list build.rs reads; the exports are generated from it (EMU_EXPORT, in a file
// that includes the kernel file and ends with one EMU_EXPORT per entry point).
#define ENTRY_POINTS(...)
#ifdef EMU_TRACED
// The instrumented second build of every kernel file (build.rs, src/backend/emu/trace.cpp).
#define EMU_EXPORT(name)                                                                \
    extern "C" int emu_traced_entry_##name(const EmuLaunch* launch, void** args) {    \
        return ::emu::launch(launch, #name, name, args, name##_emu_max_threads);      \
    }
#else
#define EMU_EXPORT(name)                                                            \
    extern "C" int emu_entry_##name(const EmuLaunch* launch, void** args) {       \
        return ::emu::launch(launch, #name, name, args, name##_emu_max_threads); \
    }
#endif

#define EMU_ASSERT(cond)                                                            \
    do {                                                                            \
        if (!(cond)) ::emu::assert_failed(#cond, __FILE__, __LINE__);               \
    } while (0)

// ---- shared memory: a slot in the runtime's per-launch arena ----
// The static id is per declaration (per template instantiation); the runtime maps it
// to an offset on first use in each launch, so all threads of a block see one array.
#define SHARED(type, name, dims)                                  \
    static const int name##_emu_slot_ = ::emu::shared_slot_id(); \
    type(&name) dims = *reinterpret_cast<type(*) dims>(::emu::shared_ptr(name##_emu_slot_, sizeof(type dims), #name))
#define DYN_SHARED(type, name) type* name = reinterpret_cast<type*>(::emu::dyn_shared())

// ---- barriers and warp collectives ----
static inline void __syncthreads() { emu::syncthreads(); }
static inline void __syncwarp(u32 mask = 0xffffffffu) { emu::syncwarp(mask); }

namespace emu {
template <typename T>
static inline u64 to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    u64 b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
static inline T from_bits(u64 b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}
// PTX shfl.sync: c = ((32 - width) << 8) | clamp; segmask selects the lane's segment.
enum ShflMode { kIdx, kUp, kDown, kBfly };
static inline int shfl_src(ShflMode mode, int b, int width) {
    const int lane = (int)emu_cur_thread->lane;
    b &= 0x1f;  // PTX reads the lane operand as b[4:0]: lane 33 is lane 1, an offset of 32 is 0
    const int segmask = (32 - width) & 0x1f;
    const int clamp = mode == kUp ? 0 : 0x1f;
    const int max_lane = (lane & segmask) | (clamp & ~segmask);
    const int min_lane = lane & segmask;
    int j;
    bool ok;
    switch (mode) {
        case kUp: j = lane - b; ok = j >= max_lane; break;
        case kDown: j = lane + b; ok = j <= max_lane; break;
        case kBfly: j = lane ^ b; ok = j <= max_lane; break;
        default: j = min_lane | (b & ~segmask); ok = j <= max_lane; break;
    }
    return ok ? j : lane;
}
}  // namespace emu

template <typename T>
static inline T __shfl_sync(u32 mask, T v, int src_lane, int width = 32) {
    return emu::from_bits<T>(emu::shfl(mask, emu::to_bits(v), emu::shfl_src(emu::kIdx, src_lane, width)));
}
template <typename T>
static inline T __shfl_up_sync(u32 mask, T v, unsigned delta, int width = 32) {
    return emu::from_bits<T>(emu::shfl(mask, emu::to_bits(v), emu::shfl_src(emu::kUp, (int)delta, width)));
}
template <typename T>
static inline T __shfl_down_sync(u32 mask, T v, unsigned delta, int width = 32) {
    return emu::from_bits<T>(emu::shfl(mask, emu::to_bits(v), emu::shfl_src(emu::kDown, (int)delta, width)));
}
template <typename T>
static inline T __shfl_xor_sync(u32 mask, T v, int lane_mask, int width = 32) {
    return emu::from_bits<T>(emu::shfl(mask, emu::to_bits(v), emu::shfl_src(emu::kBfly, lane_mask, width)));
}
static inline unsigned __ballot_sync(u32 mask, int pred) { return (unsigned)emu::vote(mask, pred != 0); }
static inline int __any_sync(u32 mask, int pred) { return (u32)emu::vote(mask, pred != 0) != 0; }
static inline int __all_sync(u32 mask, int pred) {
    const u64 v = emu::vote(mask, pred != 0);
    return (u32)v == (u32)(v >> 32);
}

// ---- atomics: plain read-modify-write (one fiber runs at a time) ----
#define EMU_ATOMIC(name, T, expr) \
    static inline T name(T* p, T v) { T old = *p; *p = (expr); return old; }
EMU_ATOMIC(atomicAdd, float, old + v)
EMU_ATOMIC(atomicAdd, int, old + v)
EMU_ATOMIC(atomicAdd, unsigned, old + v)
EMU_ATOMIC(atomicAdd, unsigned long long, old + v)
EMU_ATOMIC(atomicMax, int, old > v ? old : v)
EMU_ATOMIC(atomicMax, unsigned, old > v ? old : v)
EMU_ATOMIC(atomicMin, int, old < v ? old : v)
EMU_ATOMIC(atomicMin, unsigned, old < v ? old : v)
EMU_ATOMIC(atomicExch, int, v)
EMU_ATOMIC(atomicExch, unsigned, v)
EMU_ATOMIC(atomicExch, float, v)
#undef EMU_ATOMIC
#define EMU_CAS(T) \
    static inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
EMU_CAS(int)
EMU_CAS(unsigned)
EMU_CAS(unsigned long long)
#undef EMU_CAS

// ---- math: CUDA's fast intrinsics map to the accurate host functions ----
// Macros, because glibc already declares some of these names (__expf) as externs.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __powf(x, y) powf(x, y)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline int __float2int_rn(float x) { return (int)lrintf(x); }
static inline unsigned __float_as_uint(float x) { return emu::from_bits<unsigned>(emu::to_bits(x)); }
static inline float __uint_as_float(unsigned x) { return emu::from_bits<float>(emu::to_bits(x)); }
static inline int __float_as_int(float x) { return emu::from_bits<int>(emu::to_bits(x)); }
static inline float __int_as_float(int x) { return emu::from_bits<float>(emu::to_bits(x)); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
static inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
template <typename T>
static inline T __ldg(const T* p) { return *p; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline float min(float a, float b) { return fminf(a, b); }

// ---- bf16 / f16, bit-exact with PTX cvt.rn (round to nearest even, subnormals kept;
// NaN → the canonical 0x7FFF) ----
static inline u16 f32_to_bf16(float x) {
    u32 b = __float_as_uint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    b += 0x7fffu + ((b >> 16) & 1u);  // ties to even; a carry into the exponent is right
    return (u16)(b >> 16);
}
static inline float bf16_to_f32(u16 h) { return __uint_as_float((u32)h << 16); }
static inline u32 pack_bf16x2(float lo, float hi) { return (u32)f32_to_bf16(lo) | ((u32)f32_to_bf16(hi) << 16); }

namespace emu {
// m >> s rounded to nearest even (s in 1..31).
static inline u32 shift_rne(u32 m, int s) {
    const u32 r = m >> s, rem = m & ((1u << s) - 1), half = 1u << (s - 1);
    return r + (rem > half || (rem == half && (r & 1u)));
}
}  // namespace emu
static inline u16 f32_to_f16(float x) {
    const u32 b = __float_as_uint(x);
    const u32 sign = (b >> 16) & 0x8000u, a = b & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fff;
    if (a >= 0x47800000u) return (u16)(sign | 0x7c00u);  // ≥ 65536 (and inf): inf
    const int e = (int)(a >> 23);
    if (e < 113) {  // below 2^-14: an f16 subnormal, in units of 2^-24
        const int s = 126 - e;
        if (e == 0 || s > 31) return (u16)sign;
        return (u16)(sign | emu::shift_rne((a & 0x7fffffu) | 0x800000u, s));
    }
    // Normal: rebias the exponent and round the 23-bit mantissa to 10 bits; a carry
    // out of the mantissa correctly bumps the exponent (up to inf at 65520).
    return (u16)(sign | emu::shift_rne((((u32)(e - 112)) << 23) | (a & 0x7fffffu), 13));
}
static inline float f16_to_f32(u16 h) {
    const u32 sign = (u32)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 31) return m ? __uint_as_float(0x7fffffffu) : __uint_as_float(sign | 0x7f800000u);
    if (e == 0) {  // subnormal: m units of 2^-24, exact in f32
        const float v = ldexpf((float)m, -24);
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
}
static inline u32 pack_f16x2(float lo, float hi) { return (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16); }

// ---- matrix instructions and cp.async (warp collectives in the runtime) ----
static inline void mma_16816_bf16(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    emu::mma_16816(0, d, a, b, c);
}
static inline void mma_16816_f16(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    emu::mma_16816(1, d, a, b, c);
}
// Always inlined: the tracer names an access by its caller's return address, which
// must lie in the kernel's own code.
#define EMU_INLINE static inline __attribute__((always_inline))
EMU_INLINE void ldmatrix_x4(u32 r[4], const void* p) { emu::ldmatrix(r, 4, false, p); }
EMU_INLINE void ldmatrix_x2(u32 r[2], const void* p) { emu::ldmatrix(r, 2, false, p); }
EMU_INLINE void ldmatrix_x4_trans(u32 r[4], const void* p) { emu::ldmatrix(r, 4, true, p); }
EMU_INLINE void ldmatrix_x2_trans(u32 r[2], const void* p) { emu::ldmatrix(r, 2, true, p); }
EMU_INLINE void cp_async_16(void* dst, const void* src) { emu::cp_async_16(dst, src); }
static inline void cp_async_commit() { emu::cp_async_commit(); }
static inline void cp_async_wait_all() { emu::cp_async_wait(-1); }
template <int N>
static inline void cp_async_wait() {
    emu::cp_async_wait(N);
}
