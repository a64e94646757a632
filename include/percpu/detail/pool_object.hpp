// percpu/detail/pool_object.hpp - what a pool_cache keeps beside each object,
// and per CPU.
//
// Every object a cache hands out is preceded by a 16-byte header in its
// slab slot.  The generation is what put() compares inside its push (see
// pool_cache.hpp); owner and state exist for the debug checks, which are
// compiled into builds without NDEBUG (PERCPU_POOL_CHECKS).
#pragma once

#include <cstddef>
#include <cstdint>

#include "percpu/runtime/detail/sequences.hpp"

namespace percpu {
class raw_pool_cache;
}

namespace percpu::detail {

struct pool_core;

enum class pool_object_state : std::uint32_t {
  free = 0x0f4ee0f4,    // in a slab, not constructed
  cached = 0x0cac4ed0,  // constructed, in a CPU array or the depot
  in_use = 0x01a5ed01,  // constructed, handed out by get()
};

struct alignas(16) pool_header {
  std::uint64_t generation;  // the cache generation the object was constructed in
  std::uint32_t owner;       // the owning cache's id (debug checks)
  pool_object_state state;   // debug checks
};
static_assert(sizeof(pool_header) == 16);

inline pool_header* pool_object_header(void* object) noexcept {
  return static_cast<pool_header*>(object) - 1;
}

// Objects per magazine at most (the size adapts up to it).
constexpr unsigned max_magazine = 128;

// A CPU's part of a cache: its array of cached objects (two magazines'
// worth at most) and its slow-path counts.  The fast paths work on the
// array, at the start of the part.
struct cpu_part {
  cpu_array array;
  std::int64_t misses;
  std::int64_t overflows;
  void* items[2 * max_magazine];
};
static_assert(offsetof(cpu_part, array) == 0);

// Debug checks (out of line, slow): a foreign pointer, a double put and a
// put to the wrong cache are reported on stderr and abort the program.
void pool_check_get(const raw_pool_cache* cache, void* object) noexcept;
void pool_check_put(const raw_pool_cache* cache, void* object) noexcept;

}  // namespace percpu::detail
