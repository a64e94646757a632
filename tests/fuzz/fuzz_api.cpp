// fuzz_api.cpp - a libFuzzer target that runs byte strings as programs
// against the public API and checks its invariants.
//
// Problem: the unit tests try the inputs their authors thought of.  The
// API's promises (exact sums, every object handed out constructed and
// distinct, nothing cached surviving an invalidate, conservation of
// constructions and destructions, a documented exception for every bad
// argument) must hold for any order of calls and any argument, including
// CPU numbers past cpu_count(), sizes of 0 or beyond the limits and
// alignments that are not powers of two.
//
// Mechanism: every input builds a fresh set of objects (a storage<int64_t>,
// a counter, a counter_array, an rwlock, a stop_state, a pool_cache of
// tracked objects and, on demand, a raw_pool_cache and raw per-CPU
// allocations) and a model of what they must hold.  The first byte chooses
// one or two threads: with two, a worker runs a fixed workload on the same
// objects until the program ends.  Each following byte picks an operation,
// whose arguments come from the next bytes; at most max_operations run.
// With one thread the model is checked after every operation; with two,
// at quiescence after the join.  Everything is returned and destroyed
// before the input ends, so nothing carries over to the next one.
//
// Not tried here because they end the process by design: foreign or
// double pool_cache puts in debug builds (abort with a message, covered by
// tests/test_debug_checks.cpp) and stop_state::start of a CPU the caller
// did not stop (undefined).  docs/reliability.md lists what each bad
// input gives.
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
#include "percpu/rwlock.hpp"

