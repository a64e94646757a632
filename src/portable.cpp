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

void lock_exact(std::uint32_t* stop0, unsigned slot) noexcept {
  for (unsigned spins = 0; !try_lock(stop0, slot); ++spins) relax(spins);
}

// Per-thread nesting state (see the file comment).  Written only by the
// thread itself and its signal handlers; signal fences order the handler's
// writes with the interrupted code's reads.
struct deferred_add {
  std::int64_t* slot0;
  std::uint32_t* stop0;
  std::int64_t value;
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

// Runs op(slot) under the lock of some slot and returns its result; a nested
// call that finds no free slot returns `busy` instead.
template <class Op, class Result>
Result locked(std::uint32_t* stop0, Result busy, Op op) noexcept {
  unsigned slot = 0;
  bool nested = nest.depth > 0;
  ++nest.depth;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  Result result = busy;
  if (nested ? try_lock_any(stop0, slot) : (slot = lock_any(stop0), true)) {
    result = op(slot);
    unlock(stop0, slot);
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);
  --nest.depth;
  if (!nested) apply_deferred();
  return result;
}

void apply_deferred() noexcept {
  // Handlers may append while this runs; their entries are complete before
  // `tail` moves (signal fence), and this loop re-reads `tail`.
  for (;;) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (nest.head == nest.tail) return;
    deferred_add entry = nest.queue[nest.head % deferred_capacity];
    std::atomic_signal_fence(std::memory_order_seq_cst);
    ++nest.head;
    locked(entry.stop0, 0, [&](unsigned slot) {
      *copy_on(entry.slot0, slot) += entry.value;
      return 0;
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
    *copy_on(slot0, slot) += v;
    return true;
  });
  if (done) return;
  // Nested and every slot busy: defer to the interrupted operation's end.
  // Should the queue be full (handlers nested 256 deep), wait for a slot.
  if (nest.tail - nest.head < deferred_capacity) {
    nest.queue[nest.tail % deferred_capacity] = {slot0, stop0, v};
    std::atomic_signal_fence(std::memory_order_seq_cst);
    ++nest.tail;
    return;
  }
  unsigned slot = lock_any(stop0);
  *copy_on(slot0, slot) += v;
  unlock(stop0, slot);
}

bool compare_and_store(std::int64_t* slot0, std::uint32_t* stop0, unsigned cpu,
                       std::int64_t expected, std::int64_t desired) noexcept {
  bool nested = nest.depth > 0;
  if (nested) {
    if (!try_lock(stop0, cpu)) return false;
  } else {
    lock_exact(stop0, cpu);
  }
  std::int64_t* slot = copy_on(slot0, cpu);
  bool stored = *slot == expected;
  if (stored) *slot = desired;
  unlock(stop0, cpu);
  return stored;
}

bool push(cpu_array* arr0, std::uint32_t* stop0, void* item) noexcept {
  return locked(stop0, false, [&](unsigned slot) {
    cpu_array* arr = copy_on(arr0, slot);
    if (arr->count >= arr->capacity) return false;
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

std::size_t push_batch(cpu_array* arr0, std::uint32_t* stop0, void* const* in,
                       std::size_t n) noexcept {
  return locked(stop0, std::size_t{0}, [&](unsigned slot) {
    cpu_array* arr = copy_on(arr0, slot);
    std::size_t room = arr->capacity > arr->count ? arr->capacity - arr->count : 0;
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

}  // namespace percpu::detail::portable
