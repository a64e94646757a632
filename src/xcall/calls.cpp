// xcall/calls.cpp - on-CPU calls through pinned service threads (see
// percpu/xcall.hpp): the callers' side, and the mechanism as a whole.
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
#include "percpu/xcall.hpp"

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "percpu/runtime/detail/futex.hpp"
#include "xcall/internal.hpp"

namespace percpu::xcall {

void internal::fail(errc code, unsigned cpu, const std::string& text) {
  throw error(code, "percpu::xcall: " + text, static_cast<int>(cpu));
}

namespace {

using namespace internal;  // NOLINT(google-build-using-namespace): this file's other half
using percpu::detail::futex_wait;

// How long a caller waits for one call (set_timeout).
std::atomic<long> timeout_ms{10000};

// ---- Caller side: descriptors ------------------------------------------------

struct pending_failure {
  bool set = false;
  std::uint64_t seq = 0;
  unsigned cpu = 0;
  outcome result = outcome::returned;
  const char* label = "";
  std::exception_ptr exception;
};

// The calling thread's descriptors: a ring in issue order.  [tail, head)
// may be in flight; the rest are free.
class caller_ring {
 public:
  caller_ring() = default;
  caller_ring(const caller_ring&) = delete;
  caller_ring& operator=(const caller_ring&) = delete;

  // Thread exit: the service threads may still use the descriptors, so wait
  // for them; if one never completes, leak the ring rather than free memory
  // a service thread will write.
  ~caller_ring() {
    if (!calls_) return;
    long deadline = now_ns() + timeout_ms.load(std::memory_order_relaxed) * 1000000;
    for (; tail_ != head_; ++tail_) {
      if (!wait_one(at(tail_), deadline)) {
        std::fprintf(stderr,
                     "percpu::xcall: a thread exits with a call to CPU %u still running; its "
                     "descriptors are leaked\n",
                     at(tail_).cpu);
        static_cast<void>(calls_.release());
        return;
      }
    }
  }

  std::uint64_t open_ticket() {
    if (!calls_) {
      unsigned n = 64;
      while (n < 2 * the_registry().count) n *= 2;
      calls_.reset(new call[n]);
      skipped_.reserve(the_registry().count);
      mask_ = n - 1;
    }
    return ++last_seq_;
  }

  call& reserve(unsigned cpu, std::uint64_t seq, const char* label) {
    // Nothing in flight: take the first descriptor again, the one the last
    // call gave back, whose line this CPU read last.  The next one in the
    // ring was written last by a target CPU; fetching it back added a
    // cache-line transfer to each round trip (service.cpp, on_cpu's history).
    if (head_ == tail_) head_ = tail_ = 0;
    if (head_ - tail_ > mask_) {
      // Every descriptor is in flight: wait for the oldest.
      long deadline = now_ns() + timeout_ms.load(std::memory_order_relaxed) * 1000000;
      if (!wait_one(at(tail_), deadline)) throw_timeout(at(tail_));
      reap(at(tail_));
      ++tail_;
    }
    call& c = at(head_);
    c.cpu = cpu;
    c.seq = seq;
    c.label = label;
    c.anywhere = false;
    c.skippable = false;
    c.result = outcome::returned;
    return c;
  }

  call& reserved() noexcept { return at(head_); }
  void commit() noexcept { ++head_; }

  // Waits for every call up to `seq`; returns the CPUs that broadcasts among
  // them skipped at run time.
  cpu_bits wait_through(std::uint64_t seq) {
    if (!calls_) return {};
    long deadline = now_ns() + timeout_ms.load(std::memory_order_relaxed) * 1000000;
    for (; tail_ != head_ && at(tail_).seq <= seq; ++tail_) {
      if (!wait_one(at(tail_), deadline)) throw_timeout(at(tail_));
      reap(at(tail_));
    }
    if (failure_.set && failure_.seq <= seq) {
      pending_failure f = failure_;
      failure_ = pending_failure{};
      if (f.result == outcome::threw) std::rethrow_exception(f.exception);
      fail(errc::cpu_unavailable, f.cpu,
           "CPU " + std::to_string(f.cpu) +
               " is unavailable (its service thread cannot run "
               "there: offline, or outside the process's CPUs); function " +
               f.label + " did not run");
    }
    // A copy, not a move: skipped_ keeps its room for every CPU, so that
    // reap(), which must not throw, never allocates.
    cpu_bits skipped = skipped_;
    skipped_.reset();
    return skipped;
  }

