// service.cpp - the targets' side of on-CPU calls: per-CPU queues and
// the service threads that run them (see calls.cpp for the mechanism).
//
// Problem: a call must run on its CPU and nowhere else, while other
// programs, the kernel and the process itself change which CPUs the
// process may use: a service thread's mask can be widened (taskset -a -p,
// a cgroup-v1 cpuset update) or restricted, CPUs go offline and come back,
// and a machine may have many more possible CPUs than usable ones.
//
// Mechanism: one service thread per CPU, started on the first call to it
// and pinned there; it keeps its mask exactly its CPU (on_cpu: the mask read
// every 100 us and after a migration, the CPU checked per call).  A thread that cannot be
// pinned when it starts stays parked, and is pinned when its CPU can be used again
// (pin_parked_that_came_back), so an unusable CPU costs no thread per call.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <new>

#include "percpu/runtime/detail/futex.hpp"
#include "runtime/topology.hpp"
#include "xcall/internal.hpp"

namespace percpu::xcall::internal {

using percpu::detail::futex_wait;
using percpu::detail::futex_wake_all;

std::atomic<unsigned long> threads_started{0};

namespace {

// How often a serving thread reads its affinity mask again (see on_cpu).
constexpr long mask_recheck_ns = 100000;

// What a service thread knows of its own pin: its mask, when it last read
// it, and whether something since (a call that ended on another CPU) makes
// that reading stale; and the thread's latest reading of the clock, taken
// after each call it completes, while it polls and after each yield or
// sleep, never between a call's arrival and its completion (see on_cpu).
struct pin_check {
  percpu::detail::cpu_mask& mask;
  long read_ns = 0;
  long clock_ns = 0;
  bool stale = true;
};

// True when the calling service thread may run a call for `cpu`: its
// affinity mask is exactly {cpu}.  Running there is not enough: a thread
// whose mask someone widened (taskset -a -p, a cgroup-v1 cpuset update,
// the kernel's fallback when the CPU went offline) may be on `cpu` at this
// check and migrate during the call.  A mask that still allows `cpu` is
// narrowed to it again, which moves the thread there before
// sched_setaffinity returns.  A mask without `cpu` is a restriction (the CPU
// went offline, the cpuset shrank, taskset -a): it is respected, and the
// call does not run.
//
// Cost: reading the mask is a system call (about 1 us, more than a whole
// unicast), so it is read when the last reading is mask_recheck_ns old,
// and whenever the thread is found on another CPU (before a call, or after
// one: it migrated, so its mask allows that); in between, each call checks
// the CPU it runs on (rseq's cpu_id, no system call).  The age of the last
// reading is judged by pin.clock_ns, which run() and serve() take where no
// caller waits for them (after a call, after a yield or a sleep, and before
// each look at the queue while polling): it is never older than the few
// instructions since then, as the reading before every call was, so a
// widening is undone within 100 us.  No check closes the window of a
// widening that lands during a call: the kernel's cross-CPU calls run with
// preemption off, which user space cannot do.
//
// History: reading the mask before every call made xcall.unicast 2-3x
// slower, and reading it after every sleep still 1.4x (the service thread
// sleeps between most calls of a caller that waits for each).  Until
// 2026-12-07 the clock was read here, before every call, between the
// call's arrival and its completion; reading it after the previous call's
// completion instead, together with the caller reusing the descriptor it
// just got back (calls.cpp), took a back-to-back round trip from 600-690
// ns to 300-340 on the development VM (either change alone: 500-575).
bool on_cpu(unsigned cpu, pin_check& pin) noexcept {
  bool here = sched_getcpu() == static_cast<int>(cpu);
  if (here && !pin.stale && pin.clock_ns - pin.read_ns < mask_recheck_ns) return true;
  percpu::detail::cpu_mask& mask = pin.mask;
  long now = now_ns();
  pin.clock_ns = now;
  pin.read_ns = now;
  pin.stale = true;
  if (!mask.read(0) || !mask.test(cpu)) return false;
  if (!mask.only(cpu)) {
    mask.clear();
    mask.set(cpu);
    if (!mask.apply(0)) return false;
  }
  pin.stale = false;
  return sched_getcpu() == static_cast<int>(cpu);
}

// Runs one call and hands the descriptor back to its caller; true when the
// caller was asleep and had to be woken.
bool run(call& c, unsigned cpu, pin_check& pin) noexcept {
  if (c.anywhere) {
    c.result = outcome::returned;
  } else if (!on_cpu(cpu, pin)) {
    c.result = outcome::off_cpu;
  } else {
    try {
      c.fn(cpu);
      c.result = outcome::returned;
    } catch (...) {
      c.result = outcome::threw;
      c.exception = std::current_exception();
    }
    // Moved during the call: its mask allows another CPU; read it again.
    if (sched_getcpu() != static_cast<int>(cpu)) pin.stale = true;
  }
  c.fn.reset();
  // Release: pairs with the caller's acquire load of busy (wait_one): the
  // function's writes, the result and the callable's destruction happen
  // before the caller sees the descriptor free and reuses it.  This is the
  // last access to *c except the wake below: the caller may reuse the
  // descriptor at once.  (A wake on a descriptor already reused is a
  // spurious wake-up, which every futex waiter tolerates.)
  bool woke = c.busy.exchange(idle, std::memory_order_release) == waiter_asleep;
  if (woke) futex_wake_all(c.busy);
  // The clock for the next call's check (on_cpu), read once the caller no
  // longer waits for this thread.
  pin.clock_ns = now_ns();
  return woke;
}

void serve(service& s, unsigned cpu) {
  pin_check pin{*s.mask};
  for (;;) {
    // Acquire: pairs with the callers' release (seq_cst) push, so each
    // descriptor taken is seen fully filled.
    call* list = s.head.exchange(nullptr, std::memory_order_acquire);
    if (list == nullptr) {
      if (poll_until([&s] { return s.head.load(std::memory_order_relaxed) != nullptr; }, poll_ns,
                     pin.clock_ns)) {
        continue;
      }
      // Dekker with post(): seq_cst store of `sleeping`, then seq_cst load of
      // the head; the caller does a seq_cst push, then a seq_cst load of
      // `sleeping`.  Sequential consistency forbids both loads seeing the old
      // values, so either this thread sees the new call and does not sleep,
      // or the caller sees `sleeping` and wakes it.
      //
      // The seq_cst fence between them changes nothing in C++ or on arm64
      // hardware (a store-release then a load-acquire, STLR then LDAR, are
      // already ordered).  It is for arm64 code run by QEMU's TCG on an
      // x86-64 host (qemu-user containers, emulated CI machines): QEMU 7.2
      // turns STLR into a host fence then a plain store, and LDAR into a
      // plain load then a fence, so the x86 store buffer lets this load pass
      // the store.  A two-thread store-buffering test saw both loads read 0
      // once in 20,000 rounds in the 4-CPU arm64 guest, and xcall calls were
      // lost there: the service thread slept on a queued call, whose caller
      // had read `sleeping` as 0 (CI, stop 25: "did not complete within
      // 10000 ms").  DMB ISH becomes a full host fence.  The caller's side
      // needs none there: its compare-exchange is a locked host instruction.
      s.sleeping.store(1, std::memory_order_seq_cst);
#if !defined(__SANITIZE_THREAD__)  // ThreadSanitizer models the seq_cst accesses, not fences
      std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
      if (s.head.load(std::memory_order_seq_cst) == nullptr) futex_wait(s.sleeping, 1);
      s.sleeping.store(0, std::memory_order_relaxed);
      pin.clock_ns = now_ns();  // for on_cpu: the sleep may have been long
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
      woke |= run(*ordered, cpu, pin);
      ordered = next;
    }
    // A woken waiter may be waiting for this very CPU (a call to its own
    // CPU, a broadcast): let it run before polling.
    if (woke) {
      sched_yield();
      pin.clock_ns = now_ns();  // for on_cpu: the yield may have lasted a time slice
    }
  }
}

void* service_main(void* arg) {
  service& s = *static_cast<service*>(arg);
  auto cpu = static_cast<unsigned>(&s - the_registry().services);
  s.tid = gettid();
  s.mask->clear();
  s.mask->set(cpu);
  bool pinned = s.mask->apply(0);
  char name[16];
  std::snprintf(name, sizeof name, "percpu-xc/%u", cpu);
  pthread_setname_np(pthread_self(), name);
  // Release: pairs with the starter's acquire load; the pin and tid first.
  s.state.store(pinned ? running : parked, std::memory_order_release);
  futex_wake_all(s.state);
  // Parked until a caller finds the CPU usable and pins this thread there
  // (pin_parked); acquire pairs with its release of `running`.
  while (s.state.load(std::memory_order_acquire) == parked) futex_wait(s.state, parked);
  current_service = static_cast<int>(cpu);
  serve(s, cpu);
  return nullptr;
}

// A parked service thread: pins it to its CPU and lets it serve; false when
// the CPU is still unusable.  One system call; the caller holds start_lock.
bool pin_parked(service& s, unsigned cpu) noexcept {
  s.mask->clear();
  s.mask->set(cpu);
  if (!s.mask->apply(s.tid)) return false;
  // Release: pairs with the parked thread's acquire load; the pin first.
  s.state.store(running, std::memory_order_release);
  futex_wake_all(s.state);
  return true;
}

}  // namespace

// Makes sure `cpu` has a running service thread: starts one on first use,
// or pins its parked one.  A CPU whose thread cannot be pinned keeps the
// parked thread, so asking again costs one sched_setaffinity, never another
// thread.
start_result start_service(service& s, unsigned cpu) {
  // Acquire: pairs with the release of `running` (service_main, pin_parked).
  if (s.state.load(std::memory_order_acquire) == running) return start_result::running;
  std::lock_guard<std::mutex> lock(s.start_lock);
  std::uint32_t st = s.state.load(std::memory_order_acquire);
  if (st == running) return start_result::running;
  if (st == parked) return pin_parked(s, cpu) ? start_result::running : start_result::unavailable;
  // The service thread's affinity mask, sized for `cpu` and the kernel's
  // range; kept for the thread's checks before each call (allocated once).
  if (s.mask == nullptr) s.mask = new percpu::detail::cpu_mask(the_registry().count);
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
    return start_result::no_thread;
  }
  threads_started.fetch_add(1, std::memory_order_relaxed);
  while ((st = s.state.load(std::memory_order_acquire)) == starting) futex_wait(s.state, starting);
  return st == running ? start_result::running : start_result::unavailable;
}

