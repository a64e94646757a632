// percpu::counter and counter_array: exact totals, the approximate read's
// bound, and resets that lose nothing - under migration and signal storms.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "expect_error.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/counter.hpp"
#include "storm_util.hpp"

namespace {

TEST(Counter, AddsReadsAndResets) {
  percpu::counter c(8);
  for (int i = 0; i < 1000; ++i) c.inc();
  c.add(50);
  c.sub(30);
  EXPECT_EQ(c.read(), 1020);
  EXPECT_LE(std::abs(c.read_approx() - c.read()), c.error_bound());
  EXPECT_EQ(c.exchange(7), 1020);
  EXPECT_EQ(c.read(), 7);
  EXPECT_EQ(c.reset(), 7);
  EXPECT_EQ(c.read(), 0);
  EXPECT_EQ(c.read_approx(), 0);
  for (int i = 0; i < 100; ++i) c.sub(1);
  EXPECT_EQ(c.read(), -100);
}

TEST(Counter, FoldsKeepTheApproximateReadClose) {
  percpu::counter c(4);
  EXPECT_EQ(c.error_bound(), static_cast<std::int64_t>(percpu::cpu_count()) * 8);
  // Quiescent: every residual is in [-2 * batch, 0], so the central count is
  // at or above the truth, by at most the bound.  Increments fold when a
  // residual reaches 0, decrements (which read the slot back) when it goes
  // below -2 * batch; a mix of both stays within the range without folding.
  auto check = [&](std::int64_t expected) {
    EXPECT_EQ(c.read(), expected);
    EXPECT_GE(c.read_approx(), expected);
    EXPECT_LE(c.read_approx() - expected, c.error_bound());
  };
  for (int i = 0; i < 10000; ++i) c.inc();
  check(10000);
  for (int i = 0; i < 30000; ++i) c.sub(1);
  check(-20000);
  for (int i = 0; i < 1000; ++i) c.add(i % 2 == 0 ? 3 : -3);
  check(-20000);
  c.add(1000);  // one add far beyond the batch
  check(-19000);
  c.add(-5000);
  check(-24000);
}

TEST(Counter, BadInputIsAClearError) {
  using percpu::errc;
  using percpu_test::fails_with;
  EXPECT_TRUE(fails_with(errc::invalid_argument, [] { percpu::counter c(0); }));
  EXPECT_TRUE(fails_with(errc::invalid_argument, [] { percpu::counter c(-5); }));
  // Past 2^60, -2 * batch and a residual below it could overflow.
  EXPECT_TRUE(
      fails_with(errc::invalid_argument, [] { percpu::counter c((std::int64_t{1} << 60) + 1); }));
  { percpu::counter largest(std::int64_t{1} << 60); }
  EXPECT_TRUE(fails_with(errc::invalid_argument, [] { percpu::counter_array a(0); }));
  EXPECT_TRUE(
      fails_with(errc::too_large, [] { percpu::counter_array a(percpu::max_allocation()); }));
  // n * 8 above 2^63: refused, not undefined (an alignment computed from
  // the product before the size check ran: UBSan's abort in the asan build).
  EXPECT_TRUE(
      fails_with(errc::too_large, [] { percpu::counter_array a((std::size_t{1} << 60) + 1); }));
  percpu::counter_array a(3);
  EXPECT_TRUE(fails_with(errc::out_of_range, [&] { (void)a.read(3); }));
  EXPECT_TRUE(fails_with(errc::out_of_range, [&] { (void)a.read_on(percpu::cpu_count(), 0); }));
  EXPECT_TRUE(fails_with(errc::out_of_range, [&] { (void)a.read_on(0, 3); }));
}

TEST(CounterArray, CountersAreIndependent) {
  percpu::counter_array a(5);
  for (std::size_t i = 0; i < a.size(); ++i) {
    for (std::size_t k = 0; k <= i; ++k) a.inc(i);
  }
  auto sums = a.read_all();
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(sums[i], static_cast<std::int64_t>(i + 1));
    EXPECT_EQ(a.read(i), static_cast<std::int64_t>(i + 1));
  }
  std::int64_t on_cpus = 0;
  for (unsigned cpu = 0; cpu < percpu::cpu_count(); ++cpu) on_cpus += a.read_on(cpu, 4);
  EXPECT_EQ(on_cpus, 5);
  auto taken = a.exchange_all();
  EXPECT_EQ(taken, sums);
  for (auto v : a.read_all()) EXPECT_EQ(v, 0);
}

std::atomic<percpu::counter*> handler_counter{nullptr};
std::atomic<percpu::counter_array*> handler_array{nullptr};
std::atomic<long> handler_adds{0};

void counting_handler(int) {
  percpu::counter* c = handler_counter.load(std::memory_order_relaxed);
  percpu::counter_array* a = handler_array.load(std::memory_order_relaxed);
  if (c == nullptr || a == nullptr) return;
  c->add(3);
  a->add(1, 3);
  handler_adds.fetch_add(3, std::memory_order_relaxed);
}

