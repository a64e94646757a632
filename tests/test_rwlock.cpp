// percpu::rwlock: mutual exclusion under migration, writer progress, std
// lock adapters, misuse detection.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "expect_error.hpp"
#include "percpu/rwlock.hpp"
#include "storm_util.hpp"

namespace {

using namespace std::chrono_literals;

TEST(Rwlock, WorksWithStandardLockAdapters) {
  percpu::rwlock lock;
  {
    std::shared_lock<percpu::rwlock> r1(lock);
    std::shared_lock<percpu::rwlock> r2(lock);  // readers share
    EXPECT_FALSE(lock.try_lock());
  }
  {
    std::unique_lock<percpu::rwlock> w(lock);
    std::thread([&] {
      EXPECT_FALSE(lock.try_lock_shared());
      EXPECT_FALSE(lock.try_lock());
    }).join();
  }
  percpu::rwlock other;
  { std::scoped_lock both(lock, other); }
  EXPECT_TRUE(lock.try_lock());
  lock.unlock();
  EXPECT_TRUE(lock.try_lock_shared());
  lock.unlock_shared();
}

// Readers check an invariant that writers break and restore inside their
// section: a == b outside any write section.  Threads migrate all the time.
TEST(Rwlock, ReadersNeverSeeAWriterHalfwayUnderMigration) {
#if defined(__SANITIZE_THREAD__)
  constexpr long read_target = 200000;
  constexpr long write_target = 2000;
#else
  constexpr long read_target = 1000000;
  constexpr long write_target = 10000;
#endif
  percpu::rwlock lock;
  long a = 0;
  long b = 0;
  std::atomic<long> reads{0};
  std::atomic<long> writes{0};
  std::atomic<long> violations{0};
  std::atomic<bool> done{false};
  auto allowed = percpu::allowed_cpus();
  std::vector<std::thread> threads;
  threads.reserve(3);
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      unsigned rng = 5u + static_cast<unsigned>(r);
      for (long i = 0; !done.load(std::memory_order_relaxed); ++i) {
        lock.lock_shared();
        long x = a;
        long y = b;
        lock.unlock_shared();
        if (x != y) violations.fetch_add(1);
        reads.fetch_add(1, std::memory_order_relaxed);
        if (i % 1024 == 0) percpu_test::migrate(rng, allowed);
      }
    });
  }
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      unsigned rng = 50u + static_cast<unsigned>(w);
      for (long i = 0; !done.load(std::memory_order_relaxed); ++i) {
        lock.lock();
        a = a + 1;  // broken ...
        for (int k = 0; k < 20; ++k) std::atomic_signal_fence(std::memory_order_seq_cst);
        b = a;  // ... and restored
        lock.unlock();
        writes.fetch_add(1, std::memory_order_relaxed);
        if (i % 64 == 0) percpu_test::migrate(rng, allowed);
      }
    });
  }
  auto deadline = std::chrono::steady_clock::now() + 120s;
  while ((reads.load() < read_target || writes.load() < write_target) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  done = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_EQ(a, writes.load());
  EXPECT_EQ(a, b);
  std::printf(
      "rwlock torture: %ld read sections, %ld write sections, 0 violations expected, %ld seen\n",
      reads.load(), writes.load(), violations.load());
  if (reads.load() < read_target || writes.load() < write_target) {
    GTEST_SKIP() << "the machine could not run the sections in 120 s (above)";
  }
}

// A writer waiting behind a stream of overlapping readers (there is always a
// reader inside) still gets in: new readers stay out once it waits.
TEST(Rwlock, WriterIsNotStarvedByAStreamOfReaders) {
  percpu::rwlock lock;
  std::atomic<bool> done{false};
  std::atomic<long> reads{0};
  std::vector<std::thread> readers;
  readers.reserve(4);
  for (int r = 0; r < 4; ++r) {
    readers.emplace_back([&] {
      while (!done.load(std::memory_order_relaxed)) {
        lock.lock_shared();
        auto until = std::chrono::steady_clock::now() + 50us;
        while (std::chrono::steady_clock::now() < until) {
        }
        lock.unlock_shared();
        reads.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  while (reads.load() < 100) std::this_thread::yield();
  std::chrono::steady_clock::duration longest{};
  for (int i = 0; i < 50; ++i) {
    auto start = std::chrono::steady_clock::now();
    lock.lock();
    longest = std::max(longest, std::chrono::steady_clock::now() - start);
    lock.unlock();
    std::this_thread::sleep_for(1ms);
  }
  done = true;
  for (auto& t : readers) t.join();
  // A liveness bound, not a speed figure: a starved writer would wait for as
  // long as the readers run, so the bound is far above any scheduling delay
  // a loaded machine causes (the writer's thread may not run for a while).
  EXPECT_LT(longest, 60s) << "writer waited "
                          << std::chrono::duration<double, std::milli>(longest).count() << " ms";
}

// Write-side misuse is an error in every build, and leaves the lock as it
// was: held by its owner, free for the next writer.
TEST(Rwlock, RecursiveWriteLockIsAnError) {
  using percpu::errc;
  using percpu_test::fails_with;
  percpu::rwlock lock;
  lock.lock();
  EXPECT_TRUE(fails_with(errc::would_deadlock, [&] { lock.lock(); }));
  EXPECT_TRUE(fails_with(errc::would_deadlock, [&] { (void)lock.try_lock(); }));
  lock.unlock();
  EXPECT_TRUE(lock.try_lock());
  lock.unlock();
}

TEST(Rwlock, UnlockWithoutTheLockIsAnError) {
  using percpu::errc;
  using percpu_test::fails_with;
  percpu::rwlock lock;
  EXPECT_TRUE(fails_with(errc::not_owner, [&] { lock.unlock(); }));
  lock.lock();
  bool refused = false;
  std::thread([&] { refused = fails_with(errc::not_owner, [&] { lock.unlock(); }); }).join();
  EXPECT_TRUE(refused);
  EXPECT_FALSE(lock.try_lock_shared());  // still held by this thread
  lock.unlock();
  EXPECT_TRUE(lock.try_lock_shared());
  lock.unlock_shared();
}

}  // namespace
