// pool_stat - a `vmstat -m` view of a program's object caches.
//
// Three kinds of cache work at once: a typed cache of 64-byte records, a
// raw cache of 256-byte buffers, and a pool_resource under std::pmr::maps.
// Worker threads move between CPUs and hand buffers to each other; the
// program then prints every live cache's statistics as one table
// (percpu::format_pool_stats over percpu::all_pool_stats()).
#include <percpu/pool_cache.hpp>
#include <percpu/pool_resource.hpp>
#include <percpu/pool_stat.hpp>

#include <array>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <map>
#include <memory_resource>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

struct record {  // 64 bytes
  std::uint64_t key = 0;
  std::array<std::uint64_t, 7> fields{};
};
static_assert(sizeof(record) == 64);

}  // namespace

int main() {
  percpu::pool_cache<record> records("record");
  percpu::pool_options buffer_options;
  buffer_options.size = 256;
  buffer_options.name = "buffer256";
  percpu::raw_pool_cache buffers(buffer_options);
  percpu::pool_resource maps_memory(std::pmr::new_delete_resource(), "maps");

  // Buffers one thread fills and the next one puts back.
  std::mutex handoff_lock;
  std::vector<void*> handoff;

  constexpr int threads = 4;
  // One index per thread, alive until the table is printed.
  std::vector<std::pmr::map<int, std::pmr::string>> indexes;
  indexes.reserve(threads);
  for (int t = 0; t < threads; ++t) indexes.emplace_back(&maps_memory);
  std::vector<std::thread> workers;
  workers.reserve(threads);
  std::vector<record*> kept;  // records still in use when the table is printed
  std::mutex kept_lock;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::pmr::map<int, std::pmr::string>& index = indexes[static_cast<std::size_t>(t)];
      std::vector<record*> window;
      for (int i = 0; i < 200050; ++i) {  // ends with 50 records in the window
        record* r = records.get();
        r->key = static_cast<std::uint64_t>(i);
        window.push_back(r);
        if (window.size() == 100) {
          for (record* w : window) records.put(w);
          window.clear();
        }
        if (i % 8 == 0) {
          void* b = buffers.get();
          std::memset(b, t, 256);
          std::lock_guard g(handoff_lock);
          handoff.push_back(b);
          if (handoff.size() > 64) {
            buffers.put(handoff.front());
            handoff.erase(handoff.begin());
          }
        }
        if (i % 4 == 0) {
          index.emplace(i % 5000, std::pmr::string(static_cast<std::size_t>(i % 300), 'x'));
          index.erase((i + 2500) % 5000);
        }
      }
      std::lock_guard g(kept_lock);
      kept.insert(kept.end(), window.begin(), window.end());
    });
  }
  for (auto& w : workers) w.join();
  records.invalidate();  // drops every cached record (shown in the inval column)

  percpu::format_pool_stats(std::cout, percpu::all_pool_stats());

  for (record* r : kept) records.put(r);
  for (void* b : handoff) buffers.put(b);
}
