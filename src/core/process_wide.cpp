// core/process_wide.cpp - the fork hooks of the process-wide registries
// (process_wide.hpp).
//
// Problem: each registry's fork hooks must run around every fork(), but
// registering them with pthread_atfork() when the registry is built made the
// builder wait for any fork() in progress while its build was half done (the
// history in process_wide.hpp), and could deadlock outright: pthread_atfork()
// waits for a fork() whose prepare hook waits for a lock the builder's caller
// holds.
//
// Mechanism: the library registers one set of hooks, once, when it is loaded
// (a constructor function, before main() or during dlopen(); it builds
// nothing, so the order of static initialisers does not matter to it), and
// those run the hooks of every registry built so far, from a fixed table
// that a builder fills without waiting for anything.  As pthread_atfork()
// does: prepare hooks newest first, the others oldest first.  A registry
// still being built when fork() begins is skipped: nobody uses it yet, and
// the child builds its own (process_wide.hpp).
//
// With a second copy of the library in the process (a plugin that links the
// static archive), each copy registers its own set; a registry's hooks sit
// in the table of the copy whose add_fork_hooks() its builder called, so
// they run once per fork().
#include "core/process_wide.hpp"

#include <pthread.h>

#include <cstdio>
#include <cstdlib>

namespace percpu::detail {

namespace {

// More than the library has registries (three), so that a new one does not
// have to grow this.
constexpr unsigned max_registries = 8;

struct entry {
  fork_hooks hooks;
  std::atomic<bool> ready{false};  // `hooks` are filled in
  bool prepared = false;           // prepare ran for this fork() (forking thread only)
};

entry table[max_registries];
std::atomic<unsigned> used{0};

// The registry's address, or null while it is not built.
void* built(const entry& e) noexcept {
  std::uintptr_t word = e.hooks.word->load(std::memory_order_acquire);
  return (word & 1) == 0 ? reinterpret_cast<void*>(word) : nullptr;
}

unsigned entries() noexcept {
  unsigned n = used.load(std::memory_order_acquire);
  return n < max_registries ? n : max_registries;
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

void after_all(bool child) noexcept {
  for (unsigned i = 0; i < entries(); ++i) {
    entry& e = table[i];
    if (!e.prepared) continue;
    e.prepared = false;
    void (*hook)(void*) noexcept = child ? e.hooks.child : e.hooks.parent;
    if (hook != nullptr) hook(built(e));
  }
}

void parent_all() noexcept {
  after_all(false);
}
void child_all() noexcept {
  after_all(true);
}

[[gnu::constructor]] void register_fork_hooks() {
  pthread_atfork(prepare_all, parent_all, child_all);
}

}  // namespace

void add_fork_hooks(const fork_hooks& hooks) noexcept {
  for (unsigned i = 0; i < entries(); ++i) {
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
