// xcall/calls.cpp - the caller's side of on-CPU calls: each calling
// thread's ring of descriptors, issue, wait and barrier, and the public
// functions of percpu/xcall.hpp (see internal.hpp for the protocol).
#include <sched.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>

#include "xcall/internal.hpp"

namespace percpu::xcall {

namespace internal {

std::atomic<long> timeout_ms{10000};

[[noreturn]] void fail(errc code, unsigned cpu, const std::string& text) {
  throw error(code, "percpu::xcall: " + text, static_cast<int>(cpu));
}

}  // namespace internal

namespace {

using namespace internal;

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
      mask_ = n - 1;
    }
    return ++last_seq_;
  }

  call& reserve(unsigned cpu, std::uint64_t seq, const char* label) {
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
    return std::exchange(skipped_, cpu_bits{});
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
    if (sched_getcpu() != static_cast<int>(c.cpu) && poll_until(done, spin_wait_ns)) return true;
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

void check_cpu(unsigned cpu) {
  unsigned limit = the_registry().count;
  if (cpu >= limit)
    percpu::detail::throw_out_of_range("percpu::xcall", "CPU", cpu, "cpu_limit()", limit);
}

// Throws recursive_call when the caller is a service thread and `what`
// would queue a call behind the one it is running.
void refuse_in_service(const char* what) {
  if (current_service >= 0) {
    fail(errc::would_deadlock, static_cast<unsigned>(current_service),
         std::string(what) + " from inside a call on CPU " + std::to_string(current_service) +
             " would wait for itself");
  }
}

}  // namespace

void internal::reset_after_fork() noexcept {
  registry& r = the_registry();
  for (unsigned cpu = 0; cpu < r.count; ++cpu) {
    service& s = r.services[cpu];
    s.head.store(nullptr, std::memory_order_relaxed);
    s.sleeping.store(0, std::memory_order_relaxed);
    s.state.store(absent, std::memory_order_relaxed);
    // Another thread may have held the lock at the fork; it does not exist here.
    new (&s.start_lock) std::mutex;
  }
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
  for (unsigned cpu = 0; cpu < r.count; ++cpu) {
    if (!r.possible.test(cpu)) continue;
    try {
      ensure_service(cpu);
      t.targets.set(cpu);
    } catch (const error&) {
      t.skipped.set(cpu);  // offline, or outside the process's cpuset
    }
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
