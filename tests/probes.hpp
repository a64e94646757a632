// probes.hpp - what the tests ask of the library's internals that no
// program may: built into the test programs only (probes.cpp reads the
// library's internal headers), so that no test-only symbol ships in the
// library.
#pragma once

#include <pthread.h>

namespace percpu_test {

// The xcall service thread of `cpu`, if it is running (for CPU-time checks).
bool service_thread(unsigned cpu, pthread_t& thread);

}  // namespace percpu_test
