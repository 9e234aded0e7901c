// sched.cpp — fibers, the run queue, block barriers, launches and error reports.
//
// Switching: each fiber's trampoline is entered once per OS thread through
// makecontext/setcontext (a signal-mask system call), where it saves a "fresh" start
// point with _setjmp. From then on every switch is _setjmp/_longjmp (~45 ns; the
// swapcontext alternative costs ~10x as much, docs/ARCHITECTURE.md §5). A thread starts by a jump
// to its fiber's fresh point; a blocked thread resumes at the point it saved. A thread
// that exits, or a block abandoned after a deadlock or an assertion, leaves nothing
// to unwind: the next block starts its fibers fresh again.
//
// Built with -U_FORTIFY_SOURCE: the fortified longjmp aborts on a jump to another stack.
#include <stdarg.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <exception>

#include "runtime.h"

__thread emu::ThreadRegs* emu_cur_thread;
__thread emu::BlockRegs emu_block;

namespace emu {
namespace {

constexpr size_t kStack = 64 << 10;  // kernels use < 1 KiB; room for libc and C++ unwinding
constexpr size_t kGuard = 4096;      // PROT_NONE below each stack: an overflow faults at once
constexpr size_t kFiberSpan = kStack + kGuard;
constexpr u32 kMaxMessages = 8;

__thread Runtime* g_rt;
__thread Fiber* g_cur;
__thread Fiber* g_init;  // the fiber whose trampoline is being entered

// Frees the OS thread's stacks and runtime when the thread ends (test threads come
// and go).
struct Owner {
    Runtime* r = nullptr;
    ~Owner() {
        if (!r) return;
        faults_thread_exit(*r);
        if (r->stacks) munmap(r->stacks, kMaxThreads * kFiberSpan);
        delete[] r->fibers;
        delete r;
        g_rt = nullptr;
    }
};
thread_local Owner g_owner;

[[noreturn]] void switch_next();
[[noreturn]] void thread_exit();

[[noreturn, gnu::noinline]] void run_thread() {
    Runtime& r = rt();
    try {
        r.thunk(r.thunk_ctx);
    } catch (const std::exception& e) {
        report("%s: C++ exception: %s", where().c_str(), e.what());
        r.aborted = true;
    } catch (...) {
        report("%s: unknown C++ exception", where().c_str());
        r.aborted = true;
    }
    thread_exit();
}

// Entered once per fiber through setcontext; afterwards only through `fresh`.
void trampoline() {
    if (!_setjmp(g_init->fresh)) _longjmp(rt().init_ctx, 1);
    // Locals are indeterminate after the jump back: everything is re-read from TLS.
    run_thread();
}

[[gnu::noinline]] void init_fibers(u32 n) {
    Runtime& r = rt();
    if (!r.stacks) {
        void* m = mmap(nullptr, kMaxThreads * kFiberSpan, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            report("cannot map fiber stacks");
            return;
        }
        r.stacks = static_cast<u8*>(m);
        r.fibers = new Fiber[kMaxThreads];
    }
    while (r.fibers_ready < n) {
        u8* base = r.stacks + r.fibers_ready * kFiberSpan;
        mprotect(base, kGuard, PROT_NONE);
        ucontext_t uc;
        getcontext(&uc);
        uc.uc_stack.ss_sp = base + kGuard;
        uc.uc_stack.ss_size = kStack;
        uc.uc_link = nullptr;
        makecontext(&uc, trampoline, 0);
        g_init = &r.fibers[r.fibers_ready];
        if (!_setjmp(r.init_ctx)) setcontext(&uc);
        r.fibers_ready++;
    }
}

u32 pop() {
    Runtime& r = rt();
    const u32 t = r.queue[r.qhead];
    r.qhead = (r.qhead + 1) % kMaxThreads;
    r.qlen--;
    return t;
}

// Jumps to the next runnable thread, or back to the launching stack when there is
// none (block finished, or deadlocked) or the launch was aborted.
[[noreturn]] void switch_next() {
    Runtime& r = rt();
    if (r.aborted || r.qlen == 0) _longjmp(r.main_ctx, 1);
    Fiber& f = r.fibers[pop()];
    g_cur = &f;
    emu_cur_thread = &f.regs;
    if (f.started) _longjmp(f.ctx, 1);
    f.started = true;
    _longjmp(f.fresh, 1);
}

void release_block_barrier() {
    Runtime& r = rt();
    u32 tids[kMaxThreads], n = 0;
    for (u32 t = 0; t < r.nthreads; t++)
        if (r.fibers[t].state == State::AtBlockBarrier) tids[n++] = t;
    r.at_barrier = 0;
    trace_barrier();
    make_runnable(tids, n);
}

[[noreturn]] void thread_exit() {
    Runtime& r = rt();
    Fiber& f = cur();
    copies_flush(f, -1);  // cp.async writes in flight still land
    f.state = State::Exited;
    r.live--;
    r.warps[f.regs.warp].live &= ~(1u << f.regs.lane);
    // Threads waiting for this one at a barrier may now be complete (PTX: a barrier
    // waits for non-exited threads only).
    warp_recheck(f.regs.warp);
    if (r.at_barrier > 0 && r.at_barrier == r.live) release_block_barrier();
    switch_next();
}

// "0-15, 32, 40-41" for a sorted list of thread ids.
std::string ranges(const std::vector<u32>& v) {
    std::string s;
    for (size_t i = 0; i < v.size();) {
        size_t j = i;
        while (j + 1 < v.size() && v[j + 1] == v[j] + 1) j++;
        if (!s.empty()) s += ", ";
        s += std::to_string(v[i]);
        if (j > i) s += "-" + std::to_string(v[j]);
        i = j + 1;
    }
    return s;
}

void report_deadlock() {
    Runtime& r = rt();
    const uint3 b = emu_block.block_idx;
    std::vector<u32> at_bar;
    for (u32 t = 0; t < r.nthreads; t++)
        if (r.fibers[t].state == State::AtBlockBarrier) at_bar.push_back(t);
    std::string msg = "deadlock in block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," +
                      std::to_string(b.z) + "), " + std::to_string(r.live) + " live thread(s)";
    if (!at_bar.empty())
        msg += "; threads " + ranges(at_bar) + " wait at __syncthreads for the other live threads";
    for (u32 w = 0; w < r.nwarps; w++) msg += warp_waits(w);
    report("%s", msg.c_str());
}

// One block, on the launching thread's stack; returns when no thread can run.
[[gnu::noinline]] void run_block() {
    Runtime& r = rt();
    for (u32 t = 0; t < r.nthreads; t++) {
        Fiber& f = r.fibers[t];
        f.started = false;
        f.copies.clear();
        f.groups_committed = 0;
    }
    for (u32 w = 0; w < r.nwarps; w++) {
        const u32 lanes = std::min<u32>(32, r.nthreads - 32 * w);
        r.warps[w].live = lanes == 32 ? ~0u : (1u << lanes) - 1;
        r.warps[w].arrived = 0;
    }
    r.live = r.nthreads;
    r.at_barrier = 0;
    r.qhead = r.qlen = 0;
    smem_block_begin();
    u32 tids[kMaxThreads];
    for (u32 t = 0; t < r.nthreads; t++) tids[t] = t;
    make_runnable(tids, r.nthreads);
    if (!_setjmp(r.main_ctx)) switch_next();
    g_cur = nullptr;
    emu_cur_thread = nullptr;
    faults_report(r);
    if (!r.aborted && r.live > 0) {
        report_deadlock();
        r.aborted = true;
    }
    smem_block_end();
}

}  // namespace

Runtime& rt() {
    if (__builtin_expect(!g_rt, 0)) {
        g_rt = new Runtime();
        g_owner.r = g_rt;
    }
    return *g_rt;
}

Runtime* rt_if_any() { return g_rt; }

Fiber& cur() { return *g_cur; }

bool on_fiber() { return g_cur != nullptr; }

bool in_stack_guard(const void* addr) {
    const Runtime& r = rt();
    const u8* a = static_cast<const u8*>(addr);
    if (!r.stacks || a < r.stacks || a >= r.stacks + kMaxThreads * kFiberSpan) return false;
    return (size_t)(a - r.stacks) % kFiberSpan < kGuard;
}

void report(const char* fmt, ...) {
    Runtime& r = rt();
    if (r.nerrors++ >= kMaxMessages) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!r.error.empty()) r.error += "; ";
    r.error += buf;
}

