// fuzz_api.cpp - a libFuzzer target that runs byte strings as programs
// against the public API and checks its invariants.
//
// Problem: the unit tests try the inputs their authors thought of.  The
// API's promises (exact sums, every object handed out constructed and
// distinct, nothing cached surviving an invalidate, conservation of
// constructions and destructions, a documented exception for every bad
// argument) must hold for any order of calls and any argument, including
// CPU numbers past cpu_count(), sizes of 0 or beyond the limits and
// alignments that are not powers of two.
//
// Mechanism: every input builds a fresh set of objects (a storage<int64_t>,
// a counter, a counter_array, an rwlock, a stop_state, a pool_cache of
// tracked objects and, on demand, a raw_pool_cache and raw per-CPU
// allocations) and a model of what they must hold.  The first byte chooses
// one or two threads: with two, a worker runs a fixed workload on the same
// objects until the program ends.  Each following byte picks an operation,
// whose arguments come from the next bytes; at most max_operations run.
// With one thread the model is checked after every operation; with two,
// at quiescence after the join.  Everything is returned and destroyed
// before the input ends, so nothing carries over to the next one.
//
// Not tried here because they end the process by design: foreign or
// double pool_cache puts in debug builds (abort with a message, covered by
// tests/test_debug_checks.cpp) and stop_state::start of a CPU the caller
// did not stop (undefined).  docs/reliability.md lists what each bad
// input gives.
//
// The program's operations on pool caches are in fuzz_pool.cpp, those on
// raw per-CPU allocations in fuzz_alloc.cpp; fuzz_program.hpp declares what
// they share.
#include <fuzzer/FuzzedDataProvider.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>

#include "fuzz_program.hpp"

