// percpu/core/storage.hpp - per-CPU storage with stable addresses (NetBSD percpu(9)).
//
// Problem: a per-CPU variable needs one copy per CPU that could ever exist,
// found in a few instructions from the CPU number, and it must never move:
// readers on other CPUs (a counter sum, a lock's writer) hold pointers into
// it without any lock against the allocator.  Growing by swapping in larger
// copies (the first NetBSD design) makes every such reader a use-after-free
// waiting to happen, and needs a cross-call per CPU to do the swap.
//
// Mechanism: memory comes in chunks.  A chunk reserves, with
// mmap(MAP_NORESERVE), one unit of detail::unit_size bytes per CPU slot;
// an allocation is an offset inside the unit, and CPU c's copy of it lives at
// chunk + c * unit_size + offset.  Growth maps a new chunk; nothing ever moves.
// Pages a CPU never touches cost no memory.
//
// Remote access goes through the structure's stop_state (stop.hpp): the slot
// operations (add, compare_and_store) are restartable sequences that a
// visit() excludes; for_each_cpu() is an unsynchronised walk for data whose
// writers are known to be quiet, or for reads that tolerate staleness.
#pragma once

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

#include "percpu/core/detail/alloc.hpp"
#include "percpu/core/detail/block.hpp"
#include "percpu/core/stop.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/runtime.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "percpu/runtime/error.hpp"

namespace percpu {

// ---- Raw allocation -------------------------------------------------------

// Allocates `size` bytes aligned to `alignment` for every CPU slot, all
// zero, and returns CPU 0's copy.  Errors, percpu::error (nothing is
// allocated on a throw): errc::invalid_argument for size 0 or an alignment
// that is not a power of two; errc::too_large for a size or alignment
// beyond max_allocation(); errc::no_memory when no address space is left
// for a new chunk.
[[nodiscard]] inline void* allocate_raw(std::size_t size,
                                        std::size_t alignment = alignof(std::max_align_t)) {
  return detail::allocate_percpu(size, alignment);
}

// Frees what allocate_raw returned.  The caller ensures no one still uses
// any copy.  Throws percpu::error (errc::invalid_argument) for any other
// pointer.
inline void free_raw(void* p0) {
  detail::free_percpu(p0);
}

// CPU `cpu`'s copy of the raw allocation whose CPU-0 copy is p0.  No range
// check (cpu < cpu_count() is the caller's contract).
template <class T>
inline T* raw_on(T* p0, unsigned cpu) noexcept {
  return detail::copy_on(p0, cpu);
}

// Largest size (and alignment) one allocation may have.
constexpr std::size_t max_allocation() noexcept {
  return detail::unit_size;
}

// ---- Typed storage ----------------------------------------------------------

// A type the slot operations can work on: one machine word, integral.
template <class T>
concept slot_value = std::integral<T> && sizeof(T) == sizeof(std::int64_t);

// One T per CPU slot, at addresses that never change for the object's
// lifetime.  Not copyable or movable: the addresses are its identity.
template <class T>
class storage {
  static_assert(!std::is_reference_v<T> && !std::is_array_v<T>,
                "percpu::storage<T> needs an object type");

 public:
  // Value-initialises every CPU's copy.  For arithmetic, enumeration and
  // pointer types, T() is all zero bytes, which fresh per-CPU memory already
  // holds: no memory is touched.  Every other T, class types and member
  // pointers (whose null is not all zero bytes) included, is constructed in
  // every copy.  Throws what allocate_raw() throws (percpu::error); if a
  // constructor of T throws, the copies already built are destroyed and its
  // exception propagates.
  storage() : storage(construct_tag{}, zero_bytes_are_value, [](void* p) { ::new (p) T(); }) {}

  // Copy-constructs every CPU's copy from `initial`.
  explicit storage(const T& initial)
      : storage(construct_tag{}, false, [&](void* p) { ::new (p) T(initial); }) {}

  // Destroys every CPU's copy, then frees the memory.  The caller ensures no
  // thread still uses the storage.
  ~storage() {
    if constexpr (!std::is_trivially_destructible_v<T>) {
      for (unsigned cpu = 0; cpu < cpus(); ++cpu) on_unchecked(cpu)->~T();
    }
  }

  storage(const storage&) = delete;
  storage& operator=(const storage&) = delete;

  // The calling CPU's copy.  A hint: the thread may migrate right after, so
  // plain read-modify-write through it can race with another thread; use
  // the slot operations for updates.
  T* local() noexcept { return on_unchecked(current_cpu()); }

