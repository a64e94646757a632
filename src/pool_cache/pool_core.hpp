// pool_core.hpp - inside raw_pool_cache: what the files of src/pool_cache/ share.
//
// The fast paths (get: pop, put: guarded push) are inline in
// percpu/pool_cache.hpp.  Everything here runs once per magazine's worth of
// operations or less.  pool_core is the implementation class behind
// raw_pool_cache (its core_); its member functions live in the files beside
// this one:
//   slab.cpp           slabs, magazine memory, destruction of objects;
//   depot.cpp          the depot's lists, working-set trim, magazine size,
//                      reclaim();
//   invalidate.cpp     the generation protocol: construction, the slow paths,
//                      give(), invalidate() and invalidate_local();
//   deferred_puts.cpp  puts and gets of signal handlers that interrupt the
//                      cache's own locked work;
//   debug_stats.cpp    misuse reports, the registry of live caches, the debug
//                      checks of get and put, statistics;
//   pool_cache.cpp     raw_pool_cache itself: construction, destruction, the
//                      entry points of the slow paths.
//
// Locks, in the order they nest: maintenance (invalidate, reclaim) >
// depot > slab.  No constructor or destructor ever runs under the depot or
// slab lock, so user code may use the cache (another object, a nested get)
// from inside them; only invalidate() and invalidate_local() are refused
// there, since they would wait for themselves.
//
// Signals: get and put are async-signal-safe.  A handler that interrupts
// its own thread inside a locked section must not take that lock again, nor
// - since another thread's handler may wait for a lock this thread holds -
// any other cache's.  Every locked section is a no-wait section of the
// runtime (runtime/deferral.hpp): a slow path that finds its thread inside
// one, of this cache or any other, takes no lock.  Its put is deferred to the
// end of the outermost section, where the interrupted thread applies it; its
// get takes a deferred object of this cache or fails.  Visits (which hold
// stop words that a handler's fast path would wait on forever) run with
// signals blocked.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "core/process_wide.hpp"
#include "percpu/core/detail/scope_exit.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/pool_cache.hpp"
#include "runtime/runtime_internal.hpp"

namespace percpu::detail {

constexpr unsigned min_magazine = 4;
constexpr unsigned default_magazine = 32;
constexpr std::size_t min_slab_bytes = std::size_t{64} * 1024;
constexpr std::size_t max_object_size = std::size_t{1} << 30;
constexpr std::uint64_t maintenance_period_ns = 1'000'000'000;
constexpr std::size_t magazine_chunk_bytes = std::size_t{64} * 1024;

// A magazine: this header, then `capacity` object pointers.  Its capacity
// is the magazine size when it was made, rounded up to a power of two, plus
// one: an overflowing put adds its own object to the magazine's worth it
// moves off the CPU's array.  Magazines once all had room for the largest
// size (1 kB each): a cache of 10^5 64-byte objects at the default size 32
// held them in 3.3 MB of magazines beside 6.4 MB of objects (`percpu
// memory`); sized to their class, in whole cache lines (slab.cpp), 1 MB.
struct magazine {
  magazine* next;
  std::uint32_t count;
  std::uint32_t capacity;
  void** items() noexcept { return reinterpret_cast<void**>(this + 1); }
};
static_assert(sizeof(magazine) % alignof(void*) == 0, "items follow the header, aligned");

// The size classes of magazine memory: capacities 4+1 .. max_magazine+1.
constexpr unsigned magazine_classes = std::bit_width(max_magazine / min_magazine);
static_assert((max_magazine & (max_magazine - 1)) == 0 &&
              (min_magazine << (magazine_classes - 1)) == max_magazine);
constexpr unsigned magazine_class(unsigned size) noexcept {
  unsigned rounded = std::bit_ceil(size < min_magazine ? min_magazine : size);
  return static_cast<unsigned>(std::countr_zero(rounded / min_magazine));
}
constexpr std::uint32_t class_capacity(unsigned c) noexcept {
  return (min_magazine << c) + 1;
}

// An aligned block of slab_bytes carved into slots; the header sits at the
// start.  A slot holds a pool_header and the object after it.
struct slab {
  slab* prev;
  slab* next;
  int list;              // which of pool_core::slabs it is on
  std::uint32_t in_use;  // slots handed to the cache (constructed or being so)
  std::uint32_t carved;  // slots ever carved (the rest were never touched)
  void* free_objects;    // released slots, linked through their object memory
};

enum slab_list : int { partially_used = 0, fully_used = 1, unused = 2 };

constexpr std::size_t round_up(std::size_t n, std::size_t to) noexcept {
  return (n + to - 1) / to * to;
}

// Reports a misuse of `cache` on stderr and aborts (debug_stats.cpp).
[[noreturn]] void misuse(const char* what, const raw_pool_cache* cache, const void* object);

// Every live cache, for all_pool_stats() and the debug checks: process-wide
// (process_wide<pool_registry>(): caches may outlive static destructors),
// its lock held across fork() so that the child can create and destroy
// caches.  The lock is taken before a cache's own locks, never under them.
struct pool_registry : held_across_fork {
  std::vector<raw_pool_cache*> caches;
  std::uint32_t next_id = 1;
};

// What a thread is doing inside a cache's code that the cache must know.
struct pool_thread_state {
  const raw_pool_cache* in_callback = nullptr;  // the cache whose ctor/dtor runs here
};
// The calling thread's record (deferred_puts.cpp).  Constant-initialised,
// so that a signal handler's first use of it initialises nothing.
extern thread_local constinit pool_thread_state pool_thread __attribute__((visibility("hidden")));

// The implementation class behind raw_pool_cache: the depot, the slabs, the
// statistics, and the slow paths as member functions.
struct pool_core {
  explicit pool_core(raw_pool_cache& c) noexcept : cache(c) {}
  pool_core(const pool_core&) = delete;
  pool_core& operator=(const pool_core&) = delete;

