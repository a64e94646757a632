// index_mode.cpp - choose_index and what it is given (see index_mode.hpp).
#include "index_mode.hpp"

#include <sched.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace percpu::detail {

namespace {

constexpr unsigned max_cpus = 8192;  // CONFIG_NR_CPUS is at most 8192

std::string cpus_allowed(const index_inputs& in) {
  return std::to_string(in.allowed_cpus) + " of " + std::to_string(in.possible_cpus) +
         " CPUs allowed";
}

}  // namespace

unsigned allowed_cpu_count() noexcept {
  cpu_set_t* set = CPU_ALLOC(max_cpus);
  if (set == nullptr) return 0;
  std::size_t size = CPU_ALLOC_SIZE(max_cpus);
  unsigned count = 0;
  if (sched_getaffinity(getpid(), size, set) == 0) {
    count = static_cast<unsigned>(CPU_COUNT_S(size, set));
  }
  CPU_FREE(set);
  return count;
}

std::string index_request_error(const char* requested) {
  std::string want = requested != nullptr ? requested : "";
  if (want.empty() || want == "auto" || want == "cpu" || want == "mm_cid") return {};
  return "PERCPU_INDEX='" + want + "' is not one of: cpu, mm_cid, auto";
}

index_choice choose_index(const index_inputs& in) {
  const char* text = in.requested != nullptr ? in.requested : "";
  std::string want = *text == '\0' ? "auto" : text;
  index_choice c;
  c.error = index_request_error(in.requested);
  if (!c.error.empty()) return c;
  if (want == "cpu") {
    c.why = "PERCPU_INDEX=cpu";
    return c;
  }
  if (!in.rseq_backend) {
    if (want == "mm_cid") {
      c.error = "PERCPU_INDEX=mm_cid needs the rseq backend, and the portable one runs";
    } else {
      c.why = "auto: the portable backend indexes by CPU";
    }
    return c;
  }
  if (!in.kernel_has_mm_cid) {
    if (want == "mm_cid") {
      c.error =
          "PERCPU_INDEX=mm_cid, but this kernel's rseq area has no mm_cid "
          "(Linux 6.3 or later, AT_RSEQ_FEATURE_SIZE >= 28)";
    } else {
      c.why = "auto: the kernel gives no mm_cid (before Linux 6.3)";
    }
    return c;
  }
  if (want == "mm_cid") {
    c.mm_cid = true;
    c.why = "PERCPU_INDEX=mm_cid; " + cpus_allowed(in);
    return c;
  }
  c.mm_cid = in.allowed_cpus < in.possible_cpus;
  c.why = "auto: " + cpus_allowed(in);
  return c;
}

}  // namespace percpu::detail
