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
// A thread whose rseq area cannot be registered (another rseq user
// registered it first) runs these too while the process uses rseq; each
// operation then fences the slot's CPU after taking its word, which makes it
// a visit (stop.hpp).
//
// Signals: a handler that interrupts its own thread's operation finds that
// thread holding a slot lock.  If it waited for a slot, two threads whose
// handlers each wait for the slot the other one's interrupted operation holds
// would deadlock (rseq has no such problem: it aborts the interrupted
// sequence).  So each attempt at a lock, and the time the lock is held, is a
// no-wait section (deferral.hpp), and an operation inside one - a handler's,
// or one made by code holding a pool_cache lock - never waits: it tries
// every slot once; failing that, an add is deferred to the end of the
// outermost section, and the other operations report their ordinary failure
// (full, empty, not stored (busy), nothing moved), which every caller
// already handles.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "deferral.hpp"
#include "percpu/runtime/detail/fence.hpp"
#include "percpu/runtime/detail/runtime.hpp"
#include "percpu/runtime/detail/sequences.hpp"
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
//
// The sum wraps modulo 2^64, as the rseq sequence's add does: computed
// unsigned (a signed C++ add that overflows is undefined behaviour).
void add_to_slot(std::int64_t* slot, std::int64_t v) noexcept {
  std::atomic_ref<std::int64_t> s(*slot);
  auto sum =
      static_cast<std::uint64_t>(s.load(std::memory_order_relaxed)) + static_cast<std::uint64_t>(v);
  s.store(static_cast<std::int64_t>(sum), std::memory_order_release);
}

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

// Runs op(slot) under a slot lock and returns its result.  `try_acquire(slot)`
// makes one attempt at the lock.  Each attempt, and the time the lock is
// held, is a no-wait section, so a handler that interrupts the thread there
// never waits for a slot.  Between attempts the thread holds nothing and is
// outside: a handler that interrupts a long wait waits like any other
// caller, instead of deferring adds for as long as the wait lasts.  A call
// made inside a section, or with `wait` false, makes one attempt and
// returns `busy` if it fails.
// The end of the outermost section runs what handlers deferred meanwhile.
template <class TryAcquire, class Op, class Result>
Result locked_with(std::uint32_t* stop0, Result busy, TryAcquire try_acquire, Op op,
                   bool wait = true) noexcept {
  // An operation before start-up (memory the library did not hand out):
  // the slot count is not known yet.
  if (backend_acquire() == backend_code::uninitialized) [[unlikely]]
    start_from_an_operation();
  bool nested = in_no_wait() || !wait;
  Result result = busy;
  for (unsigned spins = 0;; ++spins) {
    no_wait_enter();
    unsigned slot = 0;
    bool acquired = try_acquire(slot);
    if (acquired) {
      // With the rseq backend this is a thread whose rseq area cannot be
      // registered (runtime.cpp): the lock is the slot's stop word, and the
      // fence makes it a stop, so no sequence of another thread commits on
      // that CPU meanwhile.  (Nothing with the portable backend.)
      if (backend_now() == backend_code::rseq) fence_cpu(slot);
      result = op(slot);
      unlock(stop0, slot);
    }
    no_wait_leave();
    if (acquired || nested) break;
    relax(spins);
  }
  return result;
}

// locked_with() on the preferred slot or any free one.
template <class Op, class Result>
Result locked(std::uint32_t* stop0, Result busy, Op op) noexcept {
  return locked_with(
      stop0, busy, [stop0](unsigned& slot) { return try_lock_any(stop0, slot); }, op);
}

// locked_with() on slot `cpu` only (operations bound to one CPU).
template <class Op, class Result>
Result locked_on(std::uint32_t* stop0, unsigned cpu, Result busy, Op op) noexcept {
  return locked_with(
      stop0, busy,
      [stop0, cpu](unsigned& slot) {
        slot = cpu;
        return try_lock(stop0, cpu);
      },
      op);
}

// The deferred form of add(): runs at the end of the outermost section.
void add_later(void* slot0, void* stop0, std::int64_t v) noexcept {
  add(static_cast<std::int64_t*>(slot0), static_cast<std::uint32_t*>(stop0), v);
}

// An add that a call inside a no-wait section could not make: deferred as
// `redo` (merged with other adds to the same structure, which commute), or,
// should the table be full, made after waiting for a slot.
void defer_add(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v, deferred_fn fn, void* a,
               void* b) noexcept {
  if (defer(fn, a, b, v, true)) return;
  unsigned slot = lock_any(stop0);
  add_to_slot(copy_on(slot0, slot), v);
  unlock(stop0, slot);
}

}  // namespace

unsigned current_cpu() noexcept {
  if (backend_acquire() == backend_code::uninitialized) {
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
  // Inside a no-wait section with every slot busy: later.  (A storm of
  // handlers whose interrupted code waits long - ThreadSanitizer delivers
  // signals only at synchronisation points, all inside lock attempts -
  // lands here every time; the merge keeps that to one entry per slot.)
  if (!done) defer_add(slot0, stop0, v, &add_later, slot0, stop0);
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

unsigned add(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v, redo later) noexcept {
  unsigned used = runtime.slots;
  locked(stop0, false, [&](unsigned slot) {
    add_to_slot(copy_on(slot0, slot), v);
    used = slot;
    return true;
  });
  // Inside a no-wait section with every slot busy: the caller's whole
  // operation runs later (a counter's add, with its fold); no slot to report.
  if (used == runtime.slots) defer_add(slot0, stop0, v, later.fn, later.object, nullptr);
  return used;
}

cas_result compare_and_store(std::int64_t* slot0, std::uint32_t* stop0, unsigned cpu,
                             std::int64_t expected, std::int64_t desired) noexcept {
  // No thread runs on a CPU past the slots: `moved`, as with the rseq
  // sequence, instead of locking a word outside the structure.
  if (cpu >= runtime.slots) return cas_result::moved;
  return locked_on(stop0, cpu, cas_result::busy, [&](unsigned slot) {
    // Every writer of the whole word holds the lock; the read is atomic all
    // the same, since a part of some words is stored without it (a
    // pool_cache array's capacity, pool_core::set_magazine_size).  The
    // store is atomic for the readers that do not take it (see add_to_slot).
    std::int64_t* value = copy_on(slot0, slot);
    if (std::atomic_ref<std::int64_t>(*value).load(std::memory_order_relaxed) != expected) {
      return cas_result::changed;
    }
    std::atomic_ref<std::int64_t>(*value).store(desired, std::memory_order_release);
    return cas_result::stored;
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
// cache resizing its magazines, see src/pool_cache/depot.cpp): read it atomically.
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
  return locked_on(stop0, cpu, false, [&](unsigned slot) {
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
