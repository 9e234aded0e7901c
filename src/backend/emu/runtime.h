// runtime.h — the emulator runtime's internal state, shared by its three parts:
//   sched.cpp   fibers, the run queue, block barriers, launches, errors
//   warp.cpp    warp collectives (__syncwarp, shuffles, votes, mma, ldmatrix)
//   memory.cpp  shared memory arena, canaries, cp.async
//   fault.cpp   SIGSEGV/SIGBUS/SIGFPE/SIGILL on a fiber → a launch error
//
// Model: a launch runs its blocks one after another on the calling OS thread. A
// block's threads are fibers (64 KiB stacks); exactly one runs at a time and it runs
// until it blocks (block barrier, warp collective) or exits. Blocked threads wait in
// no queue; a barrier that completes puts its threads on the run queue in the
// launch's schedule order (forward, reverse, or seeded random), which is how a
// missing barrier shows up as a difference between schedules. All state is per OS
// thread, so concurrent launches on different threads (parallel tests) are isolated.
#pragma once

#include <setjmp.h>

#include <string>
#include <vector>

#include "host.h"

// ---- tracing (trace.cpp), shared with Rust (#[repr(C)] in src/backend/emu/trace.rs) ----
extern "C" {
// What to trace in the next launch on this OS thread.
struct EmuTraceRequest {
    u32 nblocks;            // 0: every block of the grid, each of weight 1
    const u32* blocks;      // nblocks × (x, y, z): the blocks to run, in order
    const double* weights;  // nblocks: how many blocks of the grid each one stands for
    u32 nbufs;
    const u64* bufs;        // nbufs × (start, end): global buffers, sorted, disjoint
    u32 races;              // check shared memory for races
    u32 footprints;         // keep each block's global sectors
};
// The counters of one instruction (a static access site in the traced kernel).
struct EmuSite {
    u64 pc;         // return address of the access call
    u32 kind;       // kEmu*
    u32 size;       // bytes per lane
    u32 loop;       // seen in two or more barrier intervals of one block
    u32 pad;
    double requests;    // warp-level requests
    double lanes;       // lane accesses
    double sectors;     // global: 32-byte sectors touched
    double ideal;       // global: ceil(unique bytes / 32); shared: ideal wavefronts
    double wavefronts;  // shared: wavefronts
    double bytes;       // unique bytes per request, summed
};
// Two threads of one block on one shared-memory byte between the same barriers.
struct EmuRace {
    u64 pc_first, pc_second;
    u32 tid_first, tid_second;
    u32 block[3];
    u32 offset;         // byte offset in the array
    u32 kind;           // 0 read then write, 1 write then read, 2 write then write
    const char* array;  // the SHARED array's name, or "dynamic shared memory"
};
struct EmuTraceTotals {
    double mma, barriers, blocks;
    u32 nsites, nraces, races_total, nfootprints;
};
// The global sectors one block touched: (address >> 5) << 1 | written, sorted.
struct EmuFootprint {
    u32 block[3];
    u32 n;
    const u64* sectors;
};
}
enum : u32 {
    kEmuGlobalLoad = 0,
    kEmuGlobalStore = 1,
    kEmuSharedLoad = 2,
    kEmuSharedStore = 3,
    kEmuLdmatrix = 4,
    kEmuAsyncStore = 5,  // cp.async, its shared-memory side
    kEmuAsyncLoad = 6,   // cp.async, its global side
};

