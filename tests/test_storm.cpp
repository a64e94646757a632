// The foundation's migration storm: threads move themselves between CPUs and
// take signals every few microseconds while they add to slots (also from the
// signal handler); a visitor stops CPUs and moves value between their slots;
// storage grows the whole time while older allocations stay in use.  At the
// end every total is exact.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "percpu/core/storage.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "storm_util.hpp"
#include "test_scale.hpp"

namespace {

using counter = percpu::storage<std::int64_t>;

std::atomic<counter*> storm_target{nullptr};
std::atomic<long> storm_handler_adds{0};

void storm_handler(int) {
  if (counter* c = storm_target.load(std::memory_order_relaxed)) {
    c->add(1);
    storm_handler_adds.fetch_add(1, std::memory_order_relaxed);
  }
}

std::int64_t sum(counter& c) {
  std::int64_t total = 0;
  c.for_each_cpu([&](unsigned, std::int64_t& v) { total += v; });
  return total;
}

TEST(Storm, MigrationSignalsVisitsAndGrowthLoseNothing) {
  constexpr int workers = 4;
  constexpr auto duration = std::chrono::seconds(3);
  auto allowed = percpu::allowed_cpus();

  counter main_counter;
  storm_target = &main_counter;
  storm_handler_adds = 0;
  percpu_test::scoped_handler handler_guard(SIGUSR2, storm_handler);
  ASSERT_TRUE(handler_guard.installed());

  // Allocations made during the storm, with what was added to each.
  struct grown {
    std::unique_ptr<counter> c;
    std::atomic<std::int64_t> expected{0};
    void* raw = nullptr;  // a large raw block alongside, to force new chunks
  };
  std::mutex grown_mutex;
  std::vector<std::unique_ptr<grown>> allocations;

  std::atomic<bool> done{false};
  std::atomic<long> migrations{0};
  std::vector<long> added(workers, 0);
  std::vector<pthread_t> handles(workers);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (int t = 0; t < workers; ++t) {
    threads.emplace_back([&, t] {
      handles[t] = pthread_self();
      ready++;
      unsigned rng = 12345u + static_cast<unsigned>(t);
      long n = 0;
      for (long i = 0; !done.load(std::memory_order_relaxed); ++i) {
        main_counter.add(1);
        ++n;
        // Migrate: a single CPU or the whole allowed set.
        if (i % 512 == 0 && percpu_test::migrate(rng, allowed)) migrations++;
        if (i % 256 == 0) {
          // Use an older allocation, and now and then grow.
          std::lock_guard<std::mutex> lock(grown_mutex);
          if (!allocations.empty()) {
            auto& g = allocations[(rng >> 8) % allocations.size()];
            g->c->add(2);
            g->expected.fetch_add(2, std::memory_order_relaxed);
          }
          if (i % 8192 == 0 && allocations.size() < 400) {
            auto g = std::make_unique<grown>();
            g->c = std::make_unique<counter>();
            g->raw = percpu::allocate_raw(percpu::max_allocation() / 8, 64);
            allocations.push_back(std::move(g));
          }
        }
      }
      added[t] = n;
    });
  }
  while (ready.load() < workers) std::this_thread::yield();

  std::atomic<long> signals{0};
  std::thread signaller([&] {
    while (!done.load()) {
      for (auto h : handles) {
        pthread_kill(h, SIGUSR2);
        signals++;
      }
      auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(5);
      while (std::chrono::steady_clock::now() < until) {
      }
    }
  });

  // The visitor: move value between CPUs' slots, one CPU at a time (the
  // value is held outside the slots in between) and all at once.
  std::int64_t in_flight = 0;
  long visits = 0;
  // Run for `duration`, and on a loaded machine longer until the storm has
  // really happened: enough migrations, handler adds, visits and
  // allocations for the checks below to mean something.
  percpu_test::storm_clock clock(duration);
  auto stormy = [&] {
    std::lock_guard<std::mutex> lock(grown_mutex);
    return migrations.load() > 100 && storm_handler_adds.load() > 100 && visits > 100 &&
           allocations.size() > 4;
  };
  unsigned cpus = main_counter.cpus();
  for (unsigned round = 0; clock.more(stormy); ++round) {
    unsigned from = round % cpus;
    unsigned to = (round * 7 + 3) % cpus;
    in_flight += main_counter.visit(from, [](std::int64_t& v) {
      std::int64_t taken = v;
      v = 0;
      return taken;
    });
    main_counter.visit(to, [&](std::int64_t& v) { v += in_flight; });
    in_flight = 0;
    if (round % 16 == 0) {
      main_counter.visit_all([&](unsigned cpu, std::int64_t& v) {
        if (cpu == from) {
          in_flight = v;
          v = 0;
        }
        if (cpu == to) v += in_flight;  // may come before `from`: settled below
      });
      if (to < from) main_counter.visit(to, [&](std::int64_t& v) { v += in_flight; });
      in_flight = 0;
    }
    visits++;
    // Let the workers at the CPU between rounds.  Without this yield the
    // visitor, back to back, kept the workers off their CPUs: 58,833 adds
    // and 117 migrations in 3 s on the development VM (524,567 and 1,028
    // with it, and more visits, 152,858 against 90,203).  Where membarrier
    // fails and each fence moves the visitor onto the CPU and back
    // (PERCPU_PRETEND_MISSING=membarrier_fence), the workers made 55-93
    // migrations in 30 s, so the storm never met its thresholds: the test
    // ran to its 30 s cap and skipped in every run of that suite
    // configuration (now 3 s, 1,991-7,443 migrations, 778-921 visits).
    std::this_thread::yield();
  }
  done = true;
  // The signaller first: pthread_kill() on a thread that was already joined
  // is undefined (its handle may be freed or reused).
  signaller.join();
  for (auto& t : threads) t.join();
  storm_target = nullptr;

  long total_added = 0;
  for (long n : added) total_added += n;
  EXPECT_EQ(sum(main_counter), total_added + storm_handler_adds.load());
  for (auto& g : allocations) {
    EXPECT_EQ(sum(*g->c), g->expected.load());
    percpu::free_raw(g->raw);
  }
  std::printf(
      "storm: %.1f s, %ld adds, %ld handler adds, %ld migrations, %ld signals, %ld visits, "
      "%zu allocations\n",
      clock.seconds(), total_added, storm_handler_adds.load(), migrations.load(), signals.load(),
      visits, allocations.size());
  if (!stormy()) GTEST_SKIP() << "the machine could not produce the storm in time (above)";
}

// push_record under the storm: threads push (thread, n) records onto the
// CPU they run on while migrating and taking signals; a visitor drains CPUs
// one at a time and all at once.  Every committed record is found exactly
// once (drained or still buffered), and every buffered record's scoreboard
// bit is set.
TEST(Storm, PushRecordLosesAndDuplicatesNothing) {
  using percpu::detail::record_array;
  namespace seq = percpu::detail::seq;
  constexpr int workers = 4;
  constexpr std::uint32_t capacity = 32;
  auto allowed = percpu::allowed_cpus();
  percpu::storage<record_array> per_cpu;
  std::vector<std::vector<std::uint64_t>> buffers(per_cpu.cpus());
  for (unsigned cpu = 0; cpu < per_cpu.cpus(); ++cpu) {
    buffers[cpu].resize(std::size_t{capacity} * 2);
    per_cpu.on(cpu)->records = buffers[cpu].data();
    per_cpu.on(cpu)->capacity = capacity;
  }
  record_array* arr0 = per_cpu.on(0);
  std::uint32_t* stop0 = per_cpu.stops().words();
  auto bit_of = [](std::uint64_t t, std::uint64_t n) { return unsigned((t * 131 + n) % 512); };

  percpu_test::scoped_handler handler_guard(SIGUSR2, [](int) {});
  ASSERT_TRUE(handler_guard.installed());
  percpu_test::signaller signals(SIGUSR2);
  std::vector<std::uint64_t> pushed(workers, 0);
  percpu_test::storm_workers crew(signals, workers, [&](int t, const std::atomic<bool>& stopping) {
    unsigned rng = 4242u + static_cast<unsigned>(t);
    unsigned cpu = seq::current_cpu();
    std::uint64_t n = 0;
    for (std::uint64_t i = 0; !stopping.load(std::memory_order_relaxed); ++i) {
      std::uint64_t record[2] = {static_cast<std::uint64_t>(t), n};
      unsigned on = 0;
      if (seq::push_record<2>(arr0, stop0, cpu, record, bit_of(t, n), &on)) {
        ++n;
      } else if (on != cpu) {
        cpu = on;  // moved
      } else {
        std::this_thread::yield();  // full: wait for the visitor
      }
      if (i % 512 == 0) percpu_test::migrate(rng, allowed);
    }
    pushed[t] = n;
  });

  std::vector<std::vector<std::uint64_t>> drained(workers);
  auto take = [&](unsigned cpu, record_array& a) {
    for (std::uint32_t i = 0; i < a.count; ++i)
      drained[a.records[std::size_t{2} * i]].push_back(a.records[std::size_t{2} * i + 1]);
    a.count = 0;
    for (auto& word : a.scoreboard) word = 0;
    (void)cpu;
  };
  long visits = 0;
  auto stormy = [&] { return visits > 100 && signals.sent() > 100; };
  percpu_test::storm_clock clock(std::chrono::seconds(1));
  for (unsigned round = 0; clock.more(stormy); ++round) {
    if (round % 8 == 0) {
      per_cpu.visit_all(take);
    } else {
      unsigned cpu = round % per_cpu.cpus();
      per_cpu.visit(cpu, [&](record_array& a) { take(cpu, a); });
    }
    ++visits;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  crew.stop();
  per_cpu.for_each_cpu([&](unsigned, record_array& a) {
    for (std::uint32_t i = 0; i < a.count; ++i) {
      unsigned bit = bit_of(a.records[std::size_t{2} * i], a.records[std::size_t{2} * i + 1]);
      EXPECT_NE(a.scoreboard[bit / 64] & (std::uint64_t{1} << (bit % 64)), 0u);
    }
    take(0, a);
  });
  for (int t = 0; t < workers; ++t) {
    std::vector<std::uint64_t>& got = drained[t];
    std::sort(got.begin(), got.end());
    ASSERT_EQ(got.size(), pushed[t]) << "thread " << t;
    for (std::uint64_t n = 0; n < got.size(); ++n) ASSERT_EQ(got[n], n) << "thread " << t;
  }
  if (!stormy()) {
    GTEST_SKIP() << "the machine could not produce the storm in " << clock.seconds()
                 << " s: " << visits << " visits, " << signals.sent() << " signals";
  }
}

}  // namespace
