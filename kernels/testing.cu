// testing.cu — test-only kernels: they exercise every primitive of common.cuh and
// plant the bugs the emulator must catch (tests/emulator.rs). They are valid device
// code too, so the GPU check can run the same layouts (the mma fragment layout first).
// Its mma, ldmatrix and cp.async tests need tensor cores and cp.async:
// lesionseg: min-arch sm_80
#include "common.cuh"

// Each thread publishes to shared memory and reads its right neighbour's slot. Without
// the barrier the result depends on the order threads run in: a planted race.
// Block 256 threads.
KERNEL(test_neighbour)(float* out, int use_barrier) {
    SHARED(float, slot, [256]);
    const int t = threadIdx.x;
    slot[t] = (float)(t + 1000 * blockIdx.x);
    if (use_barrier) __syncthreads();
    out[blockIdx.x * 256 + t] = slot[(t + 1) % 256];
}

// Writes n + 1 elements: one past the end of an n-element buffer (planted).
KERNEL(test_oob_write)(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;
}

// d[16][8] = a[16][16] · b[16][8] + c[16][8] (row-major f32 in global memory) through
// one mma.m16n8k16, each lane loading its fragments per the PTX ISA layout.
// One warp. f16 != 0 selects the f16 variant.
KERNEL(test_mma)(float* d, const float* a, const float* b, const float* c, int f16) {
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    const int c0 = 2 * t;
    u32 fa[4], fb[2];
    float fc[4], fd[4];
    if (f16) {
        fa[0] = pack_f16x2(a[g * 16 + c0], a[g * 16 + c0 + 1]);
        fa[1] = pack_f16x2(a[(g + 8) * 16 + c0], a[(g + 8) * 16 + c0 + 1]);
        fa[2] = pack_f16x2(a[g * 16 + c0 + 8], a[g * 16 + c0 + 9]);
        fa[3] = pack_f16x2(a[(g + 8) * 16 + c0 + 8], a[(g + 8) * 16 + c0 + 9]);
        fb[0] = pack_f16x2(b[c0 * 8 + g], b[(c0 + 1) * 8 + g]);
        fb[1] = pack_f16x2(b[(c0 + 8) * 8 + g], b[(c0 + 9) * 8 + g]);
    } else {
        fa[0] = pack_bf16x2(a[g * 16 + c0], a[g * 16 + c0 + 1]);
        fa[1] = pack_bf16x2(a[(g + 8) * 16 + c0], a[(g + 8) * 16 + c0 + 1]);
        fa[2] = pack_bf16x2(a[g * 16 + c0 + 8], a[g * 16 + c0 + 9]);
        fa[3] = pack_bf16x2(a[(g + 8) * 16 + c0 + 8], a[(g + 8) * 16 + c0 + 9]);
        fb[0] = pack_bf16x2(b[c0 * 8 + g], b[(c0 + 1) * 8 + g]);
        fb[1] = pack_bf16x2(b[(c0 + 8) * 8 + g], b[(c0 + 9) * 8 + g]);
    }
    fc[0] = c[g * 8 + c0], fc[1] = c[g * 8 + c0 + 1];
    fc[2] = c[(g + 8) * 8 + c0], fc[3] = c[(g + 8) * 8 + c0 + 1];
    if (f16)
        mma_16816_f16(fd, fa, fb, fc);
    else
        mma_16816_bf16(fd, fa, fb, fc);
    d[g * 8 + c0] = fd[0], d[g * 8 + c0 + 1] = fd[1];
    d[(g + 8) * 8 + c0] = fd[2], d[(g + 8) * 8 + c0 + 1] = fd[3];
}