  // fork() child: the service threads are gone; abandon what was in flight
  // (its callables are leaked, not destroyed: their state belongs to the
  // parent's threads).
  void abandon_in_flight() noexcept {
    if (!calls_) return;
    for (; tail_ != head_; ++tail_) {
      call& c = at(tail_);
      c.fn.forget();
      c.exception = nullptr;
      c.busy.store(idle, std::memory_order_relaxed);
    }
    failure_ = pending_failure{};
    skipped_.reset();
  }

  // Waits until c completes (true) or the deadline passes (false).
  static bool wait_one(call& c, long deadline) noexcept {
    // Acquire, everywhere busy is read as idle: pairs with the target's
    // release exchange in run(), so the callee's writes (and the
    // callable's destruction) happen before the caller goes on.
    auto done = [&c] { return c.busy.load(std::memory_order_acquire) == idle; };
    // Spinning pays only while the target runs elsewhere; a call to the
    // waiter's own CPU needs this CPU, so the waiter sleeps at once.
    long clock_ns = 0;
    if (sched_getcpu() != static_cast<int>(c.cpu) && poll_until(done, spin_wait_ns, clock_ns)) {
      return true;
    }
    if (done()) return true;
    for (;;) {
      std::uint32_t seen = in_flight;
      if (!c.busy.compare_exchange_strong(seen, waiter_asleep, std::memory_order_acquire,
                                          std::memory_order_acquire) &&
          seen == idle) {
        return true;
      }
      long left = deadline - now_ns();
      if (left <= 0) return done();
      futex_wait(c.busy, waiter_asleep, left);
      if (done()) return true;
    }
  }

 private:
  call& at(std::uint64_t i) const noexcept { return calls_[i & mask_]; }

  void reap(call& c) noexcept {
    if (c.result == outcome::off_cpu && c.skippable) {
      skipped_.set(c.cpu);
    } else if (c.result != outcome::returned && !failure_.set) {
      failure_ = pending_failure{true, c.seq, c.cpu, c.result, c.label, c.exception};
    }
    c.exception = nullptr;
  }

  [[noreturn]] static void throw_timeout(const call& c) {
    fail(errc::timeout, c.cpu,
         "call to CPU " + std::to_string(c.cpu) + " (function " + c.label +
             ") did not complete within " +
             std::to_string(timeout_ms.load(std::memory_order_relaxed)) +
             " ms; it is still in flight");
  }

