// Tests of pool_cache: constructed-object reuse, conservation of objects,
// exactly-once construction and destruction, and the generation-safe
// invalidate under migration, signals and concurrent reclaims.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "expect_error.hpp"
#include "gtest/gtest.h"
#include "percpu/pool_cache.hpp"
#include "percpu/runtime/cpu.hpp"
#include "storm_util.hpp"
#include "test_scale.hpp"

namespace {

void pin_to(unsigned cpu) {
  ASSERT_TRUE(percpu_test::pin(cpu));
}

// Counts its constructions and destructions; marks itself live.
struct counted {
  static inline std::atomic<long> constructed{0};
  static inline std::atomic<long> destroyed{0};
  static constexpr std::uint64_t live_mark = 0x11feface11feface;
  std::uint64_t mark = live_mark;
  std::uint64_t payload[6] = {};
  counted() { constructed.fetch_add(1); }
  ~counted() {
    mark = 0xdead;
    destroyed.fetch_add(1);
  }
  static void reset() {
    constructed = 0;
    destroyed = 0;
  }
};

TEST(PoolCache, ObjectsStayConstructedAndAreReused) {
  counted::reset();
  {
    percpu::pool_cache<counted> cache("reuse");
    std::thread([&] {
      pin_to(percpu::allowed_cpus().front());
      counted* a = cache.get();
      EXPECT_EQ(a->mark, counted::live_mark);
      a->payload[0] = 42;
      cache.put(a);
      counted* b = cache.get();
      EXPECT_EQ(b, a);                // the same CPU's array hands back the last object put
      EXPECT_EQ(b->payload[0], 42u);  // still constructed, not re-initialised
      cache.put(b);
      for (int i = 0; i < 10000; ++i) cache.put(cache.get());
    }).join();
    EXPECT_EQ(counted::constructed.load(), 1);
    EXPECT_EQ(counted::destroyed.load(), 0);
    percpu::pool_stats s = cache.stats();
    EXPECT_EQ(s.constructions, 1u);
    EXPECT_EQ(s.objects_cached, 1u);
    EXPECT_EQ(s.objects_in_use, 0u);
  }
  EXPECT_EQ(counted::destroyed.load(), 1);  // the cache's destructor destructs what it holds
}

// Pinned: objects a thread leaves in one CPU's array are not found from
// another, so a thread that migrated between the puts and the gets would
// construct more (it once saw 5032 live objects on a loaded machine).
TEST(PoolCache, ManyObjectsFlowThroughTheDepotAndNothingIsLost) {
  counted::reset();
  percpu::pool_cache<counted> cache("depot");
  std::thread([&] {
    pin_to(percpu::allowed_cpus().front());
    std::vector<counted*> held;
    held.reserve(5000);
    for (int i = 0; i < 5000; ++i) held.push_back(cache.get());
    std::set<counted*> distinct(held.begin(), held.end());
    EXPECT_EQ(distinct.size(), held.size());
    for (counted* p : held) cache.put(p);
    percpu::pool_stats s = cache.stats();
    EXPECT_EQ(s.constructions - s.destructions, s.objects_cached);
    EXPECT_GT(s.depot_full, 0u);
    held.clear();
    for (int i = 0; i < 5000; ++i) held.push_back(cache.get());
    EXPECT_EQ(counted::constructed.load() - counted::destroyed.load(), 5000);
    for (counted* p : held) cache.put(p);
  }).join();
}

// A magazine has room for the magazine size it was made for, not for the
// largest: with room for 128 objects each (1 kB), 8000 objects cached in
// magazines of 4 took 2 MB of magazine memory beside 500 kB of objects.
TEST(PoolCache, MagazinesTakeMemoryForTheirSizeOnly) {
  percpu::pool_options o;
  o.size = 64;
  o.magazine_size = 4;
  o.name = "small magazines";
  percpu::raw_pool_cache cache(o);
  constexpr int n = 8000;
  std::thread([&] {
    pin_to(percpu::allowed_cpus().front());
    std::vector<void*> held;
    held.reserve(n);
    for (int i = 0; i < n; ++i) held.push_back(cache.get());
    for (void* p : held) cache.put(p);
  }).join();
  percpu::pool_stats s = cache.stats();
  EXPECT_EQ(s.objects_cached, std::uint64_t{n});
  EXPECT_GT(s.depot_full, 0u);
  // n / 4 magazines of 16 + 5 * 8 bytes: 112 kB, in 64 kB chunks.
  EXPECT_LE(s.bytes_magazines, std::uint64_t{256} * 1024) << s.depot_full << " full magazines";
  EXPECT_GT(s.bytes_magazines, 0u);
}

// The mappings of this process (lines of /proc/self/maps).
long mapping_count() {
  std::ifstream maps("/proc/self/maps");
  long lines = 0;
  for (std::string line; std::getline(maps, line);) ++lines;
  return lines;
}

// The mappings of this process that hold at least one of `objects`.
long mappings_holding(std::vector<void*> objects) {
  std::sort(objects.begin(), objects.end());
  std::ifstream maps("/proc/self/maps");
  long count = 0;
  for (std::string line; std::getline(maps, line);) {
    char* dash = nullptr;
    auto low = reinterpret_cast<void*>(std::strtoul(line.c_str(), &dash, 16));
    auto high = reinterpret_cast<void*>(std::strtoul(dash + 1, nullptr, 16));
    auto first = std::lower_bound(objects.begin(), objects.end(), low);
    if (first != objects.end() && *first < high) ++count;
  }
  return count;
}

// A cache's slabs share mappings.  Each slab its own mapping once brought a
// cache of about 4 GB to the kernel's limit of 65530 mappings, after which
// every mmap of the process fails (src/pool_cache/slab.cpp).
TEST(PoolCache, SlabsShareMappings) {
  if (percpu::backend().under_valgrind) GTEST_SKIP() << "valgrind places mappings itself";
  if (percpu::backend().under_sanitizer) {
    GTEST_SKIP() << "ThreadSanitizer maps shadow memory beside each mapping";
  }
  percpu::pool_options o;
  o.size = 64;
  o.name = "many slabs";
  percpu::raw_pool_cache cache(o);
  constexpr int n = 100000;
  std::vector<void*> held;
  held.reserve(n);
  long before = mapping_count();
  for (int i = 0; i < n; ++i) held.push_back(cache.get());
  long runs = mappings_holding(held);
  std::uint64_t slabs = cache.stats().slabs;
  for (void* p : held) cache.put(p);
  ASSERT_GE(slabs, 64u);
  // A few runs of merged slabs (a run ends where something else is
  // mapped), counted as the mappings that hold the objects.  AddressSanitizer's
  // runtime maps 64 kB regions where runs would grow (9-13 runs of 123 slabs
  // there, 2-3 elsewhere; counting all the process added failed the asan
  // stage, 2026-12-07); one mapping per slab, the bug guarded, is 123.
#if defined(__SANITIZE_ADDRESS__)  // GCC (the asan stage)
  constexpr std::uint64_t slabs_per_run = 4;
#else
  constexpr std::uint64_t slabs_per_run = 8;
#endif
  EXPECT_LE(runs, static_cast<long>(slabs / slabs_per_run)) << slabs << " slabs";
  // Every slab given back, a run in one munmap each: no mapping is left
  // split behind (magazine chunks stay until the cache goes).
  cache.invalidate();
  std::size_t given_back = cache.reclaim();
  EXPECT_EQ(cache.stats().slabs, 0u);
  EXPECT_GE(given_back, slabs * 64 * 1024);
  EXPECT_LE(mapping_count() - before, static_cast<long>(slabs / 8));
}

struct fails_every_third {
  static inline std::atomic<int> attempts{0};
  static inline std::atomic<int> live{0};
  fails_every_third() {
    if (attempts.fetch_add(1) % 3 == 2) throw std::runtime_error("third constructor");
    live.fetch_add(1);
  }
  ~fails_every_third() { live.fetch_sub(1); }
  char data[100];
};

TEST(PoolCache, ConstructorFailureIsReportedAndLeaksNothing) {
  percpu::pool_cache<fails_every_third> cache("failing");
  std::vector<fails_every_third*> got;
  int failures = 0;
  for (int i = 0; i < 30; ++i) {
    try {
      got.push_back(cache.get());
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "third constructor");
      ++failures;
    }
  }
  EXPECT_EQ(failures, 10);
  if (fails_every_third* p = cache.try_get()) got.push_back(p);
  percpu::pool_stats s = cache.stats();
  EXPECT_GE(s.constructor_failures, 10u);
  for (auto* p : got) cache.put(p);
  cache.invalidate();
  EXPECT_EQ(fails_every_third::live.load(), 0);
  cache.reclaim();
  EXPECT_EQ(cache.stats().slabs, 0u);  // every slot went back, every slab was given back
}

