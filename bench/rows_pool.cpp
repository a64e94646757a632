// Rows for pool_cache: what a program pays per object with percpu's cache
// against the allocators it would otherwise call.
//
//   pool.get_put           get then put, repeated (the cache-hit path), sizes
//                          64 and 256: percpu vs the minimal per-CPU pointer
//                          stack (rseq_raw.hpp: the floor of the mechanism),
//                          malloc/free under glibc,
//                          jemalloc, mimalloc, gperftools tcmalloc and TBB's
//                          scalable malloc (each in a child process with the
//                          library preloaded), and
//                          std::pmr::synchronized_pool_resource
//   pool.producer_consumer one thread gets, the other puts (objects cross
//                          CPUs every time), the same impls
//   pool.ctor_heavy        an object whose constructor zeroes 4 KiB and
//                          initialises a mutex: percpu (constructed once,
//                          reused) vs new/delete
//   pool.invalidate        invalidate() with 10^4 objects cached on two CPUs
//                          vs its floor: one broadcast fence plus 10^4
//                          destructor calls
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <memory_resource>
#include <new>
#include <thread>
#include <vector>

#include "child.hpp"
#include "harness.hpp"
#include "peers.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/runtime/cpu.hpp"
#include "rseq_raw.hpp"

namespace percpu_bench {

namespace {

// Where objects come from, per implementation: get(size) and put(p, size).
class percpu_source {
 public:
  explicit percpu_source(std::size_t size) : cache_(options(size)) {}
  void* get(std::size_t) noexcept { return cache_.get(); }
  void put(void* p, std::size_t) noexcept { cache_.put(p); }

 private:
  static percpu::pool_options options(std::size_t size) {
    percpu::pool_options o;
    o.size = size;
    o.name = "bench";
    return o;
  }
  percpu::raw_pool_cache cache_;
};

#if defined(PERCPU_BENCH_HAVE_RSEQ_RAW)
// The floor: a per-CPU stack of object pointers popped and pushed by the
// minimal sequences, filled with half its capacity on every CPU; an empty
// stack falls back on malloc, a full one on free.
class rseq_raw_source {
 public:
  explicit rseq_raw_source(std::size_t size)
      : lines_(percpu::cpu_count()), items_(std::size_t{lines_.size()} * capacity) {
    for (unsigned cpu = 0; cpu < lines_.size(); ++cpu) {
      rseq_raw::line& l = lines_.data()[cpu];
      l.items = &items_[std::size_t{cpu} * capacity];
      l.capacity = capacity;
      for (; l.count < capacity / 2; ++l.count) l.items[l.count] = std::malloc(size);
    }
  }
  ~rseq_raw_source() {
    for (unsigned cpu = 0; cpu < lines_.size(); ++cpu) {
      rseq_raw::line& l = lines_.data()[cpu];
      for (std::uint32_t i = 0; i < l.count; ++i) std::free(l.items[i]);
    }
  }
  rseq_raw_source(const rseq_raw_source&) = delete;
  rseq_raw_source& operator=(const rseq_raw_source&) = delete;
  void* get(std::size_t size) noexcept {
    void* p = rseq_raw::pop(lines_.data());
    return p != nullptr ? p : std::malloc(size);
  }
  void put(void* p, std::size_t) noexcept {
    if (!rseq_raw::push(lines_.data(), p)) std::free(p);
  }

 private:
  static constexpr std::uint32_t capacity = 64;
  rseq_raw::lines lines_;
  std::vector<void*> items_;
};
#endif

class malloc_source {
 public:
  explicit malloc_source(std::size_t) {}
  static void* get(std::size_t size) noexcept { return std::malloc(size); }
  static void put(void* p, std::size_t) noexcept { std::free(p); }
};

class pmr_sync_source {
 public:
  explicit pmr_sync_source(std::size_t) {}
  void* get(std::size_t size) { return resource_.allocate(size, 16); }
  void put(void* p, std::size_t size) { resource_.deallocate(p, size, 16); }

 private:
  std::pmr::synchronized_pool_resource resource_;
};

// Makes `p` (and what it points to) visible to the outside: the compiler may
// neither drop the allocation nor the stores into the object before it.
inline void escape(void* p) {
  asm volatile("" : : "r"(p) : "memory");
}

// Every thread gets an object and puts it back, n times.
template <class Source>
class get_put final : public body {
 public:
  explicit get_put(std::size_t size) : size_(size), source_(size) {}
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      void* p = source_.get(size_);
      escape(p);
      source_.put(p, size_);
    }
  }

 private:
  std::size_t size_;
  Source source_;
};

