// Rows for per-CPU operation queues (batch_queue): a table of 256 counters
// (32 cache lines) updated by key, the target of every row.
//
//   queue.update       one keyed update ("add 1 to counter k"):
//                      percpu         batch_queue::enqueue (applied in batches
//                                     under the table's lock)
//                      mutex_direct   lock the table, add, unlock
//                      atomic_direct  fetch_add on the counter (possible only
//                                     because this update is one atomic)
//   queue.read_Npct    a synchronous read of a uniformly random key of 256,
//                      where the first N % of the keys are hot (N = 1, 10,
//                      50: 2, 25 and 128 keys): after each read of a hot key
//                      the program updates every hot key once, which keeps
//                      that share of the keys pending.  Both implementations
//                      run this kind of stream (the same key distribution;
//                      each timed pass reads its own stretch of the random
//                      sequence), timed per read with the updates included:
//                      on average 0.02, 2.4 and 64 updates per read.
//                      percpu         batch_queue::read, which flushes only
//                                     when the key's scoreboard bit is set on
//                                     a CPU with pending operations, and
//                                     batch_queue::enqueue for the updates;
//                                     the note gives the share of reads that
//                                     flushed
//                      mutex_direct   lock the table, read, unlock; each
//                                     update: lock, add, unlock (updates that
//                                     come one at a time from anywhere, which
//                                     is what the queue is for; nothing is
//                                     ever pending)
//                      At 10 and 50 % the updates are most of the time, so
//                      the ratio there is mostly queue.update's; a program
//                      that could take the lock once for a burst of updates
//                      would beat both, and is not a row.  Until 2026-12-07
//                      only percpu's side made the updates (its re-enqueue
//                      after a flush) and the lock's side read alone: at
//                      50 % that charged percpu 128 updates per flush that
//                      the lock never paid, and the row read "percpu 17-23x
//                      slower".
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "harness.hpp"
#include "peers.hpp"
#include "percpu/queue.hpp"

namespace percpu_bench {

namespace {

constexpr std::uint64_t table_keys = 256;

struct update {
  std::uint64_t key;
  std::uint64_t delta;
};

// Key of a thread's i-th update: spread over the table, different per thread.
inline std::uint64_t key_of(unsigned thread, std::uint64_t i) {
  return (i * 2654435761u + std::uint64_t{thread} * 7919u) & (table_keys - 1);
}

class update_percpu final : public body {
 public:
  void run(unsigned thread, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) queue_.enqueue({key_of(thread, i), 1});
  }

 private:
  std::vector<std::uint64_t> table_ = std::vector<std::uint64_t>(table_keys, 0);
  percpu::batch_queue<update> queue_{[this](std::span<const update> ops) {
    for (const update& op : ops) table_[op.key] += op.delta;
  }};
};

class update_mutex final : public body {
 public:
  void run(unsigned thread, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      std::lock_guard<std::mutex> guard(lock_);
      table_[key_of(thread, i)] += 1;
    }
  }

 private:
  std::mutex lock_;
  std::vector<std::uint64_t> table_ = std::vector<std::uint64_t>(table_keys, 0);
};

class update_atomic final : public body {
 public:
  void run(unsigned thread, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i)
      table_[key_of(thread, i)].fetch_add(1, std::memory_order_relaxed);
  }

 private:
  std::unique_ptr<std::atomic<std::uint64_t>[]> table_ =
      std::make_unique<std::atomic<std::uint64_t>[]>(table_keys);
};

constexpr std::uint64_t read_keys = 256;

// The hot keys of queue.read_Npct: the first N % of the table, at least one.
inline std::uint64_t hot_keys_of(unsigned percent) {
  std::uint64_t keys = read_keys * percent / 100;
  return keys == 0 ? 1 : keys;
}

// Uniform random keys for the readers (a fixed LCG: the same sequence for
// every implementation).
inline std::uint64_t next_key(std::uint64_t& rng) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (rng >> 33) % read_keys;
}

class read_percpu final : public body {
 public:
  explicit read_percpu(unsigned percent) : hot_keys_(hot_keys_of(percent)) { update_hot_keys(); }
  void run(unsigned, std::uint64_t n) override {
    std::uint64_t sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      std::uint64_t key = next_key(rng_);
      sum += queue_.read(key, [&] { return table_[key]; });
      keep(sum);
      if (key < hot_keys_) update_hot_keys();
    }
  }
  std::string note() const override {
    percpu::queue_stats s = queue_.stats();
    char buf[96];
    std::snprintf(
        buf, sizeof buf, "%.1f %% of reads flushed",
        s.reads == 0 ? 0.0
                     : 100.0 * static_cast<double>(s.reads_flushed) / static_cast<double>(s.reads));
    return buf;
  }

 private:
  void update_hot_keys() {
    for (std::uint64_t k = 0; k < hot_keys_; ++k) queue_.enqueue({k, 1});
  }

  std::uint64_t hot_keys_;
  std::uint64_t rng_ = 12345;
  std::vector<std::uint64_t> table_ = std::vector<std::uint64_t>(read_keys, 0);
  // Capacity 1024: the pending updates stay below the early-flush mark
  // (512), so only reads apply them.  The harness pins the worker, so a read
  // of a hot key finds every update of the last round on its CPU and
  // flushes them all: at most one round (128) is pending; a migration in
  // the middle of a round could leave two rounds less one (255).
  mutable percpu::batch_queue<update> queue_{[this](std::span<const update> ops) {
                                               for (const update& op : ops)
                                                 table_[op.key] += op.delta;
                                             },
                                             {.capacity = 1024}};
};

class read_mutex final : public body {
 public:
  explicit read_mutex(unsigned percent) : hot_keys_(hot_keys_of(percent)) {}
  void run(unsigned, std::uint64_t n) override {
    std::uint64_t sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      std::uint64_t key = next_key(rng_);
      {
        std::lock_guard<std::mutex> guard(lock_);
        sum += table_[key];
      }
      keep(sum);
      if (key < hot_keys_) update_hot_keys();
    }
  }

 private:
  void update_hot_keys() {
    for (std::uint64_t k = 0; k < hot_keys_; ++k) {
      std::lock_guard<std::mutex> guard(lock_);
      table_[k] += 1;
    }
  }

  std::uint64_t hot_keys_;
  std::uint64_t rng_ = 12345;
  std::mutex lock_;
  std::vector<std::uint64_t> table_ = std::vector<std::uint64_t>(read_keys, 0);
};

template <class B>
row read_row(const char* name, const char* impl, unsigned percent) {
  return row{name, impl, {1}, [percent](unsigned) { return std::make_unique<B>(percent); }};
}

}  // namespace

void add_queue_rows(std::vector<row>& rows) {
  rows.push_back(make_row<update_percpu>("queue.update", "percpu", {1, 2}));
  rows.push_back(make_row<update_mutex>("queue.update", "mutex_direct", {1, 2}));
  rows.push_back(make_row<update_atomic>("queue.update", "atomic_direct", {1, 2}));
  for (auto [name, percent] : {std::pair{"queue.read_1pct", 1u}, std::pair{"queue.read_10pct", 10u},
                               std::pair{"queue.read_50pct", 50u}}) {
    rows.push_back(read_row<read_percpu>(name, "percpu", percent));
    rows.push_back(read_row<read_mutex>(name, "mutex_direct", percent));
  }
}

}  // namespace percpu_bench
