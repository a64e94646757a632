// deferral.cpp - the per-thread table of deferred work (see deferral.hpp).
#include "deferral.hpp"

#include <atomic>
#include <cstdint>

namespace percpu::detail {

thread_local constinit thread_deferral this_thread_deferral{};

namespace {

enum entry_state : std::uint32_t { free_entry = 0, writing = 1, ready = 2, taking = 3 };

bool claim(deferred_entry& e, std::uint32_t from, std::uint32_t to) noexcept {
  return __atomic_compare_exchange_n(&e.state, &from, to, false, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED);
}

// Takes `e` (already claimed: `taking`) off the table into `out`.
void take(deferred_entry& e, deferred_entry& out) noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  out = e;
  out.value = __atomic_load_n(&e.value, __ATOMIC_RELAXED);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  __atomic_store_n(&e.state, free_entry, __ATOMIC_RELAXED);
  __atomic_fetch_sub(&this_thread_deferral.pending, 1u, __ATOMIC_RELAXED);
}

}  // namespace

bool defer(deferred_fn fn, void* a, void* b, std::int64_t value, bool merge) noexcept {
  thread_deferral& t = this_thread_deferral;
  if (merge) {
    // Only a `ready` entry is merged into: one being written or taken is
    // not.  The check and the add cannot be separated by a take, because
    // this runs inside a section (depth > 0), where nothing interrupting it
    // takes entries of merging kinds.
    for (deferred_entry& e : t.entries) {
      if (__atomic_load_n(&e.state, __ATOMIC_RELAXED) == ready && e.merge && e.fn == fn &&
          e.a == a && e.b == b) {
        __atomic_fetch_add(&e.value, value, __ATOMIC_RELAXED);
        return true;
      }
    }
  }
  for (deferred_entry& e : t.entries) {
    if (!claim(e, free_entry, writing)) continue;
    e.fn = fn;
    e.a = a;
    e.b = b;
    e.value = value;
    e.merge = merge;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    __atomic_fetch_add(&t.pending, 1u, __ATOMIC_RELAXED);
    __atomic_store_n(&e.state, ready, __ATOMIC_RELAXED);
    return true;
  }
  return false;
}

void* take_deferred(deferred_fn fn, void* a, bool (*accept)(void* a, void* b) noexcept) noexcept {
  for (deferred_entry& e : this_thread_deferral.entries) {
    if (__atomic_load_n(&e.state, __ATOMIC_RELAXED) != ready || e.fn != fn || e.a != a) continue;
    if (!claim(e, ready, taking)) continue;
    if (!accept(a, e.b)) {
      __atomic_store_n(&e.state, ready, __ATOMIC_RELAXED);
      continue;
    }
    deferred_entry taken{};
    take(e, taken);
    return taken.b;
  }
  return nullptr;
}

// Each entry is taken with the thread counted inside a section, so a
// handler that interrupts the taking only adds entries and never drains the
// table itself; the entry's work then runs outside every section (it may
// wait, and may enter sections of its own, whose ends drain what is left).
// After the last entry the table is checked once more with the thread
// outside, for an entry a handler added at the last moment; from then on no
// handler defers, since none finds the thread inside a section.
void run_deferred() noexcept {
  thread_deferral& t = this_thread_deferral;
  for (;;) {
    deferred_entry work{};
    bool found = false;
    no_wait_enter();
    for (deferred_entry& e : t.entries) {
      if (claim(e, ready, taking)) {
        take(e, work);
        found = true;
        break;
      }
    }
    std::atomic_signal_fence(std::memory_order_seq_cst);
    --t.depth;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (found) {
      work.fn(work.a, work.b, work.value);
    } else if (__atomic_load_n(&t.pending, __ATOMIC_RELAXED) == 0) {
      return;
    }
  }
}

}  // namespace percpu::detail