// Thread 0 gets objects and hands them to thread 1 through a ring; thread
// 1 puts them.  Measured at 2 threads; objects always change CPU.
template <class Source>
class producer_consumer final : public body {
 public:
  explicit producer_consumer(std::size_t size) : size_(size), source_(size) {}
  void run(unsigned thread, std::uint64_t n) override {
    if (thread == 0) {
      for (std::uint64_t i = 0; i < n; ++i) {
        void* p = source_.get(size_);
        std::uint64_t at = head_.load(std::memory_order_relaxed);
        while (at - tail_.load(std::memory_order_acquire) == ring_size) {
        }
        ring_[at % ring_size] = p;
        head_.store(at + 1, std::memory_order_release);
      }
    } else if (thread == 1) {
      for (std::uint64_t i = 0; i < n; ++i) {
        std::uint64_t at = tail_.load(std::memory_order_relaxed);
        while (head_.load(std::memory_order_acquire) == at) {
        }
        void* p = ring_[at % ring_size];
        tail_.store(at + 1, std::memory_order_release);
        source_.put(p, size_);
      }
    }
  }

 private:
  static constexpr std::uint64_t ring_size = 256;
  std::size_t size_;
  Source source_;
  alignas(64) std::atomic<std::uint64_t> head_{0};
  alignas(64) std::atomic<std::uint64_t> tail_{0};
  alignas(64) void* ring_[ring_size] = {};
};

// ---- constructor-heavy objects -------------------------------------------------

struct heavy {
  heavy() {
    std::memset(buffer, 0, sizeof buffer);
    pthread_mutex_init(&mutex, nullptr);
  }
  ~heavy() { pthread_mutex_destroy(&mutex); }
  heavy(const heavy&) = delete;
  heavy& operator=(const heavy&) = delete;
  char buffer[4096];
  pthread_mutex_t mutex;
};

class ctor_heavy_percpu final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      heavy* p = cache_.get();
      escape(p);
      cache_.put(p);
    }
  }

 private:
  percpu::pool_cache<heavy> cache_{"bench.heavy"};
};

class ctor_heavy_new_delete final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      auto* p = new heavy;
      escape(p);
      delete p;
    }
  }
};

// ---- invalidate ------------------------------------------------------------------

// A destructor with an effect the compiler must keep (a store into the
// dying object itself would be dropped as dead): it reads the object and
// adds to a global, as a destructor that releases something does.
inline std::uint64_t destroyed_sum = 0;
struct small_object {
  std::uint64_t words[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  ~small_object() { destroyed_sum += words[1]; }
};

constexpr unsigned invalidate_objects = 10000;

// An invalidate's untimed refill costs far more than the call itself, so
// the harness's iteration count (chosen for the timed part) would make a
// measurement last seconds: run at most 16 and report their average per
// operation (the bodies' timed_ns() covers n operations at that average).
std::uint64_t runs(std::uint64_t n) {
  return n < 16 ? n : 16;
}

// Two threads pinned to two CPUs each take half the objects, wait for each
// other (so that 10^4 objects exist at once), and put them back: the cache
// then holds them on both CPUs (arrays and depot).  Untimed.
template <class Cache>
void fill_on_two_cpus(Cache& cache) {
  std::vector<unsigned> cpus = percpu::allowed_cpus();
  std::barrier<> all_taken(2);
  std::thread t[2];
  for (unsigned i = 0; i < 2; ++i) {
    t[i] = std::thread([&, i] {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpus[i % cpus.size()], &set);
      sched_setaffinity(0, sizeof(set), &set);
      std::vector<small_object*> held(invalidate_objects / 2);
      for (auto& p : held) p = cache.get();
      all_taken.arrive_and_wait();
      for (auto* p : held) cache.put(p);
    });
  }
  for (auto& th : t) th.join();
}

class invalidate_percpu final : public body {
 public:
  void run(unsigned thread, std::uint64_t n) override {
    if (thread != 0) return;
    double total = 0;
    for (std::uint64_t i = 0; i < runs(n); ++i) {
      fill_on_two_cpus(cache_);
      auto start = std::chrono::steady_clock::now();
      cache_.invalidate();
      total += std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start)
                   .count();
    }
    ns_ = total / static_cast<double>(runs(n)) * static_cast<double>(n);
  }
  double timed_ns() const override { return ns_; }

 private:
  percpu::pool_cache<small_object> cache_{"bench.invalidate"};
  double ns_ = 0;
};

