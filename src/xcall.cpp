// xcall.cpp - on-CPU calls through pinned service threads (see percpu/xcall.hpp).
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
#include <signal.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>

#include "percpu/runtime/detail/arch.hpp"
#include "percpu/runtime/detail/futex.hpp"
#include "runtime/runtime_internal.hpp"
#include "xcall_internal.hpp"

namespace percpu::xcall {

namespace {

using percpu::detail::futex_wait;
using percpu::detail::futex_wake_all;
using percpu::detail::now_ns;

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

std::atomic<long> timeout_ms{10000};

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
    percpu::detail::arch::cpu_relax();
  }
}

void reset_after_fork() noexcept;

// Every target CPU's service; never destroyed (service threads may still
// touch it while the program exits).
struct registry {
  unsigned count = 1;  // CPU numbers below it are accepted
  cpu_bits possible;   // the possible CPUs among them
  service* services;

  registry() {
    for (unsigned cpu : possible_cpus()) {
      if (cpu < max_cpus) possible.set(cpu);
      if (cpu < max_cpus && cpu + 1 > count) count = cpu + 1;
    }
    if (possible.none()) possible.set(0);
    services = new service[count];
    pthread_atfork(nullptr, nullptr, reset_after_fork);
  }
};

registry& the_registry() {
  static registry* r = new registry;
  return *r;
}

thread_local int current_service = -1;

[[noreturn]] void fail(errc code, unsigned cpu, const std::string& text) {
  throw error(code, cpu, "percpu::xcall: " + text);
}

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

// ---- Target side: service threads ----------------------------------------------

// True when the calling service thread runs on `cpu`.  A thread pinned
// there finds itself elsewhere only when the CPU went offline, the cpuset
// shrank, or someone restricted the process's threads (taskset -a): it
// respects such a restriction (moving back only if its mask still allows
// `cpu`), and never lets a call run off its CPU.
bool on_cpu(unsigned cpu) noexcept {
  if (sched_getcpu() == static_cast<int>(cpu)) return true;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0 || !CPU_ISSET(cpu, &set)) return false;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) return false;
  return sched_getcpu() == static_cast<int>(cpu);
}

// Runs one call and hands the descriptor back to its caller; true when the
// caller was asleep and had to be woken.
bool run(call& c, unsigned cpu) noexcept {
  if (c.anywhere) {
    c.result = outcome::returned;
  } else if (!on_cpu(cpu)) {
    c.result = outcome::off_cpu;
  } else {
    try {
      c.fn(cpu);
      c.result = outcome::returned;
    } catch (...) {
      c.result = outcome::threw;
      c.exception = std::current_exception();
    }
  }
  c.fn.reset();
  // Release: pairs with the caller's acquire load of busy (wait_one): the
  // function's writes, the result and the callable's destruction happen
  // before the caller sees the descriptor free and reuses it.  This is the
  // last access to *c except the wake below: the caller may reuse the
  // descriptor at once.  (A wake on a descriptor already reused is a
  // spurious wake-up, which every futex waiter tolerates.)
  if (c.busy.exchange(idle, std::memory_order_release) != waiter_asleep) return false;
  futex_wake_all(c.busy);
  return true;
}

void serve(service& s, unsigned cpu) {
  for (;;) {
    // Acquire: pairs with the callers' release (seq_cst) push, so each
    // descriptor taken is seen fully filled.
    call* list = s.head.exchange(nullptr, std::memory_order_acquire);
    if (list == nullptr) {
      if (poll_until([&s] { return s.head.load(std::memory_order_relaxed) != nullptr; }, poll_ns)) {
        continue;
      }
      // Dekker with post(): seq_cst store of `sleeping`, then seq_cst load of
      // the head; the caller does a seq_cst push, then a seq_cst load of
      // `sleeping`.  Sequential consistency forbids both loads seeing the old
      // values, so either this thread sees the new call and does not sleep,
      // or the caller sees `sleeping` and wakes it.
      s.sleeping.store(1, std::memory_order_seq_cst);
      if (s.head.load(std::memory_order_seq_cst) == nullptr) futex_wait(s.sleeping, 1);
      s.sleeping.store(0, std::memory_order_relaxed);
      continue;
    }
    // The list is newest first: reverse it to run calls in enqueue order.
    call* ordered = nullptr;
    while (list != nullptr) {
      call* next = list->next;
      list->next = ordered;
      ordered = list;
      list = next;
    }
    bool woke = false;
    while (ordered != nullptr) {
      // Read the link before completing the call: afterwards the caller may
      // re-queue the descriptor and overwrite it.
      call* next = ordered->next;
      woke |= run(*ordered, cpu);
      ordered = next;
    }
    // A woken waiter may be waiting for this very CPU (a call to its own
    // CPU, a broadcast): let it run before polling.
    if (woke) sched_yield();
  }
}

