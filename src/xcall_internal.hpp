// xcall_internal.hpp - what the tests may ask of the cross-call machinery.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstdint>

namespace percpu::xcall::testing {

// The service thread of `cpu`, if it is running (for CPU-time checks).
bool service_thread(unsigned cpu, pthread_t& thread);

// The word `cpu`'s service thread sleeps on (futex), if it was started: a
// test wakes it from outside, as a late call would.
const std::atomic<std::uint32_t>* service_sleep_word(unsigned cpu);

// How many service threads the process has started (pthread_create calls).
unsigned long service_threads_started() noexcept;

}  // namespace percpu::xcall::testing
