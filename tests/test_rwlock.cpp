// percpu::rwlock: mutual exclusion under migration, writer progress, std
// lock adapters, misuse detection.
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <cerrno>
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
// reader inside) still gets in: new readers stay out once it waits.  Returns
// the longest wait of `writes` write sections, `pause` apart.
std::chrono::steady_clock::duration longest_write_wait(std::chrono::milliseconds pause,
                                                       int writes) {
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
  for (int i = 0; i < writes; ++i) {
    auto start = std::chrono::steady_clock::now();
    lock.lock();
    longest = std::max(longest, std::chrono::steady_clock::now() - start);
    lock.unlock();
    std::this_thread::sleep_for(pause);
  }
  done = true;
  for (auto& t : readers) t.join();
  return longest;
}

TEST(Rwlock, WriterIsNotStarvedByAStreamOfReaders) {
  auto longest = longest_write_wait(1ms, 50);
  // A liveness bound, not a speed figure: a starved writer would wait for as
  // long as the readers run, so the bound is far above any scheduling delay
  // a loaded machine causes (the writer's thread may not run for a while).
  EXPECT_LT(longest, 60s) << "writer waited "
                          << std::chrono::duration<double, std::milli>(longest).count() << " ms";
}

// The same with writes back to back: the bias stays revoked, the readers
// stream through the slow path, and the writers still get in.
TEST(Rwlock, WriterIsNotStarvedByAStreamOfReadersWhileTheBiasIsRevoked) {
  auto longest = longest_write_wait(0ms, 500);
  EXPECT_LT(longest, 2s) << "writer waited "
                         << std::chrono::duration<double, std::milli>(longest).count() << " ms";
}

// A fresh lock is biased; a write revokes the bias and it stays revoked
// while no reader takes the slow path; readers re-arm it once no write has
// come for the quiet period; the next write revokes it again.  Readers wait
// for a writer in either mode.
TEST(Rwlock, BiasIsRevokedByAWriteAndReArmedByReadersAfterAQuietPeriod) {
  percpu::rwlock lock;
  EXPECT_TRUE(lock.biased());
  lock.lock_shared();
  lock.unlock_shared();
  EXPECT_TRUE(lock.biased()) << "readers alone revoked the bias";
  for (int round = 0; round < 3; ++round) {
    lock.lock();
    EXPECT_FALSE(lock.biased());
    std::atomic<bool> entered{false};
    std::thread reader([&] {
      lock.lock_shared();
      entered = true;
      lock.unlock_shared();
    });
    std::this_thread::sleep_for(20ms);
    EXPECT_FALSE(entered.load()) << "a reader entered while the writer held the lock";
    EXPECT_FALSE(lock.try_lock_shared());
    lock.unlock();
    reader.join();
    EXPECT_TRUE(entered.load());
    EXPECT_FALSE(lock.biased()) << "re-armed without a quiet period";
    std::this_thread::sleep_for(5ms);
    EXPECT_FALSE(lock.biased()) << "re-armed without a reader";
    // Readers on the slow path re-arm it after the quiet period (1 ms): keep
    // reading until they have, with a deadline only a broken re-arm reaches.
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!lock.biased() && std::chrono::steady_clock::now() < deadline) {
      lock.lock_shared();
      lock.unlock_shared();
    }
    EXPECT_TRUE(lock.biased());
    EXPECT_TRUE(lock.try_lock());
    EXPECT_FALSE(lock.biased());
    lock.unlock();
    // try_lock that finds a reader inside fails and leaves the bias revoked.
    lock.lock_shared();
    std::thread([&] { EXPECT_FALSE(lock.try_lock()); }).join();
    lock.unlock_shared();
    EXPECT_FALSE(lock.biased());
  }
}

// ---- The bias under a storm --------------------------------------------------

// What the storm's readers and writers share.
struct storm_state {
  percpu::rwlock lock;
  long a = 0;  // written by writers only: a + 1, then (later) b = a
  long b = 0;
  std::atomic<int> readers_in{0};
  std::atomic<int> writers_in{0};
  std::atomic<long> violations{0};
  std::atomic<long> handler_reads{0};
};
storm_state* storm = nullptr;
// Set by a reader thread around its own read section: a handler that
// interrupted its thread's use of the lock must not take it (a writer that
// waits for the interrupted section would never let the handler in).
thread_local volatile sig_atomic_t using_lock = 0;

