// deferred_puts.cpp - signal handlers that interrupt pool_cache's own locked
// work on their thread.
//
// get and put are async-signal-safe, and their slow paths take the depot,
// slab and magazine locks.  A handler that interrupted its thread inside one
// of those sections must not take the lock again: pool_core::locked records
// the cache whose lock the thread holds (pool_thread.held), a nested put
// lands in the thread's deferred list, which the outer path applies as it
// releases the lock, and a nested get takes a deferred object of the
// current generation or fails.
#include <atomic>

#include "pool_core.hpp"

namespace percpu::detail {

thread_local constinit deferred_puts pool_thread;

void pool_core::apply_deferred_puts() noexcept {
  for (;;) {
    void* object = nullptr;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    for (unsigned i = pool_thread.count; i-- > 0;) {
      if (pool_object_header(pool_thread.objects[i])->owner == id) {
        object = pool_thread.objects[i];
        pool_thread.objects[i] = pool_thread.objects[--pool_thread.count];
        break;
      }
    }
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (object == nullptr) return;
    cache.put_slow(object);
  }
}

void pool_core::defer(void* object) noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (pool_thread.count == deferred_puts::capacity) {
    misuse("more than 64 puts from signal handlers nested in one slow path", &cache, object);
  }
  pool_thread.objects[pool_thread.count] = object;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  ++pool_thread.count;
}

void* pool_core::take_deferred() noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  for (unsigned i = pool_thread.count; i-- > 0;) {
    void* object = pool_thread.objects[i];
    if (header(object)->owner == id && header(object)->generation == generation()) {
      pool_thread.objects[i] = pool_thread.objects[--pool_thread.count];
      std::atomic_signal_fence(std::memory_order_seq_cst);
      header(object)->state = pool_object_state::in_use;
      return object;
    }
  }
  return nullptr;  // documented: a nested get may fail
}

}  // namespace percpu::detail
