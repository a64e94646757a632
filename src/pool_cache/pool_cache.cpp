// pool_cache.cpp - the depot, the slab layer and invalidation of pool_cache.
//
// The fast paths (get: pop, put: guarded push) are inline in pool_cache.hpp.
// Everything here runs once per magazine's worth of operations or less.
//
// Locks, in the order they nest: maintenance (invalidate, reclaim) >
// depot > slab.  No constructor or destructor ever runs under the depot or
// slab lock, so user code may use the cache (another object, a nested get)
// from inside them; only invalidate() and invalidate_local() are refused
// there, since they would wait for themselves.
//
// Signals: get and put are async-signal-safe.  A handler that interrupts
// its own thread inside this file's locked sections must not take the same
// lock again.  Each thread records which cache's locks it holds
// (`held_by_this_thread`); a nested slow path of that cache defers its puts
// into a small per-thread list, which the outer path drains as it releases
// the lock, and a nested get takes a deferred object or fails.  Visits
// (which hold stop words that a handler's fast path would wait on forever)
// run with signals blocked.
#include <pthread.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "percpu/core/storage.hpp"
#include "percpu/pool_cache.hpp"
#include "runtime/runtime_internal.hpp"

namespace percpu::detail {

namespace {

constexpr unsigned min_magazine = 4;
constexpr unsigned max_magazine = 128;
constexpr unsigned default_magazine = 32;
constexpr std::size_t min_slab_bytes = std::size_t{64} * 1024;
constexpr std::size_t max_object_size = std::size_t{1} << 30;
constexpr std::uint64_t maintenance_period_ns = 1'000'000'000;
constexpr std::size_t magazine_chunk_bytes = std::size_t{64} * 1024;

// A CPU's part of a cache: its array of cached objects (two magazines'
// worth at most) and its slow-path counts.  arrays0_ points at CPU 0's copy.
struct cpu_part {
  cpu_array array;
  std::int64_t misses;
  std::int64_t overflows;
  void* items[2 * max_magazine];
};
static_assert(offsetof(cpu_part, array) == 0);

// Room for one more than a magazine: an overflowing put adds its own object
// to the magazine's worth it moves off the CPU's array.
struct magazine {
  magazine* next;
  std::uint32_t count;
  void* items[max_magazine + 1];
};

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

std::uint64_t now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

constexpr std::size_t round_up(std::size_t n, std::size_t to) noexcept {
  return (n + to - 1) / to * to;
}

[[noreturn]] void misuse(const char* what, const raw_pool_cache* cache, const void* object) {
  std::fprintf(stderr, "percpu::pool_cache \"%s\": %s (object %p)\n",
               cache != nullptr ? cache->name().c_str() : "?", what, object);
  std::abort();
}

// Every live cache, for all_pool_stats() and the debug checks.  Its lock
// is taken before a cache's own locks, never under them.
struct registry {
  std::mutex lock;
  std::vector<raw_pool_cache*> caches;
  std::uint32_t next_id = 1;
};
registry& the_registry() {
  // Never destroyed: caches may outlive static destructors.  Held across
  // fork() so that the child can create and destroy caches.
  static registry* r = [] {
    auto* made = new registry;
    pthread_atfork([] { the_registry().lock.lock(); }, [] { the_registry().lock.unlock(); },
                   [] { the_registry().lock.unlock(); });
    return made;
  }();
  return *r;
}

// `cache "NAME"` for the live cache with `id`, for a misuse message; it
// does not wait for the registry (the caller is about to abort).
// The puts a signal handler made while its thread held this cache's locks.
struct deferred_puts {
  static constexpr unsigned capacity = 64;
  const pool_core* held = nullptr;              // the cache whose depot/slab lock this thread holds
  const raw_pool_cache* in_callback = nullptr;  // the cache whose ctor/dtor runs here
  unsigned count = 0;
  void* objects[capacity];
};
thread_local deferred_puts this_thread;

// Blocks every signal for the scope (visits, see the file comment).
class signals_blocked {
 public:
  signals_blocked() noexcept {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &saved_);
  }
  ~signals_blocked() { pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }
  signals_blocked(const signals_blocked&) = delete;
  signals_blocked& operator=(const signals_blocked&) = delete;

 private:
  sigset_t saved_{};
};

}  // namespace

