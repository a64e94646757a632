// Uses an installed percpu: one per-CPU counter, added to from two threads.
#include <percpu/core/storage.hpp>

#include <cstdint>
#include <cstdio>
#include <thread>

int main() {
  percpu::storage<std::int64_t> hits;
  auto work = [&] {
    for (int i = 0; i < 100000; ++i) hits.add(1);
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  std::int64_t total = 0;
  hits.for_each_cpu([&](unsigned, std::int64_t& v) { total += v; });
  std::printf("consumer: %lld hits over %u CPU slots (%s backend)\n", static_cast<long long>(total),
              percpu::cpu_count(),
              percpu::backend().kind == percpu::backend_kind::rseq ? "rseq" : "portable");
  return total == 200000 ? 0 : 1;
}
