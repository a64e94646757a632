// xcall_util.hpp - what the on-CPU call tests share.
#pragma once

#include <vector>

#include "percpu/runtime/cpu.hpp"
#include "percpu/xcall.hpp"

namespace percpu_test {

// The CPUs the calling thread may run on that on-CPU calls accept.
inline std::vector<unsigned> reachable_cpus() {
  std::vector<unsigned> cpus;
  for (unsigned cpu : percpu::allowed_cpus()) {
    if (cpu < percpu::xcall::cpu_limit()) cpus.push_back(cpu);
  }
  return cpus;
}

}  // namespace percpu_test
