// fuzz_program.hpp - the program a fuzz input runs (see fuzz_api.cpp): its
// operations, the objects it works on, the model it checks them against.
// fuzz_api.cpp runs the program (storage, counters, the rwlock, stops),
// fuzz_pool.cpp its pool_cache and raw_pool_cache operations,
// fuzz_alloc.cpp its raw per-CPU allocations.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "percpu/core/stop.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/counter.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/error.hpp"
#include "percpu/rwlock.hpp"

namespace percpu_fuzz {

constexpr unsigned max_operations = 256;
constexpr std::size_t max_held = 64;  // objects the main thread holds at most

// Reports a broken invariant the way libFuzzer records a crash.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "fuzz_api: invariant broken: %s\n", what);
  std::abort();
}

inline void check(bool condition, const char* what) {
  if (!condition) fail(what);
}

// Runs f and requires it to throw the library's error, percpu::error, with
// `code` in percpu's category and a non-empty message.
template <class F>
void expect_error(percpu::errc code, F&& f, const char* what) {
  try {
    f();
  } catch (const percpu::error& e) {
    check(e.code() == code, what);
    check(&e.code().category() == &percpu::error_category(), what);
    check(e.what() != nullptr && e.what()[0] != '\0', what);
    return;
  } catch (...) {
    fail(what);
  }
  fail(what);
}

// A CPU number: mostly valid, often just past the end, sometimes huge.
inline unsigned pick_cpu(FuzzedDataProvider& in) {
  unsigned cpus = percpu::cpu_count();
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      return cpus;
    case 1:
      return std::numeric_limits<unsigned>::max() - in.ConsumeIntegralInRange<unsigned>(0, 3);
    case 2:
      return cpus + in.ConsumeIntegral<std::uint16_t>();
    default:
      return in.ConsumeIntegralInRange<unsigned>(0, cpus - 1);
  }
}

// ---- Tracked pool objects ---------------------------------------------------

constexpr std::uint64_t alive_magic = 0x0b1ec7a11e5eed01;
constexpr std::uint64_t dead_magic = 0xdeadde5c0ded0bad;

// Counts every construction and destruction of the input's tracked objects.
struct object_census {
  std::atomic<std::uint64_t> constructed{0};
  std::atomic<std::uint64_t> destroyed{0};
  std::atomic<std::uint64_t> next_serial{1};
};

// Set by the main thread for itself: the next construction on this thread
// fails, or calls invalidate() from inside the constructor.
inline thread_local bool fail_next_construction = false;
inline thread_local bool reenter_next_construction = false;

struct construction_refused : std::runtime_error {
  construction_refused() : std::runtime_error("fuzz_api: construction refused") {}
};

struct tracked {
  // The serial is taken last: an object whose serial is below a value read
  // before an invalidate() began was fully constructed before it.
  explicit tracked(object_census* c) : census(c) {
    census->constructed.fetch_add(1, std::memory_order_relaxed);
    serial = census->next_serial.fetch_add(1);
  }
  ~tracked() {
    check(magic == alive_magic, "a tracked object destroyed twice or never constructed");
    magic = dead_magic;
    census->destroyed.fetch_add(1, std::memory_order_relaxed);
  }
  // pool_cache<T> compiles a T() fallback even when it has a factory;
  // this cache always has one.
  tracked() { fail("a tracked object built without its factory"); }
  tracked(const tracked&) = delete;
  tracked& operator=(const tracked&) = delete;

  std::uint64_t magic = alive_magic;
  object_census* census = nullptr;
  std::uint64_t serial = 0;  // construction order within the input
};

// Constructs tracked objects; may refuse (construction_refused) or call the
// cache's invalidate() from inside the constructor (which must refuse with
// errc::would_deadlock).
struct tracked_factory {
  object_census* census;
  percpu::pool_cache<tracked>** cache;  // set once the cache exists

  void operator()(void* memory) const {
    if (fail_next_construction) {
      fail_next_construction = false;
      throw construction_refused();
    }
    if (reenter_next_construction && *cache != nullptr) {
      reenter_next_construction = false;
      expect_error(
          percpu::errc::would_deadlock, [&] { (*cache)->invalidate(); },
          "invalidate() from a constructor must throw would_deadlock");
    }
    ::new (memory) tracked(census);
  }
};

