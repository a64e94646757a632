// The half of tests/test_mixed_units.cpp compiled without NDEBUG (see there).
#include "mixed_units.hpp"

namespace mixed_units {

int checks_in_debug_unit() noexcept {
  return PERCPU_POOL_CHECKS * 4 + PERCPU_RWLOCK_CHECKS * 2 + PERCPU_FAULT_INJECTION;
}

void* get_in_debug_unit(percpu::raw_pool_cache& cache) noexcept {
  return cache.get();
}

void put_in_debug_unit(percpu::raw_pool_cache& cache, void* object) noexcept {
  cache.put(object);
}

void lock_shared_in_debug_unit(percpu::rwlock& lock) noexcept {
  lock.lock_shared();
}

void unlock_shared_in_debug_unit(percpu::rwlock& lock) noexcept {
  lock.unlock_shared();
}

}  // namespace mixed_units