struct pool_core {
  // Geometry.
  std::size_t object_offset = 0;  // from slot start to object
  std::size_t slot_size = 0;
  std::size_t slots_offset = 0;  // from slab start to the first slot
  std::size_t slab_bytes = 0;
  std::uint32_t slots_per_slab = 0;
  std::uint32_t id = 0;
  cpu_part* parts0 = nullptr;

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
  magazine* unconstructed = nullptr;

  // Magazine memory: carved from mapped chunks, never from malloc, so that
  // the slow paths stay async-signal-safe.  A leaf lock.
  std::mutex magazine_lock;
  magazine* free_magazines = nullptr;
  void* chunks = nullptr;  // each chunk starts with the next chunk's address
  std::size_t chunk_used = 0;

  std::mutex maintenance;

  std::atomic<std::uint64_t> constructions{0};
  std::atomic<std::uint64_t> destructions{0};
  std::atomic<std::uint64_t> constructor_failures{0};
  std::atomic<std::uint64_t> invalidations{0};
  std::atomic<std::uint64_t> trims{0};
  std::atomic<std::uint64_t> resizes{0};
};

// The slow paths, with access to raw_pool_cache's members.
struct pool_internals {
  raw_pool_cache& cache;
  pool_core& core;

  explicit pool_internals(raw_pool_cache& c) : cache(c), core(*c.core_) {}

  std::uint64_t generation() const noexcept {
    return std::atomic_ref<std::uint64_t>(cache.generation_).load(std::memory_order_seq_cst);
  }
  cpu_part* part_on(unsigned cpu) const noexcept { return copy_on(core.parts0, cpu); }
  std::uint32_t* stop0() const noexcept { return cache.stops_.words(); }
  void count(std::int64_t cpu_part::*field) const noexcept {
    seq::add(&(core.parts0->*field), stop0(), 1);
  }
  pool_header* header(void* object) const noexcept { return pool_object_header(object); }

  // ---- locks that know about signal handlers ------------------------------

  // Runs f() under `lock`, recording that this thread holds a lock of this
  // cache, then applies the puts that handlers deferred meanwhile.
  template <class F>
  decltype(auto) locked(std::mutex& lock, F&& f) {
    const pool_core* outer = this_thread.held;
    this_thread.held = &core;
    // In the portable backend, a signal handler on this thread must not
    // wait for a slot lock while this thread holds a cache lock: the slot's
    // holder may be a handler waiting for this very lock.  Counting as
    // inside a portable operation makes the handler's operations take one
    // attempt instead (a failed pop or push then comes here, nested).
    portable_enter();
    std::atomic_signal_fence(std::memory_order_seq_cst);
    struct release {
      std::mutex& lock;
      pool_internals& self;
      const pool_core* outer;
      ~release() {
        lock.unlock();
        std::atomic_signal_fence(std::memory_order_seq_cst);
        portable_leave();
        this_thread.held = outer;
        std::atomic_signal_fence(std::memory_order_seq_cst);
        if (outer != &self.core) self.apply_deferred_puts();
      }
    };
    if (&lock == &core.depot_lock) {
      core.depot_visits.fetch_add(1, std::memory_order_relaxed);
      if (!lock.try_lock()) {
        core.depot_contended.fetch_add(1, std::memory_order_relaxed);
        lock.lock();
      }
    } else {
      lock.lock();
    }
    release guard{lock, *this, outer};
    return std::forward<F>(f)();
  }

  bool nested_in_own_lock() const noexcept { return this_thread.held == &core; }

  void apply_deferred_puts() noexcept {
    for (;;) {
      void* object = nullptr;
      std::atomic_signal_fence(std::memory_order_seq_cst);
      for (unsigned i = this_thread.count; i-- > 0;) {
        if (pool_object_header(this_thread.objects[i])->owner == core.id) {
          object = this_thread.objects[i];
          this_thread.objects[i] = this_thread.objects[--this_thread.count];
          break;
        }
      }
      std::atomic_signal_fence(std::memory_order_seq_cst);
      if (object == nullptr) return;
      cache.put_slow(object);
    }
  }

  // ---- constructor and destructor -----------------------------------------

