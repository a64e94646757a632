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

magazine* pool_core::take_empty() noexcept {
  magazine* m = locked(depot_lock, [&]() -> magazine* {
    magazine* e = empty;
    if (e != nullptr) {
      empty = e->next;
      --empty_count;
    }
    return e;
  });
  if (m == nullptr) m = alloc_magazine();
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
void pool_core::set_magazine_size(unsigned size) noexcept {
  cache.magazine_size_.store(size, std::memory_order_relaxed);
  for (unsigned cpu = 0; cpu < cache.parts_.cpus(); ++cpu) {
    std::atomic_ref<std::uint32_t>(part_on(cpu)->array.capacity)
        .store(2 * size, std::memory_order_relaxed);
  }
  resizes.fetch_add(1, std::memory_order_relaxed);
}

std::size_t pool_core::reclaim() {
  std::lock_guard serial(maintenance);
  trim_and_adapt();
  return release_unused_slabs();
}

}  // namespace percpu::detail
