// memory.cpp — shared memory and cp.async for the emulator.
//
// One arena per OS thread: a static part, where each SHARED array gets a slot on its
// first use in a launch (the same offset for every block of that launch), and a
// dynamic part of the launch's size. Every block starts with all of it filled with
// 0xFF, so a read of shared memory that no thread of this block wrote gives NaN
// instead of the previous block's data (docs/ARCHITECTURE.md §5). Canary bytes around
// every array are checked at the end of each block: an overrun names the array.
//
// cp.async: the 16 source bytes are read at issue and written to shared memory only
// at the matching wait, so a kernel that reads its tile before waiting sees 0xFF.
#include <sys/mman.h>

#include <atomic>

#include "runtime.h"

namespace emu {
namespace {

constexpr u32 kStaticRegion = 128 << 10;  // static arrays and their canaries
constexpr u32 kCanary = 64;               // after each static array (and before the first)
constexpr u32 kDynCanary = 256;           // before and after dynamic shared memory
constexpr u32 kDynOffset = kStaticRegion + kDynCanary;  // 128-byte aligned
constexpr u32 kMaxDyn = 227 << 10;                      // sm_90's per-block maximum
constexpr u32 kMaxStatic = 48 << 10;                    // the GPU's static limit
constexpr u32 kArenaBytes = kDynOffset + kMaxDyn + kDynCanary;
constexpr u8 kCanaryByte = 0xa5;

u32 dyn_bytes() { return rt().launch->smem_bytes; }

bool canary_intact(const u8* p, u32 n) {
    for (u32 i = 0; i < n; i++)
        if (p[i] != kCanaryByte) return false;
    return true;
}

}  // namespace

void smem_launch_begin() {
    Runtime& r = rt();
    if (!r.arena) {
        void* m = mmap(nullptr, kArenaBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        r.arena = m == MAP_FAILED ? nullptr : static_cast<u8*>(m);
        if (!r.arena) report("cannot map the shared memory arena");
    }
    r.gen++;
    r.static_end = kCanary;
    r.static_bytes = 0;
    r.active.clear();
}

void smem_block_begin() {
    Runtime& r = rt();
    if (!r.arena) return;
    memset(r.arena, kCanaryByte, kCanary);
    for (int id : r.active) {
        const SlotInfo& s = r.slots[id];
        memset(r.arena + s.offset, 0xff, s.bytes);
        memset(r.arena + s.offset + s.bytes, kCanaryByte, kCanary);
    }
    u8* dyn = r.arena + kDynOffset;
    memset(dyn - kDynCanary, kCanaryByte, kDynCanary);
    memset(dyn, 0xff, dyn_bytes());
    memset(dyn + dyn_bytes(), kCanaryByte, kDynCanary);
}

void smem_block_end() {
    Runtime& r = rt();
    if (!r.arena) return;
    const std::string blk = where();
    if (!canary_intact(r.arena, kCanary))
        report("%s: wrote before the first static shared array", blk.c_str());
    for (int id : r.active) {
        const SlotInfo& s = r.slots[id];
        if (!canary_intact(r.arena + s.offset + s.bytes, kCanary))
            report("%s: wrote past the end of shared array `%s` (%u bytes)", blk.c_str(), s.name, s.bytes);
    }
    const u8* dyn = r.arena + kDynOffset;
    if (!canary_intact(dyn - kDynCanary, kDynCanary))
        report("%s: wrote before the start of dynamic shared memory", blk.c_str());
    if (!canary_intact(dyn + dyn_bytes(), kDynCanary))
        report("%s: wrote past the end of dynamic shared memory (%u bytes)", blk.c_str(), dyn_bytes());
}

int shared_slot_id() {
    static std::atomic<int> next{0};
    return next++;
}

void* shared_ptr(int id, size_t bytes, const char* name) {
    Runtime& r = rt();
    if ((size_t)id >= r.slots.size()) r.slots.resize(id + 1, SlotInfo{0, 0, 0, nullptr});
    SlotInfo& s = r.slots[id];
    if (s.gen == r.gen) return r.arena + s.offset;
    // First use in this launch: place it. 16-byte alignment, as the device branch
    // declares every SHARED array.
    const u32 off = (r.static_end + 15) & ~15u;
    r.static_bytes = ((r.static_bytes + 15) & ~15u) + (u32)bytes;
    if (r.static_bytes > kMaxStatic)
        fatal("%s: static shared memory over 48 KiB (array `%s` of %zu bytes brings it to %u)", where().c_str(),
              name, bytes, r.static_bytes);
    if (r.static_bytes + dyn_bytes() > kMaxDyn)
        fatal("%s: static (%u) + dynamic (%u) shared memory over 227 KiB", where().c_str(), r.static_bytes,
              dyn_bytes());
    if (off + bytes + kCanary > kStaticRegion) fatal("too many shared arrays for the emulator's arena");
    s = SlotInfo{r.gen, off, (u32)bytes, name};
    r.static_end = off + (u32)bytes + kCanary;
    r.active.push_back(id);
    memset(r.arena + off, 0xff, bytes);
    memset(r.arena + off + bytes, kCanaryByte, kCanary);
    return r.arena + off;
}

void* dyn_shared() { return rt().arena + kDynOffset; }

u32 shared_arena_bytes() { return kArenaBytes; }
u32 shared_dyn_offset() { return kDynOffset; }

bool in_shared(const void* p, size_t bytes) {
    const Runtime& r = rt();
    const u8* b = static_cast<const u8*>(p);
    const u8* dyn = r.arena + kDynOffset;
    if (b >= dyn && b + bytes <= dyn + dyn_bytes()) return true;
    for (int id : r.active) {
        const SlotInfo& s = r.slots[id];
        if (b >= r.arena + s.offset && b + bytes <= r.arena + s.offset + s.bytes) return true;
    }
    return false;
}

void cp_async_16(void* dst, const void* src) {
    Fiber& f = cur();
    if (((uintptr_t)dst & 15) || !in_shared(dst, 16)) {
        report("%s: cp_async_16 destination %p is not 16-byte-aligned shared memory", where().c_str(), dst);
        return;
    }
    if (((uintptr_t)src & 15) || in_shared(src, 1)) {
        report("%s: cp_async_16 source %p is not 16-byte-aligned global memory", where().c_str(), src);
        return;
    }
    if (tracing()) {
        trace_access(src, 16, false, kEmuAsyncLoad, __builtin_return_address(0));
        // One instruction, two accesses: the store side is filed one byte further on,
        // so the two are counted as separate sites (a site is its address and kind).
        trace_access(dst, 16, true, kEmuAsyncStore, (const u8*)__builtin_return_address(0) + 1);
    }
    PendingCopy c;
    c.dst = static_cast<u8*>(dst);
    memcpy(c.data, src, 16);
    c.group = -1;
    f.copies.push_back(c);
}

void cp_async_commit() {
    Fiber& f = cur();
    for (PendingCopy& c : f.copies)
        if (c.group < 0) c.group = f.groups_committed;
    f.groups_committed++;  // an empty group counts too, as in PTX
}

void copies_flush(Fiber& f, int groups_left) {
    // Oldest groups first; uncommitted copies are not covered by wait_group.
    const int limit = groups_left < 0 ? f.groups_committed : f.groups_committed - groups_left;
    size_t kept = 0;
    for (PendingCopy& c : f.copies) {
        if (groups_left < 0 || (c.group >= 0 && c.group < limit))
            memcpy(c.dst, c.data, 16);
        else
            f.copies[kept++] = c;
    }
    f.copies.resize(kept);
}

void cp_async_wait(int groups_left) {
    Fiber& f = cur();
    if (groups_left < 0) cp_async_commit();  // cp.async.wait_all = commit + wait_group 0
    copies_flush(f, groups_left);
}

}  // namespace emu
