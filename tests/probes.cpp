// probes.cpp - the test programs' view of the library's internals (see
// probes.hpp).
#include "probes.hpp"

#include <atomic>

#include "xcall/internal.hpp"

namespace percpu_test {

using namespace percpu::xcall::internal;  // NOLINT(google-build-using-namespace)

bool service_thread(unsigned cpu, pthread_t& thread) {
  registry& r = the_registry();
  if (cpu >= r.count || r.services[cpu].state.load(std::memory_order_acquire) != running) {
    return false;
  }
  thread = r.services[cpu].thread;
  return true;
}

const std::atomic<std::uint32_t>* service_sleep_word(unsigned cpu) {
  registry& r = the_registry();
  if (cpu >= r.count || r.services[cpu].state.load(std::memory_order_acquire) == absent) {
    return nullptr;
  }
  return &r.services[cpu].sleeping;
}

unsigned long service_threads_started() noexcept {
  return threads_started.load(std::memory_order_relaxed);
}

long service_poll_ns() noexcept {
  return poll_ns;
}

}  // namespace percpu_test