TEST(PoolCache, AnObjectFromBeforeAnInvalidateIsNeverCachedAgain) {
  counted::reset();
  percpu::pool_cache<counted> cache("generation");
  counted* old_object = cache.get();
  counted* cached = cache.get();
  cache.put(cached);
  long destroyed_before = counted::destroyed.load();
  cache.invalidate();
  EXPECT_EQ(counted::destroyed.load(), destroyed_before + 1);  // the cached one
  cache.put(old_object);  // in use during the invalidate: destructed, not cached
  EXPECT_EQ(counted::destroyed.load(), destroyed_before + 2);
  counted* fresh = cache.get();
  EXPECT_EQ(counted::constructed.load(), 3);
  cache.put(fresh);
  EXPECT_EQ(cache.stats().invalidations, 1u);
}

TEST(PoolCache, InvalidateReachesACpuTheProcessCanNoLongerRunOn) {
  std::vector<unsigned> cpus = percpu::allowed_cpus();
  if (cpus.size() < 2) GTEST_SKIP() << "needs two CPUs";
  counted::reset();
  percpu::pool_cache<counted> cache("idle");
  std::thread([&] {
    pin_to(cpus[1]);
    std::vector<counted*> held;
    held.reserve(300);
    for (int i = 0; i < 300; ++i) held.push_back(cache.get());
    for (counted* p : held) cache.put(p);
  }).join();
  EXPECT_EQ(counted::constructed.load(), 300);
  std::thread([&] {
    pin_to(cpus[0]);  // this thread, the only one using the cache, may not run on cpus[1]
    cache.invalidate();
  }).join();
  EXPECT_EQ(counted::destroyed.load(), 300);
  percpu::pool_stats s = cache.stats();
  EXPECT_EQ(s.objects_cached, 0u);
  for (const percpu::pool_cpu_stats& c : s.cpus) EXPECT_EQ(c.cached, 0u) << "cpu " << c.cpu;
}

