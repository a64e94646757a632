// portable.cpp - the portable twin of every restartable sequence.
//
// Problem: where rseq cannot be used (valgrind, TSan, old kernels, sandboxes,
// simulated wide machines) the same operations must still be correct, and a
// sanitizer must see every access.
//
// Mechanism (the Solaris kmem model): sched_getcpu() picks a slot and the
// structure's stop word for that slot is taken as a spinlock; the operation
// runs with plain code under it.  Any slot would be correct - the CPU number
// is only a hint for locality - so when the preferred slot is busy the
// operation moves on to the next free one instead of waiting.  That also
// keeps a signal handler from deadlocking on a slot its own thread holds.
// The stop words double as the locks, so a stop_state::stop() (which takes
// the same word) excludes the slot's operations with no fence at all.
//
// Signals: a handler that interrupts its own thread's operation finds that
// thread holding a slot lock.  If it waited for a slot, two threads whose
// handlers each wait for the slot the other one's interrupted operation holds
// would deadlock (rseq has no such problem: it aborts the interrupted
// sequence).  So an operation nested inside another on the same thread never
// waits: it tries every slot once; failing that, an add is deferred to a
// small per-thread queue that the interrupted operation applies as it ends,
// and the other operations report their ordinary failure (full, empty, not
// stored, nothing moved), which every caller already handles.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "percpu/detail/runtime.hpp"
#include "percpu/detail/sequences.hpp"
#include "runtime_internal.hpp"

