// percpu/queue.hpp - per-CPU batching of updates to shared state.
//
// Problem: a shared structure guarded by one lock (a page table, a table of
// counters, an index) is updated from every CPU.  Taking the lock for each
// update makes every CPU wait on one cache line; queueing updates per CPU and
// applying them in batches (the Xen per-CPU MMU queues) removes that wait,
// but creates ordering problems (NetBSD tech-kern, "CVS commit:
// src/sys/arch/xen", replies of 22 August 2011 onwards): an update queued on
// one CPU and a read of the same entry on another, a thread whose earlier
// updates sit on the CPU it just left, updates stranded on a CPU that
// nothing runs on any more.
//
// Mechanism: batch_queue<Op> keeps, per CPU, a buffer of operations and a
// scoreboard (a 512-bit map of hash(key) over the operations pending there).
// enqueue() appends to the calling thread's CPU with one restartable sequence
// (no lock, no atomic instruction).  A flush of CPU c takes the target's
// lock, stops c, copies its operations out, clears its buffer and
// scoreboard, starts c and calls the user's apply() on the batch, all under
// the lock.  Ordering comes by construction (docs/queues.md):
//   - per thread: each thread enqueues only onto the CPU of its previous
//     enqueue; a thread that finds itself elsewhere first flushes that CPU,
//     so its operations are applied in the order issued across migrations;
//   - read(k, fn): flushes exactly the CPUs whose scoreboard has k's bit and
//     whose buffer is not empty, then runs fn under the target's lock, so fn
//     sees every operation on k whose enqueue returned before read() began;
//   - flush_all(): stops every CPU (one broadcast fence), idle ones included,
//     and applies everything enqueued before it was called.
//
// Ownership: the queue owns its per-CPU buffers and the target's lock; the
// target itself is whatever apply() and read()'s fn touch.  apply() runs with
// the lock held and must not throw or use the same queue.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <type_traits>
#include <utility>

#include "percpu/core/detail/block.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "percpu/runtime/error.hpp"

namespace percpu {

struct queue_options {
  // Operations buffered per CPU before the buffer is applied (1 to 16384).
  std::uint32_t capacity = 256;
  // Age bound; zero for none.  Checked every 64 enqueues of a thread and at
  // every read(): once max_age has passed since the last sweep, the thread
  // that notices applies every CPU's buffer (see docs/queues.md for exactly
  // what this bounds; there is no background thread).
  std::chrono::nanoseconds max_age{0};
};

// Counts since construction.  Read with batch_queue::stats().
struct queue_stats {
  std::uint64_t applied = 0;        // operations passed to apply()
  std::uint64_t batches = 0;        // apply() calls
  std::uint64_t cpu_flushes = 0;    // CPU buffers taken (one stop each; flush_all counts each CPU)
  std::uint64_t reads = 0;          // read() calls
  std::uint64_t reads_flushed = 0;  // read() calls that had to flush at least one CPU
  std::uint64_t age_sweeps = 0;     // flush_all() calls made by the age bound
};

// The default key of an operation: its `key` member, converted to 64 bits.
struct key_member {
  template <class Op>
  std::uint64_t operator()(const Op& op) const noexcept {
    return static_cast<std::uint64_t>(op.key);
  }
};

namespace detail {

// The calling thread's memory of which CPU each queue's last enqueue went
// to: a few most-recently-used entries per thread, keyed by queue id (ids are
// never reused, so a destroyed queue's entry matches no other queue).
struct queue_thread_entry {
  std::uint64_t id = 0;
  unsigned cpu = 0;
  std::uint32_t ticks = 0;  // enqueues, for the early-flush and age checks
};
struct queue_thread_cache {
  static constexpr unsigned size = 8;
  queue_thread_entry entries[size];
  // Bit (id % 64) set when an entry with that id was evicted: the thread may
  // still have operations on that queue's CPU, which is no longer known.
  std::uint64_t evicted = 0;
};
inline thread_local queue_thread_cache queue_cache{};

// The type-independent part of batch_queue (src/queue.cpp): per-CPU record
// buffers, stop words, the target's lock, flushing and the thread cache's
// slow paths.  Records are raw words here.
class queue_core {
 public:
  using apply_function = void (*)(void* context, const void* records, std::size_t count);

  queue_core(std::size_t record_words, const queue_options& options, apply_function apply,
             void* context);
  ~queue_core();
  queue_core(const queue_core&) = delete;
  queue_core& operator=(const queue_core&) = delete;

