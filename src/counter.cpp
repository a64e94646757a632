// counter.cpp - reads, folds and exchanges of percpu::counter(_array).
#include "percpu/counter.hpp"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "percpu/detail/alloc.hpp"
#include "percpu/detail/runtime.hpp"

namespace percpu {

namespace {

std::int64_t* allocate_slots(std::size_t n) {
  if (n == 0) throw std::invalid_argument("percpu::counter_array: size 0");
  if (n > detail::unit_size / sizeof(std::int64_t)) {
    throw std::length_error("percpu::counter_array: " + std::to_string(n) +
                            " counters do not fit one per-CPU unit (at most " +
                            std::to_string(detail::unit_size / sizeof(std::int64_t)) + ")");
  }
  // 64-byte aligned: a CPU's counters start on their own cache line.
  return static_cast<std::int64_t*>(detail::allocate_percpu(n * sizeof(std::int64_t), 64));
}

}  // namespace

counter_array::counter_array(std::size_t n) : n_(n), slots0_(allocate_slots(n)) {}

counter_array::~counter_array() {
  detail::free_percpu(slots0_);
}

std::int64_t counter_array::slot(unsigned cpu, std::size_t i) const noexcept {
  // Relaxed atomic read: the owner's add is a single aligned store, so the
  // value is never torn; staleness is the caller's to accept.
  return std::atomic_ref<std::int64_t>(*detail::copy_on(slots0_ + i, cpu))
      .load(std::memory_order_relaxed);
}

std::int64_t counter_array::read(std::size_t i) const {
  if (i >= n_) {
    throw std::out_of_range("percpu::counter_array: counter " + std::to_string(i) +
                            " is out of range (size " + std::to_string(n_) + ")");
  }
  std::int64_t sum = 0;
  for (unsigned cpu = 0; cpu < stops_.size(); ++cpu) sum += slot(cpu, i);
  return sum;
}

std::vector<std::int64_t> counter_array::read_all() const {
  std::vector<std::int64_t> sums(n_, 0);
  for (unsigned cpu = 0; cpu < stops_.size(); ++cpu) {
    for (std::size_t i = 0; i < n_; ++i) sums[i] += slot(cpu, i);
  }
  return sums;
}

std::int64_t counter_array::read_on(unsigned cpu, std::size_t i) const {
  if (cpu >= stops_.size() || i >= n_) {
    throw std::out_of_range("percpu::counter_array: CPU " + std::to_string(cpu) + " counter " +
                            std::to_string(i) + " is out of range");
  }
  return slot(cpu, i);
}

std::vector<std::int64_t> counter_array::exchange_all() {
  std::vector<std::int64_t> taken(n_, 0);
  stops_.visit_all([&](unsigned cpu) {
    for (std::size_t i = 0; i < n_; ++i) {
      std::atomic_ref<std::int64_t> s(*detail::copy_on(slots0_ + i, cpu));
      taken[i] += s.load(std::memory_order_relaxed);
      s.store(0, std::memory_order_relaxed);
    }
  });
  return taken;
}

counter::counter(std::int64_t batch)
    : batch_(batch),
      fold_bias_(static_cast<std::uint64_t>(batch) - 1),
      fold_span_(2 * (static_cast<std::uint64_t>(batch) - 1)) {
  if (batch < 1) {
    throw std::invalid_argument("percpu::counter: batch " + std::to_string(batch) +
                                " is not at least 1");
  }
}

void counter::fold(unsigned cpu, std::int64_t residual) noexcept {
  // Moves CPU `cpu`'s residual (which this thread's add just left at
  // `residual`, or a later add on that CPU, seq::add_return) to the central
  // count, and does not return before that CPU's residual has been below
  // the batch at some moment after the add.  (A value read after the add is
  // as good as the add's own for that: add() folds when it is at the batch,
  // and returns at once when it is below, which is then such a moment.)  So once
  // an add has returned, any excess on its CPU belongs to adds still in
  // progress: that is what makes error_bound() hold.
  //
  // Between the two steps of a fold the value is in neither place:
  // read_approx() may be low by it, which is the residual the slot held and
  // error_bound() already covers.
  //
  // Portable backend: compare_and_store locks the exact slot, so it fails
  // only when the slot changed - or, inside a signal handler that
  // interrupted this thread's own operation, when that operation holds the
  // slot.  There the fold gives up after a few tries and leaves the residual
  // to the next add on that slot (a stop, which would wait for the
  // interrupted operation, could deadlock); the bound then holds once that
  // add has returned.
  if (cpu >= slots_.stops_.size()) return;  // the add was deferred (see add_return)
  bool rseq = detail::runtime.backend == detail::backend_code::rseq;
  for (int tries = 0;; ++tries) {
    if (residual < batch_ && residual > -batch_) return;
    if (detail::seq::compare_and_store(slots_.slots0_, slots_.stops_.words(), cpu, residual, 0)) {
      central_.fetch_add(residual, std::memory_order_relaxed);
      return;
    }
    if (!rseq) {
      if (tries == 3) return;
    } else if (current_cpu() != cpu) {
      break;  // moved away: fold remotely
    }
    residual = slots_.slot(cpu, 0);  // another add changed it: look again
  }
  // This thread no longer runs on `cpu`: fold with that CPU stopped.  Rare
  // (a migration right at the batch) and it keeps the bound hard.  Signals
  // stay blocked meanwhile: a handler that added to this counter on `cpu`
  // would otherwise wait for a stop its own thread holds.  (Two system calls,
  // beside the stop's fence, on a path taken once in many thousand adds.)
  sigset_t all;
  sigset_t previous;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &previous);
  slots_.stops_.visit(cpu, [&] {
    std::atomic_ref<std::int64_t> slot(*detail::copy_on(slots_.slots0_, cpu));
    std::int64_t value = slot.load(std::memory_order_relaxed);
    if (value >= batch_ || value <= -batch_) {
      slot.store(0, std::memory_order_relaxed);
      central_.fetch_add(value, std::memory_order_relaxed);
    }
  });
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
}

std::int64_t counter::read() const noexcept {
  std::int64_t sum = central_.load(std::memory_order_relaxed);
  for (unsigned cpu = 0; cpu < slots_.stops_.size(); ++cpu) sum += slots_.slot(cpu, 0);
  return sum;
}

std::int64_t counter::error_bound(std::int64_t largest_add,
                                  unsigned adding_threads) const noexcept {
  auto cpus = static_cast<std::int64_t>(slots_.stops_.size());
  auto threads = static_cast<std::int64_t>(adding_threads);
  return (cpus + threads) * (batch_ - 1 + threads * largest_add);
}

std::int64_t counter::exchange(std::int64_t desired) {
  // Residuals first, with every CPU stopped; then the central count.  A fold
  // caught between its two steps adds its value to the central count after
  // the exchange: it is kept in the counter, not lost.
  std::int64_t taken = slots_.exchange_all()[0];
  return taken + central_.exchange(desired, std::memory_order_relaxed);
}

}  // namespace percpu