TEST(PoolCache, InvalidateLocalEmptiesThisCpuAndTheDepot) {
  std::vector<unsigned> cpus = percpu::allowed_cpus();
  counted::reset();
  percpu::pool_cache<counted> cache("local");
  std::thread([&] {
    pin_to(cpus[0]);
    std::vector<counted*> held;
    held.reserve(200);
    for (int i = 0; i < 200; ++i) held.push_back(cache.get());
    for (counted* p : held) cache.put(p);
    cache.invalidate_local();
    EXPECT_EQ(counted::destroyed.load(), 200);
    counted* again = cache.get();  // no generation change: constructs anew here
    EXPECT_EQ(counted::constructed.load(), 201);
    cache.put(again);
  }).join();
}

struct invalidates_itself {
  static inline percpu::pool_cache<invalidates_itself>* cache = nullptr;
  static inline bool refused = false;
  invalidates_itself() {
    try {
      cache->invalidate();
    } catch (const percpu::error& e) {
      refused = e.code() == percpu::errc::would_deadlock;
    }
  }
};

TEST(PoolCache, InvalidateFromInsideAConstructorIsRefused) {
  percpu::pool_cache<invalidates_itself> cache("self");
  invalidates_itself::cache = &cache;
  invalidates_itself* p = cache.get();
  EXPECT_TRUE(invalidates_itself::refused);
  cache.put(p);
}

