// core/process_wide.cpp - the fork hooks of the process-wide registries,
// and the window in which no registry becomes built (process_wide.hpp).
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
// hook first opens the fork window (fork_window in process_wide.hpp), and
// the parent and child hooks close it last; a builder publishes a registry
// only while the window is closed, so every registry that is built in the
// child had its prepare hook, and one whose build was under way is being
// built in the child by its parent, which the child redoes.
//
// With a second copy of the library in the process (a plugin that links the
// static archive), each copy registers its own hooks and has its own table;
// the window and each registry's word and `hooked` flag are shared, so a
// registry's hooks are in one table and run once per fork().
#include "core/process_wide.hpp"

#include <pthread.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace percpu::detail {

namespace {

using window = fork_window<>;

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
// with publish_process_wide's release store (the registry is whole).
void* built(const entry& e) noexcept {
  std::uintptr_t word = e.hooks.word->load(std::memory_order_acquire);
  return (word & 1) == 0 ? reinterpret_cast<void*>(word) : nullptr;
}

// Waits for a publication in progress (a few instructions) to end, then
// counts this hook run in: until close_window() no registry is published.
void open_window() noexcept {
  for (unsigned spins = 0;; ++spins) {
    std::uint32_t s = window::state.load(std::memory_order_relaxed);
    // Acquire: pairs with the publisher's release that clears its bit, so
    // the registry it published is seen built below.
    if ((s & window::publishing) == 0 &&
        window::state.compare_exchange_weak(s, s + 1, std::memory_order_acquire)) {
      break;
    }
    relax(spins);
  }
  window::forking_thread.store(gettid(), std::memory_order_relaxed);
}

void close_window() noexcept {
  if (window::state.load(std::memory_order_relaxed) == 1) {
    window::forking_thread.store(0, std::memory_order_relaxed);
  }
  // Release: the hooks' work happens before a builder publishes.
  window::state.fetch_sub(1, std::memory_order_release);
}

void prepare_all() noexcept {
  open_window();
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
  close_window();
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

void publish_process_wide(std::atomic<std::uintptr_t>& word, void* object) noexcept {
  const long self = gettid();
  for (unsigned spins = 0;; ++spins) {
    std::uint32_t s = window::state.load(std::memory_order_relaxed);
    if (s == 0 &&
        window::state.compare_exchange_weak(s, window::publishing, std::memory_order_relaxed)) {
      break;
    }
    // A later prepare hook of this very fork() builds it (another library's,
    // registered before this one was loaded): the window is this thread's.
    if (s != 0 && (s & window::publishing) == 0 &&
        window::forking_thread.load(std::memory_order_relaxed) == self) {
      word.store(reinterpret_cast<std::uintptr_t>(object), std::memory_order_release);
      return;
    }
    relax(spins);
  }
  // Release: pairs with process_wide()'s and once_claim's acquire loads:
  // the registry is whole before anyone sees its address.
  word.store(reinterpret_cast<std::uintptr_t>(object), std::memory_order_release);
  // Release: pairs with open_window's acquire; the address first.
  window::state.fetch_and(~window::publishing, std::memory_order_release);
}

}  // namespace percpu::detail
