// tile.cuh — the tile engine every GEMM kernel runs on (conv2d.cu, conv2d_mma.cu,
// deconv.cu, deconv_mma.cu): the double-buffered K-loop, written once over loader
// objects, and the two ways a block multiplies its shared tiles, with the tile shape
// as template parameters.
//
// A block computes a BM×BN tile of C = A·B (A: BM rows × the reduction, B: the
// reduction × BN columns) in slices of BK reduction elements. Shared memory holds
// two stages of each operand: while the block multiplies one stage, the next slice's
// global loads are in flight in registers; they are then stored to the other stage,
// and one barrier per slice separates the two.
//
// A loader is one operand of one kernel: it owns its thread → element mapping and
// the registers in flight, and has the two methods k_loop calls:
//   fetch(k0)  global memory → registers: this thread's elements of the slice
//              [k0, k0 + BK), zero outside the operand, so tails need no other care.
//              Called once per slice, slices in order: a loader may step its own
//              state from slice to slice instead of dividing k0 out.
//   put(s)     registers → stage s, through the engine's layout of its operand
//              (T::A or T::B), which rounds to bf16 where the engine multiplies bf16.
//
// Engines (the T of k_loop):
//   FmaTile<BM, BN, BK>
//       f32 products (fmaf). BM·BN/16 threads; thread t owns the 4×4 micro-tile at
//       rows 4·(t / (BN/4)).., columns 4·(t % (BN/4)).., accumulated in registers.
//       Stages A [BK][BM+4], B [BK][BN+4] floats (k-major): the multiply reads 4 rows
//       and 4 columns as two float4 (within a warp the A reads are broadcasts, the B
//       reads contiguous); the row pad of 4 keeps rows 16-byte aligned and spreads
//       transposed stores over more banks.
//   MmaTile<BM, BN, BK, WM, WN, A_KMAJOR, SWIZZLE = false>
//       bf16 products on tensor cores (mma.m16n8k16, f32 accumulation). 32 threads
//       per WM×WN sub-tile; warp w computes the one at rows WM·(w % (BM/WM)), columns
//       WN·(w / (BM/WM)), as (WM/16)×(WN/8) mma tiles. Stages of bf16: B [BK][BN]
//       (read with ldmatrix.trans), A [BK][BM] with A_KMAJOR (ldmatrix.trans) or
//       [BM][BK] (ldmatrix). Without SWIZZLE each row has a pad of 8 elements, which
//       keeps rows 16-byte aligned and the 8 rows of an ldmatrix phase on 8 distinct
//       4-bank groups, but not the loaders' stores. With SWIZZLE (every mma kernel)
//       rows are unpadded and their 16-byte chunks XOR-swizzled (SwizzledStage,
//       SwizzledRows), so that stores and ldmatrix are all conflict-free. Only files
//       marked min-arch sm_80 may instantiate it.
//
// The GEMM kernels' `vec` launch argument (uniform over the grid, chosen by the
// launcher, src/backend/cuda/mod.rs `vec_bits`): VEC_A / VEC_B — 16-byte loads of
// operand A / B allowed (channel count, pitch and address multiples of 4 floats, so
// a float4 never straddles a tap or a pixel); VEC_OUT — 16-byte output stores.
#pragma once

#include "common.cuh"

#define VEC_A 1
#define VEC_B 2
#define VEC_OUT 4
// Both operands 16-byte loadable. The mma kernels run their K-loop in one of two
// copies: with this known at compile time (the loaders' scalar paths compiled out of
// the loop: every layer but the 3-channel input and the 5-class heads), or with the
// launch's bits.
#define VEC_FAST(vec) (((vec) & (VEC_A | VEC_B)) == (VEC_A | VEC_B))

// Member functions: DEVICE is `static inline` on the host, which a member function
// cannot be.
#define MEMBER __device__ __forceinline__

