// xcall_internal.hpp - what the tests may ask of the cross-call machinery.
#pragma once

#include <pthread.h>

namespace percpu::xcall::testing {

// The service thread of `cpu`, if it is running (for CPU-time checks).
bool service_thread(unsigned cpu, pthread_t& thread);

// How many service threads the process has started (pthread_create calls).
unsigned long service_threads_started() noexcept;

}  // namespace percpu::xcall::testing
