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

// fault.cpp
void faults_thread_init(Runtime& r);
void faults_thread_exit(Runtime& r);
void faults_report(Runtime& r);

}  // namespace emu
