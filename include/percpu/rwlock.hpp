// percpu/rwlock.hpp - a big-reader lock: readers pay almost nothing, writers pay a fence.
//
// Problem: a reader/writer lock read on every request and written rarely
// (configuration, routing tables, module lists) spends its time on the
// readers' shared counter: std::shared_mutex makes every lock_shared an
// atomic read-modify-write on one cache line, so readers on different CPUs
// serialise on it even though they never conflict with each other.
//
// Mechanism (the asymmetric-fence idea behind Linux percpu-rwsem and
// liburcu's membarrier flavour):
//  - each CPU keeps two monotonic counts, readers in and readers out; a
//    reader adds 1 to "in" on its CPU with the shared restartable add (no
//    atomic instruction), then looks at the writer flag.  Only a compiler
//    barrier separates the two: the writer pays for the missing fence with a
//    membarrier that interrupts every CPU running one of our threads;
//  - unlock adds 1 to "out" on whatever CPU the thread is on then, so the
//    counts mean something only as sums: active readers = sum(in) - sum(out);
//  - a writer takes the writers' mutex, raises the flag (new readers back
//    out and sleep until it drops: a waiting writer is not starved by a
//    stream of readers), issues the heavy barrier, then waits, asleep on a
//    futex, until the sums say no reader is inside.  It reads all "out"
//    counts before all "in" counts: both only grow and every "out" follows
//    its "in", so an equal pair proves that no reader was inside at the
//    moment between the two passes.
//
// Names follow the standard (lock/unlock/try_lock, lock_shared/...), so
// std::unique_lock, std::shared_lock and std::scoped_lock work.
//
// Misuse: a recursive write lock (lock() or try_lock() by the thread that
// holds it) throws percpu::error (errc::would_deadlock), and an unlock() by
// a thread that does not hold the write lock throws percpu::error
// (errc::not_owner), in every build.  In builds without NDEBUG (or with
// PERCPU_RWLOCK_CHECKS) lock() while holding a read lock on the same rwlock
// (a self-deadlock) throws errc::would_deadlock too, and unlock_shared()
// without lock_shared() stops the program with a message: the read side is
// noexcept and async-signal-safe, so it has no other way to report.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "percpu/core/detail/block.hpp"
#include "percpu/runtime/detail/fence.hpp"
#include "percpu/runtime/detail/sequences.hpp"

#if !defined(NDEBUG) && !defined(PERCPU_RWLOCK_CHECKS)
#define PERCPU_RWLOCK_CHECKS 1
#endif

namespace percpu {

class rwlock {
 public:
  // Allocates the per-CPU counts; starts the library if needed.  Throws what
  // per-CPU allocation throws (percpu::error: errc::no_memory,
  // errc::configuration).
  rwlock();
  // The lock must be free.
  ~rwlock();
  rwlock(const rwlock&) = delete;
  rwlock& operator=(const rwlock&) = delete;

  // ---- Readers ----

  // Enters a read section; sleeps while a writer holds or waits for the lock.
  // The section may end on another CPU than it began.
  void lock_shared() noexcept {
    while (!try_lock_shared_inline()) wait_for_writer();
    debug_track_shared(+1);
  }

  // Enters a read section unless a writer holds or waits for the lock.
  [[nodiscard]] bool try_lock_shared() noexcept {
    if (!try_lock_shared_inline()) return false;
    debug_track_shared(+1);
    return true;
  }

  // Leaves a read section; wakes a waiting writer if this was what it
  // waited for.
  void unlock_shared() noexcept {
    debug_track_shared(-1);
    // The add is the release: the section's accesses happen before it
    // (x86-64 stores are ordered after earlier loads and stores; the
    // portable backend stores the count with release order).
    detail::seq::add(counts_.data0() + out_index, counts_.stop_words(), 1);
    detail::light_barrier();  // pairs with lock()'s heavy barrier
    if (writer_.load(std::memory_order_relaxed) != 0) [[unlikely]]
      wake_writer();
  }

  // ---- Writers ----

  // Excludes every reader and every other writer.  Sleeps while waiting.
  // Throws percpu::error (errc::would_deadlock) when the calling thread
  // already holds this lock (see "Misuse" above).
  void lock();
  // Takes the lock only if no writer holds it and no reader is inside.
  // Throws like lock().
  [[nodiscard]] bool try_lock();
  // Throws percpu::error (errc::not_owner) when the calling thread does not
  // hold the write lock.
  void unlock();

 private:
  static constexpr std::size_t in_index = 0;
  static constexpr std::size_t out_index = 1;

  // Counts this reader in; backs it out again (false) if a writer is there.
  bool try_lock_shared_inline() noexcept {
    detail::seq::add(counts_.data0() + in_index, counts_.stop_words(), 1);
    detail::light_barrier();  // pairs with lock()'s heavy barrier
    // Acquire: pairs with unlock()'s release of the flag, so the last
    // writer's changes are visible in this section.
    if (writer_.load(std::memory_order_acquire) == 0) [[likely]]
      return true;
    back_out();
    return false;
  }

  void back_out() noexcept;
  void wait_for_writer() noexcept;
  void wake_writer() noexcept;
  bool readers_inside() const noexcept;
  void debug_track_shared(int delta) noexcept {
#if PERCPU_RWLOCK_CHECKS
    track_shared(delta);
#else
    (void)delta;
#endif
  }
  void track_shared(int delta) noexcept;
  bool holds_shared() const noexcept;

  // Per CPU: [in, out], and the sequences' stop words (never stopped here).
  detail::cpu_block<std::int64_t> counts_;
  alignas(64) std::atomic<std::uint32_t> writer_{0};  // 1: readers keep out
  std::atomic<std::uint32_t> sleeping_readers_{0};
  // What only writers, and readers leaving under a writer, touch: off the
  // lines every reader reads.
  alignas(64) std::atomic<std::uint32_t> drained_{0};  // bumped when a reader leaves under a writer
  std::atomic<const void*> owner_{nullptr};            // the writing thread
  std::mutex writers_;                                 // orders writers
};

}  // namespace percpu
