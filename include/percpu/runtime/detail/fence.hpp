// percpu/runtime/detail/fence.hpp - the fences that let a thread reach another CPU's data.
//
// Problem: per-CPU fast paths carry no atomic instruction and no memory
// barrier; that is what makes them fast.  A thread that works on another
// CPU's data (a visit, stop.hpp) or must agree with every fast path
// Dekker-style (a writer of rwlock.hpp: "I announced myself, then looked at
// you") needs the missing ordering supplied from its own side, once, for
// every CPU.  How that is done depends on the backend, and only the runtime
// knows which one runs: these calls are the same for every caller.
//
// Mechanism (src/runtime/fence.cpp):
//  - fence_cpu(cpu), by a thread that has just set a stop word of `cpu`
//    with a full barrier (the compare-and-swap of stop.hpp): when it
//    returns, no sequence on `cpu` that read the word clear can still
//    commit, and what sequences committed there before is visible to the
//    caller.  rseq backend: membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU,
//    cpu), skipped when the caller itself now runs on `cpu` (the rule is
//    argued in fence.cpp).  Portable backend: nothing, since there the stop
//    word is the lock every operation takes.
//  - fence_all(): the same for every CPU with one broadcast membarrier
//    (rseq), or a full fence (portable).  It is also the heavy half of the
//    asymmetric pair below.
//  - light_barrier() is the fast path's half of the pair: a compiler
//    barrier with the rseq backend (fence_all interrupts the CPU), a full
//    fence with the portable backend (which has no such heavy side).  After
//    heavy_barrier() returns, every light_barrier() on another thread has
//    either happened before it (that thread's earlier stores are visible) or
//    will happen after it (that thread's later loads see the caller's
//    earlier stores).
#pragma once

#include <atomic>
#include <cstdint>

#include "percpu/runtime/detail/arch.hpp"
#include "percpu/runtime/detail/runtime.hpp"

namespace percpu::detail {

void fence_cpu(unsigned cpu) noexcept;
void fence_all() noexcept;

// 0 while the rseq backend's fences use membarrier; otherwise the error
// (errno) that made membarrier unusable at run time, after which they run
// the calling thread on the CPUs instead (src/runtime/fence.cpp).
int membarrier_failure() noexcept;

// The portable backend's full fence: a sequentially consistent
// read-modify-write of one shared word.  Used instead of
// atomic_thread_fence, which ThreadSanitizer does not model: both sides of
// the Dekker pair touch this word, so the tool sees the ordering too.
inline std::atomic<std::uint32_t> portable_fence_word{0};
inline void portable_full_fence() noexcept {
  portable_fence_word.fetch_add(0, std::memory_order_seq_cst);
}

inline void light_barrier() noexcept {
  if (runtime.light_barrier_is_compiler_barrier) [[likely]] {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    portable_full_fence();
  }
}

inline void heavy_barrier() noexcept {
  fence_all();
}

// A Dekker pair whose two sides both pay (percpu::rwlock with its reader
// bias revoked, where neither side issues heavy_barrier()).  full_barrier()
// is a full fence whichever way the fences are made: a seq_cst fence where
// light_barrier() is a compiler barrier; otherwise the portable fence word,
// which the other side touches too (ThreadSanitizer sees the pair).
inline void full_barrier() noexcept {
  if (runtime.light_barrier_is_compiler_barrier) [[likely]] {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  } else {
    portable_full_fence();
  }
}

// The other side of full_barrier(), right after a seq_cst read-modify-write
// that already is a full fence on x86-64 (a locked instruction): nothing
// there, a seq_cst fence on other architectures, and the fence word where
// light_barrier() is not a compiler barrier.
inline void full_barrier_after_rmw() noexcept {
  if (runtime.light_barrier_is_compiler_barrier) [[likely]] {
    if constexpr (!arch::rmw_is_full_barrier) std::atomic_thread_fence(std::memory_order_seq_cst);
  } else {
    portable_full_fence();
  }
}

}  // namespace percpu::detail