namespace percpu::detail::portable {

namespace {

bool try_lock(std::uint32_t* stop0, unsigned slot) noexcept {
  std::atomic_ref<std::uint32_t> word(*copy_on(stop0, slot));
  std::uint32_t expected = 0;
  // Acquire: pairs with unlock()'s release (the previous holder's writes to
  // the slot are visible) and with stop_state::start().
  return word.load(std::memory_order_relaxed) == 0 &&
         word.compare_exchange_strong(expected, 1, std::memory_order_acquire,
                                      std::memory_order_relaxed);
}

void unlock(std::uint32_t* stop0, unsigned slot) noexcept {
  std::atomic_ref<std::uint32_t>(*copy_on(stop0, slot)).store(0, std::memory_order_release);
}

// Locks the preferred slot, or the first free one after it; returns it.
unsigned lock_any(std::uint32_t* stop0) noexcept {
  unsigned slots = runtime.slots;
  unsigned first = portable_slot();
  for (unsigned spins = 0;; ++spins) {
    for (unsigned i = 0; i < slots; ++i) {
      unsigned slot = first + i < slots ? first + i : first + i - slots;
      if (try_lock(stop0, slot)) return slot;
    }
    relax(spins);
  }
}

// Slots are also read without the lock (counter sums, a writer counting
// readers), so the locked update stores atomically, with release order: what
// the updating thread did before it happens before a reader that sees the
// new value.
std::int64_t add_to_slot(std::int64_t* slot, std::int64_t v) noexcept {
  std::atomic_ref<std::int64_t> s(*slot);
  std::int64_t value = s.load(std::memory_order_relaxed) + v;
  s.store(value, std::memory_order_release);
  return value;
}

// Per-thread nesting state (see the file comment).  Written only by the
// thread itself and its signal handlers; signal fences order the handler's
// writes with the interrupted code's reads.
struct deferred_add {
  std::int64_t* slot0;
  std::uint32_t* stop0;
  std::int64_t value;  // changed by handlers only with __atomic operations
  unsigned complete;   // 1 once the fields are written; 0 once taken off
};
constexpr unsigned deferred_capacity = 256;
struct nesting {
  unsigned depth = 0;  // operations of this thread in progress (> 1: nested)
  unsigned head = 0;   // next deferred add to apply
  unsigned tail = 0;   // next free entry
  deferred_add queue[deferred_capacity];
};
thread_local nesting nest;

// Locks a slot without waiting: the preferred one or any free one.
bool try_lock_any(std::uint32_t* stop0, unsigned& slot) noexcept {
  unsigned slots = runtime.slots;
  unsigned first = portable_slot();
  for (unsigned i = 0; i < slots; ++i) {
    slot = first + i < slots ? first + i : first + i - slots;
    if (try_lock(stop0, slot)) return true;
  }
  return false;
}

void apply_deferred() noexcept;

// Runs op(slot) under a slot lock and returns its result.  `try_acquire(slot)`
// makes one attempt at the lock.  The thread counts as inside an operation
// (depth > 0) around each attempt and while it holds the lock, so a handler
// that interrupts it there never waits for a slot.  Between attempts it holds
// nothing and counts as outside: a handler that interrupts a long wait waits
// like any other caller, instead of deferring adds for as long as the wait
// lasts.  A nested call, or any call with `wait` false, makes one attempt and
// returns `busy` if it fails.
template <class TryAcquire, class Op, class Result>
Result locked_no_drain(std::uint32_t* stop0, Result busy, TryAcquire try_acquire, Op op,
                       bool wait = true) noexcept {
  bool nested = nest.depth > 0 || !wait;
  Result result = busy;
  for (unsigned spins = 0;; ++spins) {
    ++nest.depth;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    unsigned slot = 0;
    bool acquired = try_acquire(slot);
    if (acquired) {
      result = op(slot);
      unlock(stop0, slot);
    }
    std::atomic_signal_fence(std::memory_order_seq_cst);
    --nest.depth;
    if (acquired || nested) break;
    relax(spins);
  }
  return result;
}

// locked_no_drain(), then, for an outermost operation, the adds that
// handlers deferred meanwhile.
template <class TryAcquire, class Op, class Result>
Result locked_with(std::uint32_t* stop0, Result busy, TryAcquire try_acquire, Op op,
                   bool wait = true) noexcept {
  bool nested = nest.depth > 0;
  Result result = locked_no_drain(stop0, busy, try_acquire, op, wait);
  if (!nested) apply_deferred();
  return result;
}

// locked_with() on the preferred slot or any free one.
template <class Op, class Result>
Result locked(std::uint32_t* stop0, Result busy, Op op) noexcept {
  return locked_with(
      stop0, busy, [stop0](unsigned& slot) { return try_lock_any(stop0, slot); }, op);
}

// locked_with() on slot `cpu` only (operations bound to one CPU).
template <class Op>
bool locked_on(std::uint32_t* stop0, unsigned cpu, Op op) noexcept {
  return locked_with(
      stop0, false,
      [stop0, cpu](unsigned& slot) {
        slot = cpu;
        return try_lock(stop0, cpu);
      },
      op);
}

// Applies the adds that handlers deferred while this thread's operations
// were in progress.  Called by an outermost operation as it ends, with no
// slot held.
//
// An entry is taken off the queue (read, then `head` moved) with the thread
// counted as inside an operation, so a handler that interrupts the taking
// only appends and never drains the queue itself: two drains interleaved
// there would apply an entry twice and move `head` past `tail`.  The entry
// is then applied as an ordinary operation (waiting for a slot with the
// thread counted as outside, see locked_no_drain).  A handler that runs
// between two entries may drain the rest itself; that is fine, since each
// taking is whole.  The queue is checked once more after leaving, for an
// entry appended at the last moment.
void apply_deferred() noexcept {
  for (;;) {
    ++nest.depth;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    bool empty = nest.head == nest.tail;
    deferred_add entry{};
    if (!empty) {
      deferred_add& taken = nest.queue[nest.head % deferred_capacity];
      entry = taken;
      entry.value = __atomic_load_n(&taken.value, __ATOMIC_RELAXED);
      taken.complete = 0;
      std::atomic_signal_fence(std::memory_order_seq_cst);
      ++nest.head;
    }
    std::atomic_signal_fence(std::memory_order_seq_cst);
    --nest.depth;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (empty) {
      if (nest.head == nest.tail) return;
      continue;
    }
    locked_no_drain(
        entry.stop0, false, [&](unsigned& slot) { return try_lock_any(entry.stop0, slot); },
        [&](unsigned slot) {
          add_to_slot(copy_on(entry.slot0, slot), entry.value);
          return true;
        });
  }
}

}  // namespace

unsigned current_cpu() noexcept {
  if (runtime.backend == backend_code::uninitialized) {
    try {
      ensure_started();
    } catch (...) {
      return 0;  // start-up failed: the error is reported by the next call that can throw
    }
  }
  return portable_slot();
}

void add(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v) noexcept {
  bool done = locked(stop0, false, [&](unsigned slot) {
    add_to_slot(copy_on(slot0, slot), v);
    return true;
  });
  if (done) return;
  // Nested and every slot busy: defer to the interrupted operation's end.
  //
  // First, add to a pending entry for the same structure if there is one
  // (adds commute).  Only complete entries beyond `head` qualify: the entry
  // at `head` may be being taken off by the drain this handler interrupted.
  // The add is one atomic instruction, so a second handler (a different
  // signal) interrupting this one cannot tear it.  This keeps the queue short
  // however long the interrupted operation waits: ThreadSanitizer, for one,
  // delivers signals only at synchronisation points, which are all inside an
  // operation's lock attempts, so every signal that arrives while a thread
  // waits for a slot lands here.
  unsigned head = nest.head;
  unsigned tail = __atomic_load_n(&nest.tail, __ATOMIC_RELAXED);
  for (unsigned i = tail; i - head > 1 && tail - i < 32; --i) {
    deferred_add& pending = nest.queue[(i - 1) % deferred_capacity];
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (pending.complete == 1 && pending.slot0 == slot0 && pending.stop0 == stop0) {
      __atomic_fetch_add(&pending.value, v, __ATOMIC_RELAXED);
      return;
    }
  }
  // Otherwise append.  The entry is reserved before it is written, with one
  // atomic increment: a second handler interrupting this one takes the next
  // entry instead of overwriting this one.  The queue is drained only by the
  // outermost operation, after every handler frame above it has returned,
  // so reserved entries are complete by then.  Should the queue be full
  // (256 different structures pending), wait for a slot.
  if (tail - head < deferred_capacity) {
    unsigned entry = __atomic_fetch_add(&nest.tail, 1u, __ATOMIC_RELAXED);
    deferred_add& fresh = nest.queue[entry % deferred_capacity];
    fresh.slot0 = slot0;
    fresh.stop0 = stop0;
    fresh.value = v;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    fresh.complete = 1;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return;
  }
  unsigned slot = lock_any(stop0);
  add_to_slot(copy_on(slot0, slot), v);
  unlock(stop0, slot);
}

bool try_add(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v) noexcept {
  // One attempt at the preferred slot's lock, as the rseq sequence makes one
  // test of the CPU's stop word: a stopped slot fails, and so does one that
  // another operation holds at that moment (the caller's fallback, which
  // does not use these stop words, is correct either way).
  return locked_with(
      stop0, false,
      [stop0](unsigned& slot) {
        slot = portable_slot();
        return try_lock(stop0, slot);
      },
      [&](unsigned slot) {
        add_to_slot(copy_on(slot0, slot), v);
        return true;
      },
      false);
}

std::int64_t add_return(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v,
                        unsigned* cpu) noexcept {
  std::int64_t value = 0;
  unsigned used = runtime.slots;
  locked(stop0, false, [&](unsigned slot) {
    value = add_to_slot(copy_on(slot0, slot), v);
    used = slot;
    return true;
  });
  if (used == runtime.slots) {
    // Nested with every slot busy: deferred like add(); no slot to report.
    add(slot0, stop0, v);
  }
  *cpu = used;
  return value;
}

bool compare_and_store(std::int64_t* slot0, std::uint32_t* stop0, unsigned cpu,
                       std::int64_t expected, std::int64_t desired) noexcept {
  // No thread runs on a CPU past the slots: fail as the rseq sequence does,
  // instead of locking a word outside the structure.
  if (cpu >= runtime.slots) return false;
  return locked_on(stop0, cpu, [&](unsigned slot) {
    // Every writer holds the lock, so the read may be plain; the store is
    // atomic for the readers that do not take it (see add_to_slot).
    std::int64_t* value = copy_on(slot0, slot);
    if (*value != expected) return false;
    std::atomic_ref<std::int64_t>(*value).store(desired, std::memory_order_release);
    return true;
  });
}

// The guard word is changed by a remote party before it takes every slot
// lock (pool_cache::invalidate); reading it under the lock (acquire, pairing
// with that party's seq_cst store) decides the push against the change.
namespace {
bool guard_holds(const std::uint64_t* guard, std::uint64_t expected) noexcept {
  return __atomic_load_n(guard, __ATOMIC_ACQUIRE) == expected;
}
// An array's capacity may be changed by another thread without a stop (a
// cache resizing its magazines, see pool_cache.cpp): read it atomically.
std::uint32_t capacity_of(const cpu_array* arr) noexcept {
  return __atomic_load_n(&arr->capacity, __ATOMIC_RELAXED);
}
}  // namespace

bool push(cpu_array* arr0, std::uint32_t* stop0, void* item, const std::uint64_t* guard,
          std::uint64_t expected) noexcept {
  return locked(stop0, false, [&](unsigned slot) {
    cpu_array* arr = copy_on(arr0, slot);
    if (arr->count >= capacity_of(arr) || !guard_holds(guard, expected)) return false;
    arr->items[arr->count++] = item;
    return true;
  });
}

void* pop(cpu_array* arr0, std::uint32_t* stop0) noexcept {
  return locked(stop0, static_cast<void*>(nullptr), [&](unsigned slot) -> void* {
    cpu_array* arr = copy_on(arr0, slot);
    if (arr->count == 0) return nullptr;
    return arr->items[--arr->count];
  });
}

std::size_t push_batch(cpu_array* arr0, std::uint32_t* stop0, void* const* in, std::size_t n,
                       const std::uint64_t* guard, std::uint64_t expected) noexcept {
  return locked(stop0, std::size_t{0}, [&](unsigned slot) {
    cpu_array* arr = copy_on(arr0, slot);
    if (!guard_holds(guard, expected)) return std::size_t{0};
    std::uint32_t capacity = capacity_of(arr);
    std::size_t room = capacity > arr->count ? capacity - arr->count : 0;
    std::size_t k = n < room ? n : room;
    if (k != 0) std::memcpy(arr->items + arr->count, in, k * sizeof(void*));
    arr->count += static_cast<std::uint32_t>(k);
    return k;
  });
}

std::size_t pop_batch(cpu_array* arr0, std::uint32_t* stop0, void** out, std::size_t n) noexcept {
  return locked(stop0, std::size_t{0}, [&](unsigned slot) {
    cpu_array* arr = copy_on(arr0, slot);
    std::size_t k = n < arr->count ? n : arr->count;
    arr->count -= static_cast<std::uint32_t>(k);
    if (k != 0) std::memcpy(out, arr->items + arr->count, k * sizeof(void*));
    return k;
  });
}

// ---- Keyed records (batch_queue) --------------------------------------------

// Like the rseq sequence: only onto `cpu`, and only when `cpu` is the slot
// this thread would use now (a different slot is reported as "moved"), so
// a queue's per-thread ordering logic runs the same way in both backends.
// The slot's lock is waited for, as compare_and_store does.  The scoreboard
// and count are stored atomically (relaxed, release) because readers load
// them without the lock.
bool push_record(record_array* arr0, std::uint32_t* stop0, unsigned cpu,
                 const std::uint64_t* record, std::size_t words, unsigned scoreboard_bit,
                 unsigned* cpu_out) noexcept {
  unsigned here = portable_slot();
  *cpu_out = here;
  if (here != cpu) return false;
  return locked_on(stop0, cpu, [&](unsigned slot) {
    record_array* arr = copy_on(arr0, slot);
    std::uint32_t count = arr->count;
    if (count >= arr->capacity) return false;
    std::memcpy(arr->records + std::size_t{count} * words, record, words * sizeof(std::uint64_t));
    std::atomic_ref<std::uint64_t> board(arr->scoreboard[scoreboard_bit / 64]);
    board.store(board.load(std::memory_order_relaxed) | (std::uint64_t{1} << (scoreboard_bit % 64)),
                std::memory_order_relaxed);
    // Release: a reader that loads the new count without the lock also
    // sees the scoreboard bit stored above.
    std::atomic_ref<std::uint32_t>(arr->count).store(count + 1, std::memory_order_release);
    return true;
  });
}

}  // namespace percpu::detail::portable

namespace percpu::detail {
bool portable_in_operation() noexcept {
  return portable::nest.depth > 0;
}
void portable_enter() noexcept {
  ++portable::nest.depth;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}
void portable_leave() noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  --portable::nest.depth;
}
}  // namespace percpu::detail