  struct in_callback {
    const raw_pool_cache* outer;
    explicit in_callback(const raw_pool_cache* c) : outer(this_thread.in_callback) {
      this_thread.in_callback = c;
    }
    ~in_callback() { this_thread.in_callback = outer; }
    in_callback(const in_callback&) = delete;
    in_callback& operator=(const in_callback&) = delete;
  };

  // Runs the destructor of n objects (all at once when the cache has a
  // batch destructor); the caller counts them and marks the callback scope.
  void call_destructors(void* const* objects, std::size_t n) const noexcept {
    const pool_options& o = cache.options_;
    if (o.destroy_batch != nullptr) {
      o.destroy_batch(objects, n, o.arg);
    } else if (o.destroy != nullptr) {
      for (std::size_t i = 0; i < n; ++i) o.destroy(objects[i], o.arg);
    }
  }

  void run_destructors(void* const* objects, std::size_t n) noexcept {
    if (n == 0) return;
    {
      in_callback scope(&cache);
      call_destructors(objects, n);
    }
    core.destructions.fetch_add(n, std::memory_order_relaxed);
  }

  // Destructs `objects` and gives their slots back to the slabs.
  void destroy(void* const* objects, std::size_t n) noexcept {
    if (n == 0) return;
    run_destructors(objects, n);
    locked(core.slab_lock, [&] {
      for (std::size_t i = 0; i < n; ++i) release_slot(objects[i]);
    });
  }

  // Destructs the objects of a list of magazines and keeps the magazines,
  // slots and all, for construct_new: no per-object work beyond the
  // destructor, which is what lets invalidate() stay near its floor.
  void retire(magazine* list) noexcept {
    if (list == nullptr) return;
    magazine* last = list;
    std::uint64_t destructed = 0;
    {
      // One callback scope and one count for the whole list: the magazines
      // were last written on other CPUs, and per-magazine bookkeeping adds
      // up over hundreds of them.
      in_callback scope(&cache);
      for (magazine* m = list; m != nullptr; m = m->next) {
        call_destructors(m->items, m->count);
        destructed += m->count;
        last = m;
      }
    }
    core.destructions.fetch_add(destructed, std::memory_order_relaxed);
    locked(core.slab_lock, [&] {
      last->next = core.unconstructed;
      core.unconstructed = list;
    });
  }

  // ---- magazine memory --------------------------------------------------------

