// percpu/runtime/detail/runtime.hpp - the few process-wide values every fast path reads.
//
// Problem: each per-CPU operation must know, in a handful of instructions,
// which backend is active, where this thread's rseq area lives and how far
// apart two CPUs' copies of a per-CPU object are.  These values are fixed once
// the library has started, so they live in plain globals that stay hot in the
// cache; nothing on a fast path takes a lock or calls a function to get them.
//
// Start-up is lazy (the first allocation, or any call that asks).  A
// sequence on memory from the per-CPU allocator runs after it, since the
// allocator starts the library first.  One that runs before it (memory the
// library did not hand out) finds rseq_offset naming an area that is never
// registered (set by a constructor that runs before any initialiser of the
// program, src/runtime/runtime.cpp), leaves through `unregistered`, and its
// slow path starts the library.  current_cpu(), which needs no memory,
// checks `backend` and starts the library itself.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

// Fault injection in debug builds: this thread's count of sequences left
// before one aborts itself (arch/<arch>/rseq.hpp).  Initial-exec TLS with a plain
// C name, so that the sequences' assembly can address it.
extern "C" {
extern __thread __attribute__((tls_model("initial-exec"))) std::int32_t percpu_fault_countdown;
}

namespace percpu::detail {

// Debug builds (see runtime/detail/arch.hpp): make every `every`-th restartable
// sequence of each thread abort just before its commit (0: never), so abort
// paths run millions of times.  PERCPU_FAULT_ABORT_RATE=N sets it at start.
void set_fault_abort_rate(unsigned every) noexcept;
// Aborts injected so far, all threads.
std::uint64_t fault_injections() noexcept;

// Which implementation of the per-CPU sequences is active.
enum class backend_code : std::uint8_t { uninitialized = 0, rseq = 1, portable = 2 };

// Per-CPU copies of one allocation are `unit_size` bytes apart: CPU c's copy
// of an object whose CPU-0 copy is at p lives at p + (c << unit_shift).  A
// compile-time stride makes the address computation a single shift.
inline constexpr unsigned unit_shift = 20;
inline constexpr std::size_t unit_size = std::size_t{1} << unit_shift;

// The slot index is the rseq area's cpu_id (CPU mode) or its mm_cid
// (mm_cid mode), 20 bytes further (struct rseq: cpu_id at 4, mm_cid at 24,
// fixed since Linux 4.18 and 6.3).
inline constexpr std::ptrdiff_t mm_cid_shift = 20;

struct runtime_state {
  // Atomic, since a thread may read them while another starts the library
  // (current_cpu() on a new thread, an operation before start-up).  Fast
  // paths load them relaxed - the same plain load as before; a slow path
  // that finds `uninitialized` starts the library, and one that goes on to
  // read `slots` loads `backend` with acquire (start-up stores it last,
  // with release).
  std::atomic<backend_code> backend{backend_code::uninitialized};
  // Offset of the calling thread's rseq area from the thread pointer (%fs
  // base on x86-64); the same for every thread (static TLS).  In mm_cid
  // mode, mm_cid_shift more: 4 bytes past it is then mm_cid, where it is
  // cpu_id in CPU mode, and the sequences tell the modes apart by the low
  // bits (an rseq area is 32-byte aligned, and start-up checks that its
  // offset is too).  Both index words of an area that is not registered
  // read negative to the sequences (arch/<arch>/rseq.hpp), and a sequence
  // reads its index inside its critical section, where a change of either
  // (migration, preemption) aborts it.  Set at start-up
  // (src/runtime/index_mode.cpp chooses the mode).
  std::atomic<std::ptrdiff_t> rseq_offset{0};
  // Whether light_barrier() (fence.hpp) may be a compiler barrier alone
  // (rseq: the heavy side interrupts every CPU) rather than a full fence.
  // A plain word: light_barrier runs only on structures allocated after
  // start-up, which orders this read after start-up's write.
  bool light_barrier_is_compiler_barrier = false;
  // Number of per-CPU slots: highest possible CPU + 1 (rseq), or the
  // simulated CPU count (portable backend, PERCPU_SLOTS).
  unsigned slots = 0;
};

// Written under the start-up lock, before any allocation exists (and
// rseq_offset once before, see runtime.cpp).
extern runtime_state runtime;

// The active backend, for fast paths (relaxed).
inline backend_code backend_now() noexcept {
  return runtime.backend.load(std::memory_order_relaxed);
}
// The active backend, for a slow path that reads runtime.slots after it.
inline backend_code backend_acquire() noexcept {
  return runtime.backend.load(std::memory_order_acquire);
}
// Where the sequences find the rseq area.
inline std::ptrdiff_t rseq_offset_now() noexcept {
  return runtime.rseq_offset.load(std::memory_order_relaxed);
}

// Whether slots are concurrency ids rather than CPUs: a fence must then
// reach every CPU, since a thread holding any id can run on any CPU.
inline bool indexed_by_mm_cid() noexcept {
  return (rseq_offset_now() & 31) == mm_cid_shift;
}

// Whether slot c is CPU c: the rseq backend indexing by CPU number (not
// mm_cid, not the portable backend's slot mapping).  What NUMA placement of
// a slot's memory needs.
inline bool slots_are_cpus() noexcept {
  return backend_now() == backend_code::rseq && !indexed_by_mm_cid();
}

// Performs start-up if it has not happened; throws percpu::error
// (errc::configuration) when the environment asks for something this
// machine cannot give.
void ensure_started();

// Address of CPU `cpu`'s copy of the object whose CPU-0 copy is `p0`.
template <class T>
inline T* copy_on(T* p0, unsigned cpu) noexcept {
  return reinterpret_cast<T*>(reinterpret_cast<std::uintptr_t>(p0) +
                              (static_cast<std::uintptr_t>(cpu) << unit_shift));
}

}  // namespace percpu::detail