// Everything below is in an anonymous namespace: each kernel file is its own GPU
// module, and on the host (where every kernels/*.cu is linked into one library) the
// types stay private to the file that includes them.
namespace {

// Type selection (NVRTC has no <type_traits>).
template <bool C, class X, class Y>
struct Pick {
    typedef X T;
};
template <class X, class Y>
struct Pick<false, X, Y> {
    typedef Y T;
};

// One f32 value into a stage element: as is, or rounded to bf16.
DEVICE void stage_store(float* p, float v) { *p = v; }
DEVICE void stage_store(u16* p, float v) { *p = f32_to_bf16(v); }
// Four consecutive elements (16-byte aligned floats, 8-byte aligned bf16).
DEVICE void stage_store4(float* p, float4 v) { st4(p, v); }
DEVICE void stage_store4(u16* p, float4 v) {
    u32* w = reinterpret_cast<u32*>(p);
    w[0] = pack_bf16x2(v.x, v.y);
    w[1] = pack_bf16x2(v.z, v.w);
}

// The layout of one operand's stage: element (k, i) — k the reduction index, i the
// row of A or the column of B — at k·LD + i (KMAJOR) or i·LD + k.
template <class E, int LD_, bool KMAJOR>
struct Stage {
    typedef E Elem;
    static constexpr int LD = LD_;
    MEMBER static E* at(E* s, int k, int i) { return s + (KMAJOR ? k * LD + i : i * LD + k); }
    MEMBER static void put(E* s, int k, int i, float v) { stage_store(at(s, k, i), v); }
    // Elements (k..k+3, i): four consecutive reduction elements of one row or column.
    MEMBER static void put4_k(E* s, int k, int i, float4 v) {
        if constexpr (KMAJOR) {
            put(s, k, i, v.x), put(s, k + 1, i, v.y), put(s, k + 2, i, v.z), put(s, k + 3, i, v.w);
        } else {
            stage_store4(at(s, k, i), v);
        }
    }
    // Elements (k, i..i+3): four consecutive rows (of A) or columns (of B).
    MEMBER static void put4_i(E* s, int k, int i, float4 v) {
        if constexpr (KMAJOR) {
            stage_store4(at(s, k, i), v);
        } else {
            put(s, k, i, v.x), put(s, k, i + 1, v.y), put(s, k, i + 2, v.z), put(s, k, i + 3, v.w);
        }
    }
};

// A bf16 k-major stage with rows of W elements (W/8 16-byte chunks, no pad) whose
// chunks are XOR-swizzled per row: element (k, i) sits in chunk (i/8) ^ f(k) of row
// k, f(k) = 2·((k % 4) ^ ((k / 8) % 4)) + (k / 4) % 2. With 128-byte rows a chunk's
// 4-bank group is its index. The same `at` places the stores and the ldmatrix rows,
// and f keeps each of the mma loaders' access patterns on distinct groups:
//   ldmatrix(.trans) phase: rows 8q..8q+7 at one logical chunk; f is a bijection on
//     them.
//   row quads stored as one 8-byte word (put4_i), a half warp on rows 4q..4q+3 × two
//     adjacent chunks 2c, 2c+1 (conv2d's weights): f / 2 is a bijection on the 4
//     rows, so c's 8 chunks stay distinct; a half warp on one whole row (deconv, both
//     weight-gradient operands) is distinct anyway.
//   column pairs stored as 4-byte words (put4_k2), a warp on rows k = e + 4q (q < 8)
//     × one chunk (the input gradient's flipped weights): f is a bijection on them.
//   column quads stored as 4 u16 (put4_k), k = e + 4q (q < 4) × one chunk (deconv's
//     vector operands): f takes 4 distinct values on them.
template <int W>
struct SwizzledStage {
    typedef u16 Elem;
    static constexpr int LD = W;
    static_assert(W % 64 == 0, "at least 8 chunks per row, so every f(k) stays in the row");
    MEMBER static int f(int k) { return (((k & 3) ^ ((k >> 3) & 3)) << 1) | ((k >> 2) & 1); }
    MEMBER static u16* at(u16* s, int k, int i) { return s + k * LD + ((((i >> 3) ^ f(k)) << 3) | (i & 7)); }
    MEMBER static const u16* at(const u16* s, int k, int i) { return at(const_cast<u16*>(s), k, i); }
    MEMBER static void put(u16* s, int k, int i, float v) { stage_store(at(s, k, i), v); }
    // Four u16 stores (k a multiple of 4) from one address: f(k + e) = f(k) ^ 2e, so
    // element (k + e, i) sits e rows further at the in-row offset XOR 16e.
    MEMBER static void put4_k(u16* s, int k, int i, float4 v) {
        u16* r = s + k * LD;
        const int o = (((i >> 3) ^ f(k)) << 3) | (i & 7);
        r[o] = f32_to_bf16(v.x);
        r[LD + (o ^ 16)] = f32_to_bf16(v.y);
        r[2 * LD + (o ^ 32)] = f32_to_bf16(v.z);
        r[3 * LD + (o ^ 48)] = f32_to_bf16(v.w);
    }
    // One 8-byte store (i a multiple of 4: the quad stays inside one chunk).
    MEMBER static void put4_i(u16* s, int k, int i, float4 v) {
        *reinterpret_cast<uint2*>(at(s, k, i)) = make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w));
    }
    // Elements (k..k+3, i) from a and (k..k+3, i+1) from b: a column pair stored as
    // four 4-byte words from one address (k a multiple of 4, i even; as put4_k).
    MEMBER static void put4_k2(u16* s, int k, int i, float4 a, float4 b) {
        u16* r = s + k * LD;
        const int o = (((i >> 3) ^ f(k)) << 3) | (i & 7);
        *reinterpret_cast<u32*>(r + o) = pack_bf16x2(a.x, b.x);
        *reinterpret_cast<u32*>(r + LD + (o ^ 16)) = pack_bf16x2(a.y, b.y);
        *reinterpret_cast<u32*>(r + 2 * LD + (o ^ 32)) = pack_bf16x2(a.z, b.z);
        *reinterpret_cast<u32*>(r + 3 * LD + (o ^ 48)) = pack_bf16x2(a.w, b.w);
    }
};