  magazine* alloc_magazine() noexcept {
    return locked(core.magazine_lock, [&]() -> magazine* {
      if (magazine* m = core.free_magazines) {
        core.free_magazines = m->next;
        return m;
      }
      constexpr std::size_t step = round_up(sizeof(magazine), alignof(magazine));
      if (core.chunks == nullptr || core.chunk_used + step > magazine_chunk_bytes) {
        void* chunk = mmap(nullptr, magazine_chunk_bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (chunk == MAP_FAILED) return nullptr;
        std::memcpy(chunk, &core.chunks, sizeof(void*));
        core.chunks = chunk;
        core.chunk_used = alignof(magazine) > sizeof(void*) ? alignof(magazine) : sizeof(void*);
      }
      auto* m = reinterpret_cast<magazine*>(static_cast<char*>(core.chunks) + core.chunk_used);
      core.chunk_used += step;
      return m;
    });
  }

  void free_magazine(magazine* m) noexcept {
    locked(core.magazine_lock, [&] {
      m->next = core.free_magazines;
      core.free_magazines = m;
    });
  }

  // Unmaps every magazine chunk (the cache's destructor).
  void release_magazine_memory() noexcept {
    while (void* chunk = core.chunks) {
      std::memcpy(&core.chunks, chunk, sizeof(void*));
      munmap(chunk, magazine_chunk_bytes);
    }
  }

  // A newly constructed object stamped with the generation current when its
  // construction ended, or nullptr.
  void* construct_new() noexcept {
    void* object = locked(core.slab_lock, [&] { return take_slot(); });
    if (object == nullptr) return nullptr;
    pool_header* h = header(object);
    h->owner = core.id;
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
          core.constructor_failures.fetch_add(1, std::memory_order_relaxed);
          locked(core.slab_lock, [&] { release_slot(object); });
          return nullptr;
        }
      }
      core.constructions.fetch_add(1, std::memory_order_relaxed);
      if (generation() == g) break;
      if (cache.options_.destroy != nullptr) {
        in_callback scope(&cache);
        cache.options_.destroy(object, cache.options_.arg);
      }
      core.destructions.fetch_add(1, std::memory_order_relaxed);
    }
    h->state = pool_object_state::in_use;
    return object;
  }

  // ---- slabs (slab_lock held) ---------------------------------------------

  void unlink(slab* s) noexcept {
    (s->prev != nullptr ? s->prev->next : core.slabs[s->list]) = s->next;
    if (s->next != nullptr) s->next->prev = s->prev;
  }
  void link(slab* s, int list) noexcept {
    s->list = list;
    s->prev = nullptr;
    s->next = core.slabs[list];
    if (s->next != nullptr) s->next->prev = s;
    core.slabs[list] = s;
  }
  void move(slab* s, int list) noexcept {
    if (s->list == list) return;
    unlink(s);
    link(s, list);
  }

  slab* new_slab() noexcept {
    // Map twice the size and trim, so the slab is aligned to its size and
    // any object finds its slab by masking its address.
    std::size_t bytes = core.slab_bytes;
    void* m = mmap(nullptr, 2 * bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    auto start = reinterpret_cast<std::uintptr_t>(m);
    std::uintptr_t base = (start + bytes - 1) & ~(bytes - 1);
    if (base > start) munmap(m, base - start);
    std::uintptr_t end = start + 2 * bytes;
    if (end > base + bytes) munmap(reinterpret_cast<void*>(base + bytes), end - base - bytes);
    auto* s = reinterpret_cast<slab*>(base);
    *s = slab{};
    link(s, partially_used);
    ++core.slab_count;
    return s;
  }

  void* take_slot() noexcept {
    if (magazine* m = core.unconstructed) {
      void* object = m->items[--m->count];
      if (m->count == 0) {
        core.unconstructed = m->next;
        free_magazine(m);
      }
      return object;
    }
    slab* s = core.slabs[partially_used];
    if (s == nullptr) {
      s = core.slabs[unused];
      if (s != nullptr) move(s, partially_used);
    }
    if (s == nullptr) s = new_slab();
    if (s == nullptr) return nullptr;
    void* object;
    if (s->free_objects != nullptr) {
      object = s->free_objects;
      std::memcpy(&s->free_objects, object, sizeof(void*));
    } else {
      object = reinterpret_cast<char*>(s) + core.slots_offset + s->carved * core.slot_size +
               core.object_offset;
      ++s->carved;
    }
    if (++s->in_use == core.slots_per_slab) move(s, fully_used);
    return object;
  }

  slab* slab_of(void* object) const noexcept {
    return reinterpret_cast<slab*>(reinterpret_cast<std::uintptr_t>(object) &
                                   ~(core.slab_bytes - 1));
  }

  // Whether `object` lies in one of this cache's slabs; `at_object_start`:
  // exactly where an object begins.  Debug checks only.
  bool holds(void* object, bool& at_object_start) noexcept {
    auto address = reinterpret_cast<std::uintptr_t>(object);
    std::lock_guard g(core.slab_lock);
    for (slab* list : core.slabs) {
      for (slab* s = list; s != nullptr; s = s->next) {
        auto base = reinterpret_cast<std::uintptr_t>(s);
        if (address < base + core.slots_offset || address >= base + core.slab_bytes) continue;
        std::uintptr_t offset = address - base - core.slots_offset;
        at_object_start = offset % core.slot_size == core.object_offset;
        return true;
      }
    }
    return false;
  }

  void release_slot(void* object) noexcept {
    header(object)->state = pool_object_state::free;
    slab* s = slab_of(object);
    std::memcpy(object, &s->free_objects, sizeof(void*));
    s->free_objects = object;
    --s->in_use;
    move(s, s->in_use == 0 ? unused : partially_used);
  }

  // Unmaps every unused slab; returns the bytes given back.
  std::size_t release_unused_slabs() noexcept {
    std::vector<slab*> victims;
    magazine* emptied = nullptr;
    locked(core.slab_lock, [&] {
      emptied = core.unconstructed;
      core.unconstructed = nullptr;
      for (magazine* m = emptied; m != nullptr; m = m->next) {
        for (std::uint32_t i = 0; i < m->count; ++i) release_slot(m->items[i]);
      }
      while (slab* s = core.slabs[unused]) {
        unlink(s);
        --core.slab_count;
        victims.push_back(s);
      }
    });
    while (magazine* m = emptied) {
      emptied = m->next;
      free_magazine(m);
    }
    for (slab* s : victims) munmap(s, core.slab_bytes);
    return victims.size() * core.slab_bytes;
  }

  // ---- depot ----------------------------------------------------------------

  // A full magazine, or nullptr.  Its objects all belong to one generation
  // (give() keeps only objects of the generation current under the lock),
  // but it may be an older one: between its increment and its drain of the
  // depot, an invalidate() leaves older magazines there.
  magazine* take_full() noexcept {
    return locked(core.depot_lock, [&]() -> magazine* {
      magazine* m = core.full;
      if (m != nullptr) {
        core.full = m->next;
        --core.full_count;
        core.full_low_water = std::min(core.full_low_water, core.full_count);
      }
      return m;
    });
  }

  magazine* take_empty() noexcept {
    magazine* m = locked(core.depot_lock, [&]() -> magazine* {
      magazine* e = core.empty;
      if (e != nullptr) {
        core.empty = e->next;
        --core.empty_count;
      }
      return e;
    });
    if (m == nullptr) m = alloc_magazine();
    if (m != nullptr) m->count = 0;
    return m;
  }

  // Gives `m` (count objects, maybe 0) to the depot.  Objects of an older
  // generation - an invalidate() ran since they were collected - are
  // destructed instead: the check is under the depot lock, which the
  // invalidate takes after its increment, so either it empties the depot
  // after this, or this sees its generation.
  void give(magazine* m) noexcept {
    void* stale[max_magazine + 1];
    std::size_t stale_count = 0;
    locked(core.depot_lock, [&] {
      std::uint64_t g = generation();
      std::uint32_t kept = 0;
      for (std::uint32_t i = 0; i < m->count; ++i) {
        void* object = m->items[i];
        if (header(object)->generation == g) {
          header(object)->state = pool_object_state::cached;
          m->items[kept++] = object;
        } else {
          stale[stale_count++] = object;
        }
      }
      m->count = kept;
      magazine** list = kept == 0 ? &core.empty : &core.full;
      m->next = *list;
      *list = m;
      ++(kept == 0 ? core.empty_count : core.full_count);
    });
    destroy(stale, stale_count);
    maybe_maintain();
  }

  // ---- the slow paths ---------------------------------------------------------

  void* get_slow() noexcept {
    count(&cpu_part::misses);
    if (nested_in_own_lock()) return take_deferred();
    magazine* m = take_full();
    if (m == nullptr) {
      maybe_maintain();
      return construct_new();
    }
    // This get began before any invalidate() that has not yet drained the
    // depot returned, so it may hand out the magazine's top object whatever
    // its generation.
    void* object = m->items[--m->count];
    // Load the rest into this CPU's array, but only while their generation
    // is current (the push's guard): objects of an older generation, or of
    // one an invalidate() ends meanwhile, must not reach a CPU array after
    // that invalidate's visit.  What does not fit, or was refused, goes back
    // through give(), which destructs stale objects.
    std::uint64_t g = m->count != 0 ? header(m->items[0])->generation : 0;
    std::size_t moved = seq::push_batch(&core.parts0->array, stop0(), m->items, m->count,
                                        seq::guard{&cache.generation_, g});
    std::memmove(m->items, m->items + moved, (m->count - moved) * sizeof(void*));
    m->count -= static_cast<std::uint32_t>(moved);
    give(m);
    header(object)->state = pool_object_state::in_use;
    return object;
  }

  void put_slow(void* object) noexcept {
    if (nested_in_own_lock()) {
      defer(object);  // checked again when the outer slow path applies it
      return;
    }
    if (header(object)->generation != generation()) {
      destroy(&object, 1);  // constructed before an invalidate(): never cached again
      return;
    }
    count(&cpu_part::overflows);
    // The array is full: move a magazine's worth off its top into a
    // magazine, add this object, and give the magazine to the depot.
    magazine* m = take_empty();
    if (m == nullptr) {
      destroy(&object, 1);  // no memory for a magazine: a put never fails
      return;
    }
    m->count = static_cast<std::uint32_t>(
        seq::pop_batch(&core.parts0->array, stop0(), m->items, cache.magazine_size()));
    m->items[m->count++] = object;
    give(m);
  }

  void defer(void* object) noexcept {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (this_thread.count == deferred_puts::capacity) {
      misuse("more than 64 puts from signal handlers nested in one slow path", &cache, object);
    }
    this_thread.objects[this_thread.count] = object;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    ++this_thread.count;
  }

  void* take_deferred() noexcept {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    for (unsigned i = this_thread.count; i-- > 0;) {
      void* object = this_thread.objects[i];
      if (header(object)->owner == core.id && header(object)->generation == generation()) {
        this_thread.objects[i] = this_thread.objects[--this_thread.count];
        std::atomic_signal_fence(std::memory_order_seq_cst);
        header(object)->state = pool_object_state::in_use;
        return object;
      }
    }
    return nullptr;  // documented: a nested get may fail
  }

  // ---- maintenance ------------------------------------------------------------

  // Once a period, from whichever depot visit comes first: trim the depot to
  // its working set and adapt the magazine size.
  void maybe_maintain() noexcept {
    std::uint64_t now = now_ns();
    std::uint64_t due = core.next_maintenance_ns.load(std::memory_order_relaxed);
    if (now < due) return;
    if (!core.next_maintenance_ns.compare_exchange_strong(due, now + maintenance_period_ns,
                                                          std::memory_order_relaxed)) {
      return;  // another thread does it
    }
    if (due == 0) return;  // the first visit only starts the clock
    trim_and_adapt();
  }

  void trim_and_adapt() noexcept {
    magazine* trimmed = nullptr;
    unsigned new_size = 0;
    locked(core.depot_lock, [&] {
      // Full magazines that stayed in the depot for the whole period were
      // not needed: destruct that many (Bonwick's working-set trim).
      for (std::uint64_t n = core.full_low_water; n > 0 && core.full != nullptr; --n) {
        magazine* m = core.full;
        core.full = m->next;
        --core.full_count;
        m->next = trimmed;
        trimmed = m;
      }
      core.full_low_water = core.full_count;
      // Contention makes magazines bigger (fewer depot visits per object);
      // three quiet periods in a row make them smaller again (less memory
      // held per CPU).
      std::uint64_t visits = core.depot_visits.load(std::memory_order_relaxed);
      std::uint64_t contended = core.depot_contended.load(std::memory_order_relaxed);
      std::uint64_t period_visits = visits - core.visits_at_maintenance;
      std::uint64_t period_contended = contended - core.contended_at_maintenance;
      core.visits_at_maintenance = visits;
      core.contended_at_maintenance = contended;
      unsigned size = cache.magazine_size();
      if (period_contended > 4 && period_contended * 32 > period_visits) {
        core.quiet_periods = 0;
        if (size < max_magazine) new_size = std::min(max_magazine, size * 2);
      } else if (period_contended == 0 && ++core.quiet_periods >= 3) {
        core.quiet_periods = 0;
        if (size > min_magazine) new_size = std::max(min_magazine, size / 2);
      }
    });
    if (trimmed != nullptr) core.trims.fetch_add(1, std::memory_order_relaxed);
    retire(trimmed);
    if (new_size != 0) set_magazine_size(new_size);
  }

  // Each CPU's array holds up to two magazines.  The capacity is changed
  // with a plain store, without stopping the CPU: every array has room for
  // two of the biggest magazines, and a count above a lowered capacity only
  // makes pushes fail until gets or the next overflow bring it down.
  void set_magazine_size(unsigned size) noexcept {
    cache.magazine_size_.store(size, std::memory_order_relaxed);
    for (unsigned cpu = 0; cpu < cache.stops_.size(); ++cpu) {
      std::atomic_ref<std::uint32_t>(part_on(cpu)->array.capacity)
          .store(2 * size, std::memory_order_relaxed);
    }
    core.resizes.fetch_add(1, std::memory_order_relaxed);
  }

  // invalidate() and invalidate_local() refuse where they would wait for
  // themselves.
  void check_may_drain(const char* what) const {
    if (this_thread.in_callback == &cache) {
      throw std::logic_error(std::string("percpu::pool_cache::") + what +
                             " called from a constructor or destructor of the same cache");
    }
    if (nested_in_own_lock() || portable_in_operation()) {
      throw std::logic_error(std::string("percpu::pool_cache::") + what +
                             " called from a signal handler that interrupted the cache's own work");
    }
  }

  // Takes every full magazine out of the depot.
  magazine* detach_full() noexcept {
    return locked(core.depot_lock, [&] {
      magazine* list = core.full;
      core.full = nullptr;
      core.full_count = 0;
      core.full_low_water = 0;
      return list;
    });
  }

  void drain_cpu(unsigned cpu, std::vector<void*>& out) {
    cpu_array& a = part_on(cpu)->array;
    out.insert(out.end(), a.items, a.items + a.count);
    a.count = 0;
  }

  void invalidate() {
    check_may_drain("invalidate");
    std::lock_guard serial(core.maintenance);
    // The increment comes first: it pairs with the seq_cst load of the
    // generation in put's guarded push (inside the sequence, after its stop
    // test; under the slot lock in the portable backend), with the loads in
    // take_full/give under the depot lock, and with construct_new's check.
    // After it, no push of an older object can commit once the fence below
    // has passed, and nothing older enters the depot after detach_full.
    std::atomic_ref<std::uint64_t>(cache.generation_).fetch_add(1, std::memory_order_seq_cst);
    std::vector<void*> victims;
    victims.reserve(std::size_t{cache.stops_.size()} * 2 * cache.magazine_size());
    {
      // Signals blocked: a handler's get or put on this thread would wait
      // for the stop words this thread holds.
      signals_blocked quiet;
      cache.stops_.visit_all([&](unsigned cpu) { drain_cpu(cpu, victims); });
    }
    retire(detach_full());
    destroy(victims.data(), victims.size());
    core.invalidations.fetch_add(1, std::memory_order_relaxed);
  }

  void invalidate_local() {
    check_may_drain("invalidate_local");
    std::lock_guard serial(core.maintenance);
    std::vector<void*> victims;
    unsigned cpu = seq::current_cpu();
    {
      signals_blocked quiet;
      cache.stops_.visit(cpu, [&] { drain_cpu(cpu, victims); });
    }
    retire(detach_full());
    destroy(victims.data(), victims.size());
  }

  std::size_t reclaim() {
    std::lock_guard serial(core.maintenance);
    trim_and_adapt();
    return release_unused_slabs();
  }
};

