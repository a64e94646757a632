// xcall/service.cpp - the target's side of on-CPU calls: the service
// threads pinned one per CPU, their queues, and pushing a call onto one (see
// internal.hpp for the protocol).
#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <mutex>
#include <string>

#include "xcall/internal.hpp"

namespace percpu::xcall::internal {

registry::registry() {
  for (unsigned cpu : possible_cpus()) {
    if (cpu < max_cpus) possible.set(cpu);
    if (cpu < max_cpus && cpu + 1 > count) count = cpu + 1;
  }
  if (possible.none()) possible.set(0);
  services = new service[count];
}

thread_local constinit int current_service = -1;

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
  // The service thread takes no signals: handlers of the program stay on
  // the program's own threads.
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&s.thread, &attr, service_main, &s);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
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

}  // namespace percpu::xcall::internal