TEST(PoolCache, BadOptionsAreRejected) {
  using percpu::errc;
  using percpu_test::fails_with;
  percpu::pool_options zero;
  EXPECT_TRUE(fails_with(errc::invalid_argument, [&] { percpu::raw_pool_cache c{zero}; }));
  percpu::pool_options huge;
  huge.size = std::size_t{1} << 40;
  EXPECT_TRUE(fails_with(errc::too_large, [&] { percpu::raw_pool_cache c{huge}; }));
  percpu::pool_options odd;
  odd.size = 8;
  odd.alignment = 24;
  EXPECT_TRUE(fails_with(errc::invalid_argument, [&] { percpu::raw_pool_cache c{odd}; }));
  percpu::pool_options wide;
  wide.size = 8;
  wide.alignment = 8192;
  EXPECT_TRUE(fails_with(errc::too_large, [&] { percpu::raw_pool_cache c{wide}; }));
}

TEST(PoolCache, RawBuffersHonourSizeAndAlignment) {
  for (std::size_t align : {8u, 64u, 256u, 4096u}) {
    percpu::pool_options o;
    o.size = 100;
    o.alignment = align;
    percpu::raw_pool_cache cache(o);
    std::vector<void*> held;
    for (int i = 0; i < 100; ++i) {
      void* p = cache.get();
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % align, 0u);
      std::memset(p, 0xab, 100);
      held.push_back(p);
    }
    for (void* p : held) cache.put(p);
  }
}

// A signal handler's get and put interrupting their own thread inside the
// cache's code must never wait for a lock that thread holds.  History: in
// builds with the debug checks every put ran pool_check_put, which took the
// registry's lock and each cache's slab lock with plain mutexes, so a
// handler whose thread was interrupted holding one waited for itself and
// the child hung until its alarm (the torture below hung the same way);
// the debug stage left both out.  A checked put now skips the slab walk
// when its thread is inside a no-wait section (src/pool_cache/
// debug_stats.cpp), and the debug stage runs both.
percpu::pool_cache<counted>* handler_cache = nullptr;

void get_put_handler(int) {
  int saved = errno;
  if (counted* p = handler_cache->try_get()) handler_cache->put(p);
  errno = saved;
}

TEST(PoolCacheChild, SignalHandlersGetAndPutOnTheirOwnThread) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  // A deadlock ends the child: a watchdog that sees no round finish for a
  // minute.  (A fixed alarm for the whole test once did so on an emulated
  // machine that was merely slow: 20,000 rounds took more than a minute.)
  std::atomic<int> rounds_done{0};
  std::atomic<bool> finished{false};
  std::thread watchdog([&] {
    int seen = -1;
    for (int quiet_s = 0; !finished.load(); std::this_thread::sleep_for(std::chrono::seconds(1))) {
      int now = rounds_done.load();
      quiet_s = now == seen ? quiet_s + 1 : 0;
      seen = now;
      if (quiet_s >= 60) {
        std::printf("no round finished for a minute: a deadlock\n");
        std::fflush(stdout);
        _exit(3);
      }
    }
  });
  percpu::pool_cache<counted> cache("handlers");
  handler_cache = &cache;
  percpu_test::scoped_handler handler(SIGUSR1, get_put_handler);
  ASSERT_TRUE(handler.installed());
  percpu_test::signaller signals(SIGUSR1);
  signals.enroll();
  signals.start();
  std::vector<counted*> held;
  for (int round = 0, rounds = percpu_test::scaled(20000, 2000); round < rounds; ++round) {
    for (int i = 0; i < 64; ++i) held.push_back(cache.get());
    for (counted* p : held) cache.put(p);
    held.clear();
    if (round % 1000 == 0) cache.reclaim();
    rounds_done.store(round + 1);
  }
  signals.stop();
  handler_cache = nullptr;
  finished.store(true);
  watchdog.join();
  std::printf("%ld signals, no deadlock\n", signals.sent());
}

TEST(PoolCache, SignalHandlersGetAndPutOnTheirOwnThread) {
  auto child = percpu_test::run_self("PoolCacheChild.SignalHandlers*", {});
  EXPECT_EQ(child.exit_code, 0) << "no progress for a minute (a deadlock), or a failure\n"
                                << child.output;
  EXPECT_NE(child.output.find("no deadlock"), std::string::npos) << child.output;
}

