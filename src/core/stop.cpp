// stop.cpp - stop words and membarrier rseq fences (see percpu/core/stop.hpp).
//
// Ordering, rseq backend:
//  - A stopper sets CPU c's word with an acquire compare-and-swap: it pairs
//    with the release store in start() of the previous stopper, so this
//    visitor sees everything the previous one wrote.
//  - The fence (membarrier PRIVATE_EXPEDITED_RSEQ, targeted at c) runs a full
//    barrier on c and aborts any restartable sequence running there.  It
//    pairs with the sequence's plain load of the word: a sequence that began
//    before the fence is aborted and restarts; one that begins after it reads
//    the word as set.  Fast-path stores that committed before the fence are
//    visible to the visitor after it.
//  - start() stores 0 with release: the visitor's writes happen before the
//    next sequence on c that reads 0 (x86-64 loads are acquire; an aarch64
//    version reads the word with ldar).
// Portable backend: the word is the slot's spinlock; the acquire CAS and the
// release store are the whole protocol, and no fence is needed.
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <span>

#include "percpu/core/detail/alloc.hpp"
#include "percpu/core/stop.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/fence.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "percpu/runtime/error.hpp"
#include "runtime/runtime_internal.hpp"

namespace percpu {

namespace {

// Issues the rseq fence for one CPU (cpu >= 0) or for all (cpu < 0).
// Must not fail: a visit relies on it for exclusion.
void fence(int cpu) noexcept {
  if (detail::runtime.backend != detail::backend_code::rseq) return;
  for (int attempt = 0;; ++attempt) {
    long rc = cpu >= 0 ? syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
                                 MEMBARRIER_CMD_FLAG_CPU, cpu)
                       : syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0);
    if (rc == 0) return;
    int err = errno;
    // (A CPU that is offline or not possible is not an error: the kernel
    // returns 0, there being nothing to fence.  EINVAL would mean the
    // fence itself is unsupported, which start-up ruled out.)
    if (err == EINTR || err == EAGAIN) continue;
    // A forked child may need to register again before its first fence.
    if (err == EPERM && attempt == 0 &&
        syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0) {
      continue;
    }
    char buf[128];
    std::fprintf(stderr, "percpu: membarrier rseq fence failed (%s); cannot stop a CPU safely\n",
                 detail::error_text(err, buf, sizeof buf));
    std::abort();
  }
}

}  // namespace

namespace detail {

void fence_all_cpus() noexcept {
  if (runtime.backend == backend_code::rseq) {
    fence(-1);
  } else {
    portable_full_fence();
  }
}

}  // namespace detail

stop_state::stop_state()
    : words0_(static_cast<std::uint32_t*>(
          detail::allocate_percpu(sizeof(std::uint32_t), alignof(std::uint32_t)))),
      slots_(cpu_count()) {}

stop_state::~stop_state() {
  detail::free_percpu(words0_);
}

void stop_state::lock_word(unsigned cpu) noexcept {
  std::atomic_ref<std::uint32_t> word(*detail::copy_on(words0_, cpu));
  for (unsigned spins = 0;; ++spins) {
    std::uint32_t expected = 0;
    if (word.load(std::memory_order_relaxed) == 0 &&
        word.compare_exchange_weak(expected, 1, std::memory_order_acquire,
                                   std::memory_order_relaxed)) {
      return;
    }
    detail::relax(spins);
  }
}

namespace {

// Calls f(state) for each distinct structure of `states` in ascending
// address order (the global lock order, see stop.hpp), without allocating.
template <class F>
void for_each_by_address(std::span<stop_state* const> states, F&& f) {
  const stop_state* last = nullptr;
  for (std::size_t done = 0; done < states.size(); ++done) {
    stop_state* next = nullptr;
    for (stop_state* s : states) {
      bool after_last = last == nullptr || std::less<const stop_state*>()(last, s);
      if (after_last && (next == nullptr || std::less<const stop_state*>()(s, next))) next = s;
    }
    if (next == nullptr) return;  // duplicates: fewer distinct structures
    f(*next);
    last = next;
  }
}

// stop() and start() accept the same CPUs: below cpu_count() and below
// every structure's size().
void check_range(const char* where, std::span<stop_state* const> states, unsigned cpu) {
  if (cpu >= cpu_count()) detail::throw_out_of_range(where, "CPU", cpu, "cpu_count()", cpu_count());
  for (stop_state* s : states) {
    if (cpu >= s->size()) detail::throw_out_of_range(where, "CPU", cpu, "size()", s->size());
  }
}

}  // namespace

void stop_state::stop(unsigned cpu) {
  stop_state* self = this;
  stop(std::span<stop_state* const>(&self, 1), cpu);
}

void stop_state::start(unsigned cpu) {
  stop_state* self = this;
  start(std::span<stop_state* const>(&self, 1), cpu);
}

void stop_state::release_word(unsigned cpu) noexcept {
  // Release: pairs with the next stopper's acquire CAS and with the fast
  // path's read of the word (see the file comment).
  std::atomic_ref<std::uint32_t>(*detail::copy_on(words0_, cpu))
      .store(0, std::memory_order_release);
}

void stop_state::stop_all() {
  stop_state* self = this;
  stop_all(std::span<stop_state* const>(&self, 1));
}

void stop_state::start_all() noexcept {
  for (unsigned cpu = 0; cpu < slots_; ++cpu) release_word(cpu);
}

void stop_state::stop(std::span<stop_state* const> states, unsigned cpu) {
  check_range("percpu::stop_state::stop", states, cpu);
  for_each_by_address(states, [cpu](stop_state& s) { s.lock_word(cpu); });
  // No fence when the caller itself runs on `cpu` after setting the words.
  // A sequence there that read a word as clear did so before the CAS, on
  // `cpu`; the caller runs on `cpu` now, so that thread was switched out in
  // between, and the kernel aborts a critical section whose thread is
  // preempted or migrated.  Stores it committed before the switch are
  // visible here: a context switch on one CPU orders them.  The CAS is a
  // full barrier, so cpu_id is read after the words were set; reading `cpu`
  // means the thread ran there after that (cpu_id changes only on a return
  // to user space on another CPU).  This is the case of a structure
  // draining its own CPU's part (a full queue buffer): a syscall saved.
  if (detail::runtime.backend == detail::backend_code::rseq) {
    // Keeps the compiler from reading cpu_id before the CAS (the read is an
    // asm statement without a memory operand).
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (detail::seq::current_cpu() == cpu) return;
  }
  fence(static_cast<int>(cpu));
}

void stop_state::start(std::span<stop_state* const> states, unsigned cpu) {
  check_range("percpu::stop_state::start", states, cpu);
  for_each_by_address(states, [cpu](stop_state& s) { s.release_word(cpu); });
}

void stop_state::stop_all(std::span<stop_state* const> states) {
  // Structures by address, CPUs ascending: two callers cannot deadlock.
  for_each_by_address(states, [](stop_state& s) {
    for (unsigned cpu = 0; cpu < s.slots_; ++cpu) s.lock_word(cpu);
  });
  fence(-1);
}

void stop_state::start_all(std::span<stop_state* const> states) noexcept {
  for_each_by_address(states, [](stop_state& s) { s.start_all(); });
}

}  // namespace percpu
