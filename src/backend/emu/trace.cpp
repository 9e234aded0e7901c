// trace.cpp — memory-access tracing for the emulator's profiling mode.
//
// The kernels are compiled a second time (build.rs: `emu_traced_entry_<name>`) with
// GCC's kernel-address instrumentation and a call threshold of 0, so every load and
// store the compiler emits becomes a call to `__asan_{load,store}N_noabort(addr)`,
// defined here. The runtime's own primitives that touch memory (ldmatrix, cp.async)
// report their accesses explicitly. Ordinary launches run the uninstrumented copy:
// tracing costs nothing unless asked for.
//
// An access is kept when it falls in shared memory (the runtime's arena) or in a
// global buffer the launch may touch (the ranges Rust passes); everything else
// (stack, thread registers, launch arguments) is ignored. Kept accesses are filed per
// thread in program order. At every block barrier (and at the end of the block) the
// interval is closed: the k-th execution of instruction `pc` by each lane of a warp
// is one warp-level request, the way a GPU warp issues it in lockstep, and each
// request is costed:
//   global: 32-byte sectors touched vs ceil(unique bytes / 32) (coalescing);
//   shared: wavefronts (per phase — 32 lanes for ≤4-byte accesses, 16 for 8-byte, 8
//           for 16-byte and per ldmatrix 8x8 matrix — the most distinct 4-byte words
//           any one of the 32 banks must deliver) vs ceil(unique bytes / 128).
// Counters accumulate per instruction (`pc`), weighted by the number of blocks the
// traced block stands for, and an instruction seen in two or more barrier intervals
// of one block is marked as part of the main loop.
//
// Races: every shared-memory byte has a shadow (last writer, readers, the barrier
// interval and warp-sync generation of each). Two threads touching one byte between
// the same two block barriers, at least one writing, with no __syncwarp between them
// if they share a warp, is a race, reported with both instructions.
#include <dlfcn.h>

#include <algorithm>
#include <unordered_map>
#include <vector>

#include "runtime.h"

