// percpu/runtime/detail/sequences.hpp - the per-CPU operations every facility uses.
//
// Problem: counters, locks, object caches and queues all need the same few
// operations on "this CPU's" data: add, compare-and-store, push, pop and a
// bounded batch move.  Writing them once per facility would multiply the
// subtle part (the restartable sequences and their slow paths) and every bug
// in it.  So this header is the only place that decides how a per-CPU
// operation is done; facilities call it and never touch a sequence directly,
// nor ask which backend runs.
//
// Mechanism: with the rseq backend the operation is an inline restartable
// sequence (runtime/detail/arch.hpp picks the architecture's) plus a retry
// loop for aborts, stopped CPUs and unregistered threads.  With the portable
// backend, or on an architecture without sequences, the operation is an
// out-of-line function that takes the slot's stop word as a spinlock and
// does the same thing with plain code (src/runtime/portable.cpp).  Both
// report the same backend-neutral results (cas_result below; "full",
// "empty", "nothing moved" as the return value), so a facility's code is the
// same whichever runs.
//
// Every operation names the structure's stop words (`stop0`, CPU 0's copy of
// a stop_state word, see stop.hpp): that word is what lets another thread
// stop a CPU's part of the structure and work on it.  All operations are
// async-signal-safe once the library has started.
#pragma once

#include <cstddef>
#include <cstdint>

#include "percpu/runtime/detail/arch.hpp"
#include "percpu/runtime/detail/runtime.hpp"