namespace emu {

constexpr u32 kMaxThreads = 1024;
constexpr u32 kMaxWarps = kMaxThreads / 32;

enum class State : u8 { Runnable, AtBlockBarrier, AtWarpBarrier, Exited };
enum class WarpOp : u8 { Sync, Shfl, Vote, MmaBf16, MmaF16, Ldmatrix };

// A cp.async in flight: its 16 bytes are read at issue and land at the wait.
struct PendingCopy {
    u8* dst;
    u8 data[16];
    int group;  // commit group, or -1 while not yet committed
};

struct Fiber {
    ThreadRegs regs;  // first: emu_cur_thread points here
    jmp_buf ctx;      // where a blocked thread resumes
    jmp_buf fresh;    // the trampoline's start point: where every thread begins
    State state;
    bool started;
    // This lane's part of a warp collective: deposited on arrival, results written
    // by whichever lane completes the group.
    WarpOp op;
    u32 mask;
    int src;          // shuffle source lane
    u64 val;          // shuffle value / vote predicate
    const void* addr; // ldmatrix row address
    u32 count;        // ldmatrix matrices; mma kind
    u32 in[6];        // mma a[4], b[2]
    float cin[4];     // mma c
    u32 out[4];       // mma d (as bits), ldmatrix registers
    u64 result;       // shuffle / vote result
    std::vector<PendingCopy> copies;
    int groups_committed;
};

struct Warp {
    u32 live;     // lanes that exist and have not exited
    u32 arrived;  // lanes waiting at a warp collective
};

struct SlotInfo {
    u32 gen;  // launch generation that placed it; stale otherwise
    u32 offset, bytes;
    const char* name;
};

struct Runtime {
    // --- fibers and their stacks (kept for the OS thread's lifetime) ---
    u8* stacks = nullptr;   // kMaxThreads × (guard page + stack), MAP_NORESERVE
    Fiber* fibers = nullptr;
    u32 fibers_ready = 0;   // fibers whose trampoline has been entered once
    jmp_buf init_ctx;
    jmp_buf main_ctx;       // the launching thread's stack, between blocks

    // --- the launch ---
    const EmuLaunch* launch = nullptr;
    const char* kernel = "";
    void (*thunk)(void*) = nullptr;
    void* thunk_ctx = nullptr;
    u32 nthreads = 0, nwarps = 0;
    u64 rng = 0;
    bool aborted = false;   // stop running threads and blocks (assert, fatal error)

    // --- the block ---
    Warp warps[kMaxWarps];
    u32 live = 0;           // threads not exited
    u32 at_barrier = 0;     // threads waiting at __syncthreads
    u32 queue[kMaxThreads]; // run queue (ring); a thread is in it at most once
    u32 qhead = 0, qlen = 0;

    // --- shared memory (memory.cpp) ---
    u8* arena = nullptr;
    u32 gen = 0;            // launch generation, for SlotInfo
    u32 static_end = 0;     // arena bytes used by static arrays (with canaries)
    u32 static_bytes = 0;   // static shared memory as the GPU would count it
    std::vector<SlotInfo> slots;  // by slot id
    std::vector<int> active;      // slot ids placed in this launch

    // --- errors ---
    std::string error;
    u32 nerrors = 0;

    // --- faults (fault.cpp) ---
    int fault_sig = 0;      // set by the signal handler, reported by the launch
    void* fault_addr = nullptr;
    uint3 fault_thread = {0, 0, 0};
    bool fault_ready = false;     // this thread's alternate signal stack is set up
    void* alt_stack = nullptr;    // ours, if the thread had none
};

Runtime& rt();
Runtime* rt_if_any();  // without creating it (signal handler)
Fiber& cur();
bool on_fiber();  // a kernel thread is running on this OS thread
bool in_stack_guard(const void* addr);  // inside a fiber stack's guard page

// sched.cpp
void report(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string where();  // "block (x,y,z) thread (x,y,z)" of the running thread
void make_runnable(u32* tids, u32 n);  // enqueue in schedule order (permutes tids)
void block_now(Fiber& f);                    // switch away until f is runnable again
u64 next_random();

// warp.cpp
void warp_recheck(u32 warp);        // after a lane exited
std::string warp_waits(u32 warp);   // deadlock description, "" if none wait

// memory.cpp
void smem_launch_begin();
void smem_block_begin();
void smem_block_end();
void copies_flush(Fiber& f, int groups_left);
bool in_shared(const void* p, size_t bytes);

u32 shared_arena_bytes();   // the arena's extent (static and dynamic parts)
u32 shared_dyn_offset();    // where dynamic shared memory starts in it

// trace.cpp: all no-ops unless the launch is traced
bool tracing();
const u32* trace_blocks(u32* n);  // the blocks to run, or null for the whole grid
void trace_block_begin(u32 index);
void trace_block_end();
void trace_barrier();                       // a block barrier completed
void trace_warp_sync(u32 warp, u32 mask);   // a __syncwarp completed
void trace_mma();                           // a warp's mma completed
// `kind` kEmuGlobalLoad means a plain access (load or store, global or shared, told
// apart here); the runtime's primitives pass their own kind.
void trace_access(const void* p, u32 size, bool write, u32 kind, const void* pc);

// fault.cpp
void faults_thread_init(Runtime& r);
void faults_thread_exit(Runtime& r);
void faults_report(Runtime& r);

}  // namespace emu