  std::unique_ptr<call[]> calls_;
  std::uint64_t mask_ = 0;
  std::uint64_t head_ = 0;
  std::uint64_t tail_ = 0;
  std::uint64_t last_seq_ = 0;
  pending_failure failure_;
  cpu_bits skipped_;  // CPUs broadcasts skipped, since the last wait
};

thread_local caller_ring ring;

// unicast's form: throws cpu_unavailable.
void ensure_service(unsigned cpu) {
  switch (start_service(the_registry().services[cpu], cpu)) {
    case start_result::running:
      return;
    case start_result::no_thread:
      fail(errc::cpu_unavailable, cpu,
           "cannot start the service thread for CPU " + std::to_string(cpu));
    case start_result::unavailable:
      fail(errc::cpu_unavailable, cpu,
           "CPU " + std::to_string(cpu) +
               " is unavailable: a service thread cannot be pinned there (offline or outside "
               "the process's cpuset)");
  }
}

void check_cpu(unsigned cpu) {
  unsigned limit = the_registry().count;
  if (cpu >= limit) {
    percpu::detail::throw_out_of_range("percpu::xcall", "CPU", cpu, "cpu_limit()", limit);
  }
}

// Throws would_deadlock when the caller is a service thread and `what`
// would queue a call behind the one it is running.
void refuse_in_service(const char* what) {
  if (current_service >= 0) {
    fail(errc::would_deadlock, static_cast<unsigned>(current_service),
         std::string(what) + " from inside a call on CPU " + std::to_string(current_service) +
             " would wait for itself");
  }
}

}  // namespace

// fork() child: the service threads are gone; abandon what the forking
// thread had in flight (the other threads do not exist in the child).
void internal::reset_after_fork() noexcept {
  reset_services_after_fork();
  ring.abandon_in_flight();
}

// ---- Public functions ------------------------------------------------------------------

void set_timeout(std::chrono::milliseconds limit) noexcept {
  timeout_ms.store(static_cast<long>(limit.count()), std::memory_order_relaxed);
}

std::chrono::milliseconds timeout() noexcept {
  return std::chrono::milliseconds(timeout_ms.load(std::memory_order_relaxed));
}

unsigned cpu_limit() {
  return the_registry().count;
}

int service_cpu() noexcept {
  return current_service;
}

namespace detail {

std::uint64_t open_ticket() {
  return ring.open_ticket();
}

inline_function& reserve(unsigned cpu, std::uint64_t seq, const char* label, bool skippable) {
  call& c = ring.reserve(cpu, seq, label);
  c.skippable = skippable;
  return c.fn;
}

void post() {
  call& c = ring.reserved();
  ring.commit();
  push(c);
}

void cancel() noexcept {
  ring.reserved().fn.reset();
}

void unicast_target(unsigned cpu) {
  check_cpu(cpu);
  if (static_cast<int>(cpu) == current_service) refuse_in_service("a call to the same CPU");
  // The calling thread's own mask does not matter (a thread pinned to one
  // CPU may call another); the target's service thread decides whether the
  // process may run there: it cannot be started, or it finds itself off the
  // CPU and reports cpu_unavailable through the wait.
  ensure_service(cpu);
}

void broadcast_targets(broadcast_ticket& t) {
  refuse_in_service("a broadcast");
  registry& r = the_registry();
  t.targets.reserve(r.count);  // allocates only for CPU numbers from 1024 up
  t.skipped.reserve(r.count);
  bool any_parked = false;
  for (unsigned cpu = 0; cpu < r.count; ++cpu) {
    if (!r.possible.test(cpu)) continue;
    service& s = r.services[cpu];
    // A parked CPU is tried again below, for all of them at once.
    if (s.state.load(std::memory_order_acquire) == parked) {
      any_parked = true;
    } else if (start_service(s, cpu) == start_result::running) {
      t.targets.set(cpu);
    }
  }
  if (any_parked) pin_parked_that_came_back(r, t.targets);
  for (unsigned cpu = 0; cpu < r.count; ++cpu) {
    // Offline, or outside the process's cpuset.
    if (r.possible.test(cpu) && !t.targets.test(cpu)) t.skipped.set(cpu);
  }
}

}  // namespace detail

cpu_bits wait(ticket t) {
  return ring.wait_through(t.seq);
}

void barrier() {
  refuse_in_service("a barrier");
  registry& r = the_registry();
  std::uint64_t seq = ring.open_ticket();
  for (unsigned cpu = 0; cpu < r.count; ++cpu) {
    // Acquire: a call whose issue happened before this barrier found the
    // service running, and so does this load.
    if (r.services[cpu].state.load(std::memory_order_acquire) != running) continue;
    call& c = ring.reserve(cpu, seq, "barrier");
    c.anywhere = true;
    c.fn.emplace([] {});
    ring.commit();
    push(c);
  }
  static_cast<void>(ring.wait_through(seq));
}

}  // namespace percpu::xcall
