// event_counts - per-CPU event counters with percpu::storage.
//
// Worker threads count events without atomics or shared cache lines; a
// reporter sums them whenever it likes, and drains them exactly with a
// stopped-CPU visit (nothing added concurrently is lost).
#include <percpu/core/storage.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

int main() {
  percpu::storage<std::int64_t> events;  // one counter per CPU, all zero
  std::atomic<bool> done{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&] {
      while (!done.load(std::memory_order_relaxed)) events.add(1);
    });
  }
  std::int64_t drained = 0;
  for (int round = 0; round < 5; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    // Exact drain: each CPU is stopped while its counter is taken.
    events.visit_all([&](unsigned, std::int64_t& count) {
      drained += count;
      count = 0;
    });
    std::printf("after round %d: %lld events\n", round + 1, static_cast<long long>(drained));
  }
  done = true;
  for (auto& w : workers) w.join();
  std::int64_t rest = 0;
  events.for_each_cpu([&](unsigned, std::int64_t& count) { rest += count; });
  std::printf("total: %lld events on %u CPU slots\n", static_cast<long long>(drained + rest),
              percpu::cpu_count());
}
