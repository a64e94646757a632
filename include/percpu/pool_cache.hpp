// percpu/pool_cache.hpp - object caches with per-CPU magazines (pool_cache(9)).
//
// Problem: a program that allocates and frees many objects of one type pays
// twice: the general-purpose allocator's bookkeeping, and the object's
// constructor and destructor (zeroing a buffer, setting up a mutex) on every
// allocation.  Bonwick's object caches keep freed objects constructed and
// hand them out again, and per-CPU "magazines" keep that reuse off shared
// locks.  Kernels have had this for decades; user space has not, and the
// kernels never gave it a safe way to say "throw away everything cached,
// everywhere, now": NetBSD's pool_cache_invalidate skips idle CPUs and lets
// objects put back during the call survive.
//
// Mechanism, three layers:
//  - per CPU, an array of object pointers holding up to two magazines'
//    worth (the loaded magazine on top of the previous one).  get() is the
//    shared rseq pop, put() the shared rseq push: no atomic read-modify-write,
//    no lock, async-signal-safe.  A CPU exchanges one magazine at a time with
//    the depot (push_batch/pop_batch), so it does at least a magazine's worth
//    of gets or puts between depot visits;
//  - a depot of full and empty magazines under a lock; its contention makes
//    magazines bigger, its quiet makes them smaller again, and full
//    magazines nobody used during a trim period are destructed (working-set
//    trim, done during depot visits: no thread of the cache's own);
//  - a slab layer that carves objects out of aligned blocks and gives empty
//    blocks back to the system in reclaim().
//
// Generation-safe invalidate: every object carries the cache generation it
// was constructed in.  invalidate() bumps the generation first, then stops
// every CPU's array with one broadcast fence (stop.hpp), empties them and
// the depot, and destructs what it found.  A put's push commits only while
// the object's stamp equals the generation (the guard of the shared push
// sequence), so an object constructed before the call and put back during
// or after it is destructed instead of cached: no get() that begins after
// invalidate() returns, on any CPU, hands out an object constructed before
// invalidate() began.  (A get running concurrently with it may still take
// an older object.)  See docs/pool-cache.md.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "percpu/core/detail/block.hpp"
#include "percpu/detail/pool_object.hpp"
#include "percpu/runtime/config.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "percpu/runtime/error.hpp"

namespace percpu {

// Per-CPU figures of one cache (see raw_pool_cache::stats).
struct pool_cpu_stats {
  unsigned cpu = 0;
  std::uint64_t misses = 0;     // gets that found the CPU's array empty
  std::uint64_t overflows = 0;  // puts that found the CPU's array full
  std::uint32_t cached = 0;     // objects in the CPU's array now
};

// A snapshot of one cache.  Counts read while other threads work are
// approximate; every count is exact when the cache is quiescent.
struct pool_stats {
  std::string name;
  std::size_t object_size = 0;
  unsigned magazine_size = 0;        // objects per magazine now
  std::vector<pool_cpu_stats> cpus;  // CPUs whose array is or was in use
  std::uint64_t depot_full = 0;      // full magazines in the depot
  std::uint64_t depot_empty = 0;     // empty magazines in the depot
  std::uint64_t depot_visits = 0;
  std::uint64_t depot_contended = 0;  // depot visits that found the lock held
  std::uint64_t constructions = 0;
  std::uint64_t destructions = 0;
  std::uint64_t constructor_failures = 0;
  std::uint64_t objects_cached = 0;  // constructed, in a CPU array or the depot
  std::uint64_t objects_in_use = 0;  // constructed and handed out
  std::uint64_t slabs = 0;
  std::uint64_t bytes_in_use = 0;     // object bytes handed out
  std::uint64_t bytes_cached = 0;     // object bytes constructed and cached
  std::uint64_t bytes_reserved = 0;   // slab memory held from the system
  std::uint64_t bytes_magazines = 0;  // magazine memory held from the system
  std::uint64_t invalidations = 0;
  std::uint64_t trims = 0;
  std::uint64_t magazine_resizes = 0;
};

// Options of a cache.  size is the only one without a default.
struct pool_options {
  std::size_t size = 0;
  std::size_t alignment = alignof(std::max_align_t);
  // Constructs an object in `object` (size bytes, aligned); returns false on
  // failure (the memory is released, get() fails).  Null: none.
  bool (*construct)(void* object, void* arg) = nullptr;
  // Destroys a constructed object.  Null: none.
  void (*destroy)(void* object, void* arg) noexcept = nullptr;
  // Optional: destroys n objects at once (invalidate() and trims call it
  // with whole magazines).  Null: `destroy` one by one.
  void (*destroy_batch)(void* const* objects, std::size_t n, void* arg) noexcept = nullptr;
  void* arg = nullptr;
  std::string name = "pool";
  // Objects per magazine at start; it adapts between 4 and 128.  0: 32.
  unsigned magazine_size = 0;
};

// An untyped cache of constructed, fixed-size objects.  Thread-safe.
// Lifetime: destroying the cache destructs every cached object and returns
// all memory; no object may be in use then (a debug build reports it).
class raw_pool_cache {
 public:
  // Throws percpu::error: errc::invalid_argument for size 0 or an alignment
  // that is not a power of two, errc::too_large for a size beyond 1 GiB or
  // an alignment beyond 4096, and what per-CPU allocation throws
  // (errc::no_memory, errc::configuration); std::bad_alloc when the heap is
  // exhausted.
  explicit raw_pool_cache(pool_options options);
  ~raw_pool_cache();
  raw_pool_cache(const raw_pool_cache&) = delete;
  raw_pool_cache& operator=(const raw_pool_cache&) = delete;

