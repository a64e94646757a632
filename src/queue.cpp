// queue.cpp - the type-independent part of percpu::batch_queue: per-CPU record
// buffers, flushing, the age bound and the thread cache's slow paths.
//
// Problem: the enqueue fast path (queue.hpp) only appends to a CPU's buffer.
// Everything that moves operations from a buffer to the target - a full
// buffer, a thread that moved, a read that needs a key's pending operations,
// flush_all, the age bound - must keep the queue's ordering guarantees while
// other threads keep enqueueing, and must reach CPUs nothing runs on.
//
// Mechanism: every flush takes the target's lock, stops the CPU (or all CPUs)
// through the queue's stop_state, copies the records out, clears the count
// and scoreboard, starts the CPU again and applies the copy, still under the
// lock.  See flush_cpu_locked() for why the lock must cover all of it.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "percpu/queue.hpp"
#include "percpu/runtime/error.hpp"
#include "runtime/runtime_internal.hpp"

namespace percpu::detail {

namespace {

// Queue ids start at 1 (0 marks a free thread-cache entry) and are never
// reused, so an entry left by a destroyed queue matches no later queue.
std::atomic<std::uint64_t> next_queue_id{1};

constexpr std::uint32_t max_capacity = unit_size / 64;  // 64-byte records fill one unit

std::uint64_t evicted_bit(std::uint64_t id) noexcept {
  return std::uint64_t{1} << (id % 64);
}

// The capacity, once it is known to be from 1 to max_capacity (checked
// before any per-CPU memory is allocated).
std::uint32_t checked_capacity(std::uint32_t capacity) {
  if (capacity == 0) throw error(errc::invalid_argument, "percpu::batch_queue: capacity 0");
  if (capacity > max_capacity) {
    throw error(errc::too_large, "percpu::batch_queue: capacity " + std::to_string(capacity) +
                                     " is above " + std::to_string(max_capacity));
  }
  return capacity;
}

}  // namespace

queue_core::queue_core(std::size_t record_words, const queue_options& options, apply_function apply,
                       void* context)
    : id_(next_queue_id.fetch_add(1, std::memory_order_relaxed)),
      record_bytes_(record_words * 8),
      capacity_(checked_capacity(options.capacity)),
      early_flush_(std::max<std::uint32_t>(options.capacity / 2, 1)),
      max_age_ns_(options.max_age.count() > 0 ? options.max_age.count() : 0),
      apply_(apply),
      context_(context),
      arrays_(1, 64),
      buffers_(std::size_t{capacity_} * record_words, 64),
      last_sweep_ns_(now_ns()) {
  unsigned slots = arrays_.cpus();
  // A multiple of the 64-byte alignment, as aligned_alloc requires.
  std::size_t bytes = (std::size_t{slots} * capacity_ * record_bytes_ + 63) & ~std::size_t{63};
  scratch_.reset(static_cast<std::byte*>(std::aligned_alloc(64, bytes)));
  if (!scratch_) throw std::bad_alloc();
  // Fresh per-CPU memory is zero: only the buffer pointer and capacity need
  // writing.  The queue is published to other threads by whatever hands them
  // its address.
  for (unsigned cpu = 0; cpu < slots; ++cpu) {
    record_array* a = arrays_.on(cpu);
    a->records = buffers_.on(cpu);
    a->capacity = capacity_;
  }
}

queue_core::~queue_core() = default;

// A miss in the first entry: look further, or make an entry.  A thread whose
// entry for this queue was evicted may still have operations on the CPU the
// entry named, and must not enqueue elsewhere before they are applied; the
// CPU is no longer known, so it applies every CPU's buffer (once, on the
// next enqueue).  The evicted filter is per thread and never cleared: a false
// hit costs one flush_all, never an ordering violation.
queue_thread_entry& queue_core::find_entry() {
  queue_thread_cache& cache = queue_cache;
  constexpr unsigned size = queue_thread_cache::size;
  for (unsigned i = 1; i < size; ++i) {
    if (cache.entries[i].id == id_) {
      std::rotate(cache.entries, cache.entries + i, cache.entries + i + 1);
      return cache.entries[0];
    }
  }
  // Flush before touching the cache: apply() may use other queues, which
  // rearranges it.
  if ((cache.evicted & evicted_bit(id_)) != 0) flush_all();
  queue_thread_entry& last = cache.entries[size - 1];
  if (last.id != 0) cache.evicted |= evicted_bit(last.id);
  std::move_backward(cache.entries, cache.entries + size - 1, cache.entries + size);
  cache.entries[0] = queue_thread_entry{id_, seq::current_cpu(), 0};
  return cache.entries[0];
}

void queue_core::after_failed_push(unsigned on) {
  unsigned previous = entry().cpu;
  if (on == previous) {
    flush_cpu(on);  // full
    return;
  }
  // Moved: everything this thread enqueued went to `previous`; apply it
  // before anything is enqueued on `on` (per-thread order).
  flush_cpu(previous);
  entry().cpu = on;
}

void queue_core::every_16th_push(queue_thread_entry& e) {
  std::uint32_t count = std::atomic_ref<const std::uint32_t>(arrays_.on(e.cpu)->count)
                            .load(std::memory_order_relaxed);
  unsigned cpu = e.cpu;
  bool check_age_now = max_age_ns_ != 0 && (e.ticks & 63) == 0;
  // (`e` is not used below: apply() may use other queues, which rearranges
  // the thread's cache.)
  if (count >= early_flush_) try_flush_cpu(cpu);
  if (check_age_now) check_age();
}

void queue_core::check_age() {
  std::atomic_ref<std::int64_t> last(last_sweep_ns_);
  std::int64_t seen = last.load(std::memory_order_relaxed);
  std::int64_t now = now_ns();
  if (now - seen < max_age_ns_) return;
  // One sweeper per period: the others see the new time and return.
  // Relaxed: the time only decides who sweeps; the sweep synchronises
  // through the target's lock.
  if (!last.compare_exchange_strong(seen, now, std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> guard(lock_);
  ++stats_.age_sweeps;
  flush_all_locked();
}

void queue_core::flush_calling_thread() {
  flush_cpu(entry().cpu);
}

void queue_core::flush_cpu(unsigned cpu) {
  if (cpu >= arrays_.cpus()) {
    throw_out_of_range("percpu::batch_queue::flush_cpu", "CPU", cpu, "cpu_count()", arrays_.cpus());
  }
  std::lock_guard<std::mutex> guard(lock_);
  flush_cpu_locked(cpu);
}

void queue_core::try_flush_cpu(unsigned cpu) {
  std::unique_lock<std::mutex> guard(lock_, std::try_to_lock);
  if (guard.owns_lock()) flush_cpu_locked(cpu);
}

void queue_core::flush_all() {
  std::lock_guard<std::mutex> guard(lock_);
  flush_all_locked();
}

// Why the target's lock covers the whole flush, not just apply(): suppose
// flusher F1 copied CPU A's records out and released the lock before
// applying them.  A thread T that enqueued on A and then moved to B flushes A
// (finds it empty), enqueues on B, and flusher F2 applies B's records, T's
// later operations, before F1 applies A's: T's operations applied out of
// order.  Holding the lock from the copy to the end of apply() means that
// when anyone finds a buffer empty, what was taken from it is applied.
void queue_core::flush_cpu_locked(unsigned cpu) {
  arrays_.stops().stop(cpu);
  std::size_t count = take_stopped(cpu, scratch_.get());
  arrays_.stops().start(cpu);
  apply_locked(scratch_.get(), count);
}

// Stop every CPU with one broadcast fence, take every buffer in CPU order,
// start them, apply.  The order across CPUs does not matter for per-thread
// order: a thread's pending operations are all on one CPU at any time (it
// flushes the old CPU before enqueueing on a new one).
void queue_core::flush_all_locked() {
  arrays_.stops().stop_all();
  std::size_t count = 0;
  for (unsigned cpu = 0; cpu < arrays_.cpus(); ++cpu) {
    count += take_stopped(cpu, scratch_.get() + count * record_bytes_);
  }
  arrays_.stops().start_all();
  apply_locked(scratch_.get(), count);
}

// With `cpu` stopped (no push_record commits there, committed ones are
// visible: stop.hpp): copy its records to `out`, clear count and scoreboard.
// The count and scoreboard stores are atomic because read() loads them
// without a stop; the start() that follows publishes them to the CPU's next
// sequence with release order.
std::size_t queue_core::take_stopped(unsigned cpu, std::byte* out) noexcept {
  record_array* a = arrays_.on(cpu);
  std::size_t count = a->count;
  if (count != 0) std::memcpy(out, a->records, count * record_bytes_);
  std::atomic_ref<std::uint32_t>(a->count).store(0, std::memory_order_relaxed);
  for (std::uint64_t& word : a->scoreboard) {
    std::atomic_ref<std::uint64_t>(word).store(0, std::memory_order_relaxed);
  }
  ++stats_.cpu_flushes;
  return count;
}

// noexcept: an exception from apply() terminates.  The records were already
// taken off their CPUs; they could be neither applied nor put back in order.
void queue_core::apply_locked(const std::byte* records, std::size_t count) noexcept {
  if (count == 0) return;
  ++stats_.batches;
  stats_.applied += count;
  apply_(context_, records, count);
}

// Which CPUs can hold an operation on a key whose enqueue returned before
// the caller's read() began?  Only those whose scoreboard has the key's bit
// and whose count is not zero.  The enqueue's sequence stored the bit before
// its commit store of the count, in program order (x86-64 keeps stores in
// order; the portable twin stores the count with release order), and
// "returned before read() began" means the enqueue happens before this
// thread's loads by whatever ordered the two (a release/acquire pair, a
// lock, a join).  So these loads see the bit and a count of at least one, or
// the values a later flush left - and a flush clears them only after taking
// the operation, and applies it before releasing the target's lock, which
// the caller now holds.  A bit without a pending operation (an aborted
// sequence's, or a colliding key's) costs at most a flush.
unsigned queue_core::flush_for_bit_locked(unsigned bit) {
  std::uint64_t mask = std::uint64_t{1} << (bit % 64);
  unsigned flushed = 0;
  for (unsigned cpu = 0; cpu < arrays_.cpus(); ++cpu) {
    record_array* a = arrays_.on(cpu);
    // Acquire: pairs with the portable twin's release store of the count
    // (on x86-64 every load is an acquire anyway).
    if ((std::atomic_ref<std::uint64_t>(a->scoreboard[bit / 64]).load(std::memory_order_acquire) &
         mask) == 0) {
      continue;
    }
    if (std::atomic_ref<std::uint32_t>(a->count).load(std::memory_order_acquire) == 0) continue;
    flush_cpu_locked(cpu);
    ++flushed;
  }
  return flushed;
}

queue_stats queue_core::stats() {
  std::lock_guard<std::mutex> guard(lock_);
  return stats_;
}

}  // namespace percpu::detail
