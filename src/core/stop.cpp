// stop.cpp - stop words and visits (see percpu/core/stop.hpp).
//
// Ordering:
//  - A stopper sets CPU c's word with an acquire compare-and-swap: it pairs
//    with the release store in start() of the previous stopper, so this
//    visitor sees everything the previous one wrote.  The compare-and-swap
//    is also the full barrier that the fence after it relies on.
//  - The fence (fence_cpu / fence_all, runtime/detail/fence.hpp) pairs with
//    the sequences' load of the word: once it returns, no sequence on c that
//    read the word clear can commit, and what they committed is visible.
//    With the portable backend the word is the slot's lock and the fence is
//    nothing.
//  - start() stores 0 with release: the visitor's writes happen before the
//    next sequence on c that reads 0 (x86-64 loads are acquire; an aarch64
//    version reads the word with ldar), or the next portable operation that
//    takes the word as its lock.
#include <atomic>
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

// A stop inside a no-wait section (runtime/deferral.hpp) - a signal handler
// that interrupted its own thread's per-CPU operation (portable backend:
// it holds a slot lock, which is a stop word) or a pool_cache's locked
// section - could wait forever for the code it interrupted.  Refused.
void refuse_inside_an_operation(const char* what) {
  if (!detail::in_no_wait()) return;
  throw error(errc::would_deadlock,
              std::string("percpu::stop_state::") + what +
                  " called from a signal handler that interrupted a per-CPU operation of its "
                  "own thread: it could wait for that operation forever");
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
  refuse_inside_an_operation("stop");
  check_range("percpu::stop_state::stop", states, cpu);
  for_each_by_address(states, [cpu](stop_state& s) { s.lock_word(cpu); });
  detail::fence_cpu(cpu);
}

void stop_state::start(std::span<stop_state* const> states, unsigned cpu) {
  check_range("percpu::stop_state::start", states, cpu);
  for_each_by_address(states, [cpu](stop_state& s) { s.release_word(cpu); });
}

void stop_state::stop_all(std::span<stop_state* const> states) {
  refuse_inside_an_operation("stop_all");
  // Structures by address, CPUs ascending: two callers cannot deadlock.
  for_each_by_address(states, [](stop_state& s) {
    for (unsigned cpu = 0; cpu < s.slots_; ++cpu) s.lock_word(cpu);
  });
  detail::fence_all();
}

void stop_state::start_all(std::span<stop_state* const> states) noexcept {
  for_each_by_address(states, [](stop_state& s) { s.start_all(); });
}

}  // namespace percpu
