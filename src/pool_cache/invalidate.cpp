// invalidate.cpp - pool_cache's generation protocol, in one place.
//
// Every object carries the generation it was constructed in
// (pool_header::generation); the cache's generation is raw_pool_cache's
// generation_.  invalidate() increments it first (seq_cst), then stops every
// CPU's array with one broadcast fence, drains the arrays and the depot, and
// destructs what it found.  Each other place where an object moves checks
// the generation against that increment:
//  - put()'s push commits only while the object's stamp equals the
//    generation (the guard of the shared push sequence, inline in
//    pool_cache.hpp), put_slow() destructs an object of an older one;
//  - construct_new() builds again an object whose construction overlapped
//    an invalidate();
//  - give() keeps in the depot only objects of the generation current under
//    the depot lock;
//  - get_slow() loads a depot magazine into a CPU's array only through the
//    same guarded push.
// So once invalidate() returns, no get() anywhere hands out an object
// constructed before it began.  docs/pool-cache.md gives the argument;
// verify/pool_invalidate.pml models it.
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "percpu/runtime/error.hpp"
#include "pool_core.hpp"

namespace percpu::detail {

// ---- construction and the slow paths ------------------------------------------

// A newly constructed object stamped with the generation current when its
// construction ended, or nullptr.
void* pool_core::construct_new() noexcept {
  void* object = locked(slab_lock, [&] { return take_slot(); });
  if (object == nullptr) return nullptr;
  pool_header* h = header(object);
  h->owner = id;
  for (;;) {
    // Stamp, construct, and check that no invalidate() began meanwhile
    // (seq_cst loads, paired with invalidate's seq_cst increment): an
    // object whose construction overlapped an invalidate is built again,
    // so every object handed out was constructed entirely within the
    // generation on its stamp.
    std::uint64_t g = generation();
    h->generation = g;
    if (cache.options_.construct != nullptr) {
      in_callback scope(&cache);
      if (!cache.options_.construct(object, cache.options_.arg)) {
        constructor_failures.fetch_add(1, std::memory_order_relaxed);
        locked(slab_lock, [&] { release_slot(object); });
        return nullptr;
      }
    }
    constructions.fetch_add(1, std::memory_order_relaxed);
    if (generation() == g) break;
    if (cache.options_.destroy != nullptr) {
      in_callback scope(&cache);
      cache.options_.destroy(object, cache.options_.arg);
    }
    destructions.fetch_add(1, std::memory_order_relaxed);
  }
  h->state = pool_object_state::in_use;
  return object;
}

// Gives `m` (count objects, maybe 0) to the depot.  Objects of an older
// generation - an invalidate() ran since they were collected - are
// destructed instead: the check is under the depot lock, which the
// invalidate takes after its increment, so either it empties the depot
// after this, or this sees its generation.
void pool_core::give(magazine* m) noexcept {
  void* stale[max_magazine + 1];
  std::size_t stale_count = 0;
  locked(depot_lock, [&] {
    std::uint64_t g = generation();
    std::uint32_t kept = 0;
    for (std::uint32_t i = 0; i < m->count; ++i) {
      void* object = m->items()[i];
      if (header(object)->generation == g) {
        header(object)->state = pool_object_state::cached;
        m->items()[kept++] = object;
      } else {
        stale[stale_count++] = object;
      }
    }
    m->count = kept;
    magazine** list = kept == 0 ? &empty : &full;
    m->next = *list;
    *list = m;
    ++(kept == 0 ? empty_count : full_count);
  });
  destroy(stale, stale_count);
  maybe_maintain();
}

void* pool_core::get_slow() noexcept {
  count(&cpu_part::misses);
  if (nested()) return take_deferred();
  // A first get on this slot arms its array (arm_array, depot.cpp), which
  // then takes the rest of the magazine below.
  arm_array();
  magazine* m = take_full();
  if (m == nullptr) {
    maybe_maintain();
    return construct_new();
  }
  // This get began before any invalidate() that has not yet drained the
  // depot returned, so it may hand out the magazine's top object whatever
  // its generation.
  void* object = m->items()[--m->count];
  // Load the rest into this CPU's array, but only while their generation
  // is current (the push's guard): objects of an older generation, or of
  // one an invalidate() ends meanwhile, must not reach a CPU array after
  // that invalidate's visit.  What does not fit, or was refused, goes back
  // through give(), which destructs stale objects.
  std::uint64_t g = m->count != 0 ? header(m->items()[0])->generation : 0;
  std::size_t moved = seq::push_batch(cache.arrays0(), stop0(), m->items(), m->count,
                                      seq::guard{&cache.generation_, g});
  std::memmove(m->items(), m->items() + moved, (m->count - moved) * sizeof(void*));
  m->count -= static_cast<std::uint32_t>(moved);
  give(m);
  header(object)->state = pool_object_state::in_use;
  return object;
}

void pool_core::put_slow(void* object) noexcept {
  if (nested()) {
    defer(object);  // checked again when the outermost section applies it
    return;
  }
  if (header(object)->generation != generation()) {
    destroy(&object, 1);  // constructed before an invalidate(): never cached again
    return;
  }
  // A first put on this slot found no room because the array had none yet.
  if (arm_array() && seq::push(cache.arrays0(), stop0(), object,
                               seq::guard{&cache.generation_, header(object)->generation})) {
    return;
  }
  count(&cpu_part::overflows);
  // The array is full: move a magazine's worth off its top into a
  // magazine, add this object, and give the magazine to the depot.
  unsigned size = cache.magazine_size();
  magazine* m = take_empty(size);
  if (m == nullptr) {
    destroy(&object, 1);  // no memory for a magazine: a put never fails
    return;
  }
  m->count = static_cast<std::uint32_t>(
      seq::pop_batch(cache.arrays0(), stop0(), m->items(), std::min(size, m->capacity - 1)));
  m->items()[m->count++] = object;
  give(m);
}

// ---- invalidate ---------------------------------------------------------------

// invalidate() and invalidate_local() refuse where they would wait for
// themselves.
void pool_core::check_may_drain(const char* what) const {
  if (pool_thread.in_callback == &cache) {
    throw error(errc::would_deadlock,
                std::string("percpu::pool_cache::") + what + " of \"" + cache.name() +
                    "\" called from a constructor or destructor of the same cache");
  }
  if (nested()) {
    throw error(errc::would_deadlock,
                std::string("percpu::pool_cache::") + what + " of \"" + cache.name() +
                    "\" called from a signal handler that interrupted the cache's own work");
  }
}

// Takes every full magazine out of the depot.
magazine* pool_core::detach_full() noexcept {
  return locked(depot_lock, [&] {
    magazine* list = full;
    full = nullptr;
    full_count = 0;
    full_low_water = 0;
    return list;
  });
}

void pool_core::drain_cpu(unsigned cpu, std::vector<void*>& out) {
  cpu_array& a = part_on(cpu)->array;
  out.insert(out.end(), a.items, a.items + a.count);
  a.count = 0;
}

void pool_core::invalidate() {
  check_may_drain("invalidate");
  std::lock_guard serial(maintenance);
  // The increment comes first: it pairs with the seq_cst load of the
  // generation in put's guarded push (inside the sequence, after its stop
  // test; under the slot lock in the portable backend), with the loads in
  // take_full/give under the depot lock, and with construct_new's check.
  // After it, no push of an older object can commit once the fence below
  // has passed, and nothing older enters the depot after detach_full.
  std::atomic_ref<std::uint64_t>(cache.generation_).fetch_add(1, std::memory_order_seq_cst);
  std::vector<void*> victims;
  victims.reserve(std::size_t{cache.parts_.cpus()} * 2 * cache.magazine_size());
  {
    // Signals blocked: a handler's get or put on this thread would wait
    // for the stop words this thread holds.
    signals_blocked quiet;
    cache.parts_.stops().visit_all([&](unsigned cpu) { drain_cpu(cpu, victims); });
  }
  retire(detach_full());
  destroy(victims.data(), victims.size());
  invalidations.fetch_add(1, std::memory_order_relaxed);
}

void pool_core::invalidate_local() {
  check_may_drain("invalidate_local");
  std::lock_guard serial(maintenance);
  std::vector<void*> victims;
  unsigned cpu = seq::current_cpu();
  {
    signals_blocked quiet;
    cache.parts_.stops().visit(cpu, [&] { drain_cpu(cpu, victims); });
  }
  retire(detach_full());
  destroy(victims.data(), victims.size());
}

}  // namespace percpu::detail
