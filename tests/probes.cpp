// probes.cpp - the test programs' view of the library's internals (see
// probes.hpp).
#include "probes.hpp"

#include <atomic>

#include "xcall/internal.hpp"

namespace percpu_test {

bool service_thread(unsigned cpu, pthread_t& thread) {
  using namespace percpu::xcall::internal;
  registry& r = the_registry();
  if (cpu >= r.count || r.services[cpu].state.load(std::memory_order_acquire) != running) {
    return false;
  }
  thread = r.services[cpu].thread;
  return true;
}

}  // namespace percpu_test