namespace emu {

namespace {

constexpr u32 kMaxRaces = 16;
constexpr u16 kManyWarps = 0xffff;

// One kept access of one thread.
struct Rec {
    u64 pc;
    u64 addr;
    u32 size;
    u32 kind;
};

// The lanes of one warp-level request.
struct Req {
    u64 pc;
    u32 kind, size, mask;
    u64 addr[32];
};

// One instruction's counters within the block being traced.
struct SiteAcc {
    u32 kind = 0, size = 0;
    u32 last_interval = ~0u, intervals = 0;
    double requests = 0, lanes = 0, sectors = 0, ideal = 0, wavefronts = 0, bytes = 0;
};

struct Shadow {
    u32 epoch;
    u16 writer;  // tid + 1, 0 = none
    u16 rwarp;   // warp of the readers, kManyWarps when several
    u32 wgen, rgen;
    u32 rmask;   // reader lanes (in rwarp)
    u64 wpc, rpc;
};

struct PairKey {
    u64 pc;
    u32 occ;
    bool operator==(const PairKey& o) const { return pc == o.pc && occ == o.occ; }
};
struct PairHash {
    size_t operator()(const PairKey& k) const { return (size_t)(k.pc * 0x9e3779b97f4a7c15ull) ^ k.occ; }
};

}  // namespace

struct Tracer {
    EmuTraceRequest req;
    std::vector<u32> blocks;      // copied from the request
    std::vector<double> weights;
    std::vector<u64> bufs;        // (start, end) pairs
    // the block being traced
    double weight = 1.0;
    u32 interval = 0;             // barrier interval within the block
    u32 epoch = 1;                // barrier interval within the launch (race shadow)
    std::vector<Rec> recs[kMaxThreads];
    std::unordered_map<u64, SiteAcc> block_sites;
    std::vector<u64> footprint;   // sector << 1 | written
    double block_mma = 0, block_barriers = 0;
    // launch results
    std::unordered_map<u64, EmuSite> sites;
    std::vector<EmuSite> site_list;
    double mma = 0, barriers = 0, blocks_run = 0;
    std::vector<EmuRace> races;
    u32 races_total = 0;
    std::vector<std::vector<u64>> fp_sectors;
    std::vector<EmuFootprint> fps;
    // races
    std::vector<Shadow> shadow;   // one per arena byte
    u32 wgen[kMaxWarps];
    u32 pair[kMaxWarps][32][32];  // warp sync generation that last included both lanes
    // scratch
    std::unordered_map<PairKey, u32, PairHash> groups;
    std::unordered_map<u64, u32> occ;
    std::vector<Req> reqs;
    std::vector<u64> scratch;
    std::vector<std::pair<u64, u64>> spans;
};

namespace {

__thread Tracer* g_tracer;  // the launch being traced
__thread Tracer* g_last;    // the last traced launch's results (freed by the next begin)

u64 arena_base() { return (u64)rt().arena; }

// Bytes covered by the union of [a, a+n) spans.
u64 union_bytes(std::vector<std::pair<u64, u64>>& s) {
    std::sort(s.begin(), s.end());
    u64 total = 0, end = 0;
    for (auto& [a, b] : s) {
        if (b <= end) continue;
        total += b - std::max(a, end);
        end = b;
    }
    return total;
}

// The most distinct 4-byte words any bank must deliver for the lanes in `mask`.
u32 bank_wavefronts(Tracer& t, const Req& q, u32 mask, u32 size) {
    t.scratch.clear();
    for (u32 m = mask; m; m &= m - 1) {
        const u64 a = q.addr[__builtin_ctz(m)] - arena_base();
        for (u64 w = a >> 2; w <= (a + size - 1) >> 2; w++) t.scratch.push_back(w);
    }
    if (t.scratch.empty()) return 0;
    std::sort(t.scratch.begin(), t.scratch.end());
    t.scratch.erase(std::unique(t.scratch.begin(), t.scratch.end()), t.scratch.end());
    u32 per_bank[32] = {0}, most = 0;
    for (u64 w : t.scratch) most = std::max(most, ++per_bank[w & 31]);
    return most;
}

void cost(Tracer& t, const Req& q) {
    SiteAcc& s = t.block_sites[q.pc];
    s.kind = q.kind, s.size = q.size;
    if (s.last_interval != t.interval) s.last_interval = t.interval, s.intervals++;
    s.requests += 1;
    s.lanes += __builtin_popcount(q.mask);
    t.spans.clear();
    for (u32 m = q.mask; m; m &= m - 1) {
        const u64 a = q.addr[__builtin_ctz(m)];
        t.spans.push_back({a, a + q.size});
    }
    const u64 unique = union_bytes(t.spans);
    s.bytes += (double)unique;
    if (q.kind == kEmuGlobalLoad || q.kind == kEmuGlobalStore || q.kind == kEmuAsyncLoad) {
        t.scratch.clear();
        for (auto& [a, b] : t.spans)
            for (u64 sec = a >> 5; sec <= (b - 1) >> 5; sec++) t.scratch.push_back(sec);
        std::sort(t.scratch.begin(), t.scratch.end());
        t.scratch.erase(std::unique(t.scratch.begin(), t.scratch.end()), t.scratch.end());
        s.sectors += (double)t.scratch.size();
        s.ideal += (double)((unique + 31) / 32);
        if (t.req.footprints) {
            const u64 w = q.kind == kEmuGlobalStore;
            for (u64 sec : t.scratch) t.footprint.push_back(sec << 1 | w);
        }
        return;
    }
    u32 waves = 0;
    if (q.kind == kEmuLdmatrix) {
        // One 8x8 matrix per phase: lanes 8j..8j+7 give its eight 16-byte rows.
        u32 phases = 0;
        for (u32 j = 0; j < 4; j++) {
            const u32 m = q.mask & (0xffu << (8 * j));
            if (m) phases++, waves += bank_wavefronts(t, q, m, 16);
        }
        s.ideal += phases;
    } else {
        const u32 lanes = q.size <= 4 ? 32 : q.size == 8 ? 16 : 8;
        for (u32 p = 0; p < 32; p += lanes) {
            const u32 m = q.mask & (lanes == 32 ? ~0u : ((1u << lanes) - 1) << p);
            if (m) waves += bank_wavefronts(t, q, m, q.size);
        }
        s.ideal += (double)std::max<u64>(1, (unique + 127) / 128);
    }
    s.wavefronts += waves;
}

// Closes a barrier interval: groups each warp's accesses into requests and costs them.
void flush_interval(Tracer& t) {
    Runtime& r = rt();
    for (u32 w = 0; w < r.nwarps; w++) {
        t.groups.clear();
        t.reqs.clear();
        for (u32 lane = 0; lane < 32 && w * 32 + lane < r.nthreads; lane++) {
            std::vector<Rec>& recs = t.recs[w * 32 + lane];
            t.occ.clear();
            for (const Rec& a : recs) {
                const u32 o = t.occ[a.pc]++;
                auto [it, fresh] = t.groups.try_emplace(PairKey{a.pc, o}, (u32)t.reqs.size());
                if (fresh) t.reqs.push_back(Req{a.pc, a.kind, a.size, 0, {}});
                Req& q = t.reqs[it->second];
                q.addr[lane] = a.addr;
                q.mask |= 1u << lane;
            }
            recs.clear();
        }
        for (const Req& q : t.reqs) cost(t, q);
    }
    t.interval++;
    t.epoch++;
}

bool synced(Tracer& t, u32 a, u32 b, u32 gen_at) {
    return a / 32 == b / 32 && t.pair[a / 32][a % 32][b % 32] > gen_at;
}

void add_race(Tracer& t, u32 kind, u64 pc_first, u32 tid_first, u64 pc_second, u32 tid_second, u64 off) {
    t.races_total++;
    for (const EmuRace& e : t.races)
        if (e.pc_first == pc_first && e.pc_second == pc_second && e.kind == kind) return;
    if (t.races.size() >= kMaxRaces) return;
    Runtime& r = rt();
    EmuRace e{};
    e.pc_first = pc_first, e.pc_second = pc_second;
    e.tid_first = tid_first, e.tid_second = tid_second;
    e.block[0] = emu_block.block_idx.x, e.block[1] = emu_block.block_idx.y, e.block[2] = emu_block.block_idx.z;
    e.kind = kind;
    e.array = "dynamic shared memory";
    e.offset = (u32)(off - shared_dyn_offset());
    for (int id : r.active) {
        const SlotInfo& s = r.slots[id];
        if (off >= s.offset && off < s.offset + s.bytes) e.array = s.name, e.offset = (u32)(off - s.offset);
    }
    t.races.push_back(e);
}

void check_race(Tracer& t, u64 off, u32 size, bool write, u64 pc) {
    const u32 tid = cur().regs.linear, warp = tid / 32, lane = tid % 32;
    for (u64 b = off; b < off + size && b < t.shadow.size(); b++) {
        Shadow& s = t.shadow[b];
        if (s.epoch != t.epoch) s = Shadow{t.epoch, 0, 0, 0, 0, 0, 0, 0};
        if (s.writer && s.writer - 1u != tid && !synced(t, s.writer - 1u, tid, s.wgen)) {
            add_race(t, write ? 2 : 1, s.wpc, s.writer - 1u, pc, tid, b);
            return;
        }
        if (write && s.rmask) {
            bool race = s.rwarp == kManyWarps || s.rwarp != warp;
            for (u32 m = race ? 0 : s.rmask & ~(1u << lane); m && !race; m &= m - 1)
                race = t.pair[warp][__builtin_ctz(m)][lane] <= s.rgen;
            if (race) {
                const u32 reader = s.rwarp == kManyWarps ? 0 : s.rwarp * 32 + __builtin_ctz(s.rmask);
                add_race(t, 0, s.rpc, reader, pc, tid, b);
                return;
            }
        }
        if (write) {
            s.writer = (u16)(tid + 1), s.wgen = t.wgen[warp], s.wpc = pc;
            s.rmask = 0;
        } else {
            if (!s.rmask) s.rwarp = (u16)warp;
            else if (s.rwarp != warp) s.rwarp = kManyWarps;
            s.rmask |= 1u << lane;
            s.rgen = std::max(s.rgen, t.wgen[warp]);
            s.rpc = pc;
        }
    }
}

}  // namespace

bool tracing() { return g_tracer != nullptr; }

const u32* trace_blocks(u32* n) {
    if (!g_tracer || g_tracer->blocks.empty()) return nullptr;
    *n = (u32)(g_tracer->blocks.size() / 3);
    return g_tracer->blocks.data();
}

void trace_block_begin(u32 index) {
    Tracer* t = g_tracer;
    if (!t) return;
    t->weight = t->weights.empty() ? 1.0 : t->weights[index];
    t->interval = 0;
    t->epoch++;
    t->block_sites.clear();
    t->footprint.clear();
    t->block_mma = t->block_barriers = 0;
    if (t->req.races) {
        memset(t->wgen, 0, sizeof t->wgen);
        memset(t->pair, 0, sizeof t->pair);
        if (t->shadow.empty()) t->shadow.assign(shared_arena_bytes(), Shadow{0, 0, 0, 0, 0, 0, 0, 0});
    }
}

void trace_block_end() {
    Tracer* t = g_tracer;
    if (!t) return;
    flush_interval(*t);
    t->blocks_run += t->weight;
    t->mma += t->block_mma * t->weight;
    t->barriers += t->block_barriers * t->weight;
    for (auto& [pc, a] : t->block_sites) {
        EmuSite& s = t->sites[pc];
        s.pc = pc, s.kind = a.kind, s.size = a.size;
        s.loop |= a.intervals >= 2;
        s.requests += a.requests * t->weight;
        s.lanes += a.lanes * t->weight;
        s.sectors += a.sectors * t->weight;
        s.ideal += a.ideal * t->weight;
        s.wavefronts += a.wavefronts * t->weight;
        s.bytes += a.bytes * t->weight;
    }
    if (t->req.footprints) {
        std::vector<u64>& f = t->footprint;
        std::sort(f.begin(), f.end());
        // A sector both read and written keeps both entries (they differ in bit 0).
        f.erase(std::unique(f.begin(), f.end()), f.end());
        t->fp_sectors.push_back(f);
        const uint3 b = emu_block.block_idx;
        t->fps.push_back(EmuFootprint{{b.x, b.y, b.z}, 0, nullptr});
    }
}

void trace_barrier() {
    Tracer* t = g_tracer;
    if (!t) return;
    t->block_barriers += 1;
    flush_interval(*t);
}

void trace_warp_sync(u32 warp, u32 mask) {
    Tracer* t = g_tracer;
    if (!t || !t->req.races) return;
    const u32 g = ++t->wgen[warp];
    for (u32 a = mask; a; a &= a - 1)
        for (u32 b = mask; b; b &= b - 1) t->pair[warp][__builtin_ctz(a)][__builtin_ctz(b)] = g;
}

void trace_mma() {
    if (g_tracer) g_tracer->block_mma += 1;
}

void trace_access(const void* p, u32 size, bool write, u32 kind, const void* pc) {
    Tracer* t = g_tracer;
    if (!t || !on_fiber()) return;
    const u64 a = (u64)p, base = arena_base();
    if (a >= base && a < base + shared_arena_bytes()) {
        if (kind == kEmuGlobalLoad) kind = write ? kEmuSharedStore : kEmuSharedLoad;
        if (t->req.races) check_race(*t, a - base, size, write, (u64)pc);
    } else if (kind == kEmuGlobalLoad || kind == kEmuAsyncLoad) {
        // Global buffers: the sorted (start, end) pairs of the request.
        const u64* b = t->bufs.data();
        u32 lo = 0, hi = (u32)(t->bufs.size() / 2);
        while (lo < hi) {
            const u32 mid = (lo + hi) / 2;
            if (b[2 * mid + 1] <= a) lo = mid + 1;
            else hi = mid;
        }
        if (lo == t->bufs.size() / 2 || a < b[2 * lo]) return;
        if (write) kind = kEmuGlobalStore;
    } else {
        return;
    }
    t->recs[cur().regs.linear].push_back(Rec{(u64)pc, a, size, kind});
}

}  // namespace emu

