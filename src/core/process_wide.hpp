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
// thread that does not exist in the child, service threads that are gone.
//
// Mechanism: process_wide<T>() builds T with `new` on first use (a
// function-local static, thread-safe) and never deletes it.  When it builds
// T it registers T's fork hooks with pthread_atfork, each where T has it:
// prepare_fork() before fork() in the forking thread, after_fork_parent()
// and after_fork_child() after it.  A registry guarded by one lock derives
// from held_across_fork: the lock is held across fork(), so the child finds
// it free and the bookkeeping as the parent's last holder left it.
#pragma once

#include <pthread.h>

#include <mutex>

namespace percpu::detail {

template <class T>
T& process_wide();

template <class T>
void register_fork_hooks() {
  void (*prepare)() = nullptr;
  void (*parent)() = nullptr;
  void (*child)() = nullptr;
  if constexpr (requires(T & t) { t.prepare_fork(); }) {
    prepare = [] { process_wide<T>().prepare_fork(); };
  }
  if constexpr (requires(T & t) { t.after_fork_parent(); }) {
    parent = [] { process_wide<T>().after_fork_parent(); };
  }
  if constexpr (requires(T & t) { t.after_fork_child(); }) {
    child = [] { process_wide<T>().after_fork_child(); };
  }
  if (prepare != nullptr || parent != nullptr || child != nullptr) {
    pthread_atfork(prepare, parent, child);
  }
}

// The process's one T (see the file comment).
template <class T>
T& process_wide() {
  static T* const object = [] {
    auto* made = new T;
    register_fork_hooks<T>();
    return made;
  }();
  return *object;
}

// A registry's lock, held across fork().
struct held_across_fork {
  std::mutex lock;
  void prepare_fork() noexcept { lock.lock(); }
  void after_fork_parent() noexcept { lock.unlock(); }
  void after_fork_child() noexcept { lock.unlock(); }
};

}  // namespace percpu::detail