// A bf16 m-major stage ([row][k], rows of 32 elements: four 16-byte chunks, two rows
// per 128 bytes) with chunk (k/8) ^ g(i) of row i holding k, g(i) = (i/2) % 4. A
// chunk's 4-bank group is 4·(i % 2) + its index, so an ldmatrix phase (rows
// 8q..8q+7 at one logical chunk) meets 8 distinct groups. Its loader (ConvGather)
// stores 8-byte quads (put4_k), a warp on 4 consecutive whole rows: 256 contiguous
// bytes, each bank twice, the ideal two wavefronts.
template <int W>
struct SwizzledRows {
    typedef u16 Elem;
    static constexpr int LD = W;
    static_assert(W == 32, "four chunks per row");
    MEMBER static u16* at(u16* s, int k, int i) { return s + i * LD + ((((k >> 3) ^ ((i >> 1) & 3)) << 3) | (k & 7)); }
    MEMBER static const u16* at(const u16* s, int k, int i) { return at(const_cast<u16*>(s), k, i); }
    MEMBER static void put(u16* s, int k, int i, float v) { stage_store(at(s, k, i), v); }
    // Elements (k..k+3, i) as one 8-byte store (k a multiple of 4: inside one chunk).
    MEMBER static void put4_k(u16* s, int k, int i, float4 v) {
        *reinterpret_cast<uint2*>(at(s, k, i)) = make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w));
    }
    MEMBER static void put4_i(u16* s, int k, int i, float4 v) {
        put(s, k, i, v.x), put(s, k, i + 1, v.y), put(s, k, i + 2, v.z), put(s, k, i + 3, v.w);
    }
};

template <int BM_, int BN_, int BK_>
struct FmaTile {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, THREADS = BM * BN / 16;
    typedef float Elem;
    typedef Stage<float, BM + 4, true> A;
    typedef Stage<float, BN + 4, true> B;
    static constexpr int STAGE_A = BK * A::LD, STAGE_B = BK * B::LD;
    typedef float Acc[4][4];
    static_assert(BM % 4 == 0 && BN % 16 == 0, "4x4 micro-tiles, a row of them per 16-byte-aligned row");

    // This thread's micro-tile: acc[i][j] is row 4·tm() + i, column 4·tn() + j.
    MEMBER static int tm() { return threadIdx.x / (BN / 4); }
    MEMBER static int tn() { return threadIdx.x % (BN / 4); }

    MEMBER static void zero(Acc& acc) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    }
    // acc += a-stage · b-stage: per reduction step, two float4 shared loads feed 16 FMAs.
    MEMBER static void multiply(Acc& acc, const float* a, const float* b) {
        const int m = 4 * tm(), n = 4 * tn();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            const float4 a4 = ld4(a + k * A::LD + m);
            const float4 b4 = ld4(b + k * B::LD + n);
            const float av[4] = {a4.x, a4.y, a4.z, a4.w};
            const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
    }
};

