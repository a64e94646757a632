// fence.cpp - fence_cpu and fence_all (see percpu/runtime/detail/fence.hpp).
//
// rseq backend: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) runs a full
// barrier on the targeted CPUs and aborts any restartable sequence running
// there.  It pairs with the sequence's plain load of the stop word (read
// before any data the sequence commits to): a sequence that began before the
// fence is aborted and restarts; one that begins after it reads the word as
// set.  Stores that sequences committed before the fence are visible to the
// caller after it.  (A CPU that is offline or not possible is not an error:
// the kernel returns 0, there being nothing to fence.)  Should membarrier
// fail at run time, the fence is made by running the caller on the CPU
// (see fence() below).
//
// Portable backend: the stop word is the slot's lock, taken by every
// operation, so a stop needs no fence; fence_all() is a full fence for the
// asymmetric pair of fence.hpp.
#include "percpu/runtime/detail/fence.hpp"

#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>

#include "percpu/runtime/detail/arch.hpp"
#include "runtime_internal.hpp"

namespace percpu::detail {

namespace {

// 0 while membarrier works; otherwise the error that made it unusable, from
// which on every fence runs the calling thread on the CPUs instead.
std::atomic<int> membarrier_broken{0};

// An affinity mask on the stack (no allocation: fences run in signal
// handlers' slow paths too), wide enough for any kernel's CPU count
// (CONFIG_NR_CPUS is at most 8192).
struct cpu_mask {
  static constexpr std::size_t bits = 8192;
  unsigned long words[bits / (8 * sizeof(unsigned long))] = {};
  void set(unsigned cpu) noexcept {
    words[cpu / (8 * sizeof(unsigned long))] |= 1UL << (cpu % (8 * sizeof(unsigned long)));
  }
};

// The fence without membarrier: the calling thread runs on `cpu` itself.
// For that, any thread of ours running there is switched out, which aborts
// its critical section and orders what it committed (the own-CPU rule of
// fence_cpu).  A CPU the thread may not run on (offline, outside the
// process's cpuset) runs no thread of ours either: nothing to fence.
// (Limit: a thread of higher priority that spins there without sleeping
// keeps the caller waiting as long as it spins.)
bool run_on(unsigned cpu) noexcept {
  if (cpu >= cpu_mask::bits) return false;
  cpu_mask one;
  one.set(cpu);
  if (syscall(__NR_sched_setaffinity, 0, sizeof one.words, one.words) != 0) return false;
  // The call moves the thread before it returns; check all the same.
  for (unsigned spins = 0; sched_getcpu() != static_cast<int>(cpu); ++spins) relax(spins);
  return true;
}

// run_on() one CPU (cpu >= 0) or every slot's CPU (cpu < 0), then back to
// the CPU the caller ran on, and its own mask again.  Back, not merely
// released: a thread left on the fenced CPU would find itself "moved" by
// its own fence, and a structure that follows its thread from CPU to CPU
// (a queue flushing the CPU it left) would fence again, and move again.
void fence_by_running_on(int cpu) noexcept {
  cpu_mask saved;
  if (syscall(__NR_sched_getaffinity, 0, sizeof saved.words, saved.words) < 0) return;
  int home = sched_getcpu();
  bool moved = false;
  if (cpu >= 0) {
    moved = run_on(static_cast<unsigned>(cpu));
  } else {
    for (unsigned c = 0; c < runtime.slots; ++c) moved = run_on(c) || moved;
  }
  if (moved && home >= 0) run_on(static_cast<unsigned>(home));
  syscall(__NR_sched_setaffinity, 0, sizeof saved.words, saved.words);
}

long membarrier_call(int cpu) noexcept {
  return cpu >= 0 ? syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
                            MEMBARRIER_CMD_FLAG_CPU, cpu)
                  : syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0);
}

// The rseq fence for one CPU (cpu >= 0) or for all (cpu < 0).  Never fails:
// a visit relies on it for exclusion.  membarrier can fail at run time all
// the same - ENOMEM from the kernel's cpumask allocation, or anything a
// seccomp filter installed after start-up returns - so a failure is
// retried when it may pass (EINTR, EAGAIN; ENOMEM a few times, sleeping in
// between; EPERM once after registering again, as a forked child may need),
// and otherwise the fence is made by running on the CPUs.  A failure other
// than ENOMEM is taken as lasting: later fences go straight to that.
void fence(int cpu) noexcept {
  if (membarrier_broken.load(std::memory_order_relaxed) != 0) {
    fence_by_running_on(cpu);
    return;
  }
  unsigned short_of_memory = 0;
  for (int attempt = 0;; ++attempt) {
    if (membarrier_call(cpu) == 0) return;
    int err = errno;
    if (err == EINTR || err == EAGAIN) continue;
    if (err == EPERM && attempt == 0 &&
        syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0) {
      continue;
    }
    if (err == ENOMEM && short_of_memory < 8) {
      ++short_of_memory;
      timespec pause{0, 100'000};  // 0.1 ms: the kernel may have memory again
      nanosleep(&pause, nullptr);
      continue;
    }
    if (err != ENOMEM) membarrier_broken.store(err, std::memory_order_relaxed);
    fence_by_running_on(cpu);
    return;
  }
}

}  // namespace

void pretend_membarrier_broken() noexcept {
  membarrier_broken.store(ENOSYS, std::memory_order_relaxed);
}

int membarrier_failure() noexcept {
  return membarrier_broken.load(std::memory_order_relaxed);
}

void fence_cpu(unsigned cpu) noexcept {
  if (backend_now() != backend_code::rseq) return;
  // mm_cid mode: slot `cpu` is a concurrency id, which the thread holding
  // it may use on any CPU, and which may pass to another thread at any
  // context switch.  Only the broadcast fence reaches it (one membarrier
  // that interrupts every CPU running a thread of the process, instead of
  // one; docs/design.md, section 6).  The own-CPU rule below has no
  // counterpart: holding the id now says nothing of where its last holder
  // ran.
  if (indexed_by_mm_cid()) {
    fence(-1);
    return;
  }
  // No fence when the caller itself runs on `cpu` after setting the word.
  // A sequence there that read the word as clear did so before the word was
  // set, on `cpu`; the caller runs on `cpu` now, so that thread was switched
  // out in between, and the kernel aborts a critical section whose thread
  // is preempted or migrated.  Stores it committed before the switch are
  // visible here: a context switch on one CPU orders them.  The caller set
  // the word with a full barrier, so cpu_id is read after the word was set;
  // reading `cpu` means the thread ran there after that (cpu_id changes
  // only on a return to user space on another CPU).  This is the case of a
  // structure draining its own CPU's part (a full queue buffer): a system
  // call saved.  (arch::cpu_id() is a compiler barrier, so the compiler
  // cannot read it before the caller's compare-and-swap either.)
  // (A thread whose rseq area is not registered asks the kernel instead.)
  int here = arch::cpu_id();
  if (here < 0) here = sched_getcpu();
  if (here == static_cast<int>(cpu)) return;
  fence(static_cast<int>(cpu));
}

void fence_all() noexcept {
  if (backend_now() == backend_code::rseq) {
    fence(-1);
  } else {
    portable_full_fence();
  }
}

}  // namespace percpu::detail