namespace percpu_fuzz {

program::program(FuzzedDataProvider& in)
    : in_(in),
      events_(in.ConsumeIntegralInRange<std::int64_t>(1, 300)),
      objects_("fuzz", tracked_factory{&census_, &objects_ptr_}) {
  objects_ptr_ = &objects_;
}

void program::run(bool concurrent) {
  concurrent_ = concurrent;
  std::atomic<bool> done{false};
  worker_totals totals;
  std::thread worker;
  if (concurrent) worker = std::thread([&] { work(done, totals); });
  for (unsigned n = 0; n < max_operations && in_.remaining_bytes() > 0; ++n) {
    step(static_cast<op>(in_.ConsumeIntegralInRange<unsigned>(0, unsigned(op::count) - 1)));
    if (!concurrent) check_quiescent();
  }
  if (concurrent) {
    done.store(true, std::memory_order_release);
    worker.join();
    storage_model_ += totals.storage_added;
    counter_added_ += totals.counter_added;
    check_quiescent();
  }
  finish();
}

// The worker: adds, reader and writer sections, gets and puts, until the
// main thread is done (and at least 64 rounds).
void program::work(std::atomic<bool>& done, worker_totals& totals) {
  std::vector<tracked*> mine;
  for (unsigned round = 0; round < 64 || !done.load(std::memory_order_acquire); ++round) {
    values_.add(1);
    totals.storage_added += 1;
    events_.add(3);
    totals.counter_added += 3;
    if (round % 4 == 0) reader_section();
    if (round % 16 == 0) writer_section();
    if (tracked* t = objects_.try_get()) {
      check(t->magic == alive_magic, "worker got an object that is not constructed");
      mine.push_back(t);
    }
    if (mine.size() > 6 || (round % 3 == 0 && !mine.empty())) {
      objects_.put(mine.back());
      mine.pop_back();
    }
  }
  for (tracked* t : mine) objects_.put(t);
}

void program::reader_section() {
  lock_.lock_shared();
  readers_.fetch_add(1, std::memory_order_relaxed);
  check(writers_.load(std::memory_order_relaxed) == 0, "a reader inside with a writer");
  readers_.fetch_sub(1, std::memory_order_relaxed);
  lock_.unlock_shared();
}

void program::writer_section() {
  lock_.lock();
  check(writers_.fetch_add(1, std::memory_order_relaxed) == 0, "two writers inside");
  check(readers_.load(std::memory_order_relaxed) == 0, "a writer inside with a reader");
  writers_.fetch_sub(1, std::memory_order_relaxed);
  lock_.unlock();
}

void program::step(op o) {
  switch (o) {
    case op::storage_add: {
      auto v = in_.ConsumeIntegralInRange<std::int64_t>(-1000, 1000);
      values_.add(v);
      storage_model_ += v;
      break;
    }
    case op::storage_on: {
      unsigned cpu = pick_cpu(in_);
      if (cpu >= values_.cpus()) {
        expect_error(
            percpu::errc::out_of_range, [&] { (void)values_.on(cpu); },
            "storage::on(bad CPU) must throw out_of_range");
      } else if (!concurrent_) {
        auto v = in_.ConsumeIntegralInRange<std::int64_t>(-1000, 1000);
        *values_.on(cpu) += v;  // no concurrent adds: a plain update is exact
        storage_model_ += v;
      } else {
        (void)values_.load(cpu);
      }
      break;
    }
    case op::storage_visit: {
      unsigned cpu = pick_cpu(in_);
      auto v = in_.ConsumeIntegralInRange<std::int64_t>(-1000, 1000);
      if (cpu >= values_.cpus()) {
        expect_error(
            percpu::errc::out_of_range, [&] { values_.visit(cpu, [](std::int64_t&) {}); },
            "storage::visit(bad CPU) must throw out_of_range");
      } else {
        values_.visit(cpu, [&](std::int64_t& slot) { slot += v; });
        storage_model_ += v;
      }
      break;
    }
    case op::storage_compare_and_store: {
      unsigned cpu = in_.ConsumeBool() ? percpu::current_cpu() : pick_cpu(in_);
      auto desired = in_.ConsumeIntegralInRange<std::int64_t>(-1000, 1000);
      if (cpu >= values_.cpus()) {
        check(!values_.compare_and_store(cpu, 0, desired) &&
                  !values_.compare_and_store(cpu, -1, desired),
              "compare_and_store on a CPU past cpu_count() must fail");
        break;
      }
      std::int64_t expected = values_.load(cpu);
      if (values_.compare_and_store(cpu, expected, desired)) storage_model_ += desired - expected;
      break;
    }
    case op::counter_add: {
      auto v = in_.ConsumeIntegralInRange<std::int64_t>(-5000, 5000);
      events_.add(v);
      counter_added_ += v;
      break;
    }
    case op::counter_exchange: {
      auto desired = in_.ConsumeIntegralInRange<std::int64_t>(-5000, 5000);
      std::int64_t before = events_.exchange(desired);
      if (!concurrent_) {
        check(before == counter_added_ + counter_set_ - counter_taken_,
              "counter::exchange returned a wrong total");
      }
      counter_taken_ += before;
      counter_set_ += desired;
      break;
    }
    case op::counter_bad_batch: {
      auto batch =
          in_.ConsumeIntegralInRange<std::int64_t>(std::numeric_limits<std::int64_t>::min(), 0);
      expect_error(
          percpu::errc::invalid_argument, [&] { percpu::counter c(batch); },
          "counter(batch <= 0) must throw invalid_argument");
      break;
    }
    case op::array_misuse:
      array_misuse();
      break;
    case op::rwlock_shared:
      if (in_.ConsumeBool()) {
        reader_section();
      } else if (lock_.try_lock_shared()) {
        check(writers_.load(std::memory_order_relaxed) == 0,
              "try_lock_shared let a reader in with a writer");
        lock_.unlock_shared();
      }
      break;
    case op::rwlock_exclusive:
      if (in_.ConsumeBool()) {
        writer_section();
      } else if (lock_.try_lock()) {
        check(readers_.load(std::memory_order_relaxed) == 0,
              "try_lock let a writer in with a reader");
        lock_.unlock();
      }
      break;
    case op::pool_get:
      pool_get();
      break;
    case op::pool_put:
      pool_put();
      break;
    case op::pool_invalidate:
      pool_invalidate();
      break;
    case op::pool_invalidate_local:
      objects_.invalidate_local();
      break;
    case op::pool_reclaim:
      (void)objects_.reclaim();
      break;
    case op::pool_fail_construction:
      fail_next_construction = true;
      break;
    case op::pool_reenter:
      reenter_next_construction = true;
      break;
    case op::raw_cache_new:
      raw_cache_new();
      break;
    case op::raw_cache_get:
      raw_cache_get();
      break;
    case op::raw_cache_put:
      if (!raw_.held.empty()) {
        std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, raw_.held.size() - 1);
        raw_.cache->put(raw_.held[i]);
        raw_.held.erase(raw_.held.begin() + static_cast<std::ptrdiff_t>(i));
      }
      break;
    case op::raw_cache_maintain:
      if (raw_.cache) {
        switch (in_.ConsumeIntegralInRange<int>(0, 2)) {
          case 0:
            raw_.cache->invalidate();
            break;
          case 1:
            raw_.cache->invalidate_local();
            break;
          default:
            (void)raw_.cache->reclaim();
            break;
        }
      }
      break;
    case op::alloc_raw:
      alloc_raw();
      break;
    case op::free_raw:
      if (!allocations_.empty()) {
        std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, allocations_.size() - 1);
        free_allocation(i);
      }
      break;
    case op::free_foreign:
      free_foreign();
      break;
    case op::stop_start: {
      unsigned cpu = pick_cpu(in_);
      if (cpu >= stops_.size()) {
        expect_error(
            percpu::errc::out_of_range, [&] { stops_.stop(cpu); },
            "stop(bad CPU) must throw out_of_range");
      } else if (in_.ConsumeBool()) {
        stops_.stop(cpu);
        stops_.start(cpu);
      } else {
        stops_.stop_all();
        stops_.start_all();
      }
      break;
    }
    case op::stop_several: {
      unsigned cpu = pick_cpu(in_);
      stop_state_list list{&stops_, &values_.stops(), &stops_};  // a duplicate on purpose
      if (cpu >= percpu::cpu_count()) {
        expect_error(
            percpu::errc::out_of_range, [&] { percpu::stop_state::stop(list, cpu); },
            "stop(states, bad CPU) must throw out_of_range");
      } else {
        percpu::stop_state::stop(list, cpu);
        percpu::stop_state::start(list, cpu);
      }
      // Nothing may be left stopped, whatever happened above.
      values_.add(0);
      stops_.stop_all();
      stops_.start_all();
      break;
    }
    case op::count:
      break;
  }
}