  // The core of `c` (the debug checks walk every live cache).
  static pool_core& of(raw_pool_cache& c) noexcept { return *c.core_; }

  raw_pool_cache& cache;

  // Geometry.
  std::size_t object_offset = 0;  // from slot start to object
  std::size_t slot_size = 0;
  std::size_t slots_offset = 0;  // from slab start to the first slot
  std::size_t slab_bytes = 0;
  std::uint32_t slots_per_slab = 0;
  std::uint32_t id = 0;

  // Depot.
  std::mutex depot_lock;
  magazine* full = nullptr;
  magazine* empty = nullptr;
  std::uint64_t full_count = 0;
  std::uint64_t empty_count = 0;
  std::uint64_t full_low_water = 0;  // fewest full magazines since the last trim
  std::atomic<std::uint64_t> depot_visits{0};
  std::atomic<std::uint64_t> depot_contended{0};
  std::uint64_t visits_at_maintenance = 0;
  std::uint64_t contended_at_maintenance = 0;
  unsigned quiet_periods = 0;
  std::atomic<std::uint64_t> next_maintenance_ns{0};

  // Slabs, and magazines of destructed objects whose slots are not yet
  // back in their slabs (an invalidate() or trim retires whole magazines
  // at once; construct_new reuses their slots first, reclaim() returns them).
  std::mutex slab_lock;
  slab* slabs[3] = {nullptr, nullptr, nullptr};
  std::uint64_t slab_count = 0;
  std::uintptr_t next_slab_at = 0;  // where a new slab would extend the last (new_slab)
  magazine* unconstructed = nullptr;

  // Magazine memory: carved from mapped chunks, never from malloc, so that
  // the slow paths stay async-signal-safe.  A leaf lock.
  std::mutex magazine_lock;
  magazine* free_magazines[magazine_classes] = {};  // one list per size class
  void* chunks = nullptr;  // each chunk starts with the next chunk's address
  std::size_t chunk_used = 0;
  std::size_t chunk_count = 0;

  std::mutex maintenance;

  std::atomic<std::uint64_t> constructions{0};
  std::atomic<std::uint64_t> destructions{0};
  std::atomic<std::uint64_t> constructor_failures{0};
  std::atomic<std::uint64_t> invalidations{0};
  std::atomic<std::uint64_t> trims{0};
  std::atomic<std::uint64_t> resizes{0};

  // ---- small helpers ------------------------------------------------------