// Everything added (threads and signal handlers) == everything taken out by
// concurrent exchanges + what is left, for a counter and a counter array,
// while threads migrate and signals arrive every few microseconds.
TEST(Counter, ExactUnderMigrationSignalsAndConcurrentResets) {
  constexpr int workers = 4;
  const auto duration = std::chrono::milliseconds(1500);
  auto allowed = percpu::allowed_cpus();
  percpu::counter c(16);
  percpu::counter_array a(2);
  handler_adds = 0;
  percpu_test::scoped_handler handler_guard(SIGUSR1, counting_handler);
  ASSERT_TRUE(handler_guard.installed());
  handler_counter = &c;
  handler_array = &a;

  percpu_test::signaller sig(SIGUSR1);
  std::atomic<bool> done{false};
  std::atomic<int> ready{0};
  std::vector<std::int64_t> added(workers, 0);
  std::vector<std::int64_t> iterations(workers, 0);
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (int t = 0; t < workers; ++t) {
    threads.emplace_back([&, t] {
      sig.enroll();
      ready++;
      unsigned rng = 99u + static_cast<unsigned>(t);
      std::int64_t mine = 0;
      long i = 0;
      for (; !done.load(std::memory_order_relaxed); ++i) {
        std::int64_t v = (i % 7) - 2;  // negative, zero and positive adds
        c.add(v);
        a.add(0, v);
        a.add(1, 1);
        mine += v;
        if (i % 256 == 0) percpu_test::migrate(rng, allowed);
      }
      added[t] = mine;
      iterations[t] = i;
    });
  }
  while (ready.load() < workers) std::this_thread::yield();
  sig.start();
  std::int64_t taken = 0;
  std::int64_t taken0 = 0;
  std::int64_t taken1 = 0;
  long resets = 0;
  auto stormy = [&] { return resets > 10 && handler_adds.load() > 0; };
  percpu_test::storm_clock clock(duration);
  while (clock.more(stormy)) {
    taken += c.exchange(0);
    auto t = a.exchange_all();
    taken0 += t[0];
    taken1 += t[1];
    ++resets;
  }
  done = true;
  for (auto& t : threads) t.join();
  sig.stop();
  handler_counter = nullptr;
  handler_array = nullptr;

  std::int64_t total = handler_adds.load();
  std::int64_t ones = handler_adds.load();
  for (auto v : added) total += v;
  for (auto n : iterations) ones += n;
  EXPECT_EQ(taken + c.read(), total);
  EXPECT_EQ(taken0 + a.read(0), total - handler_adds.load());
  EXPECT_EQ(taken1 + a.read(1), ones);
  std::printf("counter storm: %.1f s, %ld resets, %ld handler adds, %ld signals\n", clock.seconds(),
              resets, handler_adds.load(), sig.sent());
  if (!stormy()) GTEST_SKIP() << "the machine could not produce the storm in time (above)";
}

// read_approx() stays within error_bound(1, workers) of the truth at every
// moment, and within error_bound() once the adders stop.  Adders only add 1
// and publish how many adds they started and finished, so at each check the
// truth is known to lie in [finished, started].
TEST(Counter, ApproximateReadStaysInsideItsBound) {
  constexpr int workers = 4;
  auto allowed = percpu::allowed_cpus();
  percpu::counter c(32);
  struct alignas(64) progress {
    std::atomic<std::int64_t> started{0};
    std::atomic<std::int64_t> finished{0};
  };
  std::vector<progress> p(workers);
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (int t = 0; t < workers; ++t) {
    threads.emplace_back([&, t] {
      unsigned rng = 7u + static_cast<unsigned>(t);
      for (long i = 0; !done.load(std::memory_order_relaxed); ++i) {
        p[t].started.fetch_add(1, std::memory_order_seq_cst);
        c.inc();
        p[t].finished.fetch_add(1, std::memory_order_seq_cst);
        if (i % 512 == 0) percpu_test::migrate(rng, allowed);
      }
    });
  }
  std::int64_t bound = c.error_bound(1, workers);
  long checks = 0;
  long violations = 0;
  percpu_test::storm_clock clock(std::chrono::milliseconds(1000));
  while (clock.more([&] { return checks > 100; })) {
    std::int64_t low = 0;
    for (auto& q : p) low += q.finished.load(std::memory_order_seq_cst);
    std::int64_t approx = c.read_approx();
    std::int64_t high = 0;
    for (auto& q : p) high += q.started.load(std::memory_order_seq_cst);
    if (approx < low - bound || approx > high + bound) ++violations;
    ++checks;
  }
  done = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(violations, 0) << "of " << checks << " checks, bound " << bound;
  EXPECT_LE(std::abs(c.read() - c.read_approx()), c.error_bound());
  EXPECT_EQ(c.read(), [&] {
    std::int64_t n = 0;
    for (auto& q : p) n += q.finished.load();
    return n;
  }());
  if (checks <= 100) GTEST_SKIP() << "only " << checks << " checks: the machine was too busy";
}

}  // namespace
