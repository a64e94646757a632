// topology.cpp - which CPUs and NUMA nodes exist, from sysfs and the kernel.
//
// Problem: per-CPU arrays must be sized by the CPUs that could ever exist.
// The possible set (/sys/devices/system/cpu/possible) may be sparse and may
// exceed what sysconf() or the affinity mask say; when /sys is not mounted
// (containers, chroots) the library must still work, with a safe fallback
// rather than a crash.
#include <dirent.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/error.hpp"
#include "topology.hpp"

namespace percpu {

namespace {

// Largest CPU number accepted from any source; a guard against garbage.
constexpr unsigned max_cpu_number = 1u << 16;

bool read_first_line(const std::string& path, std::string& line) {
  std::ifstream in(path);
  if (!in) return false;
  std::getline(in, line);
  return static_cast<bool>(in) || !line.empty();
}

unsigned parse_number(const std::string& text, std::size_t& pos, const std::string& all) {
  if (pos >= text.size() || text[pos] < '0' || text[pos] > '9') {
    throw error(errc::invalid_argument, "percpu: malformed CPU list '" + all + "'");
  }
  unsigned long value = 0;
  while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
    value = value * 10 + static_cast<unsigned long>(text[pos] - '0');
    if (value > max_cpu_number) {
      throw error(errc::invalid_argument, "percpu: CPU number too large in '" + all + "'");
    }
    ++pos;
  }
  return static_cast<unsigned>(value);
}

std::vector<unsigned> read_list_or_empty(const std::string& path) {
  std::string line;
  if (!read_first_line(path, line)) return {};
  try {
    return parse_cpu_list(line);
  } catch (const error&) {
    return {};
  }
}

}  // namespace

