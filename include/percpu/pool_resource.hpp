// percpu/pool_resource.hpp - pool-backed allocation for containers: a
// std::pmr::memory_resource and a standard allocator over per-CPU caches.
//
// Problem: node-based containers (std::list, std::map, std::unordered_map)
// allocate and free one small node per element.  Under many threads, the
// general-purpose allocator's shared state is where those threads meet, and
// its per-thread caches strand memory on the thread that freed it.  The
// pool_cache layers (per-CPU magazines, a depot, slabs) already solve that
// for fixed-size objects; containers ask for a handful of sizes.
//
// Mechanism: a set of raw_pool_caches, one per size class (buffers without
// constructor or destructor), behind the std::pmr::memory_resource
// interface.  A request is rounded up to the smallest class that holds it;
// requests larger than the largest class, or more aligned than 64 bytes, go
// to an upstream resource.  Each class's cache is created on its first use,
// so an unused class costs one null pointer.  pool_allocator<T> is the same
// resource behind the standard Allocator interface, for containers that are
// not std::pmr ones.  See docs/pool-resource.md.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <limits>
#include <memory_resource>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "percpu/pool_cache.hpp"

namespace percpu {

// A memory resource whose blocks come from per-CPU object caches, one per
// size class.  Thread-safe; allocate and deallocate may run on different
// threads and CPUs.
//
// Size classes (bytes): 16 32 48 64 96 128 192 256 384 512 768 1024 1536
// 2048 3072 4096.  Requests with alignment up to 16 use classes aligned to
// 16; requests with alignment 32 or 64 use a second set of the same sizes
// aligned to 64 (created only when such requests come).  Larger sizes or
// alignments go to the upstream resource.
class pool_resource final : public std::pmr::memory_resource {
 public:
  static constexpr std::array<std::size_t, 16> class_sizes = {
      16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096};
  static constexpr std::size_t largest_class = class_sizes.back();
  static constexpr std::size_t max_class_alignment = 64;

  // `upstream` serves what no class does and must outlive this resource.
  // `name` prefixes the caches' names in statistics ("NAME.64", "NAME.64a64").
  explicit pool_resource(std::pmr::memory_resource* upstream = std::pmr::new_delete_resource(),
                         std::string name = "pool_resource");
  // Returns every class's memory to the system.  No block may be in use
  // then (a debug build reports classes that still have some).
  ~pool_resource() override;
  pool_resource(const pool_resource&) = delete;
  pool_resource& operator=(const pool_resource&) = delete;

  // The statistics of every class created so far, smallest first, the
  // 16-aligned set before the 64-aligned one.
  [[nodiscard]] std::vector<pool_stats> stats() const;

  // Gives cached memory back: invalidates every created class (the blocks
  // cached in every CPU's array and the depot return to their slabs) and
  // reclaims (unused slabs go back to the system).  Returns the bytes given
  // back to the system.  Safe while blocks are in use: blocks have no
  // destructor, and a block in use is not cached, so it is untouched; when
  // it is freed later it goes straight back to its slab rather than to a
  // CPU's array (it predates the invalidation).  Not callable from a signal
  // handler.
  std::size_t release();

  std::pmr::memory_resource* upstream_resource() const noexcept { return upstream_; }

 private:
  static constexpr std::size_t class_count = class_sizes.size();

  // A block of at least `bytes` aligned to `alignment`, from its class or
  // upstream (see the class comment).  Throws std::bad_alloc when memory
  // runs out, or what upstream throws.
  void* do_allocate(std::size_t bytes, std::size_t alignment) override;
  // Returns a block; `bytes` and `alignment` must be those given to
  // allocate (they select the class).
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override;
  // Identity: only this resource frees what it allocated.
  [[nodiscard]] bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override;

  // The cache with index `index` (see caches_); created on first use.
  // Throws std::bad_alloc when it cannot be created.
  raw_pool_cache& cache_for(std::size_t index);

  std::pmr::memory_resource* upstream_;
  std::string name_;
  std::mutex creation_;  // serialises cache creation; never taken once a class exists
  // [0, class_count): 16-aligned classes; [class_count, 2 * class_count):
  // 64-aligned ones.  Written once under creation_ (release store, paired
  // with cache_for's acquire load); owned, deleted by the destructor.
  std::array<std::atomic<raw_pool_cache*>, 2 * class_count> caches_{};
};

// The process-wide pool_resource (upstream: new_delete_resource()).  Never
// destroyed, so containers with static storage duration may free into it
// during exit.
pool_resource* default_pool_resource() noexcept;

// A standard allocator drawing from a pool_resource, for containers that
// take an Allocator template argument (std::list<T, pool_allocator<T>>).
// Copies and rebound copies share the resource; two allocators are equal
// when their resources are the same object.
template <class T>
class pool_allocator {
 public:
  using value_type = T;

  pool_allocator() noexcept : resource_(default_pool_resource()) {}
  explicit pool_allocator(pool_resource* resource) noexcept : resource_(resource) {}
  // Implicit, as the Allocator requirements want: containers convert to
  // their node type's allocator.
  template <class U>
  pool_allocator(const pool_allocator<U>& other) noexcept : resource_(other.resource()) {}

  // Memory for n objects of T, uninitialised.  Throws std::bad_array_new_length
  // when n * sizeof(T) overflows, std::bad_alloc when memory runs out.
  [[nodiscard]] T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(resource_->allocate(n * sizeof(T), alignof(T)));
  }
  // Returns what allocate(n) gave; n must be the same.
  void deallocate(T* p, std::size_t n) noexcept {
    resource_->deallocate(p, n * sizeof(T), alignof(T));
  }

  pool_resource* resource() const noexcept { return resource_; }

 private:
  pool_resource* resource_;
};

template <class T, class U>
bool operator==(const pool_allocator<T>& a, const pool_allocator<U>& b) noexcept {
  return a.resource() == b.resource();
}

}  // namespace percpu
