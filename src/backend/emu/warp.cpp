// warp.cpp — warp collectives with PTX .sync semantics.
//
// A lane deposits its operands in its fiber, marks itself arrived in the warp's
// bitmask and blocks. The group of a lane with mask M is complete when every
// non-exited lane of M has arrived; the lane (or exiting thread) that completes it
// computes every member's result and makes them all runnable. So disjoint sub-warp
// groups proceed independently, an exited lane is never waited for, and a lane that
// reads a non-participant gets NaN bits and an error report. Bitmasks, not scans of
// 32 lanes per arrival: the scan was measured at twice the cost (a warp shuffle costs
// about 2.5x a block barrier with bitmasks, 5x with scans).
//
// mma and ldmatrix implement the PTX ISA fragment layouts exactly (see common.cuh).
#include "runtime.h"

namespace emu {
namespace {

constexpr u64 kNanBits = 0xffffffff7fffffffull;  // NaN as f32 and as f64

Fiber& lane_fiber(u32 warp, u32 lane) { return rt().fibers[warp * 32 + lane]; }

const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::Sync: return "__syncwarp";
        case WarpOp::Shfl: return "__shfl*_sync";
        case WarpOp::Vote: return "__ballot/__any/__all_sync";
        case WarpOp::MmaBf16: return "mma_16816_bf16";
        case WarpOp::MmaF16: return "mma_16816_f16";
        case WarpOp::Ldmatrix: return "ldmatrix";
    }
    return "?";
}

std::string warp_where(u32 warp) {
    const uint3 b = emu_block.block_idx;
    char buf[64];
    snprintf(buf, sizeof buf, "block (%u,%u,%u) warp %u", b.x, b.y, b.z, warp);
    return buf;
}

float lo_half(u32 v, bool f16) { return f16 ? f16_to_f32((u16)(v & 0xffff)) : bf16_to_f32((u16)(v & 0xffff)); }
float hi_half(u32 v, bool f16) { return f16 ? f16_to_f32((u16)(v >> 16)) : bf16_to_f32((u16)(v >> 16)); }

// D = A·B + C for one m16n8k16 tile. Products of 16-bit floats are exact in f64 and
// so is their sum here, so D is the exact result rounded once to f32 (the tensor
// core's own accumulation order is unspecified; tests allow for that).
void do_mma(u32 warp, bool f16) {
    float A[16][16], B[16][8], C[16][8];
    for (u32 l = 0; l < 32; l++) {
        const Fiber& x = lane_fiber(warp, l);
        const u32 g = l >> 2, t = l & 3;
        A[g][2 * t] = lo_half(x.in[0], f16), A[g][2 * t + 1] = hi_half(x.in[0], f16);
        A[g + 8][2 * t] = lo_half(x.in[1], f16), A[g + 8][2 * t + 1] = hi_half(x.in[1], f16);
        A[g][2 * t + 8] = lo_half(x.in[2], f16), A[g][2 * t + 9] = hi_half(x.in[2], f16);
        A[g + 8][2 * t + 8] = lo_half(x.in[3], f16), A[g + 8][2 * t + 9] = hi_half(x.in[3], f16);
        B[2 * t][g] = lo_half(x.in[4], f16), B[2 * t + 1][g] = hi_half(x.in[4], f16);
        B[2 * t + 8][g] = lo_half(x.in[5], f16), B[2 * t + 9][g] = hi_half(x.in[5], f16);
        C[g][2 * t] = x.cin[0], C[g][2 * t + 1] = x.cin[1];
        C[g + 8][2 * t] = x.cin[2], C[g + 8][2 * t + 1] = x.cin[3];
    }
    for (u32 l = 0; l < 32; l++) {
        Fiber& x = lane_fiber(warp, l);
        const u32 g = l >> 2, t = l & 3;
        for (u32 i = 0; i < 4; i++) {
            const u32 row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
            double acc = C[row][col];
            for (u32 k = 0; k < 16; k++) acc += (double)A[row][k] * (double)B[k][col];
            x.out[i] = __float_as_uint((float)acc);
        }
    }
}