void pool_check_get(const raw_pool_cache* cache, void* object) noexcept {
  pool_header* h = pool_object_header(object);
  if (h->state != pool_object_state::cached) {
    misuse(
        "get found a cached object whose header was overwritten (a write before the start of "
        "an object, or a put compiled without PERCPU_POOL_CHECKS)",
        cache, object);
  }
  h->state = pool_object_state::in_use;
}

void pool_check_put(const raw_pool_cache* cache, void* object) noexcept {
  if (object == nullptr) misuse("put of a null pointer", cache, object);
  // Which cache's slab holds the address, if any (walks every slab: the
  // checks are for debugging, not for speed).
  std::uint32_t owner = 0;
  std::string owner_name;
  bool at_object_start = false;
  {
    registry& r = the_registry();
    std::lock_guard g(r.lock);
    for (raw_pool_cache* c : r.caches) {
      pool_internals in(*c);
      if (in.holds(object, at_object_start)) {
        owner = c->id();
        owner_name = c->name();
        break;
      }
    }
  }
  if (owner == 0) {
    misuse("put of a pointer no pool_cache handed out (foreign pointer)", cache, object);
  }
  if (!at_object_start) {
    misuse("put of a pointer into the middle of a slab, not one get() returned (foreign pointer)",
           cache, object);
  }
  if (owner != cache->id()) {
    std::string what =
        "put to the wrong cache (the object belongs to cache \"" + owner_name + "\")";
    misuse(what.c_str(), cache, object);
  }
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

using detail::pool_core;
using detail::pool_internals;

raw_pool_cache::raw_pool_cache(pool_options options)
    : arrays0_(nullptr), size_(options.size), options_(std::move(options)), magazine_size_(0) {
  if (size_ == 0 || size_ > detail::max_object_size) {
    throw std::invalid_argument("percpu::pool_cache: object size must be between 1 byte and 1 GiB");
  }
  std::size_t align = options_.alignment;
  if (align == 0 || !std::has_single_bit(align) || align > 4096) {
    throw std::invalid_argument(
        "percpu::pool_cache: alignment must be a power of two no larger than 4096");
  }
  unsigned magazine =
      options_.magazine_size != 0 ? options_.magazine_size : detail::default_magazine;
  magazine = std::clamp(magazine, detail::min_magazine, detail::max_magazine);
  magazine_size_.store(magazine, std::memory_order_relaxed);

  core_ = std::make_unique<pool_core>();
  pool_core& c = *core_;
  std::size_t slot_align = std::max<std::size_t>(align, alignof(detail::pool_header));
  c.object_offset = detail::round_up(sizeof(detail::pool_header), slot_align);
  c.slot_size = detail::round_up(c.object_offset + std::max(size_, sizeof(void*)), slot_align);
  c.slots_offset = detail::round_up(sizeof(detail::slab), slot_align);
  c.slab_bytes = std::bit_ceil(std::max(detail::min_slab_bytes, c.slots_offset + 8 * c.slot_size));
  c.slots_per_slab = static_cast<std::uint32_t>((c.slab_bytes - c.slots_offset) / c.slot_size);

  c.parts0 = static_cast<detail::cpu_part*>(allocate_raw(sizeof(detail::cpu_part), 64));
  arrays0_ = &c.parts0->array;
  for (unsigned cpu = 0; cpu < stops_.size(); ++cpu) {
    detail::cpu_part* part = raw_on(c.parts0, cpu);
    part->array.items = part->items;
    part->array.capacity = 2 * magazine;
  }
  detail::registry& r = detail::the_registry();
  std::lock_guard g(r.lock);
  c.id = r.next_id++;
  r.caches.push_back(this);
}

raw_pool_cache::~raw_pool_cache() {
  pool_internals in(*this);
  pool_core& c = *core_;
  {
    detail::registry& r = detail::the_registry();
    std::lock_guard g(r.lock);
    std::erase(r.caches, this);
  }
  std::vector<void*> victims;
  for (unsigned cpu = 0; cpu < stops_.size(); ++cpu) in.drain_cpu(cpu, victims);
  in.retire(in.detach_full());
  in.destroy(victims.data(), victims.size());
#if PERCPU_POOL_CHECKS
  std::uint64_t live = c.constructions.load() - c.destructions.load();
  if (live != 0) {
    std::fprintf(stderr, "percpu::pool_cache \"%s\": destroyed with %llu objects still in use\n",
                 options_.name.c_str(), static_cast<unsigned long long>(live));
  }
#endif
  // Slabs with objects still in use are left mapped: their users may still
  // touch them.  Unused ones go back to the system.
  in.release_unused_slabs();
  in.release_magazine_memory();
  free_raw(c.parts0);
}

void* raw_pool_cache::get_slow() noexcept {
  return pool_internals(*this).get_slow();
}
void raw_pool_cache::put_slow(void* object) noexcept {
  pool_internals(*this).put_slow(object);
}
void raw_pool_cache::invalidate() {
  pool_internals(*this).invalidate();
}
void raw_pool_cache::invalidate_local() {
  pool_internals(*this).invalidate_local();
}
std::size_t raw_pool_cache::reclaim() {
  return pool_internals(*this).reclaim();
}
std::uint32_t raw_pool_cache::id() const noexcept {
  return core_->id;
}

pool_stats raw_pool_cache::stats() const {
  pool_core& c = *core_;
  pool_stats s;
  s.name = options_.name;
  s.object_size = size_;
  s.magazine_size = magazine_size();
  for (unsigned cpu = 0; cpu < stops_.size(); ++cpu) {
    const detail::cpu_part* part = raw_on(static_cast<const detail::cpu_part*>(c.parts0), cpu);
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
    std::lock_guard g(c.depot_lock);
    s.depot_full = c.full_count;
    s.depot_empty = c.empty_count;
    for (const detail::magazine* m = c.full; m != nullptr; m = m->next)
      s.objects_cached += m->count;
  }
  {
    std::lock_guard g(c.slab_lock);
    s.slabs = c.slab_count;
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
  detail::registry& r = detail::the_registry();
  std::lock_guard g(r.lock);
  std::vector<pool_stats> out;
  out.reserve(r.caches.size());
  for (const raw_pool_cache* c : r.caches) out.push_back(c->stats());
  return out;
}

}  // namespace percpu
