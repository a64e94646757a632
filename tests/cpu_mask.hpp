// cpu_mask.hpp - affinity masks for the tests, of any CPU number.
//
// glibc's cpu_set_t holds CPUs 0-1023 and CPU_SET ignores larger numbers;
// these helpers size the set for the largest CPU they are given.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <sys/types.h>

#include <algorithm>
#include <cerrno>
#include <vector>

namespace percpu_test {

// Calls apply(bytes, set) with a set holding `cpus`.
template <class Apply>
bool with_set(const std::vector<unsigned>& cpus, Apply apply) {
  unsigned limit = cpus.empty() ? 1 : *std::max_element(cpus.begin(), cpus.end()) + 1;
  cpu_set_t* set = CPU_ALLOC(limit);
  if (set == nullptr) return false;
  std::size_t bytes = CPU_ALLOC_SIZE(limit);
  CPU_ZERO_S(bytes, set);
  for (unsigned cpu : cpus) CPU_SET_S(cpu, bytes, set);
  bool ok = apply(bytes, set) == 0;
  CPU_FREE(set);
  return ok;
}

// Sets `thread`'s affinity mask to `cpus`; true on success.
inline bool set_mask(pthread_t thread, const std::vector<unsigned>& cpus) {
  return with_set(cpus, [thread](std::size_t bytes, cpu_set_t* set) {
    return pthread_setaffinity_np(thread, bytes, set);
  });
}

// The same for a thread of this process by its id (as taskset -p does).
inline bool set_mask_of(pid_t tid, const std::vector<unsigned>& cpus) {
  return with_set(cpus, [tid](std::size_t bytes, cpu_set_t* set) {
    return sched_setaffinity(tid, bytes, set);
  });
}

// The affinity mask of thread `tid`; empty if it cannot be read.
inline std::vector<unsigned> mask_of(pid_t tid) {
  // Grow until the buffer holds the kernel's mask (EINVAL: too small).
  for (unsigned limit = 1024; limit <= (1u << 16); limit *= 2) {
    cpu_set_t* set = CPU_ALLOC(limit);
    if (set == nullptr) break;
    std::size_t bytes = CPU_ALLOC_SIZE(limit);
    std::vector<unsigned> cpus;
    int rc = sched_getaffinity(tid, bytes, set);
    int err = errno;
    for (unsigned cpu = 0; rc == 0 && cpu < limit; ++cpu) {
      if (CPU_ISSET_S(cpu, bytes, set)) cpus.push_back(cpu);
    }
    CPU_FREE(set);
    if (rc == 0 || err != EINVAL) return cpus;
  }
  return {};
}

// The calling thread: runs on `cpu` only, or on any of `cpus`.
inline bool pin(unsigned cpu) {
  return set_mask(pthread_self(), {cpu});
}
inline bool allow(const std::vector<unsigned>& cpus) {
  return set_mask(pthread_self(), cpus);
}

}  // namespace percpu_test
