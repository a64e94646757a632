// percpu info - what this machine and kernel give, and what the library chose.
#include <sched.h>
#include <sys/utsname.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "commands.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/fence.hpp"

namespace percpu_tool {

namespace {

std::string cpu_list(const std::vector<unsigned>& cpus) {
  std::string text;
  for (std::size_t i = 0; i < cpus.size();) {
    std::size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!text.empty()) text += ',';
    text += std::to_string(cpus[i]);
    if (j > i) text += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return text.empty() ? "(none)" : text + " (" + std::to_string(cpus.size()) + ")";
}

const char* yes_no(bool value) {
  return value ? "yes" : "no";
}

}  // namespace

int info(const std::vector<std::string>& args) {
  if (!args.empty()) throw std::invalid_argument("info takes no options");
  const percpu::backend_info& b = percpu::backend();
  utsname un{};
  uname(&un);
  const char* source = b.source == percpu::rseq_source::glibc ? "glibc's registration"
                       : b.source == percpu::rseq_source::own ? "the library's own registration"
                                                              : "none";
  std::printf("kernel            %s %s\n", un.sysname, un.release);
  std::printf("backend           %s\n", b.kind == percpu::backend_kind::rseq ? "rseq" : "portable");
  std::printf("  why             %s\n", b.reason.c_str());
  std::printf("rseq area         %s\n", source);
  std::printf("  feature size    %u%s\n", b.feature_size,
              b.feature_size == 0 ? " (not reported: 20)" : "");
  std::printf("  alignment       %u\n", b.alignment);
  std::printf("  node_id         %s\n", yes_no(b.node_id));
  std::printf("  mm_cid          %s\n", yes_no(b.mm_cid));
  std::printf("membarrier rseq   %s\n", yes_no(b.membarrier_rseq));
  if (b.kind == percpu::backend_kind::rseq) {
    int failure = percpu::detail::membarrier_failure();
    std::printf("  fences          %s%s\n",
                failure == 0 ? "membarrier" : "by running on the CPUs: membarrier fails with ",
                failure == 0 ? "" : std::strerror(failure));
  }
  if (!b.pretend_missing.empty()) {
    std::printf("pretend missing   %s (PERCPU_PRETEND_MISSING)\n", b.pretend_missing.c_str());
  }
  std::printf("index             %s (%s)\n",
              b.index == percpu::slot_index::mm_cid ? "mm_cid" : "cpu", b.index_reason.c_str());
  std::printf("slots             %u%s\n", b.slots,
              b.sysfs_possible ? "" : " (possible CPUs guessed: /sys unreadable)");
  std::printf("possible CPUs     %s\n", cpu_list(percpu::possible_cpus()).c_str());
  std::printf("online CPUs       %s\n", cpu_list(percpu::online_cpus()).c_str());
  std::printf("allowed CPUs      %s\n", cpu_list(percpu::allowed_cpus()).c_str());
  std::printf("NUMA nodes        %s\n", cpu_list(percpu::numa_nodes()).c_str());
  int cpu = sched_getcpu();
  std::printf("current CPU       %d (node %d), slot %u\n", cpu,
              cpu >= 0 ? percpu::numa_node_of(static_cast<unsigned>(cpu)) : -1,
              percpu::current_cpu());
  std::printf("under valgrind    %s\n", yes_no(b.under_valgrind));
  return 0;
}

}  // namespace percpu_tool