  std::uint64_t generation() const noexcept {
    return std::atomic_ref<std::uint64_t>(cache.generation_).load(std::memory_order_seq_cst);
  }

  cpu_part* part_on(unsigned cpu) const noexcept { return cache.parts_.on(cpu); }

  std::uint32_t* stop0() const noexcept { return cache.parts_.stop_words(); }

  void count(std::int64_t cpu_part::*field) const noexcept {
    seq::add(&(cache.parts_.data0()->*field), stop0(), 1);
  }

  pool_header* header(void* object) const noexcept { return pool_object_header(object); }

  slab* slab_of(void* object) const noexcept {
    return reinterpret_cast<slab*>(reinterpret_cast<std::uintptr_t>(object) & ~(slab_bytes - 1));
  }

  // Whether this thread may hold a lock a slow path would take: inside a
  // locked section of any cache (a signal handler's slow path), or of a
  // portable-backend operation.
  static bool nested() noexcept { return in_no_wait(); }

  // Marks the calling thread as running a constructor or destructor of the
  // cache for the scope (check_may_drain refuses an invalidate from there).
  struct in_callback {
    const raw_pool_cache* outer;
    explicit in_callback(const raw_pool_cache* c) : outer(pool_thread.in_callback) {
      pool_thread.in_callback = c;
    }
    ~in_callback() { pool_thread.in_callback = outer; }
    in_callback(const in_callback&) = delete;
    in_callback& operator=(const in_callback&) = delete;
  };

  // Runs f() under `lock`, inside a no-wait section: a signal handler on
  // this thread then takes no cache lock and waits for no slot (its puts are
  // deferred to the end of the outermost section, which applies them).
  template <class F>
  decltype(auto) locked(std::mutex& lock, F&& f) {
    no_wait_enter();
    if (&lock == &depot_lock) {
      depot_visits.fetch_add(1, std::memory_order_relaxed);
      if (!lock.try_lock()) {
        depot_contended.fetch_add(1, std::memory_order_relaxed);
        lock.lock();
      }
    } else {
      lock.lock();
    }
    scope_exit release([&lock] {
      lock.unlock();
      no_wait_leave();
    });
    return std::forward<F>(f)();
  }

  // ---- slab.cpp: slabs (slab_lock held), magazine memory, destruction ------

  // A magazine with room for `size` objects and one more; nullptr when no
  // memory could be mapped.
  magazine* alloc_magazine(unsigned size) noexcept;
  void free_magazine(magazine* m) noexcept;
  void release_magazine_memory() noexcept;
  void unlink(slab* s) noexcept;
  void link(slab* s, int list) noexcept;
  void move(slab* s, int list) noexcept;
  slab* new_slab() noexcept;
  void* take_slot() noexcept;
  enum class lookup : std::uint8_t { absent, present, busy };
  lookup holds(void* object, bool& at_object_start) noexcept;
  void release_slot(void* object) noexcept;
  std::size_t release_unused_slabs() noexcept;
  void call_destructors(void* const* objects, std::size_t n) const noexcept;
  void run_destructors(void* const* objects, std::size_t n) noexcept;
  void destroy(void* const* objects, std::size_t n) noexcept;
  void retire(magazine* list) noexcept;

  // ---- depot.cpp: the depot, trim and magazine size, reclaim ---------------

  magazine* take_full() noexcept;
  magazine* take_empty(unsigned size) noexcept;
  void maybe_maintain() noexcept;
  void trim_and_adapt() noexcept;
  void set_magazine_size(unsigned size) noexcept;
  bool arm_array() noexcept;
  std::size_t reclaim();

  // ---- invalidate.cpp: the generation protocol ------------------------------

  void* construct_new() noexcept;
  void give(magazine* m) noexcept;
  void* get_slow() noexcept;
  void put_slow(void* object) noexcept;
  void check_may_drain(const char* what) const;
  magazine* detach_full() noexcept;
  void drain_cpu(unsigned cpu, std::vector<void*>& out);
  void invalidate();
  void invalidate_local();

  // ---- deferred_puts.cpp: signal handlers inside a locked section ----------

  void defer(void* object) noexcept;
  void* take_deferred() noexcept;
};

}  // namespace percpu::detail
