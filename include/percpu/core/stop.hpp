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
// word) or a pool_cache's locked section is refused with percpu::error (errc::would_deadlock):
// it could wait for the interrupted code forever.  Words
// are always taken in one global order - structures by address, then CPUs
// ascending - so the single and several-structure forms cannot deadlock
// against each other.
#pragma once

#include <cstdint>
#include <span>
#include <utility>

#include "percpu/core/detail/scope_exit.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/runtime.hpp"

namespace percpu {

class stop_state {
 public:
  // Allocates one stop word per CPU slot, all clear.  Starts the library if
  // needed.  Throws percpu::error: errc::configuration (start-up, see
  // runtime/cpu.hpp) or errc::no_memory (the per-CPU allocator).
  stop_state();
  ~stop_state();
  stop_state(const stop_state&) = delete;
  stop_state& operator=(const stop_state&) = delete;

  // Stops `cpu`: returns once no fast path of this structure is running on
  // `cpu` or can commit there until start(cpu).  Waits for another stopper
  // of the same CPU to finish.  Throws percpu::error: errc::out_of_range
  // for cpu >= size(), errc::would_deadlock from a signal handler inside an
  // operation (see the rules above).
  void stop(unsigned cpu);
  // Ends a stop(cpu): what the visitor wrote is visible to the CPU's next
  // fast path (release, paired with the acquire of the next stopper and with
  // the fast path's read of the word).  Throws percpu::error
  // (errc::out_of_range) for cpu >= size(), as stop() does.
  void start(unsigned cpu);

  // stop() for every CPU with one broadcast fence instead of one per CPU.
  void stop_all();
  void start_all() noexcept;

  // stop(cpu); f(); start(cpu) - start also when f throws.
  template <class F>
  decltype(auto) visit(unsigned cpu, F&& f) {
    stop(cpu);
    detail::scope_exit restart([this, cpu] { start(cpu); });
    return std::forward<F>(f)();
  }

  // stop_all(); f(cpu) for each CPU in ascending order; start_all().
  template <class F>
  void visit_all(F&& f) {
    stop_all();
    detail::scope_exit restart([this] { start_all(); });
    for (unsigned cpu = 0; cpu < slots_; ++cpu) f(cpu);
  }

  // Several structures: stops `cpu` in every structure of `states` (in
  // address order), then fences `cpu` once.  With no structure it is the
  // fence alone: every fast path that was running on `cpu` has finished or
  // been aborted, and its committed stores are visible.  Throws
  // percpu::error (errc::out_of_range) when cpu >= cpu_count() or >= a
  // structure's size(), and so does start().
  static void stop(std::span<stop_state* const> states, unsigned cpu);
  static void start(std::span<stop_state* const> states, unsigned cpu);
  // Several structures, every CPU: every word of every structure (structures
  // by address, CPUs ascending), then ONE broadcast fence.
  static void stop_all(std::span<stop_state* const> states);
  static void start_all(std::span<stop_state* const> states) noexcept;

  // Several structures: stop(states, cpu); f(); start(states, cpu) - start
  // also when f throws.
  template <class F>
  static decltype(auto) visit(std::span<stop_state* const> states, unsigned cpu, F&& f) {
    stop(states, cpu);
    detail::scope_exit restart([states, cpu] { start(states, cpu); });
    return std::forward<F>(f)();
  }

  // Several structures, every CPU: stop_all(states); f(cpu) for each CPU
  // below cpu_count() in ascending order; start_all(states).
  template <class F>
  static void visit_all(std::span<stop_state* const> states, F&& f) {
    stop_all(states);
    detail::scope_exit restart([states] { start_all(states); });
    for (unsigned cpu = 0, n = cpu_count(); cpu < n; ++cpu) f(cpu);
  }

  // CPU 0's stop word, for the sequences (runtime/detail/sequences.hpp).
  std::uint32_t* words() const noexcept { return words0_; }
  // Number of CPU slots covered.
  unsigned size() const noexcept { return slots_; }

 private:
  void lock_word(unsigned cpu) noexcept;
  void release_word(unsigned cpu) noexcept;
  std::uint32_t* words0_;
  unsigned slots_;
};

}  // namespace percpu