// The floor: what any invalidate of 10^4 cached objects must do at least -
// one broadcast fence, then the destructor of each object, found through
// an array of pointers as a cache holds them.  The objects are constructed
// by the same two pinned threads as percpu's, so they sit in the same CPUs'
// caches when the destructors run.
class invalidate_floor final : public body {
 public:
  invalidate_floor() : objects_(invalidate_objects), pointers_(invalidate_objects) {
    for (unsigned i = 0; i < invalidate_objects; ++i) pointers_[i] = &objects_[i];
  }
  void run(unsigned thread, std::uint64_t n) override {
    if (thread != 0) return;
    double total = 0;
    for (std::uint64_t i = 0; i < runs(n); ++i) {
      handed_out_ = 0;
      fill_on_two_cpus(*this);
      auto start = std::chrono::steady_clock::now();
      syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0);
      for (small_object* p : pointers_) p->~small_object();
      escape(objects_.data());
      total += std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start)
                   .count();
    }
    ns_ = total / static_cast<double>(runs(n)) * static_cast<double>(n);
  }
  double timed_ns() const override { return ns_; }

  // The fillers' side: construct the next object of the array.
  small_object* get() {
    small_object* p = pointers_[handed_out_.fetch_add(1, std::memory_order_relaxed)];
    return ::new (static_cast<void*>(p)) small_object();
  }
  void put(small_object*) noexcept {}

 private:
  std::vector<small_object> objects_;
  std::vector<small_object*> pointers_;
  std::atomic<unsigned> handed_out_{0};
  double ns_ = 0;
};

struct preloaded_peer {
  const char* impl;
  const char* library;  // "" for glibc's own malloc
  const char* package;
};
constexpr preloaded_peer preloaded_peers[] = {
    {"glibc", "", ""},
    {"jemalloc", "libjemalloc.so.2", "libjemalloc2"},
    {"mimalloc", "libmimalloc.so.2", "libmimalloc2.0"},
    {"tcmalloc", "libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"},
    {"tbbmalloc", "libtbbmalloc_proxy.so.2", "libtbbmalloc2"},
};

// The get_put or producer_consumer body (by row name) over `Source`.
template <class Source>
std::unique_ptr<body> allocator_body(const std::string& row_name, std::size_t size) {
  if (row_name == "pool.get_put") return std::make_unique<get_put<Source>>(size);
  if (row_name == "pool.producer_consumer")
    return std::make_unique<producer_consumer<Source>>(size);
  return nullptr;
}

void add_allocator_rows(std::vector<row>& rows, std::vector<missing_peer>& missing,
                        const std::string& name, const std::vector<unsigned>& threads,
                        const std::vector<std::size_t>& sizes, bool report_missing) {
  for (std::size_t size : sizes) {
    rows.push_back(row{name, "percpu", threads,
                       [name, size](unsigned) { return allocator_body<percpu_source>(name, size); },
                       size});
    // Each index mode, in a child process (docs/design.md, section 6).
    for (const index_peer& peer :
         name == "pool.get_put" ? index_peers() : std::vector<index_peer>{}) {
      rows.push_back(row{name, peer.impl, threads, index_maker(peer, name, size), size});
    }
#if defined(PERCPU_BENCH_HAVE_RSEQ_RAW)
    // The floor of the cache-hit path (objects that change CPU are not its case).
    if (name == "pool.get_put" && rseq_raw::available()) {
      rows.push_back(row{
          name, "rseq_raw", threads,
          [name, size](unsigned) { return allocator_body<rseq_raw_source>(name, size); }, size});
    }
#endif
    for (const preloaded_peer& peer : preloaded_peers) {
      bool preloaded = peer.library[0] != '\0';
      std::string library = preloaded ? find_library(peer.library) : "";
      if (preloaded && library.empty()) {
        // Once per peer, not once per size.
        if (report_missing && size == sizes.front()) missing.push_back({peer.impl, peer.package});
        continue;
      }
      rows.push_back(row{name, peer.impl, threads,
                         [name, size, library](unsigned t) -> std::unique_ptr<body> {
                           return std::make_unique<child_body>(name, size, t, library);
                         },
                         size});
    }
    rows.push_back(
        row{name, "pmr_sync_pool", threads,
            [name, size](unsigned) { return allocator_body<pmr_sync_source>(name, size); }, size});
  }
}

}  // namespace

std::unique_ptr<body> make_malloc_body(const std::string& row_name, std::size_t size) {
  return allocator_body<malloc_source>(row_name, size);
}

std::unique_ptr<body> make_pool_percpu_body(const std::string& row_name, std::size_t size) {
  return allocator_body<percpu_source>(row_name, size);
}

void add_pool_rows(std::vector<row>& rows, std::vector<missing_peer>& missing) {
  add_allocator_rows(rows, missing, "pool.get_put", {1, 2}, {64, 256}, true);
  add_allocator_rows(rows, missing, "pool.producer_consumer", {2}, {64}, false);
  rows.push_back(make_row<ctor_heavy_percpu>("pool.ctor_heavy", "percpu", {1}));
  rows.push_back(make_row<ctor_heavy_new_delete>("pool.ctor_heavy", "new_delete", {1}));
  rows.push_back(make_row<invalidate_percpu>("pool.invalidate", "percpu", {1}));
  rows.push_back(make_row<invalidate_floor>("pool.invalidate", "floor", {1}));
}

}  // namespace percpu_bench
