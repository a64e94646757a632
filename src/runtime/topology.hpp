// topology.hpp - internal: the possible-CPU set and where it came from.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <cstddef>
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
std::string sysfs_cpu_dir();

// The CPU numbers an affinity mask must have room for: at least the
// kernel's range (sched_getaffinity refuses a smaller buffer), found once.
// glibc's cpu_set_t holds 1024 CPUs, and CPU_SET ignores larger numbers.
unsigned kernel_cpu_range();

// An affinity mask of any size.  Allocated once (std::bad_alloc); its
// operations allocate nothing and are async-signal-safe.
class cpu_mask {
 public:
  // Room for CPU numbers below `cpus`, and at least kernel_cpu_range().
  explicit cpu_mask(unsigned cpus = 0);
  ~cpu_mask();
  cpu_mask(const cpu_mask&) = delete;
  cpu_mask& operator=(const cpu_mask&) = delete;

  void clear() noexcept;
  void set(unsigned cpu) noexcept;  // a CPU beyond the room is ignored
  bool test(unsigned cpu) const noexcept;
  unsigned count() const noexcept;
  // Exactly {cpu}.
  bool only(unsigned cpu) const noexcept { return count() == 1 && test(cpu); }
  unsigned room() const noexcept { return cpus_; }

  // sched_getaffinity / sched_setaffinity of thread `tid` (0: the calling
  // thread); false with errno set on failure.
  bool read(pid_t tid) noexcept;
  bool apply(pid_t tid) const noexcept;

 private:
  cpu_set_t* set_;
  unsigned cpus_;
  std::size_t bytes_;
};

}  // namespace percpu::detail