  // The calling thread's entry for this queue (created on first use).
  queue_thread_entry& entry() {
    queue_thread_entry& first = queue_cache.entries[0];
    if (first.id == id_) [[likely]]
      return first;
    return find_entry();
  }

  // The scoreboard bit of a key: a multiplicative hash, top 9 bits.
  static unsigned scoreboard_bit(std::uint64_t key) noexcept {
    return static_cast<unsigned>((key * 0x9e3779b97f4a7c15ull) >> 55);
  }

  record_array* arrays0() const noexcept { return arrays_.data0(); }
  std::uint32_t* stop0() const noexcept { return arrays_.stop_words(); }
  bool has_age_bound() const noexcept { return max_age_ns_ != 0; }

  // After a push onto CPU e.cpu: every 16th push of a thread looks at the
  // buffer and, past half the capacity, flushes it if the target's lock is
  // free, so that a full buffer (which must wait for the lock) is rare;
  // every 64th checks the age bound.
  void after_push(queue_thread_entry& e) {
    if ((++e.ticks & 15) == 0) [[unlikely]]
      every_16th_push(e);
  }

  // After a push that failed with the thread on CPU `on`: if the thread
  // moved, flush the CPU it enqueued on before and remember `on`; if the
  // buffer was full, flush it.
  void after_failed_push(unsigned on);
  // Sweeps every CPU if the age bound has passed since the last sweep.
  void check_age();
  void every_16th_push(queue_thread_entry& e);

  void flush_calling_thread();
  // Flushes `cpu` if the target's lock is free; otherwise does nothing.
  void try_flush_cpu(unsigned cpu);
  void flush_cpu(unsigned cpu);
  void flush_all();
  // With the target's lock held: flushes every CPU that may hold an
  // operation with scoreboard bit `bit`; returns how many it flushed.
  unsigned flush_for_bit_locked(unsigned bit);
  std::mutex& target_lock() noexcept { return lock_; }
  queue_stats stats();
  void count_read(bool flushed) noexcept {
    ++stats_.reads;
    stats_.reads_flushed += flushed ? 1 : 0;
  }

 private:
  queue_thread_entry& find_entry();
  void flush_cpu_locked(unsigned cpu);
  void flush_all_locked();
  std::size_t take_stopped(unsigned cpu, std::byte* out) noexcept;
  void apply_locked(const std::byte* records, std::size_t count) noexcept;

  std::uint64_t id_;
  std::size_t record_bytes_;
  std::uint32_t capacity_;
  std::uint32_t early_flush_;  // count from which pushes try an early flush
  std::int64_t max_age_ns_;
  apply_function apply_;
  void* context_;
  cpu_block<record_array> arrays_;     // per CPU: the buffer's count and scoreboard
  cpu_memory<std::uint64_t> buffers_;  // per CPU: the buffer's records
  // The target's lock.  Held across "stop, copy out, clear, start, apply" of
  // every flush: see flush_cpu_locked() for why.  On its own cache lines,
  // with what flushes write: every enqueue reads the fields above, and
  // lock and unlock here must not evict them from the enqueueing CPUs.
  alignas(64) std::mutex lock_;
  // Copied-out records (room for every CPU's buffer, for flush_all), 64-byte
  // aligned like the per-CPU buffers; used only under lock_.  Pages never
  // used cost nothing.
  struct free_scratch {
    void operator()(std::byte* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<std::byte, free_scratch> scratch_;
  queue_stats stats_;               // under lock_
  std::int64_t last_sweep_ns_ = 0;  // atomic_ref: read without the lock
  [[maybe_unused]] char pad_[64];   // the next object starts on another line
};

}  // namespace detail

// Per-CPU batches of operations applied in order to one shared target.
//
// Op: trivially copyable, size a multiple of 8 bytes, at most 64 bytes.
// KeyOf: KeyOf{}(op) gives the operation's key (default: op.key).
//
// Guarantees (each tested, see docs/queues.md):
//  1. operations enqueued by one thread are applied in the order enqueued,
//     also when the thread migrates between enqueues;
//  2. read(k, fn) runs fn after every operation on k whose enqueue returned
//     before read() began has been applied;
//  3. when flush_all() returns, every operation whose enqueue returned before
//     it was called has been applied, whichever CPU holds it;
//  4. every operation is applied exactly once (the destructor applies what is
//     still pending).
// Not async-signal-safe (a full buffer takes the target's lock).
template <class Op, class KeyOf = key_member>
class batch_queue {
  static_assert(std::is_trivially_copyable_v<Op>,
                "percpu::batch_queue<Op>: Op must be trivially copyable (it is copied as words)");
  static_assert(sizeof(Op) % 8 == 0 && sizeof(Op) <= 64,
                "percpu::batch_queue<Op>: sizeof(Op) must be a multiple of 8 bytes, at most 64");
  static_assert(alignof(Op) <= 64, "percpu::batch_queue<Op>: Op may be aligned to 64 at most");
  static_assert(std::is_invocable_r_v<std::uint64_t, const KeyOf&, const Op&>,
                "percpu::batch_queue<Op, KeyOf>: KeyOf{}(op) must give an integer key "
                "(by default Op needs an integral `key` member)");
  static constexpr unsigned words = sizeof(Op) / 8;