  // A constructed object: from this CPU's array (the fast path), the depot,
  // or newly constructed.  nullptr only when memory or the constructor
  // failed.  Async-signal-safe (see docs/pool-cache.md for the one case in
  // which a handler's get may return nullptr).
  [[nodiscard]] void* get() noexcept {
    void* object = get_cached();
    return object != nullptr ? object : get_slow();
  }

  // get()'s fast path alone: an object from this CPU's array, or nullptr
  // (no depot visit, no construction).  Async-signal-safe.
  [[nodiscard]] void* get_cached() noexcept {
    void* object = detail::seq::pop(arrays0(), parts_.stop_words());
#if PERCPU_POOL_CHECKS
    if (object != nullptr) detail::pool_check_get(this, object);
#endif
    return object;
  }

  // Returns an object that get() handed out.  Never fails: an object that
  // finds no room, or was constructed before the last invalidate() began,
  // is destructed and its memory released.  Async-signal-safe.
  void put(void* object) noexcept {
#if PERCPU_POOL_CHECKS
    detail::pool_check_put(this, object);
#endif
    detail::seq::guard current{&generation_, detail::pool_object_header(object)->generation};
    if (detail::seq::push(arrays0(), parts_.stop_words(), object, current)) [[likely]]
      return;
    put_slow(object);
  }

  // Destructs every object cached when it was called - the depot and every
  // CPU's array, CPUs without a running thread and CPUs this process may no
  // longer run on included - and returns when that is done.  No get() that
  // begins after it returns hands out an object constructed before the call
  // began (one running concurrently with it may).  Waits on
  // fences, never on other threads.  Throws percpu::error
  // (errc::would_deadlock) when called from a constructor or destructor of
  // this cache, or from a signal handler that interrupted this cache's own
  // work on this thread.
  void invalidate();

  // The calling thread's CPU's array and the depot only; no generation
  // change (objects in use may be put back and reused).  A thread that
  // migrates meanwhile has still emptied the CPU it was on when it asked.
  // Same refusals as invalidate().
  void invalidate_local();

  // Trims the depot to its working set, adapts the magazine size and gives
  // empty slabs back to the system.  Returns the bytes given back.  The
  // same trim (without the give-back) also runs during depot visits once a
  // second.
  std::size_t reclaim();

  [[nodiscard]] pool_stats stats() const;
  std::size_t object_size() const noexcept {
    return size_;
  }
  const std::string& name() const noexcept {
    return options_.name;
  }

  // A process-unique number naming this cache (debug messages, statistics).
  std::uint32_t id() const noexcept;

  // The magazine size now (objects).
  unsigned magazine_size() const noexcept {
    return magazine_size_.load(std::memory_order_relaxed);
  }

 private:
  friend struct detail::pool_core;
  void* get_slow() noexcept;
  void put_slow(void* object) noexcept;

  // CPU 0's array, where the fast paths pop and push.
  detail::cpu_array* arrays0() const noexcept {
    return &parts_.data0()->array;
  }