void do_ldmatrix(u32 warp, u32 count, bool trans) {
    // Lane j*8+i holds the address of row i of matrix j; each row is 8 b16 values.
    for (u32 j = 0; j < count; j++)
        for (u32 i = 0; i < 8; i++) {
            const void* p = lane_fiber(warp, j * 8 + i).addr;
            if (((uintptr_t)p & 15) || !in_shared(p, 16)) {
                report("%s: ldmatrix row address %p of lane %u is not 16-byte-aligned shared memory",
                       warp_where(warp).c_str(), p, j * 8 + i);
                for (u32 l = 0; l < 32; l++)
                    for (u32 k = 0; k < 4; k++) lane_fiber(warp, l).out[k] = 0xffffffffu;
                return;
            }
        }
    auto at = [&](u32 j, u32 row, u32 col) {
        u16 v;
        memcpy(&v, static_cast<const u8*>(lane_fiber(warp, j * 8 + row).addr) + 2 * col, 2);
        return (u32)v;
    };
    for (u32 l = 0; l < 32; l++) {
        Fiber& x = lane_fiber(warp, l);
        const u32 q = l >> 2, r = 2 * (l & 3);
        for (u32 j = 0; j < count; j++)
            x.out[j] = trans ? at(j, r, q) | at(j, r + 1, q) << 16 : at(j, q, r) | at(j, q, r + 1) << 16;
    }
}

// Computes the group `need` (all arrived) and makes its lanes runnable.
void complete(u32 warp, u32 need) {
    Runtime& r = rt();
    Fiber& first = lane_fiber(warp, __builtin_ctz(need));
    for (u32 m = need; m; m &= m - 1) {
        const Fiber& g = lane_fiber(warp, __builtin_ctz(m));
        if (g.op != first.op || g.mask != first.mask || g.count != first.count) {
            report("%s: lanes %u and %u meet at different warp collectives (%s, mask 0x%08x vs %s, mask 0x%08x)",
                   warp_where(warp).c_str(), first.regs.lane, g.regs.lane, op_name(first.op), first.mask,
                   op_name(g.op), g.mask);
            break;
        }
    }
    switch (first.op) {
        case WarpOp::Sync: trace_warp_sync(warp, need); break;
        case WarpOp::Shfl: {
            u32 readers = 0, sources = 0;  // one report per group, not per lane
            for (u32 m = need; m; m &= m - 1) {
                Fiber& g = lane_fiber(warp, __builtin_ctz(m));
                const u32 src = (u32)g.src & 31;
                if (need >> src & 1) {
                    g.result = lane_fiber(warp, src).val;
                } else {
                    readers |= m & -m;
                    sources |= 1u << src;
                    g.result = kNanBits;
                }
            }
            if (readers)
                report("%s: lanes 0x%08x read lanes 0x%08x in a shuffle (mask 0x%08x), which did not participate "
                       "(outside the mask, exited or absent)",
                       warp_where(warp).c_str(), readers, sources, first.mask);
            break;
        }
        case WarpOp::Vote: {
            u32 ballot = 0;
            for (u32 m = need; m; m &= m - 1)
                if (lane_fiber(warp, __builtin_ctz(m)).val) ballot |= m & -m;
            for (u32 m = need; m; m &= m - 1) lane_fiber(warp, __builtin_ctz(m)).result = ballot | (u64)need << 32;
            break;
        }
        case WarpOp::MmaBf16:
        case WarpOp::MmaF16:
        case WarpOp::Ldmatrix:
            if (need != ~0u) {
                report("%s: %s needs all 32 lanes, lanes 0x%08x are exited or absent", warp_where(warp).c_str(),
                       op_name(first.op), ~need);
                for (u32 m = need; m; m &= m - 1)
                    for (u32 k = 0; k < 4; k++) lane_fiber(warp, __builtin_ctz(m)).out[k] = 0xffffffffu;
            } else if (first.op == WarpOp::Ldmatrix) {
                do_ldmatrix(warp, first.count & 0xff, first.count >> 8);
            } else {
                do_mma(warp, first.op == WarpOp::MmaF16);
                trace_mma();
            }
            break;
    }
    r.warps[warp].arrived &= ~need;
    u32 tids[32], n = 0;
    for (u32 m = need; m; m &= m - 1) tids[n++] = warp * 32 + __builtin_ctz(m);
    make_runnable(tids, n);
}

