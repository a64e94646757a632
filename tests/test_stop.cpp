// stop/fence/visit: a stopped CPU commits nothing; visits lose no update.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <semaphore>
#include <thread>
#include <vector>

#include "cpu_mask.hpp"
#include "expect_error.hpp"
#include "percpu/core/storage.hpp"
#include "test_scale.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

long thread_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1'000'000'000L + ts.tv_nsec;
}

void spin_for(std::chrono::microseconds d) {
  auto end = clock_type::now() + d;
  while (clock_type::now() < end) {
  }
}

void pin(unsigned cpu) {
  ASSERT_TRUE(percpu_test::pin(cpu));
}

// Workers add to their CPUs' slots without pause; a visitor stops each CPU
// in turn, checks that its slot does not change while stopped, and drains it.
// At the end, everything added was either drained or is still in a slot.
TEST(Stop, StoppedCpuCommitsNothingAndNothingIsLost) {
  percpu::storage<std::int64_t> s;
  auto allowed = percpu::allowed_cpus();
  std::atomic<bool> done{false};
  std::vector<long> added(allowed.size(), 0);
  std::vector<std::thread> workers;
  std::atomic<std::size_t> adding{0};
  for (std::size_t i = 0; i < allowed.size(); ++i) {
    workers.emplace_back([&, i] {
      pin(allowed[i]);
      long n = 0;
      while (!done.load(std::memory_order_relaxed)) {
        s.add(1);
        if (++n == 1000) adding.fetch_add(1);
      }
      added[i] = n;
    });
  }
  // On a loaded machine the workers may start late: visit only once every
  // one of them is adding.
  while (adding.load() < workers.size()) std::this_thread::yield();
  std::int64_t drained = 0;
  long changed_while_stopped = 0;
  const int rounds = percpu_test::scaled(300, 30);
  for (int round = 0; round < rounds; ++round) {
    unsigned cpu = static_cast<unsigned>(round) % s.cpus();
    auto check_and_drain = [&](std::int64_t& slot) {
      std::int64_t before = std::atomic_ref<std::int64_t>(slot).load();
      spin_for(std::chrono::microseconds(30));
      std::int64_t after = std::atomic_ref<std::int64_t>(slot).load();
      changed_while_stopped += before != after;
      drained += slot;
      slot = 0;
    };
    if (round % 10 == 9) {
      s.visit_all([&](unsigned, std::int64_t& slot) { check_and_drain(slot); });
    } else {
      s.visit(cpu, check_and_drain);
    }
  }
  done = true;
  for (auto& w : workers) w.join();
  std::int64_t left = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { left += v; });
  long total = 0;
  for (long n : added) total += n;
  EXPECT_EQ(changed_while_stopped, 0);
  EXPECT_EQ(drained + left, total);
  EXPECT_GT(total, 0);
}

// A visit reaches a CPU with no thread of ours on it (idle, or outside the
// affinity mask) without waiting for anyone.
TEST(Stop, IdleCpusAreVisitedWithoutCooperation) {
  percpu::storage<std::int64_t> s;
  for (unsigned cpu = 0; cpu < s.cpus(); ++cpu) *s.on(cpu) = cpu + 1;
  std::int64_t sum = 0;
  for (unsigned cpu = 0; cpu < s.cpus(); ++cpu) {
    sum += s.visit(cpu, [](std::int64_t& v) {
      std::int64_t old = v;
      v = 0;
      return old;
    });
  }
  std::int64_t n = s.cpus();
  EXPECT_EQ(sum, n * (n + 1) / 2);
}

// Stoppers of the same CPU exclude each other.
TEST(Stop, StoppersExcludeEachOther) {
  percpu::storage<std::int64_t> s;
  std::atomic<int> inside{0};
  std::atomic<int> overlaps{0};
  std::vector<std::thread> stoppers;
  stoppers.reserve(3);
  for (int t = 0; t < 3; ++t) {
    stoppers.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        auto body = [&](auto&&...) {
          if (inside.fetch_add(1) != 0) overlaps++;
          spin_for(std::chrono::microseconds(2));
          inside.fetch_sub(1);
        };
        if ((i + t) % 5 == 0) {
          s.stops().stop_all();
          body();
          s.stops().start_all();
        } else {
          s.visit(0, body);
        }
      }
    });
  }
  for (auto& t : stoppers) t.join();
  EXPECT_EQ(overlaps.load(), 0);
}

TEST(Stop, OutOfRangeCpuIsAClearError) {
  percpu::stop_state stops;
  using percpu::errc;
  using percpu_test::fails_with;
  EXPECT_TRUE(fails_with(errc::out_of_range, [&] { stops.stop(stops.size()); }));
  EXPECT_TRUE(fails_with(errc::out_of_range, [&] { stops.visit(stops.size() + 7, [] {}); }));
  // start() accepts exactly what stop() accepts.
  EXPECT_TRUE(fails_with(errc::out_of_range, [&] { stops.start(stops.size()); }));
  percpu::stop_state* both[] = {&stops};
  EXPECT_TRUE(
      fails_with(errc::out_of_range, [&] { percpu::stop_state::start(both, stops.size()); }));
  // Nothing was stopped or started by the refused calls.
  stops.visit(0, [] {});
}

TEST(Stop, VisitRestartsTheCpuWhenTheVisitorThrows) {
  percpu::storage<std::int64_t> s;
  EXPECT_THROW(s.visit(0, [](std::int64_t&) { throw std::runtime_error("visitor failed"); }),
               std::runtime_error);
  s.add(1);  // would wait forever if CPU 0 (or any) stayed stopped
  std::int64_t sum = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  EXPECT_EQ(sum, 1);
  EXPECT_THROW(s.visit_all([](unsigned, std::int64_t&) { throw std::runtime_error("x"); }),
               std::runtime_error);
  s.add(1);
}

// A SCHED_FIFO thread that waits behind a stopper preempted on its own CPU
// would spin forever if it only yielded (sched_yield never yields to a lower
// priority): the wait must end in a sleep that lets the stopper run.  What
// shows it without timing the test: the waiter's own CPU time while it
// waits stays small, where a yielding waiter burns its CPU until the
// kernel's real-time throttling steps in (0.95 s of every second).
TEST(Stop, RealTimeWaiterLetsAPreemptedStopperOnItsCpuFinish) {
  percpu::storage<std::int64_t> s;
  unsigned cpu = percpu::allowed_cpus().front();
  std::binary_semaphore go(0);
  std::atomic<long> waited_cpu_ns{-1};
  std::thread waiter([&] {
    pin(cpu);
    sched_param p{};
    p.sched_priority = 1;
    if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &p) != 0) {
      go.acquire();
      waited_cpu_ns = -2;
      return;
    }
    go.acquire();  // sleeps until the stopper holds every CPU
    long before = thread_cpu_ns();
    s.add(1);  // waits for the stopper, on the stopper's CPU
    waited_cpu_ns = thread_cpu_ns() - before;
  });
  std::thread stopper([&] {
    pin(cpu);
    s.stops().stop_all();
    go.release();  // the waiter, real-time, preempts this thread here
    s.stops().start_all();
  });
  stopper.join();
  waiter.join();
  if (waited_cpu_ns.load() == -2) GTEST_SKIP() << "SCHED_FIFO not permitted here";
  EXPECT_LT(waited_cpu_ns.load(), 200'000'000L) << "the waiter spun instead of sleeping";
  std::int64_t sum = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  EXPECT_EQ(sum, 1);
}

}  // namespace