void program::array_misuse() {
  switch (in_.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      expect_error(
          percpu::errc::invalid_argument, [] { percpu::counter_array a(0); },
          "counter_array(0) must throw invalid_argument");
      break;
    case 1: {
      std::size_t n = percpu::max_allocation() / sizeof(std::int64_t) + 1 +
                      in_.ConsumeIntegral<std::uint32_t>();
      expect_error(
          percpu::errc::too_large, [&] { percpu::counter_array a(n); },
          "counter_array(too many) must throw too_large");
      break;
    }
    case 2: {
      std::size_t i = table_.size() + in_.ConsumeIntegral<std::uint16_t>();
      expect_error(
          percpu::errc::out_of_range, [&] { (void)table_.read(i); },
          "counter_array::read(bad index) must throw out_of_range");
      break;
    }
    default: {
      unsigned cpu = pick_cpu(in_);
      std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, table_.size());
      if (cpu >= percpu::cpu_count() || i >= table_.size()) {
        expect_error(
            percpu::errc::out_of_range, [&] { (void)table_.read_on(cpu, i); },
            "counter_array::read_on(bad CPU or index) must throw out_of_range");
      } else {
        table_.add(i, 1);
        table_model_[i] += 1;
      }
    }
  }
}

// Everything the model knows, checked while no other thread works.
void program::check_quiescent() {
  std::int64_t sum = 0;
  values_.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  check(sum == storage_model_, "storage: the slots do not sum to what was added");

  std::int64_t total = events_.read();
  check(total == counter_added_ + counter_set_ - counter_taken_,
        "counter::read is not the exact total");
  std::int64_t error = events_.read_approx() - total;
  check(error <= events_.error_bound() && -error <= events_.error_bound(),
        "counter::read_approx beyond error_bound()");

  for (std::size_t i = 0; i < table_.size(); ++i)
    check(table_.read(i) == table_model_[i], "counter_array::read is not exact");

  percpu::pool_stats s = objects_.stats();
  std::uint64_t constructed = census_.constructed.load();
  std::uint64_t destroyed = census_.destroyed.load();
  check(s.constructions == constructed && s.destructions == destroyed,
        "pool_cache statistics disagree with the census");
  check(s.objects_in_use == held_.size(),
        "pool_cache objects_in_use differs from the objects held");
  check(constructed - destroyed == held_.size() + s.objects_cached,
        "pool_cache: constructions - destructions != held + cached");
}

void program::finish() {
  for (const held_object& h : held_) objects_.put(h.object);
  held_.clear();
  release_raw_cache();
  while (!allocations_.empty()) free_allocation(allocations_.size() - 1);
  check_quiescent();
}

}  // namespace percpu_fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace percpu_fuzz;
  FuzzedDataProvider in(data, size);
  bool concurrent = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  fail_next_construction = false;
  reenter_next_construction = false;
  {
    program p(in);
    p.run(concurrent);
  }
  fail_next_construction = false;
  return 0;
}
