// debug_stats.cpp - what pool_cache tells about itself: misuse reports, the
// registry of live caches, the debug checks of get and put
// (PERCPU_POOL_CHECKS), and statistics.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "pool_core.hpp"

namespace percpu::detail {

[[noreturn]] void misuse(const char* what, const raw_pool_cache* cache, const void* object) {
  std::fprintf(stderr, "percpu::pool_cache \"%s\": %s (object %p)\n",
               cache != nullptr ? cache->name().c_str() : "?", what, object);
  std::abort();
}

namespace {

// The checks that need to know which cache's slab holds `object`: walks
// every slab of every cache under the registry's and each slab's lock (the
// checks are for debugging, not for speed), inside a no-wait section, so
// that a signal handler's put on this thread skips the walk rather than
// wait for a lock this thread holds.  Allocates nothing unless it reports.
//
// The registry lock is only tried: a put that finds it taken skips the walk
// (and checks the header only, as a nested put does).  History: the walk
// waited for the lock, and the lock is held across fork() (process_wide.hpp)
// by the forking thread, which then waits in glibc's fork for the malloc
// locks.  A thread interrupted inside malloc by a signal whose handler put
// an object waited for the registry lock while holding the malloc lock that
// fork waited for: `percpu stress` hung with debug checks on (first seen in
// the arm64 guest, whose slow emulated CPUs widen the window; the x86-64
// stress stage runs the release build, without these checks).  Every lock a
// signal handler may take must be one nothing waits for across fork() or
// malloc; a try-lock takes nothing it could wait for.
void check_owner(const raw_pool_cache* cache, void* object) noexcept {
  pool_registry& r = process_wide<pool_registry>();
  no_wait_section quiet;
  std::unique_lock g(r.lock, std::try_to_lock);
  if (!g.owns_lock()) return;
  const raw_pool_cache* owner = nullptr;
  bool at_object_start = false;
  bool unknown = false;  // a slab lock was taken: that cache was not searched
  for (raw_pool_cache* c : r.caches) {
    pool_core::lookup found = pool_core::of(*c).holds(object, at_object_start);
    if (found == pool_core::lookup::present) {
      owner = c;
      break;
    }
    unknown |= found == pool_core::lookup::busy;
  }
  if (owner == nullptr && unknown) return;
  if (owner == nullptr) {
    misuse("put of a pointer no pool_cache handed out (foreign pointer)", cache, object);
  }
  if (!at_object_start) {
    misuse("put of a pointer into the middle of a slab, not one get() returned (foreign pointer)",
           cache, object);
  }
  if (owner != cache) {
    std::string what =
        "put to the wrong cache (the object belongs to cache \"" + owner->name() + "\")";
    misuse(what.c_str(), cache, object);
  }
}

}  // namespace

void pool_check_get(const raw_pool_cache* cache, void* object) noexcept {
  pool_header* h = pool_object_header(object);
  if (h->state != pool_object_state::cached) {
    misuse(
        "get found a cached object whose header was overwritten (a write before the start of "
        "an object)",
        cache, object);
  }
  h->state = pool_object_state::in_use;
}

// History: this check took the registry lock and every slab lock from any
// put, so a signal handler's put that interrupted its own thread inside a
// slab-locked section (or inside this walk) waited for itself - debug
// builds hung in PoolCache.SignalHandlersGetAndPutOnTheirOwnThread and the
// torture test.  A put that finds its thread inside a no-wait section (a
// locked section of any cache, this walk, a portable operation) checks the
// object's header only: null, double put, not in use.
void pool_check_put(const raw_pool_cache* cache, void* object) noexcept {
  if (object == nullptr) misuse("put of a null pointer", cache, object);
  if (!pool_core::nested()) check_owner(cache, object);
  pool_header* h = pool_object_header(object);
  if (h->state == pool_object_state::cached) {
    misuse("double put (the object is already cached)", cache, object);
  }
  if (h->state != pool_object_state::in_use) {
    misuse(
        "put of an object that is not in use (a double put of an object the cache has since "
        "destructed, or an overwritten header)",
        cache, object);
  }
  h->state = pool_object_state::cached;
}

}  // namespace percpu::detail

namespace percpu {

pool_stats raw_pool_cache::stats() const {
  detail::pool_core& c = *core_;
  pool_stats s;
  s.name = options_.name;
  s.object_size = size_;
  s.magazine_size = magazine_size();
  for (unsigned cpu = 0; cpu < parts_.cpus(); ++cpu) {
    const detail::cpu_part* part = parts_.on(cpu);
    pool_cpu_stats one;
    one.cpu = cpu;
    // Racy reads of words the CPU's sequences change: relaxed atomic loads.
    one.misses = static_cast<std::uint64_t>(__atomic_load_n(&part->misses, __ATOMIC_RELAXED));
    one.overflows = static_cast<std::uint64_t>(__atomic_load_n(&part->overflows, __ATOMIC_RELAXED));
    one.cached = __atomic_load_n(&part->array.count, __ATOMIC_RELAXED);
    if (one.misses != 0 || one.overflows != 0 || one.cached != 0) s.cpus.push_back(one);
    s.objects_cached += one.cached;
  }
  {
    detail::no_wait_section quiet;  // a handler's get or put must not wait for these
    std::lock_guard g(c.depot_lock);
    s.depot_full = c.full_count;
    s.depot_empty = c.empty_count;
    for (const detail::magazine* m = c.full; m != nullptr; m = m->next)
      s.objects_cached += m->count;
  }
  {
    detail::no_wait_section quiet;
    std::lock_guard g(c.slab_lock);
    s.slabs = c.slab_count;
  }
  {
    detail::no_wait_section quiet;
    std::lock_guard g(c.magazine_lock);
    s.bytes_magazines = std::uint64_t{c.chunk_count} * detail::magazine_chunk_bytes;
  }
  s.depot_visits = c.depot_visits.load(std::memory_order_relaxed);
  s.depot_contended = c.depot_contended.load(std::memory_order_relaxed);
  s.constructions = c.constructions.load(std::memory_order_relaxed);
  s.destructions = c.destructions.load(std::memory_order_relaxed);
  s.constructor_failures = c.constructor_failures.load(std::memory_order_relaxed);
  std::uint64_t live = s.constructions - s.destructions;
  s.objects_in_use = live > s.objects_cached ? live - s.objects_cached : 0;
  s.bytes_in_use = s.objects_in_use * size_;
  s.bytes_cached = s.objects_cached * size_;
  s.bytes_reserved = s.slabs * c.slab_bytes;
  s.invalidations = c.invalidations.load(std::memory_order_relaxed);
  s.trims = c.trims.load(std::memory_order_relaxed);
  s.magazine_resizes = c.resizes.load(std::memory_order_relaxed);
  return s;
}

std::vector<pool_stats> all_pool_stats() {
  detail::pool_registry& r = detail::process_wide<detail::pool_registry>();
  detail::no_wait_section quiet;
  std::lock_guard g(r.lock);
  std::vector<pool_stats> out;
  out.reserve(r.caches.size());
  for (const raw_pool_cache* c : r.caches) out.push_back(c->stats());
  return out;
}

}  // namespace percpu
