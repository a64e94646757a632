// percpu/core/stop.hpp - stop, fence, visit: the only way to touch another CPU's data.
//
// Problem: per-CPU data is fast because only its CPU changes it, without
// atomics.  Yet someone must sometimes drain, reset or resize it from outside:
// an invalidate that must cover every CPU, a counter reset, moving value
// between CPUs.  Asking the owning CPU to do it needs that CPU's cooperation
// (it may be idle, or outside this process's affinity mask); taking a lock
// on every fast path would cost what per-CPU data was meant to save.
//
// Mechanism: every structure keeps one stop word per CPU, which each of its
// restartable sequences reads before committing.  To work on CPU c's part:
//   1. set c's stop word (a compare-and-swap, so stoppers exclude each other);
//   2. fence CPU c with membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, c): any
//      sequence running on c is aborted and restarts, reads the word and
//      steps aside; no sequence on c can commit from now on;
//   3. read and change c's part with plain code (the visit);
//   4. clear the word with release order.
// For every CPU: stop all words, one broadcast fence, visit, start all.  The
// caller waits on a syscall, never on another thread.
//
// Portable backend: the stop word is the slot's lock, so stopping is taking
// the lock and no fence is needed.
//
// Several structures at once (a cross-CPU visit of a CPU's whole per-CPU
// state, xcall.hpp): the static stop/stop_all take every listed structure's
// words, then issue ONE fence for all of them.
//
// Rules: a thread holds at most one stop at a time, or uses stop_all (which
// takes every word in ascending order); do not stop a CPU from a signal
// handler that may have interrupted a visit of the same structure.  A stop
// from a signal handler that interrupted a per-CPU operation of its own
// thread (portable backend, where the operation holds a slot lock - a stop
// word) or a pool_cache's locked section is refused with std::logic_error:
// it could wait for the interrupted code forever.  Words
// are always taken in one global order - structures by address, then CPUs
// ascending - so the single and several-structure forms cannot deadlock
// against each other.
#pragma once

#include <cstdint>
#include <span>
#include <utility>

#include "percpu/runtime/detail/runtime.hpp"

namespace percpu {

class stop_state {
 public:
  // Allocates one stop word per CPU slot, all clear.  Starts the library if
  // needed (may throw config_error, or std::bad_alloc-like errors from the
  // per-CPU allocator).
  stop_state();
  ~stop_state();
  stop_state(const stop_state&) = delete;
  stop_state& operator=(const stop_state&) = delete;

  // Stops `cpu`: returns once no fast path of this structure is running on
  // `cpu` or can commit there until start(cpu).  Waits for another stopper
  // of the same CPU to finish.  Throws std::out_of_range for cpu >=
  // cpu_count(), std::logic_error from a signal handler inside an operation
  // (see the rules above).
  void stop(unsigned cpu);
  // Ends a stop(cpu): what the visitor wrote is visible to the CPU's next
  // fast path (release, paired with the acquire of the next stopper and with
  // the fast path's read of the word).
  void start(unsigned cpu) noexcept;

  // stop() for every CPU with one broadcast fence instead of one per CPU.
  void stop_all();
  void start_all() noexcept;

  // stop(cpu); f(); start(cpu) - start also when f throws.
  template <class F>
  decltype(auto) visit(unsigned cpu, F&& f) {
    stop(cpu);
    struct restart {
      stop_state* self;
      unsigned cpu;
      ~restart() { self->start(cpu); }
    } guard{this, cpu};
    return std::forward<F>(f)();
  }

  // stop_all(); f(cpu) for each CPU in ascending order; start_all().
  template <class F>
  void visit_all(F&& f) {
    stop_all();
    struct restart {
      stop_state* self;
      ~restart() { self->start_all(); }
    } guard{this};
    for (unsigned cpu = 0; cpu < slots_; ++cpu) f(cpu);
  }

  // Several structures: stops `cpu` in every structure of `states` (in
  // address order), then fences `cpu` once.  With no structure it is the
  // fence alone: every fast path that was running on `cpu` has finished or
  // been aborted, and its committed stores are visible.  Throws
  // std::out_of_range when cpu >= cpu_count() or >= a structure's size().
  static void stop(std::span<stop_state* const> states, unsigned cpu);
  static void start(std::span<stop_state* const> states, unsigned cpu) noexcept;
  // Several structures, every CPU: every word of every structure (structures
  // by address, CPUs ascending), then ONE broadcast fence.
  static void stop_all(std::span<stop_state* const> states);
  static void start_all(std::span<stop_state* const> states) noexcept;

  // CPU 0's stop word, for the sequences (runtime/detail/sequences.hpp).
  std::uint32_t* words() const noexcept { return words0_; }
  // Number of CPU slots covered.
  unsigned size() const noexcept { return slots_; }

 private:
  void lock_word(unsigned cpu) noexcept;
  std::uint32_t* words0_;
  unsigned slots_;
};

}  // namespace percpu
