// topology.hpp - internal: the possible-CPU set and where it came from.
#pragma once

#include <string>
#include <vector>

namespace percpu::detail {

struct possible_set {
  std::vector<unsigned> cpus;  // sorted, never empty
  bool from_sysfs = false;     // false: a fallback guess
};

// Reads <dir>/possible; falls back to sysconf and the affinity mask when the
// file is missing or malformed.
possible_set read_possible_cpus(const std::string& sysfs_cpu_dir);

// The slots the kernel's CPUs need, whatever PERCPU_SYSFS_CPU_DIR says: one
// more than the highest CPU of the real /sys/devices/system/cpu/possible, of
// the affinity mask, and the CPU the caller runs on.
unsigned kernel_cpu_slots();

// /sys/devices/system/cpu, or PERCPU_SYSFS_CPU_DIR (tests point it at a
// prepared directory, or at one that does not exist).
const std::string& sysfs_cpu_dir();

}  // namespace percpu::detail
