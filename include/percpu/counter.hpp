// percpu/counter.hpp - per-CPU event counters.
//
// Problem: a statistic bumped on every request (hits, misses, bytes) is the
// hottest shared write in many programs.  One std::atomic costs a locked
// instruction and bounces its cache line between CPUs whenever several add
// (docs/benchmarks.md has the figures); per-thread counters avoid that but
// grow with threads, strand counts in idle threads and cannot be reset from
// outside without losing updates.
//
// Mechanism: each CPU adds to its own slot with the shared restartable add
// (runtime/detail/sequences.hpp): no atomic instruction, no shared cache line,
// async-signal-safe.  Reads sum the slots.  A reset stops every CPU (one
// broadcast fence, stop.hpp), takes the slots and restarts them, so an add
// racing with it lands either before (and is returned) or after (and stays
// in the counter) - never lost.
//
// percpu::counter adds Linux percpu_counter's cheap approximate read: a CPU
// whose residual reaches `batch` in magnitude folds it into a central atomic
// count, so read_approx() is one load with a documented error bound.
// percpu::counter_array keeps N counters per CPU in one allocation, for
// statistics tables.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "percpu/core/detail/block.hpp"
#include "percpu/core/stop.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "percpu/runtime/error.hpp"

namespace percpu {

// N 64-bit counters per CPU slot, in one per-CPU allocation.
class counter_array {
 public:
  // Throws percpu::error: errc::invalid_argument for n == 0, errc::too_large
  // when n counters do not fit one per-CPU unit (max_allocation() / 8), and
  // what per-CPU allocation throws (errc::no_memory, errc::configuration).
  explicit counter_array(std::size_t n);
  ~counter_array();
  counter_array(const counter_array&) = delete;
  counter_array& operator=(const counter_array&) = delete;

  std::size_t size() const noexcept { return slots_.count(); }

  // Adds v to counter i on the current CPU.  i < size() (unchecked).
  void add(std::size_t i, std::int64_t v) noexcept {
    detail::seq::add(slots_.data0() + i, slots_.stop_words(), v);
  }
  void inc(std::size_t i) noexcept { add(i, 1); }

  // Sum of counter i over all CPUs: exact when no one is adding; an add
  // running concurrently may or may not be counted.  Throws percpu::error
  // (errc::out_of_range) for i >= size().
  [[nodiscard]] std::int64_t read(std::size_t i) const;
  // Every counter's sum.
  [[nodiscard]] std::vector<std::int64_t> read_all() const;
  // Counter i on one CPU (a torn-free, possibly stale read).  Throws
  // percpu::error (errc::out_of_range) for cpu >= cpu_count() or i >= size().
  [[nodiscard]] std::int64_t read_on(unsigned cpu, std::size_t i) const;

  // Takes every counter to zero and returns what each held; an add running
  // concurrently is counted either in the result or in the counter, never
  // lost (all CPUs are stopped while the slots are taken).
  std::vector<std::int64_t> exchange_all();

  stop_state& stops() noexcept { return slots_.stops(); }

 private:
  friend class counter;
  std::int64_t slot(unsigned cpu, std::size_t i) const noexcept;

  detail::cpu_block<std::int64_t> slots_;  // size() counters per CPU
};

// One event counter with exact and approximate reads.
//
// Each CPU's slot holds its residual: what was added there and is not yet
// in the central count.  A residual rests in [-2 * batch, 0): an add that
// takes it out of that range folds it back to -batch, moving the rest to
// the central count.  An increment therefore learns from the sign its own
// add left (seq::add_sign) whether it must fold - one branch on the fast
// path, no load of the residual - and folds once in `batch` increments.
// A slot never used holds 0, a residual of 0.
class counter {
 public:
  // Increments between two folds of a CPU's residual into the central
  // count.  Each fold is an atomic add to the central count's cache line,
  // which the other CPUs' folds take away: about 110 ns on the development
  // VM with two CPUs adding.  At 256, that made counter.add 1.6x slot.add's
  // time with two threads; at 4096, 1.07x.
  static constexpr std::int64_t default_batch = 4096;

