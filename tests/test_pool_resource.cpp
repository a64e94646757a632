// Tests of pool_resource and pool_allocator: containers keep their contents,
// every request gets memory of its size and alignment from the right place
// (a class, or upstream), blocks freed on other threads and CPUs are
// conserved, release() returns everything cached, and allocators compare
// and rebind as the standard requires.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <map>
#include <memory_resource>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gtest/gtest.h"
#include "percpu/pool_resource.hpp"
#include "percpu/runtime/cpu.hpp"
#include "storm_util.hpp"

namespace {

// An upstream that counts what reaches it.
class counting_resource final : public std::pmr::memory_resource {
 public:
  std::atomic<long> allocations{0};
  std::atomic<long> deallocations{0};

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    allocations.fetch_add(1);
    return std::pmr::new_delete_resource()->allocate(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    deallocations.fetch_add(1);
    std::pmr::new_delete_resource()->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }
};

// Every class: nothing in use; cached objects account for every
// construction not yet destructed.
void expect_nothing_in_use(const percpu::pool_resource& resource) {
  for (const percpu::pool_stats& s : resource.stats()) {
    EXPECT_EQ(s.objects_in_use, 0u) << s.name;
    EXPECT_EQ(s.constructions - s.destructions, s.objects_cached) << s.name;
  }
}

std::uint64_t total_in_use(const percpu::pool_resource& resource) {
  std::uint64_t n = 0;
  for (const percpu::pool_stats& s : resource.stats()) n += s.objects_in_use;
  return n;
}

std::string value_of(int key) {
  return "value " + std::to_string(key) + " long enough to leave the small-string buffer";
}

TEST(PoolResource, PmrContainersKeepTheirContents) {
  counting_resource upstream;
  percpu::pool_resource resource(&upstream);
  std::mt19937 rng(7);
  {
    std::pmr::list<int> list(&resource);
    std::list<int> list_reference;
    std::pmr::map<int, std::string> map(&resource);
    std::map<int, std::string> map_reference;
    std::pmr::unordered_map<int, std::pmr::string> hash(&resource);
    std::map<int, std::string> hash_reference;
    for (int round = 0; round < 40000; ++round) {
      int key = static_cast<int>(rng() % 5000);
      if (rng() % 3 != 0) {
        list.push_back(key);
        list_reference.push_back(key);
        map.emplace(key, value_of(key));
        map_reference.emplace(key, value_of(key));
        hash.emplace(key, value_of(key));
        hash_reference.emplace(key, value_of(key));
      } else {
        if (!list.empty()) {
          list.pop_front();
          list_reference.pop_front();
        }
        EXPECT_EQ(map.erase(key), map_reference.erase(key));
        EXPECT_EQ(hash.erase(key), hash_reference.erase(key));
      }
    }
    EXPECT_TRUE(std::equal(list.begin(), list.end(), list_reference.begin(), list_reference.end()));
    EXPECT_TRUE(std::equal(map.begin(), map.end(), map_reference.begin(), map_reference.end()));
    ASSERT_EQ(hash.size(), hash_reference.size());
    for (const auto& [key, value] : hash_reference) {
      auto it = hash.find(key);
      ASSERT_NE(it, hash.end());
      EXPECT_EQ(std::string_view(it->second), value);
      EXPECT_EQ(it->second.get_allocator().resource(), &resource);  // uses-allocator construction
    }
    EXPECT_GT(total_in_use(resource), list.size() + map.size() + hash.size());
  }
  // Only the hash table's larger bucket arrays went upstream, and came back.
  EXPECT_GT(upstream.allocations.load(), 0);
  EXPECT_EQ(upstream.allocations.load(), upstream.deallocations.load());
  EXPECT_FALSE(resource.stats().empty());
  expect_nothing_in_use(resource);
}

// Fills a block with a pattern derived from its address and size.
void fill(void* p, std::size_t bytes) {
  auto* b = static_cast<unsigned char*>(p);
  auto seed = static_cast<unsigned char>(reinterpret_cast<std::uintptr_t>(p) >> 4 ^ bytes);
  for (std::size_t i = 0; i < bytes; ++i) b[i] = static_cast<unsigned char>(seed + i * 31);
}
bool intact(const void* p, std::size_t bytes) {
  const auto* b = static_cast<const unsigned char*>(p);
  auto seed = static_cast<unsigned char>(reinterpret_cast<std::uintptr_t>(p) >> 4 ^ bytes);
  for (std::size_t i = 0; i < bytes; ++i) {
    if (b[i] != static_cast<unsigned char>(seed + i * 31)) return false;
  }
  return true;
}

TEST(PoolResource, EveryClassServesItsSizesAndAlignments) {
  counting_resource upstream;
  percpu::pool_resource resource(&upstream);
  struct block {
    void* p;
    std::size_t bytes;
    std::size_t alignment;
  };
  std::vector<block> blocks;
  std::size_t previous = 0;
  for (std::size_t size : percpu::pool_resource::class_sizes) {
    for (std::size_t bytes : {previous + 1, (previous + size) / 2, size}) {
      for (std::size_t alignment : {1u, 2u, 4u, 8u, 16u, 32u, 64u}) {
        void* p = resource.allocate(bytes, alignment);
        ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % alignment, 0u) << bytes << " " << alignment;
        fill(p, bytes);
        blocks.push_back({p, bytes, alignment});
      }
    }
    previous = size;
  }
  EXPECT_EQ(upstream.allocations.load(), 0);  // every one of these fits a class
  // Each class and each 64-aligned class exists, with objects of its size.
  std::vector<percpu::pool_stats> stats = resource.stats();
  ASSERT_EQ(stats.size(), 2 * percpu::pool_resource::class_sizes.size());
  for (std::size_t i = 0; i < stats.size(); ++i) {
    std::size_t size =
        percpu::pool_resource::class_sizes[i % percpu::pool_resource::class_sizes.size()];
    EXPECT_EQ(stats[i].object_size, size);
    EXPECT_EQ(stats[i].objects_in_use, i < stats.size() / 2 ? 3u * 5 : 3u * 2) << stats[i].name;
  }
  // Larger sizes and alignments go upstream.
  for (std::size_t bytes :
       {std::size_t{4097}, std::size_t{10000}, std::size_t{1} << 20, std::size_t{64}}) {
    for (std::size_t alignment : {std::size_t{8}, std::size_t{128}, std::size_t{4096}}) {
      if (bytes == 64 && alignment == 8) continue;  // that one is a class's
      void* p = resource.allocate(bytes, alignment);
      ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % alignment, 0u);
      fill(p, bytes);
      blocks.push_back({p, bytes, alignment});
    }
  }
  EXPECT_EQ(upstream.allocations.load(), 3 * 3 + 2);
  for (const block& b : blocks) EXPECT_TRUE(intact(b.p, b.bytes)) << b.bytes << " " << b.alignment;
  for (const block& b : blocks) resource.deallocate(b.p, b.bytes, b.alignment);
  EXPECT_EQ(upstream.deallocations.load(), upstream.allocations.load());
  expect_nothing_in_use(resource);
}