namespace percpu::detail {

// A per-CPU bounded stack of pointers (a magazine slot, a buffer of queued
// operations).  `items` points at `capacity` pointers owned by the structure;
// `count` is the commit word of push/pop.  Changed remotely only while the
// CPU is stopped.
struct cpu_array {
  void** items = nullptr;
  std::uint32_t count = 0;
  std::uint32_t capacity = 0;
};
static_assert(offsetof(cpu_array, items) == 0 && offsetof(cpu_array, count) == 8 &&
                  offsetof(cpu_array, capacity) == 12,
              "the rseq sequences hard-code this layout");

// Out-of-line parts: slow paths of the rseq backend and the portable twin.
namespace slow {
// Waits until the calling thread's current CPU is no longer stopped in the
// structure whose stop words start at stop0.
void wait_while_stopped(const std::uint32_t* stop0) noexcept;
// A sequence found no registered rseq area.  Returns true when the calling
// thread should run the sequence again (its area is registered now), false
// when the operation must take the portable path.
bool use_sequences() noexcept;
// After an abort: if it was an injected one (debug builds), counts it and
// rearms this thread's countdown.
void fault_rearm() noexcept;
}  // namespace slow

// Result of compare_and_store, the same with either backend.
enum class cas_result : std::uint8_t {
  stored,   // the slot held `expected` and now holds `desired`
  changed,  // the slot held another value: read it again and retry
  moved,    // the thread does not run on `cpu`: reach that CPU's slot from
            // outside (stop.hpp) or give up
  busy,     // the slot is held by an operation that this thread's signal
            // handler interrupted: nothing can be done here without waiting
};

// The whole operation to run later when an add_sign cannot be made now
// without waiting: fn(object, nullptr, v) (see add_sign).
struct redo {
  void (*fn)(void* object, void* unused, std::int64_t v) noexcept;
  void* object;
};

namespace portable {
unsigned current_cpu() noexcept;
void add(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v) noexcept;
bool try_add(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v) noexcept;
unsigned add(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v, redo later) noexcept;
cas_result compare_and_store(std::int64_t* slot0, std::uint32_t* stop0, unsigned cpu,
                             std::int64_t expected, std::int64_t desired) noexcept;
bool push(cpu_array* arr0, std::uint32_t* stop0, void* item, const std::uint64_t* guard,
          std::uint64_t expected) noexcept;
void* pop(cpu_array* arr0, std::uint32_t* stop0) noexcept;
std::size_t push_batch(cpu_array* arr0, std::uint32_t* stop0, void* const* in, std::size_t n,
                       const std::uint64_t* guard, std::uint64_t expected) noexcept;
std::size_t pop_batch(cpu_array* arr0, std::uint32_t* stop0, void** out, std::size_t n) noexcept;
}  // namespace portable

namespace seq {

// Result of running a sequence.  `portable`: the operation must take the
// portable path (the portable backend, an architecture without sequences, a
// thread that cannot register its rseq area).
enum class outcome : std::uint8_t { committed, failed, portable, moved };

// Retries `Sequence(args...)` after a first try returned `st` until it
// commits, fails or finds the thread elsewhere, or finds that the portable
// path must be taken.  Out of line and cold, and given its arguments by
// value: the hot path keeps them in registers and carries no loop of its own.
// A stopped CPU is waited for, or, with `WaitWhileStopped` false, reported
// as `failed`.
//
// There is no backend test on the fast path: with the portable backend,
// runtime.rseq_offset names an rseq area that is never registered, so every
// sequence leaves through `unregistered` and arrives here, where
// slow::use_sequences() decides.
template <auto Sequence, bool WaitWhileStopped, class... Args>
[[gnu::noinline, gnu::cold]] outcome retry(arch::status st, const std::uint32_t* stop0,
                                           Args... args) noexcept {
  for (;; st = Sequence(args...)) {
    switch (st) {
      case arch::status::committed:
        return outcome::committed;
      case arch::status::failed:
        return outcome::failed;
      case arch::status::moved:
        return outcome::moved;
      case arch::status::stopped:
        if constexpr (!WaitWhileStopped) return outcome::failed;
        slow::wait_while_stopped(stop0);
        break;
      case arch::status::unregistered:
        if (!slow::use_sequences()) return outcome::portable;
        break;
      case arch::status::aborted:
        if constexpr (PERCPU_FAULT_INJECTION) slow::fault_rearm();
        break;
    }
  }
}

// Runs the sequence: the first try inline, anything else in retry().
template <auto Sequence, bool WaitWhileStopped = true, class... Args>
inline outcome run(const std::uint32_t* stop0, Args... args) noexcept {
  if constexpr (!arch::has_sequences) {
    return outcome::portable;
  } else {
    arch::status st = Sequence(args...);
    if (st == arch::status::committed) [[likely]]
      return outcome::committed;
    if (st == arch::status::failed) return outcome::failed;
    if (st == arch::status::moved) return outcome::moved;
    if constexpr (!WaitWhileStopped) {
      // Not worth a call: the caller takes its own slow path.
      if (st == arch::status::stopped) return outcome::failed;
    }
    return retry<Sequence, WaitWhileStopped>(st, stop0, args...);
  }
}

// The slot the calling thread uses now: its CPU, or its concurrency id in
// mm_cid mode.  A hint.
inline unsigned current_cpu() noexcept {
  if constexpr (arch::has_sequences) {
    if (backend_now() == backend_code::rseq) [[likely]] {
      int slot = arch::slot_index();
      if (slot >= 0) [[likely]] {
        return static_cast<unsigned>(slot);
      }
      if (slow::use_sequences()) return static_cast<unsigned>(arch::slot_index());
    }
  }
  return portable::current_cpu();
}

// Every operation below runs on memory laid out by the per-CPU allocator,
// which starts the library first.  One that runs before start-up all the
// same leaves through `unregistered` (runtime.hpp) and starts it.

// *slot += v on the current CPU.  (Inside a no-wait section with every
// slot busy, portable backend: made when the section ends.)
inline void add(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v) noexcept {
  if (run<arch::add>(stop0, slot0, static_cast<const std::uint32_t*>(stop0), v) !=
      outcome::portable) [[likely]] {
    return;
  }
  portable::add(slot0, stop0, v);
}

// add() with release order: every load and store the thread made before
// the call happens before any thread that reads the new value with acquire
// (rwlock's "out" counts: the read section is over before the count shows
// it).  The portable backend stores every add with release anyway.
inline void add_release(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v) noexcept {
  if (run<arch::add_release>(stop0, slot0, static_cast<const std::uint32_t*>(stop0), v) !=
      outcome::portable) [[likely]] {
    return;
  }
  portable::add(slot0, stop0, v);
}

// *slot += v on the current CPU unless that CPU is stopped (stop.hpp);
// returns whether it added.  The same sequence as add(), without the wait:
// a structure that stops its CPUs to say "take the slow path"
// (percpu::rwlock) runs its fast path as this and its slow path on other
// stop words.  Portable backend: one attempt at the preferred slot's lock,
// so a slot that another operation holds at that moment also fails.
inline bool try_add(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v) noexcept {
  outcome o = run<arch::add, false>(stop0, slot0, static_cast<const std::uint32_t*>(stop0), v);
  if (o != outcome::portable) [[likely]]
    return o == outcome::committed;
  return portable::try_add(slot0, stop0, v);
}

// try_add() with release order, as add_release() is add()'s.
inline bool try_add_release(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v) noexcept {
  outcome o =
      run<arch::add_release, false>(stop0, slot0, static_cast<const std::uint32_t*>(stop0), v);
  if (o != outcome::portable) [[likely]]
    return o == outcome::committed;
  return portable::try_add(slot0, stop0, v);
}

// *slot += v on the current CPU and stores in *cpu the CPU (slot) the add
// went to.  Returns true when the add left the slot negative (its own
// result: no later add is in it); false when it did not, or when the add
// took a slow path, which does not say (the caller reads the slot if it
// needs to know).  Only the inline first try reports the sign: a result
// merged from two paths would be kept in a register and tested, where the
// first try's flag is branched on directly.  When the add cannot be made
// without waiting (a signal handler that interrupted its own thread inside
// a no-wait section, with every slot busy: portable backend only), it is
// not made here: `later` runs instead when the interrupted section ends -
// the caller's whole operation, so that what follows the add (a counter's
// fold) follows it then too - and *cpu is cpu_count().
inline bool add_sign(std::int64_t* slot0, std::uint32_t* stop0, std::int64_t v, unsigned* cpu,
                     redo later) noexcept {
  if constexpr (arch::has_sequences) {
    // The first try reports into locals of its own, which retry() never
    // sees: they stay in registers (an address passed to retry() would keep
    // them in memory, with a store and a load on the fast path).
    bool negative;
    unsigned where;
    arch::status st = arch::add_sign(slot0, stop0, v, &where, &negative);
    if (st == arch::status::committed) [[likely]] {
      *cpu = where;
      return negative;
    }
    bool ignored = false;
    unsigned retried_cpu = 0;
    if (retry<arch::add_sign, true>(st, stop0, slot0, static_cast<const std::uint32_t*>(stop0), v,
                                    &retried_cpu, &ignored) != outcome::portable) {
      *cpu = retried_cpu;
      return false;
    }
  }
  *cpu = portable::add(slot0, stop0, v, later);
  return false;
}

// Stores `desired` in CPU `cpu`'s slot if it holds `expected` and the
// thread may commit there: with the rseq backend only when the thread runs
// on `cpu` (else `moved`); with the portable backend from any CPU, under the
// slot's lock (`busy` when that lock belongs to an operation this thread's
// signal handler interrupted).  A `cpu` >= cpu_count() is `moved`.
inline cas_result compare_and_store(std::int64_t* slot0, std::uint32_t* stop0, unsigned cpu,
                                    std::int64_t expected, std::int64_t desired) noexcept {
  switch (run<arch::compare_and_store>(stop0, slot0, static_cast<const std::uint32_t*>(stop0), cpu,
                                       expected, desired)) {
    case outcome::committed:
      return cas_result::stored;
    case outcome::failed:
      return cas_result::changed;
    case outcome::moved:
      return cas_result::moved;
    case outcome::portable:
      break;
  }
  return portable::compare_and_store(slot0, stop0, cpu, expected, desired);
}

// A condition on a word outside the per-CPU data, tested inside push and
// push_batch: the push commits only while *word == expected.  A remote
// party that changes the word, then stops and fences the CPUs, knows that no
// push which saw the old value can commit after the fence (pool_cache's
// generation, see pool_cache.hpp).
struct guard {
  const std::uint64_t* word;
  std::uint64_t expected;
};
// The guard of unconditional pushes: a word that is always 0.
inline constexpr std::uint64_t always_zero = 0;
inline constexpr guard unguarded{&always_zero, 0};

// Pushes `item` (not null: pop's nullptr means "empty") on the current
// CPU's array; false when it is full or the guard does not hold.
inline bool push(cpu_array* arr0, std::uint32_t* stop0, void* item, guard g = unguarded) noexcept {
  outcome o = run<arch::push>(stop0, static_cast<void*>(arr0),
                              static_cast<const std::uint32_t*>(stop0), item, g.word, g.expected);
  if (o != outcome::portable) [[likely]]
    return o == outcome::committed;
  return portable::push(arr0, stop0, item, g.word, g.expected);
}

// Pops the current CPU's top item; nullptr when the array is empty.
inline void* pop(cpu_array* arr0, std::uint32_t* stop0) noexcept {
  if constexpr (arch::has_sequences) {
    // The first try's item, in a local that retry() never sees, stays in a
    // register (an address passed to retry() would keep it in memory).
    void* item;
    arch::status st = arch::pop(arr0, static_cast<const std::uint32_t*>(stop0), &item);
    if (st == arch::status::committed) [[likely]] {
      // Arrays hold no null item (push's precondition): a caller that tests
      // the result for "empty" has nothing to test on this path.
      if (item == nullptr) __builtin_unreachable();
      return item;
    }
    if (st == arch::status::failed) return nullptr;
    void* retried = nullptr;
    outcome o = retry<arch::pop, true>(st, stop0, static_cast<void*>(arr0),
                                       static_cast<const std::uint32_t*>(stop0), &retried);
    if (o != outcome::portable) return o == outcome::committed ? retried : nullptr;
  }
  return portable::pop(arr0, stop0);
}

// Appends up to n items from `in` to the current CPU's array; returns how
// many were moved (the first ones of `in`; none when the guard does not hold).
inline std::size_t push_batch(cpu_array* arr0, std::uint32_t* stop0, void* const* in, std::size_t n,
                              guard g = unguarded) noexcept {
  if (n == 0) return 0;
  std::size_t moved = 0;
  outcome o = run<arch::push_batch>(stop0, static_cast<void*>(arr0),
                                    static_cast<const std::uint32_t*>(stop0), in, n, &moved, g.word,
                                    g.expected);
  if (o != outcome::portable) [[likely]]
    return o == outcome::committed ? moved : 0;
  return portable::push_batch(arr0, stop0, in, n, g.word, g.expected);
}

// Moves up to n items off the top of the current CPU's array into out[0..k),
// keeping their array order; returns k.
inline std::size_t pop_batch(cpu_array* arr0, std::uint32_t* stop0, void** out,
                             std::size_t n) noexcept {
  if (n == 0) return 0;
  std::size_t moved = 0;
  outcome o = run<arch::pop_batch>(stop0, static_cast<void*>(arr0),
                                   static_cast<const std::uint32_t*>(stop0), out, n, &moved);
  if (o != outcome::portable) [[likely]]
    return moved;
  return portable::pop_batch(arr0, stop0, out, n);
}

}  // namespace seq

// ---- Keyed records (batch_queue) --------------------------------------------
//
// A per-CPU buffer of fixed-size records (queued operations) with a
// scoreboard: a bitmap of hash(key) over the records pending on the CPU, so
// that a reader on another CPU can tell, without stopping anyone, whether
// the CPU may hold a record for a key.  `records` points at `capacity`
// records of the structure's record size; `count` is the commit word.
// Changed remotely only while the CPU is stopped (the scoreboard is also
// read remotely without a stop).
struct record_array {
  static constexpr unsigned scoreboard_bits = 512;
  std::uint64_t* records = nullptr;
  std::uint32_t count = 0;
  std::uint32_t capacity = 0;
  std::uint64_t scoreboard[scoreboard_bits / 64] = {};
};
static_assert(offsetof(record_array, records) == 0 && offsetof(record_array, count) == 8 &&
                  offsetof(record_array, capacity) == 12 &&
                  offsetof(record_array, scoreboard) == 16,
              "the rseq sequences hard-code this layout");

namespace portable {
bool push_record(record_array* arr0, std::uint32_t* stop0, unsigned cpu,
                 const std::uint64_t* record, std::size_t words, unsigned scoreboard_bit,
                 unsigned* cpu_out) noexcept;
}  // namespace portable

namespace seq {

// Appends the Words-word record at `record` to CPU `cpu`'s array and sets
// scoreboard bit `scoreboard_bit` (< record_array::scoreboard_bits) there,
// if the thread runs on `cpu` (portable backend: if `cpu` is the slot the
// thread would use now) and the array is not full.  Returns whether it did.
// *cpu_out receives the CPU (slot) the thread runs on: on failure, a value
// other than `cpu` means "moved", `cpu` itself means "full".
template <unsigned Words>
inline bool push_record(record_array* arr0, std::uint32_t* stop0, unsigned cpu,
                        const std::uint64_t* record, unsigned scoreboard_bit,
                        unsigned* cpu_out) noexcept {
  std::size_t offset = offsetof(record_array, scoreboard) + std::size_t{scoreboard_bit / 64} * 8;
  std::uint64_t bit = std::uint64_t{1} << (scoreboard_bit % 64);
  outcome o = run<arch::push_record<Words>>(stop0, static_cast<void*>(arr0),
                                            static_cast<const std::uint32_t*>(stop0), cpu, record,
                                            offset, bit, cpu_out);
  if (o != outcome::portable) [[likely]]
    return o == outcome::committed;
  return portable::push_record(arr0, stop0, cpu, record, Words, scoreboard_bit, cpu_out);
}

}  // namespace seq
}  // namespace percpu::detail