  // batch >= 1 and at most 2^60; throws percpu::error
  // (errc::invalid_argument) otherwise, or what per-CPU allocation throws
  // (errc::no_memory, errc::configuration).
  explicit counter(std::int64_t batch = default_batch);

  // Adds v.  Never lost under preemption, migration or signals; usable from
  // a signal handler (not one that interrupts an exchange() of the same
  // counter on its own thread: that holds every CPU stopped); no atomic
  // instruction unless this CPU's residual leaves [-2 * batch, 0) (then one
  // fold into the central count).
  void add(std::int64_t v) noexcept {
    unsigned cpu;
    bool negative = detail::seq::add_sign(slots_.slots_.data0(), slots_.slots_.stop_words(), v,
                                          &cpu, {&counter::add_later, this});
    // At or above 0 (or a slow path that does not say): fold() looks.
    // Below -2 * batch (only after a negative add, which must read the
    // slot): fold.
    if (!negative || (v < 0 && residual_below_range(cpu))) [[unlikely]]
      fold(cpu);
  }
  void inc() noexcept { add(1); }
  void sub(std::int64_t v) noexcept { add(-v); }

  // Exact sum when no one is adding (central count plus every residual).
  [[nodiscard]] std::int64_t read() const noexcept;

  // The central count alone: one load, within error_bound() of the truth.
  // Once every add has returned it is never below the truth (every
  // residual is at most 0).
  [[nodiscard]] std::int64_t read_approx() const noexcept {
    return central_.load(std::memory_order_relaxed);
  }

  // How far read_approx() can be from the true total.
  //  - Once every add has returned: cpu_count() * 2 * batch, read_approx()
  //    above the truth or equal to it.  Each residual is in [-2 * batch, 0]
  //    (0: a CPU that never added).
  //  - At any moment while at most `adding_threads` threads add, each add at
  //    most `largest_add` in magnitude:
  //      (cpu_count() + adding_threads) * (2 * batch + adding_threads * largest_add)
  //    A thread in the middle of a fold holds one CPU's excess in transit
  //    (no longer in the slot, not yet in the central count), and a residual
  //    can leave its range by one add per adding thread before it is folded.
  [[nodiscard]] std::int64_t error_bound(std::int64_t largest_add = 1,
                                         unsigned adding_threads = 0) const noexcept;

  // Sets the counter to `desired` and returns what it held.  Concurrent adds
  // are counted either in the result or in the new value, never lost.
  std::int64_t exchange(std::int64_t desired);
  std::int64_t reset() { return exchange(0); }

  std::int64_t batch() const noexcept { return batch_; }

  // The counter's stop words (a visit of several structures at once, see
  // stop.hpp and xcall.hpp).
  stop_state& stops() noexcept { return slots_.stops(); }

 private:
  // Brings CPU `cpu`'s residual back into [-2 * batch, 0) if it is out.
  void fold(unsigned cpu) noexcept;
  // The range a residual rests in, [-2 * batch, 0): its two ends, the
  // lower one alone for the check after a negative add.
  bool below_range(std::int64_t residual) const noexcept { return residual < -2 * batch_; }
  bool out_of_range(std::int64_t residual) const noexcept {
    return residual >= 0 || below_range(residual);
  }
  bool residual_below_range(unsigned cpu) const noexcept {
    return cpu < slots_.slots_.cpus() && below_range(slots_.slot(cpu, 0));
  }
  // add(v) again, when an add in a signal handler could not be made at once
  // (see seq::add_sign).
  static void add_later(void* self, void* unused, std::int64_t v) noexcept;

  counter_array slots_{1};
  std::int64_t batch_;
  alignas(64) std::atomic<std::int64_t> central_{0};
};

}  // namespace percpu
