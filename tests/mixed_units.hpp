// Functions of tests/mixed_units_other.cpp, a unit compiled without NDEBUG,
// called from tests/test_mixed_units.cpp, compiled with it.
#pragma once

#include "percpu/pool_cache.hpp"
#include "percpu/rwlock.hpp"

namespace mixed_units {

// PERCPU_POOL_CHECKS * 4 + PERCPU_RWLOCK_CHECKS * 2 + PERCPU_FAULT_INJECTION
// as that unit sees them.
int checks_in_debug_unit() noexcept;
void* get_in_debug_unit(percpu::raw_pool_cache& cache) noexcept;
void put_in_debug_unit(percpu::raw_pool_cache& cache, void* object) noexcept;
void lock_shared_in_debug_unit(percpu::rwlock& lock) noexcept;
void unlock_shared_in_debug_unit(percpu::rwlock& lock) noexcept;

}  // namespace mixed_units