  detail::cpu_block<detail::cpu_part> parts_;  // per CPU: the array and counts; the stop words
  std::uint64_t generation_ = 1;               // the guard of put's push (atomic_ref)
  std::size_t size_;
  pool_options options_;
  std::atomic<unsigned> magazine_size_;
  std::unique_ptr<detail::pool_core> core_;  // depot, slabs, statistics
};

// A cache of constructed T objects.  By default objects are
// value-initialised with T() and destroyed with ~T(); pass a factory to
// construct them differently: `factory(void* memory)` placement-constructs a
// T there.
template <class T>
class pool_cache {
 public:
  // Objects made with T() (T must be default-constructible).
  explicit pool_cache(std::string name = "pool") requires std::is_default_constructible_v<T>
      : raw_(make_options(std::move(name))) {}
  template <class Factory>
  pool_cache(std::string name, Factory factory)
      : factory_(std::make_unique<factory_holder<Factory>>(std::move(factory))),
        raw_(make_options(std::move(name))) {}

  // A constructed T.  Throws what the constructor threw, or std::bad_alloc.
  [[nodiscard]] T* get() {
    void* p = get_keeping_error(true);
    if (p == nullptr) [[unlikely]] {
      std::exception_ptr error = std::exchange(constructor_error(), nullptr);
      if (error) std::rethrow_exception(error);
      throw std::bad_alloc();
    }
    return static_cast<T*>(p);
  }
  // A constructed T, or nullptr when memory or the constructor failed.
  // Async-signal-safe like raw_pool_cache::get() (it touches no
  // thread-local object that needs registration or destruction).
  [[nodiscard]] T* try_get() noexcept { return static_cast<T*>(get_keeping_error(false)); }
  void put(T* object) noexcept { raw_.put(object); }

  void invalidate() { raw_.invalidate(); }
  void invalidate_local() { raw_.invalidate_local(); }
  std::size_t reclaim() { return raw_.reclaim(); }
  [[nodiscard]] pool_stats stats() const { return raw_.stats(); }
  raw_pool_cache& raw() noexcept { return raw_; }

 private:
  struct factory_base {
    virtual ~factory_base() = default;
    virtual void make(void* memory) = 0;
  };
  template <class Factory>
  struct factory_holder final : factory_base {
    explicit factory_holder(Factory f) : factory(std::move(f)) {}
    void make(void* memory) override { factory(memory); }
    Factory factory;
  };

  // The exception of a failed constructor, kept for get() to rethrow;
  // only get() asks for it (keep_constructor_error), so try_get() - which
  // signal handlers may call - never touches this thread-local object,
  // whose first use registers a destructor (not async-signal-safe).
  static std::exception_ptr& constructor_error() noexcept {
    static thread_local std::exception_ptr error;
    return error;
  }
  static bool& keep_constructor_error() noexcept {
    static thread_local bool keep = false;
    return keep;
  }
  // raw_.get(), with a failed constructor's exception kept for the caller
  // or not; the flag is touched only off the fast path.
  void* get_keeping_error(bool keep_error) noexcept {
    if (void* cached = raw_.get_cached()) [[likely]]
      return cached;
    bool& keep = keep_constructor_error();
    bool outer = keep;
    keep = keep_error;
    void* p = raw_.get();
    keep = outer;
    return p;
  }
  static bool construct(void* memory, void* self) {
    try {
      auto* cache = static_cast<pool_cache*>(self);
      if constexpr (std::is_default_constructible_v<T>) {
        if (!cache->factory_) {
          ::new (memory) T();
          return true;
        }
      }
      cache->factory_->make(memory);
      return true;
    } catch (...) {
      if (keep_constructor_error()) constructor_error() = std::current_exception();
      return false;
    }
  }
  static void destroy(void* object, void*) noexcept { static_cast<T*>(object)->~T(); }
  static void destroy_batch(void* const* objects, std::size_t n, void*) noexcept {
    for (std::size_t i = 0; i < n; ++i) static_cast<T*>(objects[i])->~T();
  }

  pool_options make_options(std::string name) {
    pool_options o;
    o.size = sizeof(T);
    o.alignment = alignof(T);
    o.construct = &construct;
    o.destroy = std::is_trivially_destructible_v<T> ? nullptr : &destroy;
    o.destroy_batch = std::is_trivially_destructible_v<T> ? nullptr : &destroy_batch;
    o.arg = this;
    o.name = std::move(name);
    return o;
  }

  std::unique_ptr<factory_base> factory_;
  raw_pool_cache raw_;
};

// Every live cache's statistics, oldest first (a `vmstat -m` view).
[[nodiscard]] std::vector<pool_stats> all_pool_stats();

}  // namespace percpu