// A 16x16 tile of u16 with tile[r][c] = 16r + c in shared memory (rows padded to 24
// elements), read by ldmatrix: mode 0 x4, 1 x2, 2 x4.trans, 3 x2.trans. Matrix j is the
// quadrant (rows 8(j&1).., cols 8(j>>1)..). out[(lane*4 + j)*2 + half] = the 16-bit
// value (-1 where the variant has no register j). One warp.
KERNEL(test_ldmatrix)(float* out, int mode) {
    SHARED(u16, tile, [16][24]);
    const int lane = threadIdx.x;
    for (int i = lane * 8; i < lane * 8 + 8; i++) tile[i / 16][i % 16] = (u16)i;
    __syncwarp();
    const int j = lane / 8, row = lane % 8 + (j & 1) * 8, col = (j >> 1) * 8;
    const void* p = &tile[row][col];
    u32 r[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    int n = 4;
    switch (mode) {
        case 0: ldmatrix_x4(r, p); break;
        case 1: ldmatrix_x2(r, p); n = 2; break;
        case 2: ldmatrix_x4_trans(r, p); break;
        default: ldmatrix_x2_trans(r, p); n = 2; break;
    }
    for (int k = 0; k < 4; k++) {
        out[(lane * 4 + k) * 2] = k < n ? (float)(r[k] & 0xffffu) : -1.0f;
        out[(lane * 4 + k) * 2 + 1] = k < n ? (float)(r[k] >> 16) : -1.0f;
    }
}

// Copies in[0..n) (n a multiple of 8, ≤ 64*8) through dynamic shared memory with
// cp.async in two commit groups. stale[i] = the shared value read before any wait (on
// the emulator always NaN: copies land at the wait). One block of 64 threads.
KERNEL(test_cp_async)(float* out, float* stale, const float* in, int n) {
    DYN_SHARED(float, buf);
    const int t = threadIdx.x, half = n / 2;
    for (int i = 4 * t; i < half; i += 4 * 64) cp_async_16(&buf[i], &in[i]);
    cp_async_commit();
    for (int i = half + 4 * t; i < n; i += 4 * 64) cp_async_16(&buf[i], &in[i]);
    cp_async_commit();
    for (int i = 4 * t; i < n; i += 4 * 64) stale[i] = buf[i];
    cp_async_wait<1>();  // the first group has landed
    __syncthreads();
    for (int i = t; i < half; i += 64) out[i] = buf[i];
    cp_async_wait_all();
    __syncthreads();
    for (int i = half + t; i < n; i += 64) out[i] = buf[i];
}

// Warp shuffles and votes; 64 threads (two warps), 16 outputs per thread (see the
// test for the expected values). Votes are stored as bit patterns.
KERNEL(test_shuffles)(float* out) {
    const int tid = threadIdx.x, lane = tid & 31;
    const float v = (float)(3 * tid + 1);
    const u32 full = 0xffffffffu;
    float* o = out + 16 * tid;
    o[0] = __shfl_xor_sync(full, v, 1);
    o[1] = __shfl_xor_sync(full, v, 5);
    o[2] = __shfl_down_sync(full, v, 3);
    o[3] = __shfl_up_sync(full, v, 2);
    o[4] = __shfl_sync(full, v, 7);
    o[5] = __shfl_sync(full, v, 7, 8);
    o[6] = __shfl_down_sync(full, v, 3, 16);
    o[7] = __shfl_xor_sync(full, v, 16, 16);
    o[8] = __shfl_up_sync(full, v, 1, 8);
    o[9] = (float)__shfl_sync(full, tid, 31 - lane);
    o[10] = __uint_as_float(__ballot_sync(full, lane % 3 == 0));
    o[11] = (float)__any_sync(full, lane == 5);
    o[12] = (float)__all_sync(full, lane < 32);
    o[13] = (float)__all_sync(full, lane != 7);
    // Two disjoint half-warp groups at once.
    const u32 half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    o[14] = __shfl_sync(half, v, lane ^ 1);
    o[15] = __uint_as_float(__ballot_sync(half, lane & 1));
}

// Half the warp waits at __syncwarp for the other half, which waits at __syncthreads
// for the first: a planted deadlock. One warp.
KERNEL(test_deadlock)(float* out) {
    const int t = threadIdx.x;
    if (t < 16)
        __syncwarp();
    else
        __syncthreads();
    out[t] = 1.0f;
}

// Lanes 0-15 shuffle among themselves but read lane 20, outside the mask (planted).
KERNEL(test_bad_shuffle)(float* out) {
    const int t = threadIdx.x;
    if (t < 16) out[t] = __shfl_sync(0x0000ffffu, (float)t, 20);
}

// Conversions of in[i]: out[6i..6i+6) = bf16 bits, bf16 round trip, f16 bits, f16
// round trip, low half of pack_bf16x2(x, -x), high half of pack_f16x2(-x, x).
KERNEL(test_convert)(float* out, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = in[i];
    out[6 * i + 0] = (float)f32_to_bf16(x);
    out[6 * i + 1] = bf16_to_f32(f32_to_bf16(x));
    out[6 * i + 2] = (float)f32_to_f16(x);
    out[6 * i + 3] = f16_to_f32(f32_to_f16(x));
    out[6 * i + 4] = (float)(pack_bf16x2(x, -x) & 0xffffu);
    out[6 * i + 5] = (float)(pack_f16x2(-x, x) >> 16);
}

// Decodes every 16-bit pattern h: out[2h] = bf16_to_f32(h), out[2h+1] = f16_to_f32(h).
KERNEL(test_decode)(float* out) {
    const int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= 65536) return;
    out[2 * h] = bf16_to_f32((u16)h);
    out[2 * h + 1] = f16_to_f32((u16)h);
}

// `iters` barriers, for timing.
KERNEL(test_sync_cost)(float* out, int iters) {
    for (int i = 0; i < iters; i++) __syncthreads();
    out[threadIdx.x] = (float)iters;
}

// `iters` full-warp butterfly sums (5 shuffles each), for timing.
KERNEL(test_shuffle_cost)(float* out, int iters) {
    float v = (float)threadIdx.x;
    for (int i = 0; i < iters; i++) v = warp_sum(v) * (1.0f / 32.0f);
    out[threadIdx.x] = v;
}