TEST(PoolResource, FreedBlocksAreReusedOnTheSameCpu) {
  percpu::pool_resource resource;
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(percpu::allowed_cpus().front()));
    void* a = resource.allocate(40);
    resource.deallocate(a, 40);
    void* b = resource.allocate(33);  // the same class (48)
    EXPECT_EQ(b, a);
    resource.deallocate(b, 33);
  }).join();
}

TEST(PoolResource, EqualityIsIdentity) {
  percpu::pool_resource a;
  percpu::pool_resource b;
  EXPECT_TRUE(a.is_equal(a));
  EXPECT_FALSE(a.is_equal(b));
  EXPECT_FALSE(a.is_equal(*std::pmr::new_delete_resource()));
  EXPECT_EQ(percpu::default_pool_resource(), percpu::default_pool_resource());
  EXPECT_EQ(a.upstream_resource(), std::pmr::new_delete_resource());
}

// One thread allocates, another frees, both moving between CPUs: blocks
// arrive intact, and once all are freed none is in use in any class.
TEST(PoolResource, BlocksFreedOnOtherThreadsAndCpusAreConserved) {
  percpu::pool_resource resource;
  constexpr int producers = 2;
  constexpr int per_producer = 30000;
  struct block {
    void* p;
    std::size_t bytes;
  };
  std::mutex lock;
  std::deque<block> queue;
  std::atomic<int> producing{producers};
  std::atomic<long> corrupted{0};
  std::atomic<long> freed{0};
  std::vector<unsigned> allowed = percpu::allowed_cpus();
  std::vector<std::thread> threads;
  for (int t = 0; t < producers; ++t) {
    threads.emplace_back([&, t] {
      unsigned rng = 17u + static_cast<unsigned>(t);
      for (int i = 0; i < per_producer; ++i) {
        if ((i & 255) == 0) percpu_test::migrate(rng, allowed);
        rng = rng * 1664525u + 1013904223u;
        std::size_t bytes = 1 + (rng >> 8) % percpu::pool_resource::largest_class;
        void* p = resource.allocate(bytes);
        fill(p, bytes);
        std::lock_guard g(lock);
        queue.push_back({p, bytes});
      }
      producing.fetch_sub(1);
    });
    threads.emplace_back([&, t] {
      unsigned rng = 91u + static_cast<unsigned>(t);
      long mine = 0;
      for (;;) {
        block b{};
        {
          std::lock_guard g(lock);
          if (!queue.empty()) {
            b = queue.front();
            queue.pop_front();
          }
        }
        if (b.p == nullptr) {
          if (producing.load() == 0) {
            std::lock_guard g(lock);
            if (queue.empty()) break;
          }
          std::this_thread::yield();
          continue;
        }
        if ((++mine & 255) == 0) percpu_test::migrate(rng, allowed);
        if (!intact(b.p, b.bytes)) corrupted.fetch_add(1);
        resource.deallocate(b.p, b.bytes);
        freed.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(corrupted.load(), 0);
  EXPECT_EQ(freed.load(), long{producers} * per_producer);
  EXPECT_EQ(resource.stats().size(), percpu::pool_resource::class_sizes.size());
  expect_nothing_in_use(resource);

  // release() returns everything cached, and every slab with it.
  EXPECT_GT(resource.release(), 0u);
  for (const percpu::pool_stats& s : resource.stats()) {
    EXPECT_EQ(s.objects_cached, 0u) << s.name;
    EXPECT_EQ(s.objects_in_use, 0u) << s.name;
    EXPECT_EQ(s.slabs, 0u) << s.name;
  }
}

TEST(PoolResource, ReleaseLeavesBlocksInUseAlone) {
  percpu::pool_resource resource;
  std::vector<void*> blocks;
  for (int i = 0; i < 1000; ++i) {
    blocks.push_back(resource.allocate(100));
    fill(blocks.back(), 100);
  }
  for (int i = 0; i < 500; ++i) resource.deallocate(blocks[i], 100);
  resource.release();
  std::vector<percpu::pool_stats> stats = resource.stats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].objects_in_use, 500u);
  EXPECT_EQ(stats[0].objects_cached, 0u);
  for (int i = 500; i < 1000; ++i) EXPECT_TRUE(intact(blocks[i], 100));
  // Blocks from before the release go back to their slabs, not to a cache.
  for (int i = 500; i < 1000; ++i) resource.deallocate(blocks[i], 100);
  stats = resource.stats();
  EXPECT_EQ(stats[0].objects_in_use, 0u);
  EXPECT_EQ(stats[0].objects_cached, 0u);
}

// ---- pool_allocator -----------------------------------------------------------

static_assert(
    std::is_same_v<std::allocator_traits<percpu::pool_allocator<int>>::rebind_alloc<double>,
                   percpu::pool_allocator<double>>);

TEST(PoolAllocator, ListAndMapUseTheResource) {
  percpu::pool_resource resource;
  {
    std::list<int, percpu::pool_allocator<int>> list{percpu::pool_allocator<int>(&resource)};
    for (int i = 0; i < 10000; ++i) list.push_back(i);
    list.remove_if([](int v) { return v % 3 == 0; });
    int expected = 0;
    for (int v : list) {
      if (expected % 3 == 0) ++expected;
      EXPECT_EQ(v, expected);
      ++expected;
    }
    EXPECT_EQ(total_in_use(resource), list.size());  // one node each, nothing else

    using pair = std::pair<const int, std::string>;
    // The map rebinds the allocator to its node type.
    std::map<int, std::string, std::less<>, percpu::pool_allocator<pair>> map{
        percpu::pool_allocator<pair>(&resource)};
    for (int i = 0; i < 5000; ++i) map.emplace(i, value_of(i));
    for (int i = 0; i < 5000; i += 2) map.erase(i);
    ASSERT_EQ(map.size(), 2500u);
    for (const auto& [key, value] : map) {
      EXPECT_EQ(key % 2, 1);
      EXPECT_EQ(value, value_of(key));
    }
    EXPECT_EQ(total_in_use(resource), list.size() + map.size());
    EXPECT_EQ(map.get_allocator().resource(), &resource);
  }
  expect_nothing_in_use(resource);
}

TEST(PoolAllocator, DefaultsToTheDefaultResource) {
  std::list<long, percpu::pool_allocator<long>> list;
  EXPECT_EQ(list.get_allocator().resource(), percpu::default_pool_resource());
  for (long i = 0; i < 1000; ++i) list.push_front(i);
  long expected = 999;
  for (long v : list) EXPECT_EQ(v, expected--);
}

TEST(PoolAllocator, EqualityFollowsTheResourceAcrossRebinding) {
  percpu::pool_resource a;
  percpu::pool_resource b;
  percpu::pool_allocator<int> ai(&a);
  percpu::pool_allocator<double> ad(ai);  // rebound copy
  EXPECT_EQ(ad.resource(), &a);
  EXPECT_TRUE(ai == ad);
  EXPECT_TRUE(ad == ai);
  EXPECT_FALSE(ai == percpu::pool_allocator<int>(&b));
  EXPECT_TRUE(ai != percpu::pool_allocator<char>(&b));
  EXPECT_TRUE(percpu::pool_allocator<int>() == percpu::pool_allocator<char>());
  // Memory from one equal allocator is freed through another.
  double* p = ad.allocate(3);
  percpu::pool_allocator<double>(percpu::pool_allocator<char>(&a)).deallocate(p, 3);
  expect_nothing_in_use(a);
  EXPECT_THROW((void)ai.allocate(std::numeric_limits<std::size_t>::max() / 2),
               std::bad_array_new_length);
}

}  // namespace
