// xcall/internal.hpp - what the two halves of percpu::xcall share.
//
// calls.cpp is the callers' side (descriptor rings, tickets, waiting, the
// public functions); service.cpp the targets' (per-CPU queues, the service
// threads, which CPUs can be served).  calls.cpp describes the mechanism as
// a whole.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <sys/types.h>
#include <time.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>

#include "core/process_wide.hpp"
#include "percpu/runtime/detail/arch.hpp"
#include "percpu/xcall.hpp"
#include "runtime/runtime_internal.hpp"
#include "runtime/topology.hpp"

namespace percpu::xcall::internal {

enum class outcome : std::uint8_t { returned, threw, off_cpu };

// busy values
constexpr std::uint32_t idle = 0;           // owned by the caller
constexpr std::uint32_t in_flight = 1;      // owned by the target
constexpr std::uint32_t waiter_asleep = 2;  // in flight, the caller futex-waits

// One call: what to run where, and how it ended.
//
// Layout: what the target reads and writes for a call that returns comes
// first, so that with a callable of up to 32 bytes it is one cache line
// (busy, anywhere, result, next, the callable's two pointers and the first
// 32 bytes of its buffer); the target reads neither `cpu` (it serves one)
// nor the caller's bookkeeping after it.  With the callable's pointers after
// its buffer and `busy` after both, a round trip moved two descriptor lines
// between the CPUs: xcall.unicast 1.2x slower (development VM, 2026-12-07).
struct alignas(64) call {
  std::atomic<std::uint32_t> busy{idle};
  bool anywhere = false;  // a barrier marker: position in the queue only
  outcome result = outcome::returned;
  call* next = nullptr;  // queue link, written by the caller before the push
  detail::inline_function fn;
  unsigned cpu = 0;
  bool skippable = false;  // part of a broadcast: off-CPU means skipped, not failed
  const char* label = "";
  std::uint64_t seq = 0;
  std::exception_ptr exception;
};
static_assert(offsetof(call, fn) + 2 * sizeof(void*) + 32 <= 64,
              "a callable of 32 bytes shares the first cache line with busy and next");

// A target CPU: its queue and its service thread.
struct alignas(64) service {
  std::atomic<call*> head{nullptr};
  std::atomic<std::uint32_t> sleeping{0};  // 1: the service thread is about to sleep or sleeps
  std::atomic<std::uint32_t> state{0};     // see service_state
  pthread_t thread{};
  pid_t tid = 0;                             // the service thread's, once it started
  percpu::detail::cpu_mask* mask = nullptr;  // the service thread's own (never freed)
  std::mutex start_lock;                     // serialises starting, and pinning a parked thread
};

// absent: no thread.  starting: being created.  running: pinned, serving.
// parked: the thread could not be pinned to its CPU (offline, outside the
// cpuset); it waits, unpinned, on `state` until a caller pins it there.
enum service_state : std::uint32_t { absent = 0, starting = 1, running = 2, parked = 3 };

// How long a service thread polls its queue, and a waiter its descriptor,
// before sleeping: long enough to catch the next call of a caller that
// issues them back to back, short enough that an idle thread costs nothing.
constexpr long poll_ns = 20000;
constexpr long spin_wait_ns = 20000;

using percpu::detail::now_ns;

// Spins until pred() holds or `budget_ns` passed.  After the first
// yield_after_ns it also yields the CPU about every microsecond: a runnable
// thread on the same CPU (a waiter woken there, a service thread with work)
// must not wait for the poller's time slice.  Not earlier, because a
// sched_yield costs about 1.5 us in a VM, and a reply that arrives during
// one is seen that much later.  The clock is read before every try but the
// first, and after each yield (which may last a time slice); `clock_ns`
// gets each reading, so on return it is as old as one try, however long
// the poll was preempted before it, or, when pred() held at the first
// try, what the caller passed in (the service thread's reading after its
// last call, yield or sleep: no second reading right after that one; the
// budget counts from the second try).  (Read every 16 tries instead, it could
// be a preemption old: a review found that, 2026-12-07.  Reading it every
// try cost no measurable time: a back-to-back unicast 374-421 ns a round
// trip against 385-427 on the development VM.)
constexpr long yield_after_ns = 5000;

template <class Pred>
bool poll_until(Pred pred, long budget_ns, long& clock_ns) noexcept {
  long start = 0;
  for (unsigned spins = 0;; ++spins) {
    if (pred()) return true;
    percpu::detail::arch::cpu_relax();
    clock_ns = now_ns();
    if (spins == 0) start = clock_ns;
    long spent = clock_ns - start;
    if (spent > budget_ns) return false;
    if (spent > yield_after_ns && spins % 16 == 15) {
      sched_yield();
      clock_ns = now_ns();
    }
  }
}

// Runs in the child after fork(): the service threads are gone (calls.cpp).
void reset_after_fork() noexcept;

// Every target CPU's service: process-wide and never destroyed (service
// threads may still touch it while the program exits); a fork() child
// finds no service thread and starts afresh (core/process_wide.hpp).
struct registry {
  unsigned count = 1;  // CPU numbers below it are accepted
  cpu_bits possible;   // the possible CPUs among them
  service* services;
  percpu::detail::cpu_mask* probe;  // pin_parked_that_came_back's, under probe_lock
  std::mutex probe_lock;

  registry();
  void after_fork_child() noexcept { reset_after_fork(); }
};

inline registry& the_registry() {
  return percpu::detail::process_wide<registry>();
}

// Service threads started so far (pthread_create calls); read by the tests.
extern std::atomic<unsigned long> threads_started;

// The CPU whose service thread is the calling thread, or -1.
extern thread_local int current_service;

// Throws percpu::error; `text` follows "percpu::xcall: ".
[[noreturn]] void fail(errc code, unsigned cpu, const std::string& text);

// ---- The target side (service.cpp) ------------------------------------

enum class start_result : std::uint8_t { running, unavailable, no_thread };

// Makes sure `cpu` has a running service thread; allocates nothing once the
// CPU's thread was started (or parked).
start_result start_service(service& s, unsigned cpu);

// Adds to `usable` the parked CPUs that can be served again.
void pin_parked_that_came_back(registry& r, cpu_bits& usable);

// Queues a filled descriptor on its CPU's queue, waking the service thread.
void push(call& c) noexcept;

// The fork child's half of reset_after_fork(): no service thread exists.
void reset_services_after_fork() noexcept;

}  // namespace percpu::xcall::internal