bool try_complete(u32 warp, u32 mask) {
    const Warp& w = rt().warps[warp];
    const u32 need = mask & w.live;
    if (need == 0 || (w.arrived & need) != need) return false;
    complete(warp, need);
    return true;
}

// Arrives at a warp collective with the operands already in the lane's fiber;
// returns once the group is complete.
void arrive(WarpOp op, u32 mask) {
    Runtime& r = rt();
    Fiber& f = cur();
    const u32 bit = 1u << f.regs.lane;
    if (!(mask & bit)) {
        report("%s: %s with mask 0x%08x, which does not include the calling lane", where().c_str(), op_name(op),
               mask);
        mask |= bit;
    }
    f.op = op;
    f.mask = mask;
    f.state = State::AtWarpBarrier;
    r.warps[f.regs.warp].arrived |= bit;
    try_complete(f.regs.warp, mask);
    block_now(f);
}

}  // namespace

void warp_recheck(u32 warp) {
    const Warp& w = rt().warps[warp];
    for (u32 pending = w.arrived; pending; pending &= w.arrived) {
        const u32 lane = __builtin_ctz(pending);
        const u32 mask = lane_fiber(warp, lane).mask;
        try_complete(warp, mask);
        pending &= ~(mask | 1u << lane);
    }
}

std::string warp_waits(u32 warp) {
    const Warp& w = rt().warps[warp];
    std::string s;
    for (u32 pending = w.arrived; pending;) {
        const Fiber& f = lane_fiber(warp, __builtin_ctz(pending));
        u32 group = 0;  // arrived lanes with the same collective and mask
        for (u32 m = pending; m; m &= m - 1) {
            const Fiber& g = lane_fiber(warp, __builtin_ctz(m));
            if (g.op == f.op && g.mask == f.mask) group |= m & -m;
        }
        const u32 missing = f.mask & w.live & ~w.arrived;
        u32 at_bar = 0;
        for (u32 m = missing; m; m &= m - 1)
            if (lane_fiber(warp, __builtin_ctz(m)).state == State::AtBlockBarrier) at_bar |= m & -m;
        char buf[256];
        snprintf(buf, sizeof buf,
                 "; warp %u: lanes 0x%08x wait at %s (mask 0x%08x) for lanes 0x%08x (0x%08x of them at "
                 "__syncthreads)",
                 warp, group, op_name(f.op), f.mask, missing, at_bar);
        s += buf;
        pending &= ~group;
    }
    return s;
}

void syncwarp(u32 mask) {
    cur().count = 0;
    arrive(WarpOp::Sync, mask);
}

u64 shfl(u32 mask, u64 bits, int src) {
    Fiber& f = cur();
    f.val = bits;
    f.src = src;
    f.count = 0;
    arrive(WarpOp::Shfl, mask);
    return f.result;
}

u64 vote(u32 mask, bool pred) {
    Fiber& f = cur();
    f.val = pred;
    f.count = 0;
    arrive(WarpOp::Vote, mask);
    return f.result;
}

void mma_16816(int kind, float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    Fiber& f = cur();
    memcpy(f.in, a, 16);
    memcpy(f.in + 4, b, 8);
    memcpy(f.cin, c, 16);  // copied before d is written: d may alias c
    f.count = 0;
    arrive(kind ? WarpOp::MmaF16 : WarpOp::MmaBf16, ~0u);
    for (int i = 0; i < 4; i++) d[i] = __uint_as_float(f.out[i]);
}

void ldmatrix(u32* r, int count, bool trans, const void* smem) {
    Fiber& f = cur();
    // Lane j*8+i gives row i of matrix j: 16 bytes read from shared memory.
    if (tracing() && f.regs.lane < 8u * (u32)count)
        trace_access(smem, 16, false, kEmuLdmatrix, __builtin_return_address(0));
    f.addr = smem;
    f.count = (u32)count | (u32)trans << 8;
    arrive(WarpOp::Ldmatrix, ~0u);
    memcpy(r, f.out, 4 * count);
}

}  // namespace emu