namespace {

constexpr unsigned max_operations = 256;
constexpr std::size_t max_held = 64;  // objects the main thread holds at most

// Reports a broken invariant the way libFuzzer records a crash.
[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_api: invariant broken: %s\n", what);
  std::abort();
}

void check(bool condition, const char* what) {
  if (!condition) fail(what);
}

// Runs f and requires it to throw exactly E (or a type derived from it)
// with a non-empty message.
template <class E, class F>
void expect_throw(F&& f, const char* what) {
  try {
    f();
  } catch (const E& e) {
    check(e.what() != nullptr && e.what()[0] != '\0', what);
    return;
  } catch (...) {
    fail(what);
  }
  fail(what);
}

// A CPU number: mostly valid, often just past the end, sometimes huge.
unsigned pick_cpu(FuzzedDataProvider& in) {
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
thread_local bool fail_next_construction = false;
thread_local bool reenter_next_construction = false;

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
// std::logic_error).
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
      expect_throw<std::logic_error>([&] { (*cache)->invalidate(); },
                                     "invalidate() from a constructor must throw logic_error");
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

void stamp(void* object, std::size_t size, std::uintptr_t value) {
  std::memcpy(object, &value, std::min(size, sizeof value));
  if (size >= 2 * sizeof value)
    std::memcpy(static_cast<char*>(object) + size - sizeof value, &value, sizeof value);
}

bool stamped(const void* object, std::size_t size, std::uintptr_t value) {
  std::uintptr_t first = 0;
  std::memcpy(&first, object, std::min(size, sizeof first));
  if (size < sizeof first) {
    std::uintptr_t expected = 0;
    std::memcpy(&expected, &value, size);
    return first == expected;
  }
  std::uintptr_t last = value;
  if (size >= 2 * sizeof value)
    std::memcpy(&last, static_cast<const char*>(object) + size - sizeof last, sizeof last);
  return first == value && last == value;
}

bool raw_construct(void* object, void* arg) {
  auto* census = static_cast<raw_census*>(arg);
  if (census->refuse_next) {
    census->refuse_next = false;
    return false;
  }
  stamp(object, census->size, reinterpret_cast<std::uintptr_t>(object));
  census->constructed.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void raw_destroy(void* object, void* arg) noexcept {
  auto* census = static_cast<raw_census*>(arg);
  if (!stamped(object, census->size, reinterpret_cast<std::uintptr_t>(object))) {
    fail("raw_pool_cache destroyed an object its constructor did not stamp");
  }
  stamp(object, census->size, 0);
  census->destroyed.fetch_add(1, std::memory_order_relaxed);
}

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
  explicit program(FuzzedDataProvider& in)
      : in_(in),
        events_(in.ConsumeIntegralInRange<std::int64_t>(1, 300)),
        objects_("fuzz", tracked_factory{&census_, &objects_ptr_}) {
    objects_ptr_ = &objects_;
  }

  void run(bool concurrent) {
    concurrent_ = concurrent;
    std::atomic<bool> done{false};
    worker_totals totals;
    std::thread worker;
    if (concurrent) worker = std::thread([&] { work(done, totals); });
    for (unsigned n = 0; n < max_operations && in_.remaining_bytes() > 0; ++n) {
      step(static_cast<op>(in_.ConsumeIntegralInRange<unsigned>(0, unsigned(op::count) - 1)));
      if (!concurrent) check_quiescent();
    }
    if (concurrent) {
      done.store(true, std::memory_order_release);
      worker.join();
      storage_model_ += totals.storage_added;
      counter_added_ += totals.counter_added;
      check_quiescent();
    }
    finish();
  }

 private:
  // The worker: adds, reader and writer sections, gets and puts, until the
  // main thread is done (and at least 64 rounds).
  void work(std::atomic<bool>& done, worker_totals& totals) {
    std::vector<tracked*> mine;
    for (unsigned round = 0; round < 64 || !done.load(std::memory_order_acquire); ++round) {
      values_.add(1);
      totals.storage_added += 1;
      events_.add(3);
      totals.counter_added += 3;
      if (round % 4 == 0) reader_section();
      if (round % 16 == 0) writer_section();
      if (tracked* t = objects_.try_get()) {
        check(t->magic == alive_magic, "worker got an object that is not constructed");
        mine.push_back(t);
      }
      if (mine.size() > 6 || (round % 3 == 0 && !mine.empty())) {
        objects_.put(mine.back());
        mine.pop_back();
      }
    }
    for (tracked* t : mine) objects_.put(t);
  }

  void reader_section() {
    lock_.lock_shared();
    readers_.fetch_add(1, std::memory_order_relaxed);
    check(writers_.load(std::memory_order_relaxed) == 0, "a reader inside with a writer");
    readers_.fetch_sub(1, std::memory_order_relaxed);
    lock_.unlock_shared();
  }

  void writer_section() {
    lock_.lock();
    check(writers_.fetch_add(1, std::memory_order_relaxed) == 0, "two writers inside");
    check(readers_.load(std::memory_order_relaxed) == 0, "a writer inside with a reader");
    writers_.fetch_sub(1, std::memory_order_relaxed);
    lock_.unlock();
  }

  void step(op o) {
    switch (o) {
      case op::storage_add: {
        auto v = in_.ConsumeIntegralInRange<std::int64_t>(-1000, 1000);
        values_.add(v);
        storage_model_ += v;
        break;
      }
      case op::storage_on: {
        unsigned cpu = pick_cpu(in_);
        if (cpu >= values_.cpus()) {
          expect_throw<std::out_of_range>([&] { (void)values_.on(cpu); },
                                          "storage::on(bad CPU) must throw out_of_range");
        } else if (!concurrent_) {
          auto v = in_.ConsumeIntegralInRange<std::int64_t>(-1000, 1000);
          *values_.on(cpu) += v;  // no concurrent adds: a plain update is exact
          storage_model_ += v;
        } else {
          (void)values_.load(cpu);
        }
        break;
      }
      case op::storage_visit: {
        unsigned cpu = pick_cpu(in_);
        auto v = in_.ConsumeIntegralInRange<std::int64_t>(-1000, 1000);
        if (cpu >= values_.cpus()) {
          expect_throw<std::out_of_range>([&] { values_.visit(cpu, [](std::int64_t&) {}); },
                                          "storage::visit(bad CPU) must throw out_of_range");
        } else {
          values_.visit(cpu, [&](std::int64_t& slot) { slot += v; });
          storage_model_ += v;
        }
        break;
      }
      case op::storage_compare_and_store: {
        unsigned cpu = in_.ConsumeBool() ? percpu::current_cpu() : pick_cpu(in_);
        auto desired = in_.ConsumeIntegralInRange<std::int64_t>(-1000, 1000);
        if (cpu >= values_.cpus()) {
          check(!values_.compare_and_store(cpu, 0, desired) &&
                    !values_.compare_and_store(cpu, -1, desired),
                "compare_and_store on a CPU past cpu_count() must fail");
          break;
        }
        std::int64_t expected = values_.load(cpu);
        if (values_.compare_and_store(cpu, expected, desired)) storage_model_ += desired - expected;
        break;
      }
      case op::counter_add: {
        auto v = in_.ConsumeIntegralInRange<std::int64_t>(-5000, 5000);
        events_.add(v);
        counter_added_ += v;
        break;
      }
      case op::counter_exchange: {
        auto desired = in_.ConsumeIntegralInRange<std::int64_t>(-5000, 5000);
        std::int64_t before = events_.exchange(desired);
        if (!concurrent_) {
          check(before == counter_added_ + counter_set_ - counter_taken_,
                "counter::exchange returned a wrong total");
        }
        counter_taken_ += before;
        counter_set_ += desired;
        break;
      }
      case op::counter_bad_batch: {
        auto batch =
            in_.ConsumeIntegralInRange<std::int64_t>(std::numeric_limits<std::int64_t>::min(), 0);
        expect_throw<std::invalid_argument>([&] { percpu::counter c(batch); },
                                            "counter(batch <= 0) must throw invalid_argument");
        break;
      }
      case op::array_misuse:
        array_misuse();
        break;
      case op::rwlock_shared:
        if (in_.ConsumeBool()) {
          reader_section();
        } else if (lock_.try_lock_shared()) {
          check(writers_.load(std::memory_order_relaxed) == 0,
                "try_lock_shared let a reader in with a writer");
          lock_.unlock_shared();
        }
        break;
      case op::rwlock_exclusive:
        if (in_.ConsumeBool()) {
          writer_section();
        } else if (lock_.try_lock()) {
          check(readers_.load(std::memory_order_relaxed) == 0,
                "try_lock let a writer in with a reader");
          lock_.unlock();
        }
        break;
      case op::pool_get:
        pool_get();
        break;
      case op::pool_put:
        pool_put();
        break;
      case op::pool_invalidate:
        pool_invalidate();
        break;
      case op::pool_invalidate_local:
        objects_.invalidate_local();
        break;
      case op::pool_reclaim:
        (void)objects_.reclaim();
        break;
      case op::pool_fail_construction:
        fail_next_construction = true;
        break;
      case op::pool_reenter:
        reenter_next_construction = true;
        break;
      case op::raw_cache_new:
        raw_cache_new();
        break;
      case op::raw_cache_get:
        raw_cache_get();
        break;
      case op::raw_cache_put:
        if (!raw_.held.empty()) {
          std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, raw_.held.size() - 1);
          raw_.cache->put(raw_.held[i]);
          raw_.held.erase(raw_.held.begin() + static_cast<std::ptrdiff_t>(i));
        }
        break;
      case op::raw_cache_maintain:
        if (raw_.cache) {
          switch (in_.ConsumeIntegralInRange<int>(0, 2)) {
            case 0:
              raw_.cache->invalidate();
              break;
            case 1:
              raw_.cache->invalidate_local();
              break;
            default:
              (void)raw_.cache->reclaim();
              break;
          }
        }
        break;
      case op::alloc_raw:
        alloc_raw();
        break;
      case op::free_raw:
        if (!allocations_.empty()) {
          std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, allocations_.size() - 1);
          free_allocation(i);
        }
        break;
      case op::free_foreign:
        free_foreign();
        break;
      case op::stop_start: {
        unsigned cpu = pick_cpu(in_);
        if (cpu >= stops_.size()) {
          expect_throw<std::out_of_range>([&] { stops_.stop(cpu); },
                                          "stop(bad CPU) must throw out_of_range");
        } else if (in_.ConsumeBool()) {
          stops_.stop(cpu);
          stops_.start(cpu);
        } else {
          stops_.stop_all();
          stops_.start_all();
        }
        break;
      }
      case op::stop_several: {
        unsigned cpu = pick_cpu(in_);
        stop_state_list list{&stops_, &values_.stops(), &stops_};  // a duplicate on purpose
        if (cpu >= percpu::cpu_count()) {
          expect_throw<std::out_of_range>([&] { percpu::stop_state::stop(list, cpu); },
                                          "stop(states, bad CPU) must throw out_of_range");
        } else {
          percpu::stop_state::stop(list, cpu);
          percpu::stop_state::start(list, cpu);
        }
        // Nothing may be left stopped, whatever happened above.
        values_.add(0);
        stops_.stop_all();
        stops_.start_all();
        break;
      }
      case op::count:
        break;
    }
  }

