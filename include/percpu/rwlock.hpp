// percpu/rwlock.hpp - a big-reader lock: readers pay almost nothing, and a
// burst of writes pays one fence.
//
// Problem: a reader/writer lock read on every request and written rarely
// (configuration, routing tables, module lists) spends its time on the
// readers' shared counter: std::shared_mutex makes every lock_shared an
// atomic read-modify-write on one cache line, so readers on different CPUs
// serialise on it even though they never conflict with each other.  The
// classic cure, readers that only count themselves per CPU and a writer
// that pays for the missing reader fence with a membarrier, makes every
// write cost a system call that interrupts every CPU: a program that writes
// in bursts (a configuration reload taking the lock a thousand times) pays
// a thousand of them.
//
// Mechanism (the asymmetric fence of Linux percpu-rwsem and liburcu's
// membarrier flavour, with a reader bias that writers revoke, as the
// kernel's rcu_sync and BRAVO-style biased locks do):
//  - each CPU keeps monotonic counts of readers in and readers out; unlock
//    counts "out" on whatever CPU the thread is on then, so the counts mean
//    something only as sums: readers inside = sum(in) - sum(out);
//  - at rest the lock is biased: each CPU's gate (a stop word of the lock's
//    own stop_state, stop.hpp) is open, and lock_shared() is one
//    restartable add to "in" that tests the gate, unlock_shared() one add
//    to "out": no other load, no barrier, no atomic instruction;
//  - the first writer of a burst revokes the bias: it sets the writer bit,
//    closes every gate and issues ONE broadcast fence (stop_all).  After
//    the fence every reader's count is visible to the writer, or the
//    reader finds its gate closed and takes the slow path;
//  - while the bias is revoked the gates stay closed and readers take the
//    slow path: count themselves on a second pair of counts, issue a full
//    fence, then look at the writer bit; a writer sets the bit with an
//    atomic read-modify-write, itself a full fence, and needs no
//    membarrier.  Later writes of the burst cost about what a mutex costs;
//  - a reader on the slow path that sees no write for a quiet period (1 ms)
//    re-arms the bias: it opens the gates again;
//  - a writer waits until the sums say no reader is inside.  It reads all
//    "out" counts before all "in" counts: both only grow and every "out"
//    follows its "in", so an equal pair proves that no reader was inside at
//    the moment between the two passes.  The writer bit keeps new readers
//    out, so a waiting writer is not starved by a stream of readers.
// The protocol, each barrier with its pair: docs/counters-and-rwlock.md and
// src/rwlock.cpp; its model: verify/rwlock_bias.pml.
//
// Names follow the standard (lock/unlock/try_lock, lock_shared/...), so
// std::unique_lock, std::shared_lock and std::scoped_lock work.  The read
// side is async-signal-safe and needs no thread registration (a handler must
// not take a read lock whose section, or lock_shared(), it interrupted on its
// own thread: a writer waiting for that section would keep it out).
//
// Misuse: a recursive write lock (lock() or try_lock() by the thread that
// holds it) throws percpu::error (errc::would_deadlock), and an unlock() by
// a thread that does not hold the write lock throws percpu::error
// (errc::not_owner), in every build.  In a library built with
// PERCPU_DEBUG_CHECKS (percpu/runtime/config.hpp: Debug builds by default)
// lock() while holding a read lock on the same rwlock
// (a self-deadlock) throws errc::would_deadlock too, and unlock_shared()
// without lock_shared() stops the program with a message: the read side is
// noexcept and async-signal-safe, so it has no other way to report.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "percpu/core/detail/block.hpp"
#include "percpu/core/stop.hpp"
#include "percpu/runtime/config.hpp"
#include "percpu/runtime/detail/sequences.hpp"

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
    // The gate open: nothing else to look at (the writer that closes it
    // fences, see above).  The add's sequence is the acquire: the last
    // writer's changes happened before the gate was opened.
    if (!detail::seq::try_add(counts_.data0() + in_index, gates_.words(), 1)) [[unlikely]]
      lock_shared_slow();
    debug_track_shared(+1);
  }

  // Enters a read section unless a writer holds or waits for the lock.
  [[nodiscard]] bool try_lock_shared() noexcept {
    if (!detail::seq::try_add(counts_.data0() + in_index, gates_.words(), 1) &&
        !try_lock_shared_slow()) {
      return false;
    }
    debug_track_shared(+1);
    return true;
  }

  // Leaves a read section; wakes a waiting writer if this was what it
  // waited for.
  void unlock_shared() noexcept {
    debug_track_shared(-1);
    // The add is the release: the section's accesses happen before a writer
    // that reads the count with acquire (docs/design.md, section 5: on
    // x86-64 every store is one; aarch64 commits this add with stlr).
    if (!detail::seq::try_add_release(counts_.data0() + out_index, gates_.words(), 1)) [[unlikely]]
      unlock_shared_slow();
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

  // Whether readers take the fast path now (the bias is armed).  A snapshot,
  // for tests and statistics.
  [[nodiscard]] bool biased() const noexcept {
    return (state_.load(std::memory_order_relaxed) & revoked_bit) == 0;
  }

 private:
  // Per CPU: "in" and "out" counted by the fast paths, under the gates'
  // stop words, and again by the slow paths, under counts_'s (the portable
  // backend locks a slot with the stop word of the operation that changes
  // it, so two sets of stop words need two sets of counts).
  static constexpr std::size_t in_index = 0;
  static constexpr std::size_t out_index = 1;
  static constexpr std::size_t slow_in_index = 2;
  static constexpr std::size_t slow_out_index = 3;

  // state_: the writer bit (a writer holds the lock or waits for readers to
  // leave), the revoked bit (the gates are closed or closing: readers take
  // the slow path), the re-arming bit (a reader is opening the gates;
  // writers wait for it, readers do not), and from bit 3 a count of write
  // sections, which tells a re-arming reader whether writes kept coming.
  static constexpr std::uint32_t writer_bit = 1;
  static constexpr std::uint32_t revoked_bit = 2;
  static constexpr std::uint32_t rearming_bit = 4;
  static constexpr std::uint32_t write_one = 8;

  void lock_shared_slow() noexcept;
  bool try_lock_shared_slow() noexcept;
  bool enter_slow(bool wait) noexcept;
  void unlock_shared_slow() noexcept;
  void wait_for_writer() noexcept;
  void consider_rearm(std::uint32_t seen) noexcept;
  std::uint32_t take_writer_bit() noexcept;
  void sleep_on_state(std::uint32_t seen) noexcept;
  void wait_for_readers() noexcept;
  bool readers_inside() const noexcept;
  void wake_sleepers() noexcept;
  void debug_track_shared(int delta) noexcept {
#if PERCPU_RWLOCK_CHECKS
    track_shared(delta);
#else
    (void)delta;
#endif
  }
  void track_shared(int delta) noexcept;
  bool holds_shared() const noexcept;

  stop_state gates_;  // per CPU: stopped (closed) while the bias is revoked
  // Per CPU: [in, out, slow_in, slow_out], with stop words that are never
  // stopped: the slow paths' sequences.
  detail::cpu_block<std::int64_t> counts_;
  alignas(64) std::atomic<std::uint32_t> state_{0};
  std::atomic<std::uint32_t> sleepers_{0};             // threads asleep on state_
  std::atomic<std::uint64_t> quiet_{0};                // re-arm: write count seen, and since when
  alignas(64) std::atomic<std::uint32_t> drained_{0};  // bumped by a reader that wakes the writer
  std::atomic<std::uint32_t> writer_sleeping_{0};      // the writer sleeps on drained_
  std::atomic<const void*> owner_{nullptr};            // the writing thread
};

}  // namespace percpu
