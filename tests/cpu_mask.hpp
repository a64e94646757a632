// cpu_mask.hpp - affinity masks for the tests, of any CPU number.
//
// glibc's cpu_set_t holds CPUs 0-1023 and CPU_SET ignores larger numbers;
// these helpers size the set for the largest CPU they are given.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <vector>

namespace percpu_test {

// Sets `thread`'s affinity mask to `cpus`; true on success.
inline bool set_mask(pthread_t thread, const std::vector<unsigned>& cpus) {
  unsigned limit = cpus.empty() ? 1 : *std::max_element(cpus.begin(), cpus.end()) + 1;
  cpu_set_t* set = CPU_ALLOC(limit);
  if (set == nullptr) return false;
  std::size_t bytes = CPU_ALLOC_SIZE(limit);
  CPU_ZERO_S(bytes, set);
  for (unsigned cpu : cpus) CPU_SET_S(cpu, bytes, set);
  bool ok = pthread_setaffinity_np(thread, bytes, set) == 0;
  CPU_FREE(set);
  return ok;
}

// The calling thread: runs on `cpu` only, or on any of `cpus`.
inline bool pin(unsigned cpu) {
  return set_mask(pthread_self(), {cpu});
}
inline bool allow(const std::vector<unsigned>& cpus) {
  return set_mask(pthread_self(), cpus);
}

}  // namespace percpu_test
