// fault.cpp — hardware faults inside an emulated kernel become launch errors.
//
// A kernel with wrong index arithmetic often writes far outside every buffer (past
// the guard bytes) or recurses off its fiber stack into the guard page. Without
// this, the test process would die of SIGSEGV with no word of which kernel did it.
// The handler is process-wide and chains to the previous one (Rust's stack-overflow
// handler, or the default action) for any fault that is not on an emulator fiber of
// the faulting thread. On a fiber it records the fault, unblocks the signal and
// jumps back to the launching stack, which abandons the block like a deadlock.
//
// Runs on an alternate signal stack: a stack overflow leaves no room on the fiber's.
#include <signal.h>
#include <sys/mman.h>

#include <mutex>

#include "runtime.h"

namespace emu {
namespace {

constexpr int kSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
constexpr size_t kAltStack = 64 << 10;
struct sigaction g_old[4];

// Only async-signal-safe work here: TLS reads and writes, sigprocmask, _longjmp.
void on_fault(int sig, siginfo_t* info, void* uctx) {
    Runtime* r = rt_if_any();
    if (r && on_fiber()) {
        r->fault_sig = sig;
        r->fault_addr = info->si_addr;
        r->fault_thread = emu_cur_thread ? emu_cur_thread->thread_idx : uint3{0, 0, 0};
        r->aborted = true;
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, sig);
        sigprocmask(SIG_UNBLOCK, &s, nullptr);  // _longjmp does not restore the mask
        _longjmp(r->main_ctx, 1);
    }
    for (int i = 0; i < 4; i++) {
        if (kSignals[i] != sig) continue;
        const struct sigaction& old = g_old[i];
        if (old.sa_flags & SA_SIGINFO) {
            old.sa_sigaction(sig, info, uctx);
        } else if (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN) {
            // Reinstate it; returning re-executes the faulting instruction under it.
            sigaction(sig, &old, nullptr);
        } else {
            old.sa_handler(sig);
        }
    }
}

const char* signal_name(int sig) {
    switch (sig) {
        case SIGSEGV: return "SIGSEGV (an access outside any mapping, or a fiber stack overflow)";
        case SIGBUS: return "SIGBUS";
        case SIGFPE: return "SIGFPE (integer division by zero?)";
        case SIGILL: return "SIGILL (__builtin_trap?)";
    }
    return "a signal";
}

}  // namespace

void faults_thread_init(Runtime& r) {
    static std::once_flag installed;
    std::call_once(installed, [] {
        for (int i = 0; i < 4; i++) {
            struct sigaction sa = {};
            sa.sa_sigaction = on_fault;
            sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
            sigemptyset(&sa.sa_mask);
            sigaction(kSignals[i], &sa, &g_old[i]);
        }
    });
    if (r.fault_ready) return;
    r.fault_ready = true;
    // Keep an alternate stack the thread already has (Rust gives its threads one).
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE) && cur.ss_size >= 16384) return;
    void* m = mmap(nullptr, kAltStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return;
    stack_t ss = {};
    ss.ss_sp = m;
    ss.ss_size = kAltStack;
    if (sigaltstack(&ss, nullptr) == 0) r.alt_stack = m;
    else munmap(m, kAltStack);
}

void faults_thread_exit(Runtime& r) {
    if (!r.alt_stack) return;
    stack_t ss = {};
    ss.ss_flags = SS_DISABLE;
    sigaltstack(&ss, nullptr);
    munmap(r.alt_stack, kAltStack);
    r.alt_stack = nullptr;
}

void faults_report(Runtime& r) {
    if (!r.fault_sig) return;
    const uint3 b = emu_block.block_idx, t = r.fault_thread;
    const char* what = signal_name(r.fault_sig);
    if (r.fault_sig == SIGSEGV && in_stack_guard(r.fault_addr)) what = "SIGSEGV: fiber stack overflow (64 KiB)";
    report("block (%u,%u,%u) thread (%u,%u,%u): %s at address %p", b.x, b.y, b.z, t.x, t.y, t.z, what,
           r.fault_addr);
    r.fault_sig = 0;
}

}  // namespace emu