  using stop_state_list = std::vector<percpu::stop_state*>;

  void array_misuse() {
    switch (in_.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
        expect_throw<std::invalid_argument>([] { percpu::counter_array a(0); },
                                            "counter_array(0) must throw invalid_argument");
        break;
      case 1: {
        std::size_t n = percpu::max_allocation() / sizeof(std::int64_t) + 1 +
                        in_.ConsumeIntegral<std::uint32_t>();
        expect_throw<std::length_error>([&] { percpu::counter_array a(n); },
                                        "counter_array(too many) must throw length_error");
        break;
      }
      case 2: {
        std::size_t i = table_.size() + in_.ConsumeIntegral<std::uint16_t>();
        expect_throw<std::out_of_range>([&] { (void)table_.read(i); },
                                        "counter_array::read(bad index) must throw out_of_range");
        break;
      }
      default: {
        unsigned cpu = pick_cpu(in_);
        std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, table_.size());
        if (cpu >= percpu::cpu_count() || i >= table_.size()) {
          expect_throw<std::out_of_range>(
              [&] { (void)table_.read_on(cpu, i); },
              "counter_array::read_on(bad CPU or index) must throw out_of_range");
        } else {
          table_.add(i, 1);
          table_model_[i] += 1;
        }
      }
    }
  }

  void pool_get() {
    if (held_.size() >= max_held) return;
    bool refused = fail_next_construction;
    std::uint64_t constructed_before = census_.constructed.load();
    tracked* t = nullptr;
    try {
      t = in_.ConsumeBool() ? objects_.get() : objects_.try_get();
    } catch (const construction_refused&) {
      check(refused, "pool_cache::get threw the constructor's exception without a refusal");
      return;
    }
    if (t == nullptr) {
      check(refused, "pool_cache::try_get returned nullptr without a refusal");
      return;
    }
    // A refusal is consumed only by a construction: a cached object skips it.
    if (!concurrent_ && refused && census_.constructed.load() != constructed_before) {
      fail("a refused construction produced an object");
    }
    check(t->magic == alive_magic, "pool_cache handed out an object that is not constructed");
    check(t->serial >= first_valid_serial_,
          "pool_cache handed out an object constructed before the last invalidate");
    check(reinterpret_cast<std::uintptr_t>(t) % alignof(tracked) == 0,
          "pool_cache object misaligned");
    for (const held_object& h : held_)
      check(h.object != t, "pool_cache handed out an object already in use");
    held_.push_back({t, false});
  }

  void pool_put() {
    if (held_.empty()) return;
    std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, held_.size() - 1);
    held_object h = held_[i];
    held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
    std::uint64_t destroyed_before = census_.destroyed.load();
    objects_.put(h.object);
    if (h.across_invalidate) {
      check(census_.destroyed.load() > destroyed_before,
            "an object held across invalidate() was cached instead of destructed when put back");
    }
  }

  void pool_invalidate() {
    std::uint64_t next = census_.next_serial.load();
    objects_.invalidate();
    first_valid_serial_ = next;
    for (held_object& h : held_) h.across_invalidate = true;
    if (!concurrent_)
      check(objects_.stats().objects_cached == 0, "objects cached after invalidate()");
  }

  void raw_cache_new() {
    release_raw_cache();
    percpu::pool_options o;
    switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
        o.size = 0;
        break;
      case 1:
        o.size = (std::size_t{1} << 30) + 1 + in_.ConsumeIntegral<std::uint16_t>();
        break;
      default:
        o.size = in_.ConsumeIntegralInRange<std::size_t>(1, in_.ConsumeBool() ? 64 : 70000);
    }
    switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
        o.alignment = 0;
        break;
      case 1:
        o.alignment = in_.ConsumeIntegralInRange<std::size_t>(2, 5000) | 1;
        break;  // odd
      case 2:
        o.alignment = std::size_t{8192} << in_.ConsumeIntegralInRange<int>(0, 8);
        break;
      default:
        o.alignment = std::size_t{1} << in_.ConsumeIntegralInRange<int>(0, 12);
    }
    o.magazine_size = in_.ConsumeIntegralInRange<unsigned>(0, 300);
    bool bad = o.size == 0 || o.size > (std::size_t{1} << 30) || o.alignment == 0 ||
               (o.alignment & (o.alignment - 1)) != 0 || o.alignment > 4096;
    auto census = std::make_unique<raw_census>();
    census->size = o.size;
    o.construct = raw_construct;
    o.destroy = raw_destroy;
    o.arg = census.get();
    o.name = "fuzz-raw";
    if (bad) {
      expect_throw<std::invalid_argument>(
          [&] { percpu::raw_pool_cache c(o); },
          "raw_pool_cache with a bad size or alignment must throw invalid_argument");
      return;
    }
    std::size_t alignment = o.alignment;
    raw_.cache = std::make_unique<percpu::raw_pool_cache>(std::move(o));
    raw_.census = std::move(census);
    raw_alignment_ = alignment;
    check(raw_.cache->magazine_size() >= 4 && raw_.cache->magazine_size() <= 128,
          "magazine size outside 4..128");
  }

  void raw_cache_get() {
    if (!raw_.cache || raw_.held.size() >= max_held) return;
    bool refuse = in_.ConsumeIntegralInRange<int>(0, 7) == 0;
    raw_.census->refuse_next = refuse;
    void* p = raw_.cache->get();
    raw_.census->refuse_next = false;
    if (p == nullptr) {
      check(refuse, "raw_pool_cache::get returned nullptr without a refusal");
      return;
    }
    check(reinterpret_cast<std::uintptr_t>(p) % raw_alignment_ == 0,
          "raw_pool_cache object misaligned");
    check(stamped(p, raw_.census->size, reinterpret_cast<std::uintptr_t>(p)),
          "raw_pool_cache handed out an unconstructed object");
    for (void* q : raw_.held) check(q != p, "raw_pool_cache handed out an object already in use");
    raw_.held.push_back(p);
  }

  void release_raw_cache() {
    if (!raw_.cache) return;
    for (void* p : raw_.held) raw_.cache->put(p);
    raw_.held.clear();
    percpu::pool_stats s = raw_.cache->stats();
    check(s.constructions == raw_.census->constructed.load() &&
              s.destructions == raw_.census->destroyed.load(),
          "raw_pool_cache statistics disagree with its callbacks");
    check(s.constructions - s.destructions == s.objects_cached && s.objects_in_use == 0,
          "raw_pool_cache: constructions - destructions != cached with nothing in use");
    raw_.cache.reset();
    check(raw_.census->constructed.load() == raw_.census->destroyed.load(),
          "destroying a raw_pool_cache left objects constructed");
    raw_.census.reset();
  }

  void alloc_raw() {
    std::size_t size = 0;
    std::size_t alignment = alignof(std::max_align_t);
    int kind = in_.ConsumeIntegralInRange<int>(0, 7);
    switch (kind) {
      case 0:
        size = 0;
        break;
      case 1:
        size = percpu::max_allocation() + 1 + in_.ConsumeIntegral<std::uint32_t>();
        break;
      case 2:
        size = percpu::max_allocation();
        break;
      default:
        size = in_.ConsumeIntegralInRange<std::size_t>(1, kind == 3 ? 65536 : 512);
    }
    switch (in_.ConsumeIntegralInRange<int>(0, 5)) {
      case 0:
        alignment = 0;
        break;
      case 1:
        alignment = in_.ConsumeIntegralInRange<std::size_t>(2, 1 << 21) | 1;
        break;
      case 2:
        alignment = percpu::max_allocation() << in_.ConsumeIntegralInRange<int>(1, 4);
        break;
      default:
        alignment = std::size_t{1} << in_.ConsumeIntegralInRange<int>(0, 12);
    }
    if (size == 0 || alignment == 0 || (alignment & (alignment - 1)) != 0) {
      expect_throw<std::invalid_argument>(
          [&] { (void)percpu::allocate_raw(size, alignment); },
          "allocate_raw(size 0 or bad alignment) must throw invalid_argument");
      return;
    }
    if (size > percpu::max_allocation() || alignment > percpu::max_allocation()) {
      expect_throw<std::length_error>([&] { (void)percpu::allocate_raw(size, alignment); },
                                      "allocate_raw(too large) must throw length_error");
      return;
    }
    if (allocations_.size() >= 16) return;
    raw_allocation a{
        static_cast<unsigned char*>(percpu::allocate_raw(size, alignment)), size,
        static_cast<unsigned char>(1 + allocations_.size() + std::size_t{17} * next_fill_++)};
    check(reinterpret_cast<std::uintptr_t>(a.p0) % alignment == 0, "allocate_raw misaligned");
    for_each_sampled_byte(a, [](unsigned char& b) {
      check(b == 0, "allocate_raw returned memory that is not zero");
    });
    for_each_sampled_byte(a, [&](unsigned char& b) { b = a.fill; });
    allocations_.push_back(a);
  }

  void free_allocation(std::size_t i) {
    raw_allocation a = allocations_[i];
    for_each_sampled_byte(
        a, [&](unsigned char& b) { check(b == a.fill, "a per-CPU allocation was overwritten"); });
    percpu::free_raw(a.p0);
    allocations_.erase(allocations_.begin() + static_cast<std::ptrdiff_t>(i));
    if (!concurrent_ && in_.ConsumeBool()) {
      // Nothing allocates in between: the pointer is not live again.
      expect_throw<std::invalid_argument>([&] { percpu::free_raw(a.p0); },
                                          "double free_raw must throw invalid_argument");
    }
  }

  void free_foreign() {
    std::int64_t on_stack = 0;
    void* p = nullptr;
    switch (in_.ConsumeIntegralInRange<int>(0, 2)) {
      case 0:
        p = &on_stack;
        break;
      case 1:
        p = &census_;
        break;
      default: {
        // Strictly inside a live allocation, where no other one can start.
        if (allocations_.empty() || allocations_[0].size < 2) return;
        p = allocations_[0].p0 +
            in_.ConsumeIntegralInRange<std::size_t>(1, allocations_[0].size - 1);
      }
    }
    expect_throw<std::invalid_argument>([&] { percpu::free_raw(p); },
                                        "free_raw(foreign pointer) must throw invalid_argument");
  }

  // Everything the model knows, checked while no other thread works.
  void check_quiescent() {
    std::int64_t sum = 0;
    values_.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
    check(sum == storage_model_, "storage: the slots do not sum to what was added");

    std::int64_t total = events_.read();
    check(total == counter_added_ + counter_set_ - counter_taken_,
          "counter::read is not the exact total");
    std::int64_t error = events_.read_approx() - total;
    check(error <= events_.error_bound() && -error <= events_.error_bound(),
          "counter::read_approx beyond error_bound()");

    for (std::size_t i = 0; i < table_.size(); ++i)
      check(table_.read(i) == table_model_[i], "counter_array::read is not exact");

    percpu::pool_stats s = objects_.stats();
    std::uint64_t constructed = census_.constructed.load();
    std::uint64_t destroyed = census_.destroyed.load();
    check(s.constructions == constructed && s.destructions == destroyed,
          "pool_cache statistics disagree with the census");
    check(s.objects_in_use == held_.size(),
          "pool_cache objects_in_use differs from the objects held");
    check(constructed - destroyed == held_.size() + s.objects_cached,
          "pool_cache: constructions - destructions != held + cached");
  }

  void finish() {
    for (const held_object& h : held_) objects_.put(h.object);
    held_.clear();
    release_raw_cache();
    while (!allocations_.empty()) free_allocation(allocations_.size() - 1);
    check_quiescent();
  }

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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  bool concurrent = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  fail_next_construction = false;
  reenter_next_construction = false;
  {
    program p(in);
    p.run(concurrent);
  }
  fail_next_construction = false;
  return 0;
}