// ---- the torture ------------------------------------------------------------
//
// Threads get and put with migration and signals (the handler gets and puts
// too) while another thread calls invalidate() and reclaim() in a loop.
// Checked: every object handed out is constructed and not handed out twice;
// no get that began after an invalidate() returned sees an object whose
// construction ended before that invalidate began; at the end,
// constructions - destructions == objects cached (none in use).

std::atomic<std::uint64_t> invalidates_started{0};
std::atomic<std::uint64_t> invalidates_returned{0};
std::atomic<long> violations{0};
std::atomic<long> dead_objects{0};
std::atomic<long> handed_out_twice{0};
std::atomic<long> stale_objects{0};

struct tortured {
  static inline std::atomic<long> constructed{0};
  static inline std::atomic<long> destroyed{0};
  std::uint64_t mark;
  std::uint64_t started_at_end;  // invalidates begun when the construction ended
  std::atomic<int> handed_out{0};
  tortured() : mark(counted::live_mark) {
    constructed.fetch_add(1);
    started_at_end = invalidates_started.load();
  }
  ~tortured() {
    mark = 0;
    destroyed.fetch_add(1);
  }
};

percpu::pool_cache<tortured>* torture_cache = nullptr;
std::atomic<long> handler_gets{0};

// Takes an object and checks it; returns nullptr if get failed.
tortured* checked_get(percpu::pool_cache<tortured>& cache) noexcept {
  std::uint64_t returned = invalidates_returned.load();
  tortured* p = cache.try_get();
  if (p == nullptr) return nullptr;
  bool dead = p->mark != counted::live_mark;
  bool twice = p->handed_out.exchange(1) != 0;
  bool stale = p->started_at_end < returned;
  if (dead) dead_objects.fetch_add(1);
  if (twice) handed_out_twice.fetch_add(1);
  if (stale) stale_objects.fetch_add(1);
  if (dead || twice || stale) violations.fetch_add(1);
  return p;
}
void checked_put(percpu::pool_cache<tortured>& cache, tortured* p) noexcept {
  p->handed_out.store(0);
  cache.put(p);
}

void torture_handler(int) {
  int saved = errno;
  if (tortured* p = checked_get(*torture_cache)) {
    handler_gets.fetch_add(1, std::memory_order_relaxed);
    checked_put(*torture_cache, p);
  }
  errno = saved;
}

