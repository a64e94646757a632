// runtime_internal.hpp - what the library's sources may ask of the runtime.
//
// The runtime's concerns that the other layers share, each written once:
// the clock, the spin-wait policy, blocking signals, no-wait sections and
// the work signal handlers defer from them (deferral.hpp), error texts.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <cstddef>
#include <cstdint>

#include "deferral.hpp"

namespace percpu::detail {

// Starts the library from a per-CPU operation that found it not started (one
// on memory the library did not hand out, before anything else started it).
// Such an operation cannot report an error: a failed start-up (a malformed
// PERCPU_ variable) ends the program with the reason.
void start_from_an_operation() noexcept;

// From now on the rseq fences behave as if membarrier failed at run time
// (PERCPU_PRETEND_MISSING=membarrier_fence, src/runtime/runtime.cpp).
void pretend_membarrier_broken() noexcept;

// The portable backend's slot for the calling thread now.
unsigned portable_slot() noexcept;

// One step of a polite spin-wait, `spins` the steps taken so far: pause at
// first, then yield the CPU; a real-time waiter sleeps every 64th step (1 us
// doubling to about 1 ms) so that a holder of lower priority preempted on
// its CPU gets to run.
void relax(unsigned spins) noexcept;

// The library's clock, in nanoseconds: CLOCK_MONOTONIC.  Fine-grained (the
// cross-CPU calls poll for 20 us budgets, which CLOCK_MONOTONIC_COARSE's
// tick of 1-4 ms cannot measure), never set back (unlike CLOCK_REALTIME),
// read through the vDSO without a system call, and async-signal-safe
// (clock_gettime is on POSIX's list; pool_cache's maintenance may run in a
// signal handler's slow path, where std::chrono::steady_clock promises
// nothing).  It stops while the machine is suspended, which suits what it
// measures: spin budgets, time-outs, maintenance periods, queue ages.
inline std::int64_t now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// Blocks every signal for its scope, and restores the thread's mask after.
// Around code that holds stop words a handler's fast path would wait for
// (a visit from a fast path), and around pthread_create of a thread that
// must take no signals (it inherits the mask).
class signals_blocked {
 public:
  signals_blocked() noexcept {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &saved_);
  }
  ~signals_blocked() { pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }
  signals_blocked(const signals_blocked&) = delete;
  signals_blocked& operator=(const signals_blocked&) = delete;

 private:
  sigset_t saved_{};
};

// strerror() without its shared buffer: the message for `err`, either in
// `buf` or in storage that stays valid.  Allocates nothing.
const char* error_text(int err, char* buf, std::size_t size) noexcept;

}  // namespace percpu::detail
