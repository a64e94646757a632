// core/process_wide.hpp - the library's process-wide registries: built on
// first use, never destroyed, consistent across fork().
//
// Problem: a registry the library keeps for the whole process (the per-CPU
// allocator's chunks, the live pool caches, the xcall service threads) is
// reached from a user's objects at namespace scope.  Their constructors may
// run before the library's own static initialisers and their destructors
// after the library's static destructors; service threads may touch a
// registry while the program exits.  As namespace-scope globals, the
// allocator's maps were constructed by the library's initialiser, which
// runs after the program's when the static archive is linked after the
// program's objects: the README's own example (`percpu::counter requests;`
// at namespace scope) crashed in std::map before main().  And fork() copies
// a registry in whatever state another thread left it: a lock held by a
// thread that does not exist in the child, service threads that are gone, a
// registry half built.
//
// Mechanism: process_wide<T>() builds T with `new` on first use and never
// deletes it.  One word says where T stands (runtime_internal.hpp's
// once_claim): not built, being built by a thread of one process, or T's
// address.  A thread that finds T being built by its own process waits; one
// that finds it being built by another process is in a fork() child whose
// parent forked while a thread built T: that thread does not exist here, so
// this one builds T afresh (the half-built copy is leaked).
//
// Fork hooks: before T is built its hooks join the library's
// (process_wide.cpp), which run prepare_fork() before fork() in the forking
// thread, after_fork_parent() and after_fork_child() after it, each where T
// has it, for every T built when fork() began.  A registry guarded by one
// lock derives from held_across_fork: the lock is held across fork(), so the
// child finds it free and the bookkeeping as the parent's last holder left
// it.  A T whose build ended while fork() ran its hooks had no prepare
// hook, and a thread may have held its lock when the child was copied: the
// child's hook sets it back to "not built", and the child builds its own.
//
// History: T used to be a function-local static whose initialiser also
// called pthread_atfork().  That call waits while another thread is inside
// fork(), so a fork() that began while a thread built T always left the
// C++ guard of T "being initialised" in the child, whose first use of T
// then waited forever: `percpu stress` saw a fork child hang in its first
// cross-CPU call when the parent's first one ran at the same moment
// (emulated 6.12 guest, 64 possible CPUs).
//
// Rule: T's constructor never reaches process_wide<T>() itself (that would
// wait for itself).  Nothing here waits for a fork(): a builder never holds
// up the parent.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "runtime/runtime_internal.hpp"

namespace percpu::detail {

// Each process-wide T's state, shared by every copy of the library in the
// process (a template's static members: one object however many shared
// objects define them, GNU unique symbols): its word (once_claim: once_idle
// before it is built, else T's address) and whether its fork hooks are in a
// table already (one table, not one per copy of the library).
template <class T>
struct process_wide_state {
  static inline std::atomic<std::uintptr_t> word{once_idle};
  static inline std::atomic<bool> hooked{false};
};

// One process-wide object's fork hooks; each is null where T has none.
// `object` is T's address.
struct fork_hooks {
  std::atomic<std::uintptr_t>* word = nullptr;
  void (*prepare)(void* object) noexcept = nullptr;
  void (*parent)(void* object) noexcept = nullptr;
  void (*child)(void* object) noexcept = nullptr;
};

// Adds one T's hooks to those the library runs around every fork()
// (process_wide.cpp); a T without hooks is not added.
void add_fork_hooks(const fork_hooks& hooks) noexcept;

template <class T>
fork_hooks fork_hooks_of() noexcept {
  fork_hooks h;
  h.word = &process_wide_state<T>::word;
  if constexpr (requires(T & t) { t.prepare_fork(); }) {
    h.prepare = [](void* object) noexcept { static_cast<T*>(object)->prepare_fork(); };
  }
  if constexpr (requires(T & t) { t.after_fork_parent(); }) {
    h.parent = [](void* object) noexcept { static_cast<T*>(object)->after_fork_parent(); };
  }
  if constexpr (requires(T & t) { t.after_fork_child(); }) {
    h.child = [](void* object) noexcept { static_cast<T*>(object)->after_fork_child(); };
  }
  return h;
}

// The first use of T (out of line and cold): builds it, or waits for the
// thread of this process that does (see the file comment).
template <class T>
[[gnu::noinline, gnu::cold]] T& build_process_wide() {
  using state = process_wide_state<T>;
  std::uintptr_t seen = once_claim(state::word);
  if ((seen & 1) == 0) return *reinterpret_cast<T*>(seen);
  // Acquire/release: pairs with itself across builders (a child's rebuild
  // sees the parent's table entry through the copy; the flag only skips a
  // second one).
  if (!state::hooked.load(std::memory_order_acquire)) {
    add_fork_hooks(fork_hooks_of<T>());
    state::hooked.store(true, std::memory_order_release);
  }
  T* made = nullptr;
  try {
    made = new T;
  } catch (...) {
    state::word.store(once_idle, std::memory_order_release);
    throw;
  }
  // Release: pairs with the acquire loads of once_claim(), process_wide()
  // and the fork hooks: T is whole before any thread sees its address.
  state::word.store(reinterpret_cast<std::uintptr_t>(made), std::memory_order_release);
  return *made;
}

// The process's one T (see the file comment).
template <class T>
T& process_wide() {
  // Acquire: pairs with build_process_wide's release store.
  std::uintptr_t seen = process_wide_state<T>::word.load(std::memory_order_acquire);
  if ((seen & 1) == 0) [[likely]]
    return *reinterpret_cast<T*>(seen);
  return build_process_wide<T>();
}

// A registry's lock, held across fork().
struct held_across_fork {
  std::mutex lock;
  void prepare_fork() noexcept { lock.lock(); }
  void after_fork_parent() noexcept { lock.unlock(); }
  void after_fork_child() noexcept { lock.unlock(); }
};

}  // namespace percpu::detail