TEST(PoolCache, TortureWithMigrationSignalsInvalidatesAndReclaims) {
  tortured::constructed = 0;
  tortured::destroyed = 0;
  violations = 0;
  handler_gets = 0;
  {
    percpu::pool_cache<tortured> cache("torture");
    torture_cache = &cache;
    percpu_test::scoped_handler handler(SIGUSR1, torture_handler);
    percpu_test::signaller signals(SIGUSR1);
    std::atomic<long> gets{0};
    std::vector<unsigned> allowed = percpu::allowed_cpus();
    percpu_test::storm_workers crew(signals, 4, [&](int t, const std::atomic<bool>& stopping) {
      unsigned rng = 12345 + static_cast<unsigned>(t);
      std::mt19937 random(static_cast<unsigned>(t));
      std::vector<tortured*> held;
      long mine = 0;
      while (!stopping.load(std::memory_order_relaxed)) {
        if ((++mine & 255) == 0) percpu_test::migrate(rng, allowed);
        if (held.size() < 200 && (held.empty() || random() % 3 != 0)) {
          if (tortured* p = checked_get(cache)) held.push_back(p);
        } else {
          std::size_t n = 1 + random() % held.size();
          for (std::size_t i = 0; i < n; ++i) {
            checked_put(cache, held.back());
            held.pop_back();
          }
        }
      }
      for (tortured* p : held) checked_put(cache, p);
      gets.fetch_add(mine);
    });
    std::atomic<long> invalidations{0};
    std::thread maintainer([&] {
      while (!crew.stopping()) {
        invalidates_started.fetch_add(1);
        cache.invalidate();
        invalidates_returned.fetch_add(1);
        if (++invalidations % 8 == 0) cache.reclaim();
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
    auto stormy = [&] { return invalidations.load() > 100 && handler_gets.load() > 0; };
    percpu_test::storm_clock clock(std::chrono::seconds(3));
    clock.wait(stormy);
    crew.stop();
    maintainer.join();
    percpu_test::allow(allowed);

    EXPECT_EQ(violations.load(), 0)
        << dead_objects.load() << " not constructed, " << handed_out_twice.load()
        << " handed out twice, " << stale_objects.load() << " from before an invalidate";
    percpu::pool_stats s = cache.stats();
    EXPECT_EQ(s.constructions, static_cast<std::uint64_t>(tortured::constructed.load()));
    EXPECT_EQ(s.destructions, static_cast<std::uint64_t>(tortured::destroyed.load()));
    EXPECT_EQ(s.constructions - s.destructions, s.objects_cached);
    EXPECT_EQ(s.objects_in_use, 0u);
    cache.invalidate();
    EXPECT_EQ(tortured::constructed.load(), tortured::destroyed.load());
    std::printf(
        "torture: %.1f s, %ld gets, %ld handler gets, %ld signals, %ld invalidations, "
        "%llu constructions\n",
        clock.seconds(), gets.load(), handler_gets.load(), signals.sent(), invalidations.load(),
        static_cast<unsigned long long>(s.constructions));
    torture_cache = nullptr;
    if (!stormy()) GTEST_SKIP() << "the machine could not produce the storm in time (above)";
  }
}

// Resident memory of the process, kB: the Rss of /proc/self/smaps_rollup,
// which the kernel counts by walking the page tables.  /proc/self/statm's
// count is not exact before Linux 6.2: each thread keeps its own share of
// it and adds it in only every 64 page faults or when it exits, so the
// same child read 168 kB or 2576 kB of growth by chance in the emulated
// arm64 guest (6.1), and this test failed there in CI.
long resident_kb() {
  std::ifstream rollup("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(rollup, line)) {
    if (line.rfind("Rss:", 0) == 0) return std::strtol(line.c_str() + 4, nullptr, 10);
  }
  return -1;
}

// 16 caches used by one thread, then all their objects put back: what the
// process's resident memory grew by.
TEST(PoolCacheChild, ResidentGrowth) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  // One CPU: a thread that moved over many would use as many slots.
  ASSERT_TRUE(percpu_test::pin(percpu::allowed_cpus().front()));
  percpu::cpu_count();  // start-up's own memory first
  long before = resident_kb();
  std::vector<std::unique_ptr<percpu::pool_cache<std::uint64_t>>> caches;
  for (int c = 0; c < 16; ++c) {
    caches.push_back(std::make_unique<percpu::pool_cache<std::uint64_t>>("growth"));
    std::vector<std::uint64_t*> held;
    held.reserve(100);
    for (int i = 0; i < 100; ++i) held.push_back(caches.back()->get());
    for (auto* p : held) caches.back()->put(p);
  }
  std::printf("grew=%ld\n", resident_kb() - before);
}

long growth_with_slots(const char* slots) {
  auto r =
      percpu_test::run_self("PoolCacheChild.ResidentGrowth", {"PERCPU_BACKEND=portable", slots});
  std::size_t at = r.output.find("grew=");
  EXPECT_NE(at, std::string::npos) << r.output;
  return at == std::string::npos ? -1 : std::strtol(r.output.c_str() + at + 5, nullptr, 10);
}

// A slot no thread used costs no memory: 16 caches with 64 slots, two of
// them used, grow the process about as much as with 2 slots.  Arming every
// slot's array when a cache was made cost 2 MB more with 64 (336 kB against
// 2336 on the development VM); the margin, 1 MB, is for noise (runs of the
// same child differ by up to 100 kB here, and by 288 kB between the two
// children in an emulated 64-CPU guest).
TEST(PoolCache, SlotsNoThreadUsedCostNoMemory) {
  if (percpu::backend().under_sanitizer) {
    GTEST_SKIP() << "ThreadSanitizer's shadow memory follows every read of an unused slot";
  }
  long two = growth_with_slots("PERCPU_SLOTS=2");
  long wide = growth_with_slots("PERCPU_SLOTS=64");
  EXPECT_LE(wide, two + 1024) << "kB grown with 64 slots against 2";
}

}  // namespace
