// Rows for per-CPU operation queues (batch_queue): a table of 256 counters
// (32 cache lines) updated by key, the target of every row.
//
//   queue.update       one keyed update ("add 1 to counter k"):
//                      percpu         batch_queue::enqueue (applied in batches
//                                     under the table's lock)
//                      mutex_direct   lock the table, add, unlock
//                      atomic_direct  fetch_add on the counter (possible only
//                                     because this update is one atomic)
//   queue.read_Npct    a synchronous read of a uniformly random key while N %
//                      of the 256 keys have operations pending (N = 1, 10, 50):
//                      percpu         batch_queue::read: flushes only when the
//                                     key's scoreboard bit is set on a CPU
//                                     with pending operations; after a read
//                                     that flushed, the pending keys are
//                                     enqueued again (in the time measured),
//                                     so every read sees N % pending; the
//                                     note gives the fraction that flushed
//                      mutex_direct   lock the table, read, unlock (nothing is
//                                     ever pending: the floor)
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

// Uniform random keys for the readers (a fixed LCG: the same sequence for
// every implementation).
inline std::uint64_t next_key(std::uint64_t& rng) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (rng >> 33) % read_keys;
}

class read_percpu final : public body {
 public:
  explicit read_percpu(unsigned percent) : pending_keys_(read_keys * percent / 100) {
    if (pending_keys_ == 0) pending_keys_ = 1;
    make_pending();
  }
  void run(unsigned, std::uint64_t n) override {
    std::uint64_t sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      std::uint64_t key = next_key(rng_);
      sum += queue_.read(key, [&] { return table_[key]; });
      keep(sum);
      if (table_generation_ != seen_generation_) {
        // The read flushed (apply() ran): make the same keys pending again.
        seen_generation_ = table_generation_;
        make_pending();
      }
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
  void make_pending() {
    // The first pending_keys_ keys (keys 0, 1, ...): one update each.
    for (std::uint64_t k = 0; k < pending_keys_; ++k) queue_.enqueue({k, 1});
  }

  std::uint64_t pending_keys_;
  std::uint64_t rng_ = 12345;
  std::uint64_t table_generation_ = 0;  // apply() calls
  std::uint64_t seen_generation_ = 0;
  std::vector<std::uint64_t> table_ = std::vector<std::uint64_t>(read_keys, 0);
  // Capacity 1024: the pending keys (at most 128) stay below the early-flush
  // mark, so only reads apply them.
  mutable percpu::batch_queue<update> queue_{[this](std::span<const update> ops) {
                                               for (const update& op : ops)
                                                 table_[op.key] += op.delta;
                                               ++table_generation_;
                                             },
                                             {.capacity = 1024}};
};

class read_mutex final : public body {
 public:
  explicit read_mutex(unsigned) {}
  void run(unsigned, std::uint64_t n) override {
    std::uint64_t sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      std::uint64_t key = next_key(rng_);
      {
        std::lock_guard<std::mutex> guard(lock_);
        sum += table_[key];
      }
      keep(sum);
    }
  }

 private:
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
