// deferred_puts.cpp - gets and puts of signal handlers that interrupt their
// thread inside a locked section (of any cache, or a portable operation).
//
// get and put are async-signal-safe, and their slow paths take the depot,
// slab and magazine locks.  A handler that finds its thread inside a no-wait
// section (pool_core::locked, runtime/deferral.hpp) takes none: a put is
// deferred to the runtime's per-thread table, and the interrupted thread
// applies it (put_slow, with the generation checked again) when its
// outermost section ends; a get takes back a deferred object of this cache
// and of the current generation, or fails.
#include <atomic>

#include "pool_core.hpp"

namespace percpu::detail {

thread_local constinit pool_thread_state pool_thread;

namespace {

void put_later(void* core, void* object, std::int64_t) noexcept {
  static_cast<pool_core*>(core)->put_slow(object);
}

bool current_generation(void* core, void* object) noexcept {
  auto* c = static_cast<pool_core*>(core);
  return c->header(object)->generation == c->generation();
}

}  // namespace

void pool_core::defer(void* object) noexcept {
  if (!detail::defer(&put_later, this, object, 0, false)) {
    misuse("more puts from signal handlers than the deferral table holds", &cache, object);
  }
}

void* pool_core::take_deferred() noexcept {
  void* object = detail::take_deferred(&put_later, this, &current_generation);
  if (object != nullptr) header(object)->state = pool_object_state::in_use;
  return object;  // documented: a nested get may fail
}

}  // namespace percpu::detail