void fatal(const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    report("%s", buf);
    rt().aborted = true;
    _longjmp(rt().main_ctx, 1);  // abandon the block; only ever called on a fiber
}

void assert_failed(const char* cond, const char* file, int line) {
    fatal("%s: EMU_ASSERT(%s) failed at %s:%d", where().c_str(), cond, file, line);
}

std::string where() {
    const uint3 b = emu_block.block_idx;
    char buf[96];
    if (emu_cur_thread) {
        const uint3 t = emu_cur_thread->thread_idx;
        snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", b.x, b.y, b.z, t.x, t.y, t.z);
    } else {
        snprintf(buf, sizeof buf, "block (%u,%u,%u)", b.x, b.y, b.z);
    }
    return buf;
}

u64 next_random() {  // splitmix64
    u64 z = (rt().rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void make_runnable(u32* tids, u32 n) {
    Runtime& r = rt();
    switch (r.launch->schedule) {
        case 1: std::reverse(tids, tids + n); break;
        case 2:
            for (u32 i = n; i > 1; i--) std::swap(tids[i - 1], tids[next_random() % i]);
            break;
        default: break;
    }
    for (u32 i = 0; i < n; i++) {
        r.fibers[tids[i]].state = State::Runnable;
        r.queue[(r.qhead + r.qlen) % kMaxThreads] = tids[i];
        r.qlen++;
    }
}

void block_now(Fiber& f) {
    Runtime& r = rt();
    // Next in line is this thread itself (e.g. the last lane of a completed group in
    // forward order): no switch needed.
    if (!r.aborted && r.qlen > 0 && r.queue[r.qhead] == f.regs.linear) {
        pop();
        return;
    }
    if (_setjmp(f.ctx)) return;
    switch_next();
}

void syncthreads() {
    Runtime& r = rt();
    Fiber& f = cur();
    f.state = State::AtBlockBarrier;
    if (++r.at_barrier == r.live) release_block_barrier();
    block_now(f);
}

int run_launch(const EmuLaunch* l, const char* kernel, void (*thunk)(void*), void* ctx, const u32* param_sizes,
               u32 nparams, u32 max_threads) {
    Runtime& r = rt();
    r.error.clear();
    r.nerrors = 0;
    r.aborted = false;
    r.launch = l;
    r.kernel = kernel;
    r.thunk = thunk;
    r.thunk_ctx = ctx;
    if (l->nargs != nparams) {
        report("%u argument(s) given, the kernel takes %u", l->nargs, nparams);
        return 1;
    }
    for (u32 i = 0; i < nparams; i++)
        if (l->arg_sizes[i] != param_sizes[i]) {
            report("argument %u is %u bytes, the kernel's parameter %u bytes (pointer/int/float mix-up?)", i,
                   l->arg_sizes[i], param_sizes[i]);
            return 1;
        }
    const u64 nthreads = (u64)l->block[0] * l->block[1] * l->block[2];
    if (nthreads == 0 || nthreads > kMaxThreads || l->grid[0] == 0 || l->grid[1] == 0 || l->grid[2] == 0) {
        report("bad geometry: grid (%u,%u,%u), block (%u,%u,%u)", l->grid[0], l->grid[1], l->grid[2], l->block[0],
               l->block[1], l->block[2]);
        return 1;
    }
    if (nthreads > max_threads) {
        // The driver refuses it too (CUDA_ERROR_INVALID_VALUE): the kernel was compiled
        // for at most max_threads (its registers are budgeted for that many).
        report("block of %llu threads, but the kernel's launch bounds allow at most %u", (unsigned long long)nthreads,
               max_threads);
        return 1;
    }
    r.nthreads = (u32)nthreads;
    r.nwarps = (r.nthreads + 31) / 32;
    faults_thread_init(r);
    init_fibers(r.nthreads);
    if (r.nerrors) return 1;
    r.rng = l->seed;
    for (u32 t = 0; t < r.nthreads; t++) {
        ThreadRegs& g = r.fibers[t].regs;
        g.thread_idx = {t % l->block[0], (t / l->block[0]) % l->block[1], t / (l->block[0] * l->block[1])};
        g.linear = t;
        g.lane = t & 31;
        g.warp = t >> 5;
    }
    smem_launch_begin();
    emu_block.block_dim = {l->block[0], l->block[1], l->block[2]};
    emu_block.grid_dim = {l->grid[0], l->grid[1], l->grid[2]};
    u32 nsampled = 0;
    if (const u32* sampled = trace_blocks(&nsampled)) {
        // A traced launch may run a sample of its blocks (the profile's), in order.
        for (u32 i = 0; i < nsampled && !r.aborted; i++) {
            emu_block.block_idx = {sampled[3 * i], sampled[3 * i + 1], sampled[3 * i + 2]};
            trace_block_begin(i);
            run_block();
            trace_block_end();
        }
    } else {
        for (u32 z = 0; z < l->grid[2] && !r.aborted; z++)
            for (u32 y = 0; y < l->grid[1] && !r.aborted; y++)
                for (u32 x = 0; x < l->grid[0] && !r.aborted; x++) {
                    emu_block.block_idx = {x, y, z};
                    trace_block_begin(0);
                    run_block();
                    trace_block_end();
                }
    }
    if (r.nerrors > kMaxMessages) r.error += "; and " + std::to_string(r.nerrors - kMaxMessages) + " more";
    return r.nerrors ? 1 : 0;
}

}  // namespace emu

extern "C" const char* emu_last_error(void) { return emu::rt().error.c_str(); }
