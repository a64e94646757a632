// xcall/internal.hpp - what the two halves of the on-CPU calls share: the
// call descriptor, a CPU's queue and service thread, the registry of CPUs,
// the polling helper (see percpu/xcall.hpp).
//
// Problem: run a function on a given CPU, from any thread, often and fast,
// without allocating on the call path, and without the races the Linux
// generic-IPI code went through in 2009-2011: a descriptor reused while the
// target still reads it (seen half-filled), and a CPU walking a shared queue
// that misses an entry re-queued behind its back.
//
// Mechanism (modelled on kernel/smp.c's llist queues):
//  - Descriptors.  Each calling thread owns a ring of call descriptors,
//    allocated on its first call and reused afterwards.  A descriptor is
//    owned by its caller while `busy` is 0 and by the target while it is
//    not.  The caller fills it, sets busy, and only then queues it; the
//    target reads it, runs the function, destroys the callable, and clears
//    busy last (release).  The caller reuses it only after seeing busy clear
//    (acquire).  So a descriptor is never queued twice at once, and never
//    written while the target may read it: the "reused descriptor seen
//    half-filled" race cannot happen.
//  - Queues.  Each target CPU has one lock-free LIFO list head.  Callers push
//    with a CAS; the service thread takes the whole list with one exchange,
//    reverses it (enqueue order) and runs it.  Entries it took are no longer
//    reachable from the head, and entries pushed later are on the new list
//    that the next exchange takes whole, so no walker can "fall off" a list
//    that changes under it: the "missed re-queued entry" race cannot happen.
//    The walker reads an entry's `next` before completing the entry, because
//    after completion the caller may re-queue it and overwrite `next`.
//  - Wake-ups.  A service thread polls its queue briefly after running
//    calls, then announces it is going to sleep in `sleeping` and checks the
//    queue once more before the futex wait.  A caller wakes it only when its
//    push found the queue empty *and* `sleeping` is set, so a burst of calls,
//    or calls arriving while the thread still polls, cost no system call.
//  - Waiting.  The caller spins briefly on busy, then marks it 2 ("waiter
//    asleep") and futex-waits; the target's completing exchange sees 2 and
//    wakes it.
//
// Files: calls.cpp is the caller's side (each thread's ring of descriptors,
// issue, wait, barrier, the public functions); service.cpp is the target's
// side (the service threads, their queues, pushing a call).
#pragma once

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>

#include "core/process_wide.hpp"
#include "percpu/runtime/detail/futex.hpp"
#include "percpu/xcall.hpp"

namespace percpu::xcall::internal {

using percpu::detail::futex_wait;
using percpu::detail::futex_wake_all;

enum class outcome : std::uint8_t { returned, threw, off_cpu };

// busy values
constexpr std::uint32_t idle = 0;           // owned by the caller
constexpr std::uint32_t in_flight = 1;      // owned by the target
constexpr std::uint32_t waiter_asleep = 2;  // in flight, the caller futex-waits

// One call: what to run where, and how it ended.
struct alignas(64) call {
  detail::inline_function fn;
  call* next = nullptr;  // queue link, written by the caller before the push
  std::atomic<std::uint32_t> busy{idle};
  unsigned cpu = 0;
  bool anywhere = false;   // a barrier marker: position in the queue only
  bool skippable = false;  // part of a broadcast: off-CPU means skipped, not failed
  outcome result = outcome::returned;
  const char* label = "";
  std::uint64_t seq = 0;
  std::exception_ptr exception;
};

// A target CPU: its queue and its service thread.
struct alignas(64) service {
  std::atomic<call*> head{nullptr};
  std::atomic<std::uint32_t> sleeping{0};  // 1: the service thread is about to sleep or sleeps
  std::atomic<std::uint32_t> state{0};     // see service_state
  pthread_t thread{};
  std::mutex start_lock;  // serialises creation of the thread
};

enum service_state : std::uint32_t { absent = 0, starting = 1, running = 2, failed = 3 };

// How long a service thread polls its queue, and a waiter its descriptor,
// before sleeping: long enough to catch the next call of a caller that
// issues them back to back, short enough that an idle thread costs nothing.
constexpr long poll_ns = 20000;
constexpr long spin_wait_ns = 20000;

extern std::atomic<long> timeout_ms;

inline long now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

inline void cpu_pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until pred() holds or `budget_ns` passed.  After the first
// yield_after_ns it also yields the CPU about every microsecond: a runnable
// thread on the same CPU (a waiter woken there, a service thread with work)
// must not wait for the poller's time slice.  Not earlier, because a
// sched_yield costs about 1.5 us in a VM, and a reply that arrives during
// one is seen that much later.
constexpr long yield_after_ns = 5000;

template <class Pred>
bool poll_until(Pred pred, long budget_ns) noexcept {
  long start = now_ns();
  for (unsigned spins = 0;; ++spins) {
    if (pred()) return true;
    if (spins % 16 == 15) {
      long spent = now_ns() - start;
      if (spent > budget_ns) return false;
      if (spent > yield_after_ns) sched_yield();
    }
    cpu_pause();
  }
}

// A fork() child's reset: no service thread exists there (calls.cpp).
void reset_after_fork() noexcept;

// Every target CPU's service: process-wide and never destroyed (service
// threads may still touch it while the program exits); a fork() child
// finds no service thread and starts afresh (core/process_wide.hpp).
struct registry {
  unsigned count = 1;  // CPU numbers below it are accepted
  cpu_bits possible;   // the possible CPUs among them
  service* services;
  registry();
  void after_fork_child() noexcept { reset_after_fork(); }
};

inline registry& the_registry() {
  return percpu::detail::process_wide<registry>();
}

// The CPU whose service thread the calling thread is, or -1.
extern thread_local constinit int current_service;

[[noreturn]] void fail(errc code, unsigned cpu, const std::string& text);

// The target's side (service.cpp).
// Makes sure `cpu` has a running service thread (creating it on first use).
service& ensure_service(unsigned cpu);
// Queues the calling thread's reserved descriptor on its CPU's queue.
void push(call& c) noexcept;

}  // namespace percpu::xcall::internal