using emu::g_tracer;

extern "C" {

void emu_trace_begin(const EmuTraceRequest* req) {
    delete emu::g_last;
    emu::g_last = nullptr;
    auto* t = new emu::Tracer();
    t->req = *req;
    if (req->nblocks) {
        t->blocks.assign(req->blocks, req->blocks + 3 * req->nblocks);
        t->weights.assign(req->weights, req->weights + req->nblocks);
    }
    t->bufs.assign(req->bufs, req->bufs + 2 * req->nbufs);
    g_tracer = t;
}

void emu_trace_end(EmuTraceTotals* out) {
    emu::Tracer* t = g_tracer;
    g_tracer = nullptr;
    if (!t) {
        *out = EmuTraceTotals{};
        return;
    }
    for (auto& [pc, s] : t->sites) t->site_list.push_back(s);
    std::sort(t->site_list.begin(), t->site_list.end(),
              [](const EmuSite& a, const EmuSite& b) { return a.pc < b.pc; });
    for (size_t i = 0; i < t->fps.size(); i++) {
        t->fps[i].n = (u32)t->fp_sectors[i].size();
        t->fps[i].sectors = t->fp_sectors[i].data();
    }
    *out = EmuTraceTotals{t->mma,
                          t->barriers,
                          t->blocks_run,
                          (u32)t->site_list.size(),
                          (u32)t->races.size(),
                          t->races_total,
                          (u32)t->fps.size()};
    emu::g_last = t;
}

const EmuSite* emu_trace_sites() { return emu::g_last ? emu::g_last->site_list.data() : nullptr; }
const EmuRace* emu_trace_races() { return emu::g_last ? emu::g_last->races.data() : nullptr; }
const EmuFootprint* emu_trace_footprints() { return emu::g_last ? emu::g_last->fps.data() : nullptr; }

// The object file holding `pc` and its offset there, for symbolising (addr2line).
int emu_pc_module(u64 pc, u64* offset, char* path, u32 path_len) {
    Dl_info info;
    if (!dladdr((void*)pc, &info) || !info.dli_fname) return 0;
    *offset = pc - (u64)info.dli_fbase;
    snprintf(path, path_len, "%s", info.dli_fname);
    return 1;
}

// The instrumentation's callbacks (GCC -fsanitize=kernel-address, call threshold 0).
#define EMU_ASAN_SIZE(n)                                                                           \
    void __asan_load##n##_noabort(void* p) {                                                       \
        emu::trace_access(p, n, false, kEmuGlobalLoad, __builtin_return_address(0));               \
    }                                                                                              \
    void __asan_store##n##_noabort(void* p) {                                                      \
        emu::trace_access(p, n, true, kEmuGlobalLoad, __builtin_return_address(0));                \
    }
EMU_ASAN_SIZE(1)
EMU_ASAN_SIZE(2)
EMU_ASAN_SIZE(4)
EMU_ASAN_SIZE(8)
EMU_ASAN_SIZE(16)
#undef EMU_ASAN_SIZE
void __asan_loadN_noabort(void* p, size_t n) {
    emu::trace_access(p, (u32)n, false, kEmuGlobalLoad, __builtin_return_address(0));
}
void __asan_storeN_noabort(void* p, size_t n) {
    emu::trace_access(p, (u32)n, true, kEmuGlobalLoad, __builtin_return_address(0));
}
void __asan_handle_no_return(void) {}

}  // extern "C"