template <int BM_, int BN_, int BK_, int WM_, int WN_, bool A_KMAJOR, bool SWIZZLE = false>
struct MmaTile {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_;
    static constexpr int WARPS_M = BM / WM, THREADS = 32 * WARPS_M * (BN / WN);
    static constexpr int MI = WM / 16, NJ = WN / 8;  // mma tiles per warp
    typedef u16 Elem;
    typedef typename Pick<SWIZZLE, typename Pick<A_KMAJOR, SwizzledStage<BM>, SwizzledRows<BK>>::T,
                          Stage<u16, A_KMAJOR ? BM + 8 : BK + 8, A_KMAJOR>>::T A;
    typedef typename Pick<SWIZZLE, SwizzledStage<BN>, Stage<u16, BN + 8, true>>::T B;
    static constexpr int STAGE_A = (A_KMAJOR ? BK : BM) * A::LD, STAGE_B = BK * B::LD;
    typedef float Acc[MI][NJ][4];
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0 && BK % 16 == 0,
                  "whole mma tiles; B fragments are loaded 16 columns at a time");

    // This warp's sub-tile origin (tile-relative).
    MEMBER static int wm() { return ((threadIdx.x >> 5) % WARPS_M) * WM; }
    MEMBER static int wn() { return ((threadIdx.x >> 5) / WARPS_M) * WN; }
    // Accumulator e of mma tile (i, j): its tile-relative row and column (the mma C
    // layout: row g + 8(e/2), column 2(l%4) + e%2 of the 16×8 tile, g = l/4, l the lane).
    MEMBER static int row(int i, int e) { return wm() + 16 * i + ((threadIdx.x & 31) >> 2) + 8 * (e >> 1); }
    MEMBER static int col(int j, int e) { return wn() + 8 * j + 2 * (threadIdx.x & 3) + (e & 1); }

    MEMBER static void zero(Acc& acc) {
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    }
    // acc += a-stage · b-stage, 16 reduction elements per mma.
    MEMBER static void multiply(Acc& acc, const u16* a, const u16* b) {
        const int m = wm(), n = wn();
#pragma unroll
        for (int ks = 0; ks < BK; ks += 16) {
            u32 af[MI][4], bf[NJ][2];
            if constexpr (SWIZZLE) {
                // The lane → row maps of mma_a_frag(_kmajor) / mma_b_frags_kmajor, each
                // row's address through the stage's swizzle.
                const int l = threadIdx.x & 31, r = l & 7;
#pragma unroll
                for (int i = 0; i < MI; ++i) {
                    if constexpr (A_KMAJOR)
                        ldmatrix_x4_trans(af[i], A::at(a, ks + r + ((l >> 4) & 1) * 8, m + 16 * i + ((l >> 3) & 1) * 8));
                    else
                        ldmatrix_x4(af[i], A::at(a, ks + (l >> 4) * 8, m + 16 * i + r + ((l >> 3) & 1) * 8));
                }
#pragma unroll
                for (int jj = 0; jj < NJ / 2; ++jj) {
                    u32 q[4];
                    ldmatrix_x4_trans(q, B::at(b, ks + r + ((l >> 3) & 1) * 8, n + 16 * jj + ((l >> 4) & 1) * 8));
                    bf[2 * jj][0] = q[0], bf[2 * jj][1] = q[1], bf[2 * jj + 1][0] = q[2], bf[2 * jj + 1][1] = q[3];
                }
            } else {
#pragma unroll
                for (int i = 0; i < MI; ++i) {
                    if constexpr (A_KMAJOR)
                        mma_a_frag_kmajor(af[i], a + ks * A::LD + m + 16 * i, A::LD);
                    else
                        mma_a_frag(af[i], a + (m + 16 * i) * A::LD + ks, A::LD);
                }
#pragma unroll
                for (int jj = 0; jj < NJ / 2; ++jj)
                    mma_b_frags_kmajor(&bf[2 * jj], b + ks * B::LD + n + 16 * jj, B::LD);
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NJ; ++j) mma_16816_bf16(acc[i][j], af[i], bf[j], acc[i][j]);
        }
    }
};

// k_loop's default per-slice hook: nothing.
struct NoHook {
    template <class E>
    MEMBER void operator()(const E*, const E*) const {}
};

// acc = A[.., k0..k1) · B[k0..k1), .. on engine T with loaders la (A) and lb (B) and
// the two-stage shared buffers as (2·T::STAGE_A elements) and bs (2·T::STAGE_B).
// `each(a, b)` runs after every slice's multiply, with that slice's stages (for a
// kernel that also reduces an operand on the way, e.g. a bias gradient). All threads
// must call it (it has barriers).
template <class T, class LA, class LB, class Each = NoHook>
DEVICE void k_loop(typename T::Acc& acc, LA& la, LB& lb, int k0, int k1, typename T::Elem* as,
                   typename T::Elem* bs, Each each = Each()) {
    T::zero(acc);
    const int slices = (k1 - k0 + T::BK - 1) / T::BK;
    if (slices > 0) {
        la.fetch(k0);
        lb.fetch(k0);
        la.put(as);
        lb.put(bs);
        __syncthreads();
    }
    for (int s = 0; s < slices; ++s) {
        const int cur = s & 1;
        const bool more = s + 1 < slices;
        // Global loads of the next slice overlap the arithmetic on this one.
        if (more) {
            la.fetch(k0 + (s + 1) * T::BK);
            lb.fetch(k0 + (s + 1) * T::BK);
        }
        T::multiply(acc, as + cur * T::STAGE_A, bs + cur * T::STAGE_B);
        each(as + cur * T::STAGE_A, bs + cur * T::STAGE_B);
        // The other stage was last read in slice s-1, before the previous barrier.
        if (more) {
            la.put(as + (cur ^ 1) * T::STAGE_A);
            lb.put(bs + (cur ^ 1) * T::STAGE_B);
            __syncthreads();
        }
    }
}

}  // namespace
