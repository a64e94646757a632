// probes.hpp - what the tests ask of the library's internals that no
// program may: built into the test programs only (probes.cpp reads the
// library's internal headers), so that no test-only symbol ships in the
// library.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstdint>

namespace percpu_test {

// The xcall service thread of `cpu`, if it is running (for CPU-time checks).
bool service_thread(unsigned cpu, pthread_t& thread);

// The word `cpu`'s service thread sleeps on (futex), if it was started: a
// test wakes it from outside, as a late call would.
const std::atomic<std::uint32_t>* service_sleep_word(unsigned cpu);

// How many service threads the process has started (pthread_create calls).
unsigned long service_threads_started() noexcept;

// How long an idle service thread polls its queue before it sleeps, ns.
long service_poll_ns() noexcept;

}  // namespace percpu_test