void read_section(storm_state& s) {
  s.lock.lock_shared();
  s.readers_in.fetch_add(1, std::memory_order_relaxed);
  if (s.writers_in.load(std::memory_order_relaxed) != 0) s.violations.fetch_add(1);
  long x = s.a;
  long y = s.b;
  if (x != y) s.violations.fetch_add(1);
  s.readers_in.fetch_sub(1, std::memory_order_relaxed);
  s.lock.unlock_shared();
}

void reading_handler(int) {
  int saved = errno;
  if (storm != nullptr && using_lock == 0) {
    read_section(*storm);
    storm->handler_reads.fetch_add(1, std::memory_order_relaxed);
  }
  errno = saved;
}

// Readers in threads and in signal handlers, and writers, check exclusion
// inside their sections (a reader never sees a writer inside or its pair of
// words halfway; a writer never sees a reader or another writer inside)
// while the bias is revoked and re-armed again and again: writers write in
// bursts separated by pauses longer than the quiet period, so readers keep
// re-arming the bias and writers keep revoking it, each transition racing
// with readers that migrate and are interrupted by signals every few
// microseconds.
TEST(Rwlock, ExclusionHoldsWhileTheBiasIsRevokedAndReArmedUnderSignalsAndMigration) {
#if defined(__SANITIZE_THREAD__)
  constexpr long read_target = 200000;
  constexpr long burst_target = 40;
#else
  constexpr long read_target = 2000000;
  constexpr long burst_target = 200;
#endif
  storm_state s;
  storm = &s;
  percpu_test::scoped_handler handler_guard(SIGUSR1, reading_handler);
  ASSERT_TRUE(handler_guard.installed());
  auto allowed = percpu::allowed_cpus();
  std::atomic<long> reads{0};
  std::atomic<long> writes{0};
  std::atomic<long> bursts{0};
  std::atomic<long> biased_bursts{0};  // bursts that found the bias re-armed
  std::atomic<bool> done{false};
  percpu_test::signaller sig(SIGUSR1);
  std::vector<std::thread> writers;
  writers.reserve(2);
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      unsigned rng = 70u + static_cast<unsigned>(w);
      while (!done.load(std::memory_order_relaxed)) {
        if (s.lock.biased()) biased_bursts.fetch_add(1, std::memory_order_relaxed);
        for (int i = 0; i < 20; ++i) {
          s.lock.lock();
          if (s.writers_in.fetch_add(1) != 0 || s.readers_in.load() != 0) s.violations.fetch_add(1);
          s.a = s.a + 1;
          for (int k = 0; k < 20; ++k) std::atomic_signal_fence(std::memory_order_seq_cst);
          s.b = s.a;
          s.writers_in.fetch_sub(1);
          s.lock.unlock();
        }
        writes.fetch_add(20, std::memory_order_relaxed);
        bursts.fetch_add(1, std::memory_order_relaxed);
        percpu_test::migrate(rng, allowed);
        std::this_thread::sleep_for(std::chrono::microseconds(3000 + 1000 * w));
      }
    });
  }
  percpu_test::storm_workers readers(sig, 3, [&](int r, const std::atomic<bool>& stopping) {
    unsigned rng = 7u + static_cast<unsigned>(r);
    for (long i = 0; !stopping.load(std::memory_order_relaxed); ++i) {
      using_lock = 1;
      std::atomic_signal_fence(std::memory_order_seq_cst);
      read_section(s);
      std::atomic_signal_fence(std::memory_order_seq_cst);
      using_lock = 0;
      reads.fetch_add(1, std::memory_order_relaxed);
      if (i % 1024 == 0) percpu_test::migrate(rng, allowed);
    }
  });
  auto deadline = std::chrono::steady_clock::now() + 120s;
  while ((reads.load() < read_target || bursts.load() < burst_target ||
          biased_bursts.load() < burst_target / 4 || s.handler_reads.load() == 0) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  readers.stop();
  done = true;
  for (auto& t : writers) t.join();
  storm = nullptr;
  EXPECT_EQ(s.violations.load(), 0);
  EXPECT_EQ(s.a, writes.load());
  EXPECT_EQ(s.a, s.b);
  EXPECT_GE(reads.load(), read_target);
  EXPECT_GE(bursts.load(), burst_target);
  EXPECT_GE(biased_bursts.load(), burst_target / 4) << "the bias was rarely re-armed";
  EXPECT_GT(s.handler_reads.load(), 0);
  std::printf(
      "rwlock bias storm: %ld read sections (%ld in handlers), %ld write sections in %ld bursts "
      "(%ld found the bias re-armed), %ld signals, %ld violations\n",
      reads.load(), s.handler_reads.load(), writes.load(), bursts.load(), biased_bursts.load(),
      sig.sent(), s.violations.load());
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
