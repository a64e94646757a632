// core/process_wide.cpp - the fork hooks of the process-wide registries
// (process_wide.hpp).
//
// Problem: each registry's fork hooks must run around every fork(), but
// registering them with pthread_atfork() when the registry is built made the
// builder wait for any fork() in progress while its build was half done (the
// history in process_wide.hpp), and could deadlock outright: pthread_atfork()
// waits for a fork() whose prepare hook waits for a lock the builder's caller
// holds.  And a registry whose build ends while fork() runs the hooks has
// had no prepare hook: a thread that takes its lock at once leaves it held
// in the child, by a thread the child does not have.
//
// Mechanism: the library registers one set of hooks, once, when it is loaded
// (a constructor function, before main() or during dlopen(); it builds
// nothing, so the order of static initialisers does not matter to it), and
// those run the hooks of every registry built so far, from a fixed table
// that a builder fills without waiting for anything.  As pthread_atfork()
// does: prepare hooks newest first, the others oldest first.  The prepare
// hook marks the registries it prepared; in the child, one that is built but
// unmarked was finished while the hooks ran, and goes back to "not built"
// (leaked): the child builds its own, as it does one whose build was under
// way.  Nothing waits for the fork: a registry is published the moment it
// is built.  (Making a builder wait for the hooks to end deadlocked with a
// prepare hook of the program's that takes a lock the builder's caller
// holds.)
//
// With a second copy of the library in the process (a plugin that links the
// static archive), each copy registers its own hooks and has its own table;
// each registry's word and `hooked` flag are shared, so its hooks are in one
// table and run once per fork().
#include "core/process_wide.hpp"

#include <pthread.h>

#include <cstdio>
#include <cstdlib>

namespace percpu::detail {

namespace {

// More than the library has registries (three), so that a new one does not
// have to grow this.
constexpr unsigned max_registries = 16;

struct entry {
  fork_hooks hooks;
  std::atomic<bool> ready{false};  // `hooks` are filled in
  bool prepared = false;           // prepare ran for this fork() (forking thread only)
};

entry table[max_registries];
std::atomic<unsigned> used{0};  // entries taken; each is read once `ready`

unsigned entries() noexcept {
  unsigned n = used.load(std::memory_order_relaxed);
  return n < max_registries ? n : max_registries;
}

// The registry's address, or null while it is not built.  Acquire: pairs
// with build_process_wide's release store (the registry is whole).
void* built(const entry& e) noexcept {
  std::uintptr_t word = e.hooks.word->load(std::memory_order_acquire);
  return (word & 1) == 0 ? reinterpret_cast<void*>(word) : nullptr;
}

void prepare_all() noexcept {
  for (unsigned i = entries(); i-- > 0;) {
    entry& e = table[i];
    // Acquire: pairs with add_fork_hooks' release of `ready`.
    void* object = e.ready.load(std::memory_order_acquire) ? built(e) : nullptr;
    e.prepared = object != nullptr;
    if (e.prepared && e.hooks.prepare != nullptr) e.hooks.prepare(object);
  }
}

void parent_all() noexcept {
  for (unsigned i = 0; i < entries(); ++i) {
    entry& e = table[i];
    if (!e.prepared) continue;
    e.prepared = false;
    if (e.hooks.parent != nullptr) e.hooks.parent(built(e));
  }
}

void child_all() noexcept {
  fork_generation.fetch_add(1, std::memory_order_relaxed);  // one thread here
  for (unsigned i = 0; i < entries(); ++i) {
    entry& e = table[i];
    if (!e.ready.load(std::memory_order_acquire)) continue;
    if (e.prepared) {
      e.prepared = false;
      if (e.hooks.child != nullptr) e.hooks.child(built(e));
    } else if (built(e) != nullptr) {
      // Built while the hooks ran: not prepared for this fork.  The child
      // is this one thread: nothing else sees the word change.
      e.hooks.word->store(once_idle, std::memory_order_relaxed);
    }
  }
}

[[gnu::constructor]] void register_fork_hooks() {
  pthread_atfork(prepare_all, parent_all, child_all);
}

}  // namespace

void add_fork_hooks(const fork_hooks& hooks) noexcept {
  if (hooks.prepare == nullptr && hooks.parent == nullptr && hooks.child == nullptr) return;
  for (unsigned i = 0; i < entries(); ++i) {
    // Acquire: pairs with the release of `ready` below.
    if (table[i].ready.load(std::memory_order_acquire) && table[i].hooks.word == hooks.word) return;
  }
  unsigned i = used.fetch_add(1, std::memory_order_relaxed);
  if (i >= max_registries) {
    std::fputs("percpu: more process-wide registries than core/process_wide.cpp's table holds\n",
               stderr);
    std::abort();
  }
  table[i].hooks = hooks;
  // Release: pairs with the acquire loads of `ready`; the hooks first.
  table[i].ready.store(true, std::memory_order_release);
}

}  // namespace percpu::detail
