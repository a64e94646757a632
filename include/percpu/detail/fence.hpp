// percpu/detail/fence.hpp - the asymmetric fence pair.
//
// Problem: a fast path on every CPU (a reader entering a lock) and a rare
// slow path (a writer) must agree Dekker-style: "I announced myself, then
// looked at you".  Giving each fast path a full fence costs ~20 cycles per
// operation; the kernel can instead interrupt every CPU running one of our
// threads on the slow path's behalf.
//
// light_barrier() is the fast path's half: a compiler barrier with the rseq
// backend (the heavy side interrupts the CPU), a full fence with the portable
// backend (which has no such heavy side).  heavy_barrier() is the slow path's
// half: the broadcast membarrier rseq fence of stop.hpp, or a full fence.
// After heavy_barrier() returns, every light_barrier() on another thread has
// either happened before it (that thread's earlier stores are visible) or
// will happen after it (that thread's later loads see the caller's earlier
// stores).
#pragma once

#include <atomic>
#include <cstdint>

#include "percpu/detail/runtime.hpp"

namespace percpu::detail {

// The membarrier broadcast fence (one implementation, in src/stop.cpp).
void fence_all_cpus() noexcept;

// The portable backend's full fence: a sequentially consistent
// read-modify-write of one shared word.  Used instead of
// atomic_thread_fence, which ThreadSanitizer does not model: both sides of
// the Dekker pair touch this word, so the tool sees the ordering too.
inline std::atomic<std::uint32_t> portable_fence_word{0};
inline void portable_full_fence() noexcept {
  portable_fence_word.fetch_add(0, std::memory_order_seq_cst);
}

inline void light_barrier() noexcept {
  if (runtime.backend == backend_code::rseq) [[likely]] {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    portable_full_fence();
  }
}

inline void heavy_barrier() noexcept {
  fence_all_cpus();
}

// A Dekker pair whose two sides both pay (percpu::rwlock with its reader
// bias revoked, where neither side issues heavy_barrier()).  full_barrier()
// is a full fence on both backends: a seq_cst fence with the rseq backend;
// the fence word with the portable backend, which the other side touches
// too (ThreadSanitizer sees the pair).
inline void full_barrier() noexcept {
  if (runtime.backend == backend_code::rseq) [[likely]] {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  } else {
    portable_full_fence();
  }
}

// The other side of full_barrier(), right after a seq_cst read-modify-write
// that already is a full fence on x86-64 (a locked instruction): nothing
// there with the rseq backend, a seq_cst fence on other architectures, and
// the fence word with the portable backend.
inline void full_barrier_after_rmw() noexcept {
  if (runtime.backend == backend_code::rseq) [[likely]] {
#if !defined(__x86_64__)
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  } else {
    portable_full_fence();
  }
}

}  // namespace percpu::detail
