// depot.cpp - pool_cache's depot of full and empty magazines, and its
// upkeep: the working-set trim, the magazine size, reclaim().
//
// The depot is two lists under one lock.  A CPU visits it once per
// magazine's worth of gets or puts (invalidate.cpp: get_slow, put_slow,
// give).  Once a period, whichever visit comes first trims the full
// magazines nobody needed and adapts the magazine size to the contention
// the period saw; the cache has no thread of its own.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "pool_core.hpp"

namespace percpu::detail {

// A full magazine, or nullptr.  Its objects all belong to one generation
// (give() keeps only objects of the generation current under the lock),
// but it may be an older one: between its increment and its drain of the
// depot, an invalidate() leaves older magazines there.
magazine* pool_core::take_full() noexcept {
  return locked(depot_lock, [&]() -> magazine* {
    magazine* m = full;
    if (m != nullptr) {
      full = m->next;
      --full_count;
      full_low_water = std::min(full_low_water, full_count);
    }
    return m;
  });
}

// An empty magazine with room for `size` objects and one more: the depot's,
// or a new one.  One the depot kept from when magazines were smaller goes
// back to its size class's free list.
magazine* pool_core::take_empty(unsigned size) noexcept {
  magazine* m = locked(depot_lock, [&]() -> magazine* {
    magazine* e = empty;
    if (e != nullptr) {
      empty = e->next;
      --empty_count;
    }
    return e;
  });
  if (m != nullptr && m->capacity < size + 1) {
    free_magazine(m);
    m = nullptr;
  }
  if (m == nullptr) m = alloc_magazine(size);
  if (m != nullptr) m->count = 0;
  return m;
}

// ---- maintenance ------------------------------------------------------------

// Once a period, from whichever depot visit comes first: trim the depot to
// its working set and adapt the magazine size.
void pool_core::maybe_maintain() noexcept {
  auto now = static_cast<std::uint64_t>(now_ns());
  std::uint64_t due = next_maintenance_ns.load(std::memory_order_relaxed);
  if (now < due) return;
  if (!next_maintenance_ns.compare_exchange_strong(due, now + maintenance_period_ns,
                                                   std::memory_order_relaxed)) {
    return;  // another thread does it
  }
  if (due == 0) return;  // the first visit only starts the clock
  trim_and_adapt();
}

void pool_core::trim_and_adapt() noexcept {
  magazine* trimmed = nullptr;
  unsigned new_size = 0;
  locked(depot_lock, [&] {
    // Full magazines that stayed in the depot for the whole period were
    // not needed: destruct that many (Bonwick's working-set trim).
    for (std::uint64_t n = full_low_water; n > 0 && full != nullptr; --n) {
      magazine* m = full;
      full = m->next;
      --full_count;
      m->next = trimmed;
      trimmed = m;
    }
    full_low_water = full_count;
    // Contention makes magazines bigger (fewer depot visits per object);
    // three quiet periods in a row make them smaller again (less memory
    // held per CPU).
    std::uint64_t visits = depot_visits.load(std::memory_order_relaxed);
    std::uint64_t contended = depot_contended.load(std::memory_order_relaxed);
    std::uint64_t period_visits = visits - visits_at_maintenance;
    std::uint64_t period_contended = contended - contended_at_maintenance;
    visits_at_maintenance = visits;
    contended_at_maintenance = contended;
    unsigned size = cache.magazine_size();
    if (period_contended > 4 && period_contended * 32 > period_visits) {
      quiet_periods = 0;
      if (size < max_magazine) new_size = std::min(max_magazine, size * 2);
    } else if (period_contended == 0 && ++quiet_periods >= 3) {
      quiet_periods = 0;
      if (size > min_magazine) new_size = std::max(min_magazine, size / 2);
    }
  });
  if (trimmed != nullptr) trims.fetch_add(1, std::memory_order_relaxed);
  retire(trimmed);
  if (new_size != 0) set_magazine_size(new_size);
}

// Each CPU's array holds up to two magazines.  The capacity is changed
// with a plain store, without stopping the CPU: every array has room for
// two of the biggest magazines, and a count above a lowered capacity only
// makes pushes fail until gets or the next overflow bring it down.
//
// An array not armed yet (arm_array) keeps its capacity of 0: a store here
// would give it room before it has memory, and would touch the slot's page.
// An arming that read the old size meanwhile leaves that size, which the
// next resize corrects.
void pool_core::set_magazine_size(unsigned size) noexcept {
  cache.magazine_size_.store(size, std::memory_order_relaxed);
  for (unsigned cpu = 0; cpu < cache.parts_.cpus(); ++cpu) {
    cpu_array& a = part_on(cpu)->array;
    if (std::atomic_ref<void**>(a.items).load(std::memory_order_relaxed) == nullptr) continue;
    std::atomic_ref<std::uint32_t>(a.capacity).store(2 * size, std::memory_order_relaxed);
  }
  resizes.fetch_add(1, std::memory_order_relaxed);
}

// Problem: a cache has a slot for every possible CPU (or concurrency id),
// and arming every slot's array when the cache is made wrote one page per
// slot: 64 pages for a cache on a 64-CPU host, whichever CPUs the program
// ran on.  So a slot's array starts as the allocator left it, all zero:
// capacity 0 (every push finds it full, every pop empty, and both take the
// slow path) and no memory.  The slow paths arm the slot the thread runs on
// with two compare-and-stores bound to it, the memory first and the
// capacity after, so that no sequence ever sees room without memory.
// Returns true when this call armed it.
bool pool_core::arm_array() noexcept {
  static_assert(std::endian::native == std::endian::little &&
                    offsetof(cpu_array, capacity) == offsetof(cpu_array, count) + 4,
                "count and capacity share one 64-bit word, capacity in its high half");
  for (;;) {
    unsigned slot = seq::current_cpu();
    cpu_part* part = part_on(slot);
    if (std::atomic_ref<std::uint32_t>(part->array.capacity).load(std::memory_order_relaxed) != 0) {
      return false;
    }
    cpu_array* arrays0 = cache.arrays0();
    auto* items0 = reinterpret_cast<std::int64_t*>(&arrays0->items);
    auto items = static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(part->items));
    cas_result r = seq::compare_and_store(items0, stop0(), slot, 0, items);
    if (r == cas_result::moved) continue;
    if (r == cas_result::busy) return false;
    // count 0, capacity 0 -> count 0, capacity two magazines.
    auto* sizes0 = reinterpret_cast<std::int64_t*>(&arrays0->count);
    auto sizes = static_cast<std::int64_t>(std::uint64_t{2} * cache.magazine_size() << 32);
    r = seq::compare_and_store(sizes0, stop0(), slot, 0, sizes);
    if (r == cas_result::moved) continue;
    return r == cas_result::stored;
  }
}

std::size_t pool_core::reclaim() {
  std::lock_guard serial(maintenance);
  trim_and_adapt();
  return release_unused_slabs();
}

}  // namespace percpu::detail
