// fence.cpp - fence_cpu and fence_all (see percpu/runtime/detail/fence.hpp).
//
// rseq backend: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) runs a full
// barrier on the targeted CPUs and aborts any restartable sequence running
// there.  It pairs with the sequence's plain load of the stop word (read
// before any data the sequence commits to): a sequence that began before the
// fence is aborted and restarts; one that begins after it reads the word as
// set.  Stores that sequences committed before the fence are visible to the
// caller after it.  (A CPU that is offline or not possible is not an error:
// the kernel returns 0, there being nothing to fence.)
//
// Portable backend: the stop word is the slot's lock, taken by every
// operation, so a stop needs no fence; fence_all() is a full fence for the
// asymmetric pair of fence.hpp.
#include "percpu/runtime/detail/fence.hpp"

#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "percpu/runtime/detail/arch.hpp"
#include "runtime_internal.hpp"

namespace percpu::detail {

namespace {

// Issues the rseq fence for one CPU (cpu >= 0) or for all (cpu < 0).
// Must not fail: a visit relies on it for exclusion.
void membarrier_fence(int cpu) noexcept {
  for (int attempt = 0;; ++attempt) {
    long rc = cpu >= 0 ? syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
                                 MEMBARRIER_CMD_FLAG_CPU, cpu)
                       : syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0);
    if (rc == 0) return;
    int err = errno;
    if (err == EINTR || err == EAGAIN) continue;
    // A forked child may need to register again before its first fence.
    if (err == EPERM && attempt == 0 &&
        syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0) {
      continue;
    }
    char buf[128];
    std::fprintf(stderr, "percpu: membarrier rseq fence failed (%s); cannot stop a CPU safely\n",
                 error_text(err, buf, sizeof buf));
    std::abort();
  }
}

}  // namespace

void fence_cpu(unsigned cpu) noexcept {
  if (backend_now() != backend_code::rseq) return;
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
  membarrier_fence(static_cast<int>(cpu));
}

void fence_all() noexcept {
  if (backend_now() == backend_code::rseq) {
    membarrier_fence(-1);
  } else {
    portable_full_fence();
  }
}

}  // namespace percpu::detail
