// Fault injection (built without NDEBUG, like the rest of percpu_debug_tests):
// with every few sequences aborting themselves just before their commit,
// under migrations, nothing is lost or duplicated, and the aborts happen.
#include <sched.h>

#include <atomic>
#include <cstdint>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "percpu/core/storage.hpp"
#include "percpu/counter.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/runtime/cpu.hpp"
#include "storm_util.hpp"

namespace {

static_assert(PERCPU_FAULT_INJECTION, "this test needs a build without NDEBUG");

TEST(FaultInjection, InjectedAbortsLoseNothing) {
  if (percpu::backend().kind != percpu::backend_kind::rseq) GTEST_SKIP() << "no rseq sequences";
  percpu::storage<std::int64_t> slots;
  percpu::counter count(16);
  percpu::pool_options o;
  o.size = 48;
  percpu::raw_pool_cache pool(o);
  std::uint64_t injected_before = percpu::detail::fault_injections();
  constexpr int threads = 3;
  constexpr int rounds = 200000;
  std::atomic<long> duplicates{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      percpu::detail::set_fault_abort_rate(3);  // every third sequence of this thread
      unsigned rng = 77u + static_cast<unsigned>(t);
      std::vector<unsigned> allowed = percpu::allowed_cpus();
      std::vector<void*> held;
      for (int i = 0; i < rounds; ++i) {
        if (i % 512 == 0) percpu_test::migrate(rng, allowed);
        slots.add(1);
        count.add(1);
        if (held.size() < 40 && i % 3 != 2) {
          void* p = pool.get();
          for (void* q : held) {
            if (q == p) duplicates.fetch_add(1);
          }
          held.push_back(p);
        } else if (!held.empty()) {
          pool.put(held.back());
          held.pop_back();
        }
      }
      for (void* p : held) pool.put(p);
      percpu::detail::set_fault_abort_rate(0);
    });
  }
  for (auto& w : workers) w.join();
  std::int64_t sum = 0;
  slots.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  EXPECT_EQ(sum, std::int64_t{threads} * rounds);
  EXPECT_EQ(count.read(), std::int64_t{threads} * rounds);
  EXPECT_EQ(duplicates.load(), 0);
  percpu::pool_stats s = pool.stats();
  EXPECT_EQ(s.objects_in_use, 0u);
  EXPECT_EQ(s.constructions - s.destructions, s.objects_cached);
  std::uint64_t injected = percpu::detail::fault_injections() - injected_before;
  // Roughly a third of ~5 sequences per round per thread.
  EXPECT_GT(injected, std::uint64_t{threads} * rounds);
  std::printf("injected aborts: %llu\n", static_cast<unsigned long long>(injected));
}

}  // namespace
