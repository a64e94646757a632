// batch_queue: each ordering guarantee under the conditions that break it -
// per-thread order while threads migrate and take signals, read-your-writes
// across CPUs, flush_all reaching CPUs nothing runs on, exactly-once
// application - plus the triggers (full buffer, age bound) and bad input.
//
// In the portable backend the "CPUs" are slots: a thread enqueues into the
// slot it would use now (with PERCPU_SLOTS=64 each thread has its own window
// of slots, and migrating moves it between them), so the same paths run.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "expect_error.hpp"
#include "percpu/queue.hpp"
#include "percpu/runtime/cpu.hpp"
#include "storm_util.hpp"
#include "test_scale.hpp"

namespace {

struct update {
  std::uint64_t key;
  std::uint64_t value;
};

// Runs the calling thread on `cpu` only.
void pin(unsigned cpu) {
  ASSERT_TRUE(percpu_test::pin(cpu));
}

// A table the queue's apply() writes; read only under the queue's lock.
struct table {
  explicit table(std::size_t keys) : values(keys, 0) {}
  std::vector<std::uint64_t> values;
  std::uint64_t applied = 0;
};

TEST(Queue, BadInputIsRejected) {
  using queue = percpu::batch_queue<update>;
  using percpu::errc;
  using percpu_test::fails_with;
  auto nothing = [](std::span<const update>) {};
  EXPECT_TRUE(fails_with(errc::invalid_argument, [] { queue q(nullptr); }));
  EXPECT_TRUE(fails_with(errc::invalid_argument, [&] { queue q(nothing, {.capacity = 0}); }));
  EXPECT_TRUE(fails_with(errc::too_large, [&] { queue q(nothing, {.capacity = 1u << 20}); }));
  queue q(nothing);
  EXPECT_TRUE(fails_with(errc::out_of_range, [&] { q.flush_cpu(percpu::cpu_count()); }));
}

// A full buffer applies itself, in order; the rest waits for a flush.
TEST(Queue, FullBufferAppliesInOrder) {
  std::vector<std::uint64_t> seen;
  percpu::batch_queue<update> q(
      [&](std::span<const update> ops) {
        for (const update& op : ops) seen.push_back(op.value);
      },
      {.capacity = 4});
  std::thread([&] {
    pin(percpu::allowed_cpus().front());
    for (std::uint64_t i = 0; i < 10; ++i) q.enqueue({1, i});
  }).join();
  // Two full buffers applied (8), two pending.
  EXPECT_EQ(seen.size(), 8u);
  q.flush_all();
  ASSERT_EQ(seen.size(), 10u);
  for (std::uint64_t i = 0; i < 10; ++i) EXPECT_EQ(seen[i], i);
  EXPECT_EQ(q.stats().applied, 10u);
}

// The largest record (eight words, cache-line aligned) with a key function
// instead of a `key` member: every word arrives intact and in order.
struct alignas(64) wide_op {
  std::uint64_t words[8];
};
struct wide_key {
  std::uint64_t operator()(const wide_op& op) const noexcept { return op.words[3]; }
};

TEST(Queue, WideRecordsWithAKeyFunctionArriveIntact) {
  std::vector<wide_op> seen;
  std::uint64_t misaligned = 0;
  percpu::batch_queue<wide_op, wide_key> q(
      [&](std::span<const wide_op> ops) {
        if (reinterpret_cast<std::uintptr_t>(ops.data()) % alignof(wide_op) != 0) ++misaligned;
        seen.insert(seen.end(), ops.begin(), ops.end());
      },
      {.capacity = 8});
  std::thread([&] {
    for (std::uint64_t i = 0; i < 50; ++i) {
      wide_op op{};
      for (std::uint64_t w = 0; w < 8; ++w) op.words[w] = i * 8 + w;
      q.enqueue(op);
    }
  }).join();
  // The last op's key (49 * 8 + 3) is pending: the read applies it.
  EXPECT_EQ(q.read(49 * 8 + 3, [&] { return seen.size(); }), 50u);
  q.flush_all();
  ASSERT_EQ(seen.size(), 50u);
  for (std::uint64_t i = 0; i < 50; ++i) {
    for (std::uint64_t w = 0; w < 8; ++w) EXPECT_EQ(seen[i].words[w], i * 8 + w);
  }
  EXPECT_EQ(misaligned, 0u);
}

// A read flushes only CPUs whose scoreboard has the key: a read of another
// key (whose bit differs) leaves the pending operation alone.
TEST(Queue, ReadFlushesOnlyCpusHoldingTheKey) {
  table t(1024);
  percpu::batch_queue<update> q([&](std::span<const update> ops) {
    for (const update& op : ops) t.values[op.key] = op.value;
  });
  std::uint64_t key = 7;
  std::uint64_t other = 8;
  while (percpu::detail::queue_core::scoreboard_bit(other) ==
         percpu::detail::queue_core::scoreboard_bit(key)) {
    ++other;
  }
  std::thread([&] {
    pin(percpu::allowed_cpus().front());
    q.enqueue({key, 42});
  }).join();
  EXPECT_EQ(q.read(other, [&] { return t.values[key]; }), 0u);
  EXPECT_EQ(q.stats().reads_flushed, 0u);
  EXPECT_EQ(q.read(key, [&] { return t.values[key]; }), 42u);
  auto s = q.stats();
  EXPECT_EQ(s.reads, 2u);
  EXPECT_EQ(s.reads_flushed, 1u);
  // Nothing pending now: the next read of the key flushes nothing.
  EXPECT_EQ(q.read(key, [&] { return t.values[key]; }), 42u);
  EXPECT_EQ(q.stats().reads_flushed, 1u);
}

// Operations left on a CPU whose thread is blocked, or gone, are applied by
// flush_all from another CPU, without that CPU's cooperation.
TEST(Queue, FlushAllAppliesOperationsOfIdleCpus) {
  auto allowed = percpu::allowed_cpus();
  table t(64);
  percpu::batch_queue<update> q(
      [&](std::span<const update> ops) {
        for (const update& op : ops) {
          t.values[op.key] += op.value;
          ++t.applied;
        }
      },
      {.capacity = 1024});
  // Far below the capacity (and its early-flush mark): nothing applies by itself.
  constexpr std::uint64_t per_thread = 100;
  std::promise<void> release;
  std::atomic<int> enqueued{0};
  // One thread blocks after enqueueing; one exits.
  std::thread blocked([&] {
    pin(allowed.back());
    for (std::uint64_t i = 0; i < per_thread; ++i) q.enqueue({1, 1});
    enqueued++;
    release.get_future().wait();
  });
  std::thread exited([&] {
    pin(allowed.back());
    for (std::uint64_t i = 0; i < per_thread; ++i) q.enqueue({2, 1});
    enqueued++;
  });
  exited.join();
  while (enqueued.load() < 2) std::this_thread::yield();
  std::thread([&] {
    pin(allowed.front());
    EXPECT_EQ(q.stats().applied, 0u);
    q.flush_all();
    EXPECT_EQ(q.stats().applied, 2 * per_thread);
  }).join();
  release.set_value();
  blocked.join();
  EXPECT_EQ(t.values[1], per_thread);
  EXPECT_EQ(t.values[2], per_thread);
  EXPECT_EQ(t.applied, 2 * per_thread);
}

// The age bound: an operation older than max_age is applied at a later
// check (every 64 enqueues of a thread, and every read) without a flush.
TEST(Queue, AgeBoundAppliesOldOperations) {
  std::uint64_t applied = 0;
  percpu::batch_queue<update> q([&](std::span<const update> ops) { applied += ops.size(); },
                                {.capacity = 1024, .max_age = std::chrono::milliseconds(1)});
  std::thread([&] {
    pin(percpu::allowed_cpus().front());
    q.enqueue({1, 1});
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    for (int i = 0; i < 63; ++i) q.enqueue({2, 1});  // the 64th enqueue checks the age
  }).join();
  std::uint64_t seen = q.read(3, [&] { return applied; });
  EXPECT_GE(seen, 1u);
  EXPECT_GE(q.stats().age_sweeps, 1u);
}

void ignore_signal(int) {}

// Per-thread order, exactly once: threads enqueue (thread, n) for n = 0, 1,
// 2, ... while they migrate between CPUs, take signals every few
// microseconds (aborting their sequences), and another thread flushes single
// CPUs, all CPUs and keyed reads.  apply() checks that each thread's n grows
// by exactly one: no operation lost, duplicated or reordered.
TEST(Queue, PerThreadOrderUnderMigrationStorm) {
  constexpr int workers = 4;
  auto allowed = percpu::allowed_cpus();
  std::vector<std::uint64_t> next(workers, 0);
  std::uint64_t violations = 0;
  std::uint64_t applied = 0;
  percpu::batch_queue<update> q(
      [&](std::span<const update> ops) {
        for (const update& op : ops) {
          if (op.value != next[op.key]) ++violations;
          next[op.key] = op.value + 1;
          ++applied;
        }
      },
      {.capacity = 64});
  percpu_test::scoped_handler handler(SIGUSR1, ignore_signal);
  ASSERT_TRUE(handler.installed());
  percpu_test::signaller signals(SIGUSR1);
  std::atomic<long> migrations{0};
  std::vector<std::uint64_t> issued(workers, 0);
  percpu_test::storm_workers crew(signals, workers, [&](int t, const std::atomic<bool>& stopping) {
    unsigned rng = 777u + static_cast<unsigned>(t);
    std::uint64_t n = 0;
    while (!stopping.load(std::memory_order_relaxed)) {
      q.enqueue({static_cast<std::uint64_t>(t), n++});
      if (n % 97 == 0 && percpu_test::migrate(rng, allowed)) migrations++;
    }
    issued[t] = n;
  });
  auto stormy = [&] { return migrations.load() > 100 && signals.sent() > 100; };
  percpu_test::storm_clock clock(std::chrono::seconds(2));
  unsigned round = 0;
  while (clock.more(stormy)) {
    switch (round++ % 3) {
      case 0:
        q.flush_cpu(round % percpu::cpu_count());
        break;
      case 1:
        q.flush_all();
        break;
      default:
        q.read(round % workers, [] { return 0; });
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  crew.stop();
  q.flush_all();
  EXPECT_EQ(violations, 0u);
  std::uint64_t total = 0;
  for (int t = 0; t < workers; ++t) {
    EXPECT_EQ(next[t], issued[t]) << "thread " << t;
    total += issued[t];
  }
  EXPECT_EQ(applied, total);
  EXPECT_EQ(q.stats().applied, total);
  std::printf(
      "queue storm: %.1f s, %llu operations, %ld migrations, %ld signals, %llu cpu flushes\n",
      clock.seconds(), static_cast<unsigned long long>(total), migrations.load(), signals.sent(),
      static_cast<unsigned long long>(q.stats().cpu_flushes));
  if (!stormy()) GTEST_SKIP() << "the machine could not produce the storm in time (above)";
}

// Read-your-writes across CPUs: a writer pinned to one CPU enqueues, round
// after round, value r for key r % 64 (and a filler update of another key)
// and publishes r with release; a reader pinned to another CPU takes the
// latest published round w with acquire and reads key w % 64.  Round w's
// enqueue returned before the read began, so read() must return at least w
// (later rounds may have written the key again).  The writer never waits
// for the reader, so a read's flush stops and fences the CPU the writer is
// running on, often in the middle of an enqueue the fence aborts.
//
// An earlier version handed every round over both ways (the writer waited
// for each read), 10^5 rounds: 173 s on a paravirtualised AMD VM, where a
// fence of a CPU that runs a thread of the process costs 15-25 us and about
// one in a hundred waits 10-40 ms for the interrupt to reach that CPU (a
// fence of an idle CPU, or the reader's own, costs 1-3 us there; on the
// Intel VM every fence costs about 4.5 us).  Every round paid such a fence,
// since the writer spun on its CPU waiting for the read.  The test now reads
// for a time budget, after a minimum number of reads, so that it takes
// about the same time on any machine, emulated ones included.
TEST(Queue, ReadSeesWritesEnqueuedOnAnotherCpu) {
  constexpr std::uint64_t keys = 64;
  constexpr std::uint64_t min_reads = 200;
  constexpr std::uint64_t max_reads = 100000;
  constexpr auto budget = std::chrono::milliseconds(500);
  auto allowed = percpu::allowed_cpus();
  unsigned writer_cpu = allowed.front();
  unsigned reader_cpu = allowed.size() > 1 ? allowed[1] : allowed.front();
  table t(keys * 2);
  percpu::batch_queue<update> q([&](std::span<const update> ops) {
    for (const update& op : ops) t.values[op.key] = op.value;
  });
  std::atomic<std::uint64_t> written{0};  // rounds whose enqueue has returned
  std::atomic<bool> done{false};
  std::thread writer([&] {
    pin(writer_cpu);
    for (std::uint64_t r = 1; !done.load(std::memory_order_relaxed); ++r) {
      q.enqueue({keys + r % keys, r});  // filler: another key
      q.enqueue({r % keys, r});
      // Release: the enqueues above happen before a read that sees r.
      written.store(r, std::memory_order_release);
    }
  });
  std::uint64_t reads = 0;
  std::uint64_t violations = 0;
  std::thread reader([&] {
    pin(reader_cpu);
    auto end = std::chrono::steady_clock::now() + budget;
    std::uint64_t last = 0;
    while (reads < max_reads && (reads < min_reads || std::chrono::steady_clock::now() < end)) {
      // A round not read yet: its key is most likely still pending.
      std::uint64_t w = written.load(std::memory_order_acquire);
      if (w == last) continue;
      if (q.read(w % keys, [&] { return t.values[w % keys]; }) < w) ++violations;
      last = w;
      ++reads;
    }
    done = true;
  });
  reader.join();
  writer.join();
  EXPECT_EQ(violations, 0u);
  auto s = q.stats();
  EXPECT_EQ(s.reads, reads);
  EXPECT_GT(s.reads_flushed, 0u);
  std::printf("read-your-writes: %llu reads (%llu flushed) during %llu rounds\n",
              static_cast<unsigned long long>(reads),
              static_cast<unsigned long long>(s.reads_flushed),
              static_cast<unsigned long long>(written.load()));
}

// Twelve queues used in turn by one migrating thread overflow its cache of
// eight entries: evicted entries must not break per-thread order.
TEST(Queue, ThreadCacheEvictionKeepsOrder) {
  constexpr int queues = 12;
  std::vector<std::uint64_t> next(queues, 0);
  std::uint64_t violations = 0;
  std::vector<std::unique_ptr<percpu::batch_queue<update>>> qs;
  qs.reserve(queues);
  for (int i = 0; i < queues; ++i) {
    qs.push_back(std::make_unique<percpu::batch_queue<update>>(
        [&, i](std::span<const update> ops) {
          for (const update& op : ops) {
            if (op.value != next[i]) ++violations;
            next[i] = op.value + 1;
          }
        },
        percpu::queue_options{.capacity = 16}));
  }
  auto allowed = percpu::allowed_cpus();
  std::thread([&] {
    unsigned rng = 99;
    for (std::uint64_t n = 0; n < 20000; ++n) {
      qs[n % queues]->enqueue({0, n / queues});
      if (n % 61 == 0) percpu_test::migrate(rng, allowed);
    }
  }).join();
  for (auto& q : qs) q->flush_all();
  EXPECT_EQ(violations, 0u);
  for (int i = 0; i < queues; ++i) EXPECT_EQ(next[i], (20000u + queues - 1 - i) / queues);
}

}  // namespace