struct held_object {
  tracked* object;
  bool across_invalidate;  // held while an invalidate() ran
};

// ---- Raw pool objects --------------------------------------------------------

// Counts what a raw_pool_cache's callbacks did; the constructor writes the
// object's address and size into its first and last words.
struct raw_census {
  std::size_t size = 0;
  std::atomic<std::uint64_t> constructed{0};
  std::atomic<std::uint64_t> destroyed{0};
  bool refuse_next = false;
};

// Write and check the stamp; the callbacks of the raw caches (fuzz_pool.cpp).
void stamp(void* object, std::size_t size, std::uintptr_t value);
bool stamped(const void* object, std::size_t size, std::uintptr_t value);
bool raw_construct(void* object, void* arg);
void raw_destroy(void* object, void* arg) noexcept;

struct raw_cache {
  std::unique_ptr<raw_census> census;
  std::unique_ptr<percpu::raw_pool_cache> cache;
  std::vector<void*> held;
};

// ---- Raw per-CPU allocations ------------------------------------------------

struct raw_allocation {
  unsigned char* p0;
  std::size_t size;
  unsigned char fill;
};

// The bytes checked and filled per CPU copy: the first and the last 128.
template <class F>
void for_each_sampled_byte(const raw_allocation& a, F&& f) {
  for (unsigned cpu = 0; cpu < percpu::cpu_count(); ++cpu) {
    unsigned char* copy = percpu::raw_on(a.p0, cpu);
    std::size_t head = std::min<std::size_t>(a.size, 128);
    for (std::size_t i = 0; i < head; ++i) f(copy[i]);
    for (std::size_t i = std::max(head, a.size - std::min<std::size_t>(a.size, 128)); i < a.size;
         ++i)
      f(copy[i]);
  }
}

// ---- The program -----------------------------------------------------------------

enum class op : std::uint8_t {
  storage_add,
  storage_on,
  storage_visit,
  storage_compare_and_store,
  counter_add,
  counter_exchange,
  counter_bad_batch,
  array_misuse,
  rwlock_shared,
  rwlock_exclusive,
  pool_get,
  pool_put,
  pool_invalidate,
  pool_invalidate_local,
  pool_reclaim,
  pool_fail_construction,
  pool_reenter,
  raw_cache_new,
  raw_cache_get,
  raw_cache_put,
  raw_cache_maintain,
  alloc_raw,
  free_raw,
  free_foreign,
  stop_start,
  stop_several,
  count
};

// What the worker thread added, for the checks after the join.
struct worker_totals {
  std::int64_t storage_added = 0;
  std::int64_t counter_added = 0;
};

class program {
 public:
  explicit program(FuzzedDataProvider& in);
  void run(bool concurrent);

 private:
  using stop_state_list = std::vector<percpu::stop_state*>;

  // fuzz_api.cpp
  void work(std::atomic<bool>& done, worker_totals& totals);
  void reader_section();
  void writer_section();
  void step(op o);
  void array_misuse();
  void check_quiescent();
  void finish();

  // fuzz_pool.cpp
  void pool_get();
  void pool_put();
  void pool_invalidate();
  void raw_cache_new();
  void raw_cache_get();
  void release_raw_cache();

  // fuzz_alloc.cpp
  void alloc_raw();
  void free_allocation(std::size_t i);
  void free_foreign();

  FuzzedDataProvider& in_;
  bool concurrent_ = false;

  percpu::storage<std::int64_t> values_;
  std::int64_t storage_model_ = 0;

  percpu::counter events_;
  std::int64_t counter_added_ = 0;  // every add
  std::int64_t counter_set_ = 0;    // every exchange's new value
  std::int64_t counter_taken_ = 0;  // every exchange's result

  percpu::counter_array table_{4};
  std::int64_t table_model_[4] = {};

  percpu::rwlock lock_;
  std::atomic<int> readers_{0};
  std::atomic<int> writers_{0};

  percpu::stop_state stops_;

  object_census census_;
  percpu::pool_cache<tracked>* objects_ptr_ = nullptr;
  percpu::pool_cache<tracked> objects_;
  std::vector<held_object> held_;
  std::uint64_t first_valid_serial_ = 0;

  raw_cache raw_;
  std::size_t raw_alignment_ = 1;

  std::vector<raw_allocation> allocations_;
  unsigned next_fill_ = 0;
};

}  // namespace percpu_fuzz