  // CPU `cpu`'s copy.  Throws percpu::error (errc::out_of_range) for
  // cpu >= cpus().
  T* on(unsigned cpu) {
    if (cpu >= cpus())
      detail::throw_out_of_range("percpu::storage::on", "CPU", cpu, "cpus()", cpus());
    return on_unchecked(cpu);
  }
  T* on_unchecked(unsigned cpu) noexcept { return block_.on(cpu); }
  const T* on_unchecked(unsigned cpu) const noexcept { return block_.on(cpu); }

  // Number of CPU slots (== cpu_count()).
  unsigned cpus() const noexcept { return block_.cpus(); }

  // f(cpu, T&) for every CPU, unsynchronised: for quiescent data or reads
  // that tolerate staleness (a slot read this way is torn-free only through
  // load()).
  template <class F>
  void for_each_cpu(F&& f) {
    for (unsigned cpu = 0; cpu < cpus(); ++cpu) f(cpu, *on_unchecked(cpu));
  }

  // f(T&) with CPU `cpu` stopped: no slot operation of this storage commits
  // on that CPU while f runs.  Returns what f returns.  Throws percpu::error
  // (errc::out_of_range) for cpu >= cpus(), or what f throws.
  template <class F>
  decltype(auto) visit(unsigned cpu, F&& f) {
    if (cpu >= cpus()) {
      detail::throw_out_of_range("percpu::storage::visit", "CPU", cpu, "cpus()", cpus());
    }
    return stops().visit(cpu, [&]() -> decltype(auto) { return f(*on_unchecked(cpu)); });
  }

  // f(cpu, T&) for every CPU, all stopped at once (one broadcast fence).
  template <class F>
  void visit_all(F&& f) {
    stops().visit_all([&](unsigned cpu) { f(cpu, *on_unchecked(cpu)); });
  }

  // ---- Slot operations (one machine word, integral T) ----

  // Adds v to the current CPU's copy.  Never lost under preemption,
  // migration or signals; async-signal-safe; no atomic instruction.
  void add(T v) noexcept requires slot_value<T> {
    detail::seq::add(slot0(), block_.stop_words(), static_cast<std::int64_t>(v));
  }

  // If the thread runs on `cpu` and that CPU's copy equals `expected`,
  // stores `desired` and returns true.  Otherwise returns false and changes
  // nothing (re-read and retry).  The portable backend does not check the
  // CPU the thread runs on: any slot may be used by any thread there.  A
  // `cpu` >= cpus() always fails.
  [[nodiscard]] bool compare_and_store(unsigned cpu, T expected,
                                       T desired) noexcept requires slot_value<T> {
    return detail::seq::compare_and_store(
               slot0(), block_.stop_words(), cpu, static_cast<std::int64_t>(expected),
               static_cast<std::int64_t>(desired)) == detail::cas_result::stored;
  }

  // A torn-free, possibly stale read of CPU `cpu`'s copy (relaxed order).
  [[nodiscard]] T load(unsigned cpu) const noexcept requires slot_value<T> {
    return std::atomic_ref<const T>(*on_unchecked(cpu)).load(std::memory_order_relaxed);
  }

  // The stop words of this storage, for facilities built on it.
  stop_state& stops() noexcept { return block_.stops(); }

 private:
  struct construct_tag {};

  // Whether T() is all zero bytes (see the default constructor).
  static constexpr bool zero_bytes_are_value = std::is_scalar_v<T> && !std::is_member_pointer_v<T>;

  // `zero_is_value`: fresh per-CPU memory reads as zero, which already is
  // the value to construct, so no page is touched.
  template <class Construct>
  storage(construct_tag, bool zero_is_value, Construct construct) {
    if (!zero_is_value) construct_all(construct);
  }

  // On a throw the block (a member) frees the memory.
  template <class Construct>
  void construct_all(Construct& construct) {
    unsigned built = 0;
    try {
      for (; built < cpus(); ++built) construct(on_unchecked(built));
    } catch (...) {
      if constexpr (!std::is_trivially_destructible_v<T>) {
        while (built > 0) on_unchecked(--built)->~T();
      }
      throw;
    }
  }

  std::int64_t* slot0() noexcept { return reinterpret_cast<std::int64_t*>(block_.data0()); }

  detail::cpu_block<T> block_;
};

}  // namespace percpu