 public:
  using value_type = Op;
  using apply_function = std::function<void(std::span<const Op>)>;

  // `apply` is called with the target's lock held, with batches in order;
  // it must not throw (an exception terminates: the batch was already taken
  // off its CPU) and must not use this queue.  Throws percpu::error:
  // errc::invalid_argument for an empty apply or a capacity of 0,
  // errc::too_large for a capacity above 16384, and what per-CPU allocation
  // throws (errc::no_memory, errc::configuration); std::bad_alloc when the
  // heap is exhausted.
  explicit batch_queue(apply_function apply, queue_options options = {}, KeyOf key_of = {})
      : apply_(std::move(apply)),
        key_of_(std::move(key_of)),
        core_(words, options, &apply_records, this) {
    if (!apply_) throw error(errc::invalid_argument, "percpu::batch_queue: apply is empty");
  }

  // Applies every pending operation, then frees the buffers.  The caller
  // ensures no thread still uses the queue.
  ~batch_queue() { core_.flush_all(); }

  batch_queue(const batch_queue&) = delete;
  batch_queue& operator=(const batch_queue&) = delete;

  // Queues `op` on the calling thread's CPU.  Usually a few nanoseconds: one
  // restartable sequence.  When the thread moved since its previous enqueue,
  // that CPU is flushed first; when the buffer is full, it is flushed.
  void enqueue(const Op& op) {
    detail::queue_thread_entry& e = core_.entry();
    unsigned bit = detail::queue_core::scoreboard_bit(key_of_(op));
    unsigned on = 0;
    if (detail::seq::push_record<words>(core_.arrays0(), core_.stop0(), e.cpu,
                                        reinterpret_cast<const std::uint64_t*>(&op), bit, &on))
        [[likely]] {
      core_.after_push(e);
      return;
    }
    enqueue_slow(op, bit, on);
  }

  // Applies the buffer the calling thread enqueues into (its operations and
  // any others there).
  void flush() { core_.flush_calling_thread(); }

  // Applies CPU `cpu`'s buffer.  Throws percpu::error (errc::out_of_range)
  // for cpu >= cpu_count().
  void flush_cpu(unsigned cpu) { core_.flush_cpu(cpu); }

  // Applies every CPU's buffer, idle CPUs' included: every operation whose
  // enqueue returned before the call is applied when it returns.
  void flush_all() { core_.flush_all(); }

  // Flushes the CPUs that may hold operations on `key`, then returns fn()
  // called with the target's lock held: fn sees every operation on `key`
  // whose enqueue returned before read() was called.  CPUs without pending
  // operations on `key` are not touched (most reads flush nothing).
  template <class F>
  decltype(auto) read(std::uint64_t key, F&& fn) {
    if (core_.has_age_bound()) core_.check_age();
    std::lock_guard<std::mutex> guard(core_.target_lock());
    core_.count_read(core_.flush_for_bit_locked(detail::queue_core::scoreboard_bit(key)) != 0);
    return std::forward<F>(fn)();
  }

  [[nodiscard]] queue_stats stats() { return core_.stats(); }

 private:
  static void apply_records(void* context, const void* records, std::size_t count) {
    auto* self = static_cast<batch_queue*>(context);
    self->apply_(std::span<const Op>(static_cast<const Op*>(records), count));
  }

  [[gnu::noinline, gnu::cold]] void enqueue_slow(const Op& op, unsigned bit, unsigned on) {
    for (;;) {
      core_.after_failed_push(on);
      detail::queue_thread_entry& e = core_.entry();
      if (detail::seq::push_record<words>(core_.arrays0(), core_.stop0(), e.cpu,
                                          reinterpret_cast<const std::uint64_t*>(&op), bit, &on)) {
        return;
      }
    }
  }

  apply_function apply_;
  KeyOf key_of_;
  detail::queue_core core_;
};

}  // namespace percpu