// Many possible CPUs, few usable (a VM with 64 possible CPUs and 4 online,
// a narrow cpuset): a broadcast must not pay a system call for each
// unusable CPU.  One sched_setaffinity of one parked thread to the set of
// all parked CPUs fails unless one of them became usable (online again,
// back in the cpuset); only then are the parked threads pinned one by one.
// Sets `usable` to the parked CPUs that were pinned.  Allocates nothing.
void pin_parked_that_came_back(registry& r, cpu_bits& usable) {
  std::lock_guard<std::mutex> lock(r.probe_lock);
  percpu::detail::cpu_mask& probe = *r.probe;
  probe.clear();
  pid_t prober = 0;
  for (unsigned cpu = 0; cpu < r.count; ++cpu) {
    if (r.services[cpu].state.load(std::memory_order_acquire) != parked) continue;
    probe.set(cpu);
    if (prober == 0) prober = r.services[cpu].tid;
  }
  if (prober == 0 || !probe.apply(prober) || !probe.read(prober)) return;
  // The prober's mask is now the parked CPUs it may use (read() keeps the
  // active ones); it stays parked with that mask until pinned itself.
  for (unsigned cpu = 0; cpu < r.count; ++cpu) {
    if (probe.test(cpu) && start_service(r.services[cpu], cpu) == start_result::running) {
      usable.set(cpu);
    }
  }
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

void reset_services_after_fork() noexcept {
  registry& r = the_registry();
  for (unsigned cpu = 0; cpu < r.count; ++cpu) {
    service& s = r.services[cpu];
    s.head.store(nullptr, std::memory_order_relaxed);
    s.sleeping.store(0, std::memory_order_relaxed);
    s.state.store(absent, std::memory_order_relaxed);
    // Another thread may have held the lock at the fork; it does not exist here.
    new (&s.start_lock) std::mutex;
  }
  new (&r.probe_lock) std::mutex;
}

thread_local int current_service = -1;

// Every target CPU's service; never destroyed (service threads may still
// touch it while the program exits).
registry::registry() {
  for (unsigned cpu : possible_cpus()) {
    possible.set(cpu);
    if (cpu + 1 > count) count = cpu + 1;
  }
  if (possible.none()) possible.set(0);
  services = new service[count];
  probe = new percpu::detail::cpu_mask(count);
}

}  // namespace percpu::xcall::internal