void* service_main(void* arg) {
  struct {
    service* s;
    unsigned cpu;
  } a{static_cast<service*>(arg),
      static_cast<unsigned>(static_cast<service*>(arg) - the_registry().services)};
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(a.cpu, &set);
  bool pinned = sched_setaffinity(0, sizeof set, &set) == 0;
  char name[16];
  std::snprintf(name, sizeof name, "percpu-xc/%u", a.cpu);
  pthread_setname_np(pthread_self(), name);
  // Release: pairs with the starter's acquire load; the pin happened first.
  a.s->state.store(pinned ? running : failed, std::memory_order_release);
  futex_wake_all(a.s->state);
  if (!pinned) return nullptr;
  current_service = static_cast<int>(a.cpu);
  serve(*a.s, a.cpu);
  return nullptr;
}

// Makes sure `cpu` has a running service thread (creating it on first use).
service& ensure_service(unsigned cpu) {
  service& s = the_registry().services[cpu];
  // Acquire: pairs with service_main's release of `running`.
  if (s.state.load(std::memory_order_acquire) == running) return s;
  std::lock_guard<std::mutex> lock(s.start_lock);
  if (s.state.load(std::memory_order_acquire) == running) return s;
  s.state.store(starting, std::memory_order_relaxed);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  // The service thread takes no signals (it inherits the mask): handlers of
  // the program stay on the program's own threads.
  int rc = 0;
  {
    percpu::detail::signals_blocked quiet;
    rc = pthread_create(&s.thread, &attr, service_main, &s);
  }
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    s.state.store(absent, std::memory_order_relaxed);
    fail(errc::cpu_unavailable, cpu,
         "cannot start the service thread for CPU " + std::to_string(cpu));
  }
  std::uint32_t st;
  while ((st = s.state.load(std::memory_order_acquire)) == starting) futex_wait(s.state, starting);
  if (st == failed) {
    s.state.store(absent, std::memory_order_relaxed);
    fail(errc::cpu_unavailable, cpu,
         "CPU " + std::to_string(cpu) +
             " is unavailable: a service thread cannot be pinned there (offline or outside the "
             "process's cpuset)");
  }
  return s;
}

// Queues the calling thread's reserved descriptor on its CPU's queue.
void push(call& c) noexcept {
  service& s = the_registry().services[c.cpu];
  // Relaxed: the descriptor belongs to this thread until the push publishes it.
  c.busy.store(in_flight, std::memory_order_relaxed);
  call* old = s.head.load(std::memory_order_relaxed);
  do {
    c.next = old;
    // seq_cst (a release and more): publishes the filled descriptor to the
    // service thread's acquire exchange, and is the store half of the
    // Dekker pair with serve()'s `sleeping` store (see there).
  } while (
      !s.head.compare_exchange_weak(old, &c, std::memory_order_seq_cst, std::memory_order_relaxed));
  // Wake only on the empty -> non-empty transition, and only if the thread
  // is (about to be) asleep; exchange so that one caller pays the syscall.
  if (old == nullptr && s.sleeping.load(std::memory_order_seq_cst) != 0 &&
      s.sleeping.exchange(0, std::memory_order_relaxed) != 0) {
    futex_wake_all(s.sleeping);
  }
}

void reset_after_fork() noexcept {
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

void check_cpu(unsigned cpu) {
  unsigned limit = the_registry().count;
  if (cpu >= limit) {
    fail(errc::cpu_out_of_range, cpu,
         "CPU " + std::to_string(cpu) + " is out of range (cpu_limit() is " +
             std::to_string(limit) + ")");
  }
}

// Throws recursive_call when the caller is a service thread and `what`
// would queue a call behind the one it is running.
void refuse_in_service(const char* what) {
  if (current_service >= 0) {
    fail(errc::recursive_call, static_cast<unsigned>(current_service),
         std::string(what) + " from inside a call on CPU " + std::to_string(current_service) +
             " would wait for itself");
  }
}

}  // namespace

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

namespace testing {

bool service_thread(unsigned cpu, pthread_t& thread) {
  registry& r = the_registry();
  if (cpu >= r.count || r.services[cpu].state.load(std::memory_order_acquire) != running) {
    return false;
  }
  thread = r.services[cpu].thread;
  return true;
}

}  // namespace testing

}  // namespace percpu::xcall
