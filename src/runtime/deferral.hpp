// deferral.hpp - no-wait sections, and the work signal handlers defer from them.
//
// Problem: a signal handler runs on top of the code it interrupted, on the
// same thread.  If that code holds a lock (a slot lock of the portable
// backend, a pool_cache's depot or slab lock) and the handler waits for the
// same lock, the thread waits for itself.  And if two threads each hold a
// lock the other's handler waits for, both wait forever.  rseq needs none of
// this for its sequences (the kernel aborts the interrupted one), but the
// portable backend and pool_cache's slow paths take real locks.
//
// Mechanism: a thread is inside a no-wait section while it may hold such a
// lock; sections nest (a per-thread depth).  A signal handler that finds its
// thread inside one waits for nothing, whatever structure it uses: its
// operations make one attempt, and what it cannot do now it defers - an
// entry (a function and its arguments) in a small per-thread table.  When
// the outermost section ends, the thread runs the deferred work itself,
// outside every section, where waiting is safe.  Adds to one structure
// merge into one entry (they commute), so a storm of handlers needs one
// entry per structure, not one per signal.
//
// The table is touched only by its thread and that thread's handlers, which
// run to completion before the code they interrupted resumes.  Each entry
// changes hands by a single atomic instruction on its state (free ->
// writing -> ready -> taking -> free), so a handler that interrupts another
// access to the table never sees an entry half taken.  Entries are taken
// only by the outermost drain (depth 0 before it, counted inside while it
// takes) and by take_deferred (a handler's get reusing a deferred put).
#pragma once

#include <atomic>
#include <cstdint>

namespace percpu::detail {

// Work to run later: fn(a, b, value).
using deferred_fn = void (*)(void* a, void* b, std::int64_t value) noexcept;

struct deferred_entry {
  deferred_fn fn;
  void* a;
  void* b;
  std::int64_t value;  // added to by handlers with atomic instructions
  std::uint32_t state;
  bool merge;
};

struct thread_deferral {
  static constexpr unsigned capacity = 128;
  unsigned depth;    // no-wait sections this thread is inside
  unsigned pending;  // entries ready to run
  deferred_entry entries[capacity];
};

// The calling thread's state.  Constant-initialised, so that a handler's
// first use of it initialises nothing.
extern thread_local constinit thread_deferral this_thread_deferral
    __attribute__((visibility("hidden")));

// Runs the deferred work (the outermost section's end).
void run_deferred() noexcept;

// Whether the calling thread is inside a no-wait section: a signal handler
// that sees true interrupted code that may hold a lock, and must not wait.
inline bool in_no_wait() noexcept {
  return this_thread_deferral.depth > 0;
}

inline void no_wait_enter() noexcept {
  ++this_thread_deferral.depth;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

// Leaves a section; the outermost runs what handlers deferred meanwhile.
inline void no_wait_leave() noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  --this_thread_deferral.depth;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (this_thread_deferral.depth == 0 &&
      __atomic_load_n(&this_thread_deferral.pending, __ATOMIC_RELAXED) != 0) [[unlikely]] {
    run_deferred();
  }
}

// A no-wait section for a scope.
class no_wait_section {
 public:
  no_wait_section() noexcept { no_wait_enter(); }
  ~no_wait_section() { no_wait_leave(); }
  no_wait_section(const no_wait_section&) = delete;
  no_wait_section& operator=(const no_wait_section&) = delete;
};

// Defers fn(a, b, value) to the end of the outermost section; called only
// inside one.  With `merge`, value is added to a pending entry of the same
// fn, a and b if there is one.  Returns false when the table is full (the
// caller decides what then).
bool defer(deferred_fn fn, void* a, void* b, std::int64_t value, bool merge) noexcept;

// Takes back a pending entry of fn on `a` whose `b` accept(a, b) approves,
// and returns that b; nullptr when there is none.
void* take_deferred(deferred_fn fn, void* a, bool (*accept)(void* a, void* b) noexcept) noexcept;

}  // namespace percpu::detail
