// runtime_internal.hpp - what the library's sources may ask of the runtime.
//
// The runtime's concerns that the other layers share, each written once:
// the clock, the spin-wait policy, blocking signals, no-wait sections and
// the work signal handlers defer from them (deferral.hpp), error texts,
// one-time jobs that survive fork().
#pragma once

#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
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

// One-time jobs across fork(): the library's start-up and the building of
// each process-wide registry (core/process_wide.hpp).  A word says where
// the job stands: once_idle before it is done, odd while a thread of one
// process does it (its pid and fork_generation), or its result (any even
// value).  A C++ function-local static, or a mutex, cannot say that:
// fork() copies its "being done" state into a child without the thread
// that was doing it, and the child's first use then waits forever (the
// history in core/process_wide.hpp).  Here a thread that finds the job
// claimed by another process is in such a child, and does the job itself.
inline constexpr std::uintptr_t once_idle = 1;

// fork() children this process descends from, since the library was
// loaded: the library's fork hook in the child adds one
// (core/process_wide.cpp).  Part of each claim, so that a claim inherited
// from an ancestor never matches this process's own, even where the pids
// match (a pid reused after the ancestor exited; pid 1 of a new PID
// namespace, forked by a pid 1).
inline std::atomic<std::uint32_t> fork_generation{0};

// Returns the job's result (even) once there is one, waiting while another
// thread of this process does the job; or claims the job for the calling
// thread and returns an odd value: the caller then does the job and stores
// its result in `word` with release (or once_idle if it failed, to be tried
// again).  The wait is relax()'s: start-up takes milliseconds at most, a
// registry's constructor microseconds.
inline std::uintptr_t once_claim(std::atomic<std::uintptr_t>& word) noexcept {
  // Acquire, here and below: pairs with the release store of the result.
  std::uintptr_t seen = word.load(std::memory_order_acquire);
  if ((seen & 1) == 0) return seen;
  // Bits 1-31 the pid (pid_max is at most 2^22), 32 and up the generation.
  const std::uintptr_t mine =
      (std::uintptr_t{fork_generation.load(std::memory_order_relaxed)} << 32) |
      (static_cast<std::uintptr_t>(getpid()) << 1) | 1;
  for (unsigned spins = 0;; ++spins, seen = word.load(std::memory_order_acquire)) {
    if ((seen & 1) == 0) return seen;
    if (seen == mine) {
      relax(spins);
      continue;
    }
    // Not done, or left half done by a thread of the process this one was
    // forked from: this thread does it.
    if (word.compare_exchange_strong(seen, mine, std::memory_order_acquire)) return mine;
  }
}

// strerror() without its shared buffer: the message for `err`, either in
// `buf` or in storage that stays valid.  Allocates nothing.
const char* error_text(int err, char* buf, std::size_t size) noexcept;

}  // namespace percpu::detail