// C[M][N] = A[M][K] · B[K][N], row-major, 16x16 tiles through shared memory; block
// (16,16), grid (ceil(N/16), ceil(M/16)). Tails are zero-padded.
KERNEL(test_sgemm)(float* C, const float* A, const float* B, int M, int N, int K) {
    SHARED(float, As, [16][16]);
    SHARED(float, Bs, [16][17]);  // padded: column reads would otherwise hit one bank
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += 16) {
        As[ty][tx] = row < M && k0 + tx < K ? A[row * K + k0 + tx] : 0.0f;
        Bs[ty][tx] = k0 + ty < K && col < N ? B[(k0 + ty) * N + col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < 16; k++) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();  // the next tile overwrites what others may still read
    }
    if (row < M && col < N) C[row * N + col] = acc;
}

// Thread `bad` fails an assertion.
KERNEL(test_assert)(float* out, int bad) {
    EMU_ASSERT((int)threadIdx.x != bad);
    out[threadIdx.x] = 1.0f;
}

// Thread 3 writes far from any buffer (planted): a fault, reported, not a crash.
KERNEL(test_wild_write)(float* out, int offset) {
    if (threadIdx.x == 3) ((float*)0)[offset] = 1.0f;
    out[threadIdx.x] = 1.0f;
}

// Unbounded-looking recursion with a big frame: overflows the emulator's 64 KiB fiber
// stack (and the GPU's per-thread stack) for large `depth` (planted).
DEVICE float deep(int depth, volatile float* sink) {
    float pad[256];
    for (int i = 0; i < 256; i++) pad[i] = sink[i % 4] + (float)depth;
    if (depth == 0) return pad[7];
    return deep(depth - 1, sink) + pad[depth % 256];
}
KERNEL(test_stack_overflow)(float* out, int depth) { out[threadIdx.x] = deep(depth, out); }

// 33 threads write a 32-element shared array (planted overrun).
KERNEL(test_shared_overrun)(float* out) {
    SHARED(float, small, [32]);
    small[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = small[threadIdx.x % 32];
}

// Even threads write their slot, then everyone reads its own: odd slots were never
// written in this block (the emulator gives NaN). 64 threads per block.
KERNEL(test_uninit_shared)(float* out) {
    SHARED(float, s, [64]);
    const int t = threadIdx.x;
    if (t % 2 == 0) s[t] = (float)(t + blockIdx.x);
    __syncthreads();
    out[blockIdx.x * 64 + t] = s[t];
}

// Threads ≥ 100 of 128 return early; the rest still meet at __syncthreads and at
// a full-mask __syncwarp (exited lanes are not waited for).
KERNEL(test_early_exit)(float* out) {
    SHARED(float, s, [128]);
    const int t = threadIdx.x;
    if (t >= 100) return;
    s[t] = (float)t;
    __syncthreads();
    __syncwarp();
    out[t] = s[99 - t];
}

// out[block] = sum of in[block*blockDim.x ...] via block_sum, twice (the second call
// reuses the scratch) and the second result doubled. Block size a multiple of 32.
KERNEL(test_block_sum)(float* out, const float* in) {
    SHARED(float, scratch, [32]);
    const float x = in[blockIdx.x * blockDim.x + threadIdx.x];
    const float s1 = block_sum(x, scratch);
    const float s2 = block_sum(2.0f * x, scratch);
    if (threadIdx.x == 0) {
        out[2 * blockIdx.x] = s1;
        out[2 * blockIdx.x + 1] = s2;
    }
}

// ---- Planted access patterns for the access tracer (tests/counters.rs) ----

// Shared-memory words at a stride: the 32 lanes fill a 1024-word array (32 stride-1
// store requests), then lane i reads word i·stride: stride 1, 2 and 32 hit 1, 2 and 32
// distinct words in one bank (1, 2 and 32 wavefronts). One warp.
KERNEL(test_bank_stride)(float* out, int stride) {
    SHARED(float, words, [1024]);
    const int lane = threadIdx.x;
    for (int i = lane; i < 1024; i += 32) words[i] = (float)i;
    __syncwarp();
    out[lane] = words[(lane * stride) & 1023];
}

// out[i] = in[i·stride] for i < n: stride 1 is a coalesced copy (a warp's 128 bytes
// in 4 sectors), stride 32 floats puts every lane in a sector of its own (32).
KERNEL(test_global_copy)(float* out, const float* in, int n, int stride) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i * stride];
}

// A planted shared-memory race: thread t writes its cell and reads the cell of
// thread t^32, in the other warp, with no barrier between. Two warps.
KERNEL(test_shared_race)(float* out) {
    SHARED(float, cell, [64]);
    const int t = threadIdx.x;
    cell[t] = (float)t;  // tracer: planted race, the write
    out[t] = cell[t ^ 32];  // tracer: planted race, the read
}

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(test_neighbour, test_oob_write, test_mma, test_ldmatrix, test_cp_async, test_shuffles, test_deadlock,
             test_bad_shuffle, test_convert, test_decode, test_sync_cost, test_shuffle_cost, test_sgemm, test_assert,
             test_wild_write, test_stack_overflow, test_shared_overrun, test_uninit_shared, test_early_exit,
             test_block_sum, test_bank_stride, test_global_copy, test_shared_race)
