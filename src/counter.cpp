// counter.cpp - reads, folds and exchanges of percpu::counter(_array).
#include "percpu/counter.hpp"

#include <atomic>
#include <bit>
#include <string>

#include "percpu/runtime/detail/runtime.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "percpu/runtime/error.hpp"
#include "runtime/runtime_internal.hpp"

namespace percpu {

namespace {

// n, once it is known to fit one per-CPU unit.
std::size_t checked_size(std::size_t n) {
  if (n == 0) throw error(errc::invalid_argument, "percpu::counter_array: size 0");
  if (n > detail::unit_size / sizeof(std::int64_t)) {
    throw error(errc::too_large, "percpu::counter_array: " + std::to_string(n) +
                                     " counters do not fit one per-CPU unit (at most " +
                                     std::to_string(detail::unit_size / sizeof(std::int64_t)) +
                                     ")");
  }
  return n;
}

// Aligned to their size up to a cache line: an array of 8 or more starts a
// line of its own, a smaller one shares its line with other structures'
// data of the same CPU.  Every counter_array was once 64-byte aligned: a
// percpu::counter took 64 bytes of each CPU's unit for its 8, and 1000
// counters touched 60 kB of the CPU their thread ran on, 8 kB after.  (The
// alignment is computed without multiplying a huge n: the constructor's
// arguments are evaluated in either order, so checked_size() may not have
// refused it yet, and bit_ceil of a product above 2^63 is undefined.)
std::size_t alignment_for(std::size_t n) noexcept {
  return n >= 8 ? 64 : std::bit_ceil(n * sizeof(std::int64_t));
}

}  // namespace

counter_array::counter_array(std::size_t n) : slots_(checked_size(n), alignment_for(n)) {}

counter_array::~counter_array() = default;

std::int64_t counter_array::slot(unsigned cpu, std::size_t i) const noexcept {
  // Relaxed atomic read: the owner's add is a single aligned store, so the
  // value is never torn; staleness is the caller's to accept.
  return std::atomic_ref<std::int64_t>(slots_.on(cpu)[i]).load(std::memory_order_relaxed);
}

std::int64_t counter_array::read(std::size_t i) const {
  if (i >= size())
    detail::throw_out_of_range("percpu::counter_array::read", "counter", i, "size()", size());
  std::int64_t sum = 0;
  for (unsigned cpu = 0; cpu < slots_.cpus(); ++cpu) sum += slot(cpu, i);
  return sum;
}

std::vector<std::int64_t> counter_array::read_all() const {
  std::vector<std::int64_t> sums(size(), 0);
  for (unsigned cpu = 0; cpu < slots_.cpus(); ++cpu) {
    for (std::size_t i = 0; i < size(); ++i) sums[i] += slot(cpu, i);
  }
  return sums;
}

std::int64_t counter_array::read_on(unsigned cpu, std::size_t i) const {
  if (cpu >= slots_.cpus()) {
    detail::throw_out_of_range("percpu::counter_array::read_on", "CPU", cpu, "cpu_count()",
                               slots_.cpus());
  }
  if (i >= size())
    detail::throw_out_of_range("percpu::counter_array::read_on", "counter", i, "size()", size());
  return slot(cpu, i);
}

std::vector<std::int64_t> counter_array::exchange_all() {
  std::vector<std::int64_t> taken(size(), 0);
  slots_.stops().visit_all([&](unsigned cpu) {
    for (std::size_t i = 0; i < size(); ++i) {
      std::atomic_ref<std::int64_t> s(slots_.on(cpu)[i]);
      taken[i] += s.load(std::memory_order_relaxed);
      s.store(0, std::memory_order_relaxed);
    }
  });
  return taken;
}

counter::counter(std::int64_t batch) : batch_(batch) {
  // 2^60: -2 * batch and a residual an add past it stay far from overflow.
  if (batch < 1 || batch > (std::int64_t{1} << 60)) {
    throw error(errc::invalid_argument,
                "percpu::counter: batch " + std::to_string(batch) + " is not in [1, 2^60]");
  }
}

void counter::fold(unsigned cpu) noexcept {
  // Brings CPU `cpu`'s residual (which this thread's add left at or above
  // 0, or below -2 * batch) back to -batch and moves the difference to the
  // central count, and does not return before that CPU's residual has been
  // in its range at some moment after the add.  (A value read after the add
  // is as good as the add's own for that: add() folds when it is out of
  // range, and returns at once when it is in range, which is then such a
  // moment.)  So once an add has returned, any excess on its CPU belongs to
  // adds still in progress: that is what makes error_bound() hold.
  //
  // Between the two steps of a fold the difference is in neither place:
  // read_approx() may be off by it, which error_bound() covers.
  if (cpu >= slots_.slots_.cpus()) return;  // the add runs later (see add_sign)
  std::int64_t residual = slots_.slot(cpu, 0);
  for (;;) {
    if (!out_of_range(residual)) return;
    switch (detail::seq::compare_and_store(slots_.slots_.data0(), slots_.slots_.stop_words(), cpu,
                                           residual, -batch_)) {
      case detail::cas_result::stored:
        central_.fetch_add(residual + batch_, std::memory_order_relaxed);
        return;
      case detail::cas_result::changed:
        residual = slots_.slot(cpu, 0);  // another add changed it: look again
        continue;
      case detail::cas_result::busy:
        // A signal handler that interrupted this thread's own operation on
        // the slot: waiting (or stopping the CPU) would wait for that very
        // operation.  The residual is left to the next add on the slot; the
        // bound holds again once that add has returned.
        return;
      case detail::cas_result::moved:
        break;  // fold remotely, below
    }
    break;
  }
  // A signal handler inside a per-CPU operation of its own thread may not
  // stop a CPU (stop.hpp): as with `busy`, the next add folds.
  if (detail::in_no_wait()) return;
  // This thread no longer runs on `cpu`: fold with that CPU stopped.  Rare
  // (a migration right at the end of the range) and it keeps the bound
  // hard.  Signals stay blocked meanwhile: a handler that added to this
  // counter on `cpu` would otherwise wait for a stop its own thread holds.
  // (Two system calls, beside the stop's fence, on a path taken once in many
  // thousand adds.)
  detail::signals_blocked quiet;
  slots_.stops().visit(cpu, [&] {
    std::atomic_ref<std::int64_t> slot(*slots_.slots_.on(cpu));
    std::int64_t value = slot.load(std::memory_order_relaxed);
    if (out_of_range(value)) {
      slot.store(-batch_, std::memory_order_relaxed);
      central_.fetch_add(value + batch_, std::memory_order_relaxed);
    }
  });
}

void counter::add_later(void* self, void*, std::int64_t v) noexcept {
  static_cast<counter*>(self)->add(v);
}

std::int64_t counter::read() const noexcept {
  std::int64_t sum = central_.load(std::memory_order_relaxed);
  for (unsigned cpu = 0; cpu < slots_.slots_.cpus(); ++cpu) sum += slots_.slot(cpu, 0);
  return sum;
}

std::int64_t counter::error_bound(std::int64_t largest_add,
                                  unsigned adding_threads) const noexcept {
  auto cpus = static_cast<std::int64_t>(slots_.slots_.cpus());
  auto threads = static_cast<std::int64_t>(adding_threads);
  return (cpus + threads) * (2 * batch_ + threads * largest_add);
}

std::int64_t counter::exchange(std::int64_t desired) {
  // Residuals first, with every CPU stopped; then the central count.  A fold
  // caught between its two steps adds its value to the central count after
  // the exchange: it is kept in the counter, not lost.
  std::int64_t taken = slots_.exchange_all()[0];
  return taken + central_.exchange(desired, std::memory_order_relaxed);
}

}  // namespace percpu