std::vector<unsigned> parse_cpu_list(const std::string& text) {
  std::string trimmed = text;
  while (!trimmed.empty() && (trimmed.back() == '\n' || trimmed.back() == ' ')) {
    trimmed.pop_back();
  }
  std::vector<unsigned> cpus;
  if (trimmed.empty()) return cpus;
  std::size_t pos = 0;
  for (;;) {
    unsigned first = parse_number(trimmed, pos, text);
    unsigned last = first;
    if (pos < trimmed.size() && trimmed[pos] == '-') {
      ++pos;
      last = parse_number(trimmed, pos, text);
      if (last < first)
        throw error(errc::invalid_argument, "percpu: reversed range in '" + text + "'");
    }
    for (unsigned cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
    if (pos == trimmed.size()) break;
    if (trimmed[pos] != ',')
      throw error(errc::invalid_argument, "percpu: malformed CPU list '" + text + "'");
    ++pos;
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

namespace detail {

possible_set read_possible_cpus(const std::string& sysfs_cpu_dir) {
  possible_set result;
  result.cpus = read_list_or_empty(sysfs_cpu_dir + "/possible");
  if (!result.cpus.empty()) {
    result.from_sysfs = true;
    return result;
  }
  // Fallback: the CPUs the system was configured with, widened by any CPU
  // the affinity mask names (a mask may name CPUs sysconf does not count).
  long configured = sysconf(_SC_NPROCESSORS_CONF);
  unsigned count = configured > 0 ? static_cast<unsigned>(configured) : 1;
  for (unsigned cpu : allowed_cpus()) count = std::max(count, cpu + 1);
  for (unsigned cpu = 0; cpu < count; ++cpu) result.cpus.push_back(cpu);
  return result;
}

// Cached in a plain atomic rather than a function-local static: the C++
// guard of a static whose initialiser is in a system call when another
// thread forks stays "being initialised" in the child, which would wait for
// it forever (the history in core/process_wide.hpp).  Threads that find
// it unknown at once each work it out; they agree.
unsigned kernel_cpu_range() {
  static std::atomic<unsigned> known{0};
  unsigned range = known.load(std::memory_order_relaxed);
  if (range != 0) return range;
  range = max_cpu_number;
  // Grow until the kernel accepts the buffer (EINVAL: smaller than its mask).
  for (unsigned cpus = 1024; cpus <= max_cpu_number; cpus *= 2) {
    cpu_set_t* set = CPU_ALLOC(cpus);
    if (set == nullptr) break;
    int rc = sched_getaffinity(0, CPU_ALLOC_SIZE(cpus), set);
    int err = errno;
    CPU_FREE(set);
    if (rc == 0 || err != EINVAL) {
      range = cpus;
      break;
    }
  }
  known.store(range, std::memory_order_relaxed);
  return range;
}

cpu_mask::cpu_mask(unsigned cpus)
    : set_(nullptr), cpus_(std::max(cpus, kernel_cpu_range())), bytes_(CPU_ALLOC_SIZE(cpus_)) {
  set_ = CPU_ALLOC(cpus_);
  if (set_ == nullptr) throw std::bad_alloc();
  // CPU_ALLOC rounds up to whole words: use all of them.
  cpus_ = static_cast<unsigned>(bytes_ * 8);
  clear();
}

cpu_mask::~cpu_mask() {
  CPU_FREE(set_);
}

void cpu_mask::clear() noexcept {
  CPU_ZERO_S(bytes_, set_);
}

void cpu_mask::set(unsigned cpu) noexcept {
  CPU_SET_S(cpu, bytes_, set_);
}

bool cpu_mask::test(unsigned cpu) const noexcept {
  return CPU_ISSET_S(cpu, bytes_, set_);
}

unsigned cpu_mask::count() const noexcept {
  return static_cast<unsigned>(CPU_COUNT_S(bytes_, set_));
}

bool cpu_mask::read(pid_t tid) noexcept {
  return sched_getaffinity(tid, bytes_, set_) == 0;
}

bool cpu_mask::apply(pid_t tid) const noexcept {
  return sched_setaffinity(tid, bytes_, set_) == 0;
}

unsigned kernel_cpu_slots() {
  std::vector<unsigned> cpus = read_list_or_empty("/sys/devices/system/cpu/possible");
  unsigned slots = cpus.empty() ? 1 : cpus.back() + 1;
  for (unsigned cpu : allowed_cpus()) slots = std::max(slots, cpu + 1);
  int here = sched_getcpu();
  if (here >= 0) slots = std::max(slots, static_cast<unsigned>(here) + 1);
  return slots;
}

std::string sysfs_cpu_dir() {
  // Read on each call (a slow path's): no static to cache it, whose guard a
  // fork() could copy half done (core/process_wide.hpp's history).
  const char* override_dir = std::getenv("PERCPU_SYSFS_CPU_DIR");
  return override_dir != nullptr && *override_dir != '\0' ? override_dir
                                                          : "/sys/devices/system/cpu";
}

}  // namespace detail

std::vector<unsigned> possible_cpus() {
  return detail::read_possible_cpus(detail::sysfs_cpu_dir()).cpus;
}

std::vector<unsigned> online_cpus() {
  std::vector<unsigned> cpus = read_list_or_empty(detail::sysfs_cpu_dir() + "/online");
  if (!cpus.empty()) return cpus;
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  for (long cpu = 0; cpu < std::max(online, 1L); ++cpu) cpus.push_back(static_cast<unsigned>(cpu));
  return cpus;
}

std::vector<unsigned> allowed_cpus() {
  try {
    detail::cpu_mask mask;
    if (!mask.read(0)) return {};
    std::vector<unsigned> cpus;
    for (unsigned cpu = 0; cpu < mask.room(); ++cpu) {
      if (mask.test(cpu)) cpus.push_back(cpu);
    }
    return cpus;
  } catch (const std::bad_alloc&) {
    return {};
  }
}

std::vector<unsigned> numa_nodes() {
  std::vector<unsigned> nodes = read_list_or_empty("/sys/devices/system/node/online");
  if (nodes.empty()) nodes.push_back(0);
  return nodes;
}

int numa_node_of(unsigned cpu) {
  std::string dir = detail::sysfs_cpu_dir() + "/cpu" + std::to_string(cpu);
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return -1;
  int node = -1;
  while (dirent* entry = readdir(d)) {
    std::string name = entry->d_name;
    if (name.size() > 4 && name.compare(0, 4, "node") == 0 &&
        name.find_first_not_of("0123456789", 4) == std::string::npos) {
      node = std::stoi(name.substr(4));
      break;
    }
  }
  closedir(d);
  return node;
}

}  // namespace percpu
