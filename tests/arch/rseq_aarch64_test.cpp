// Standalone tests of the aarch64 restartable sequences
// (include/percpu/runtime/detail/arch/aarch64/rseq.hpp), before the rest of
// the library builds for aarch64.
//
// The program includes the sequences' header and a stand-in for the values
// they read (tests/arch/stand_in); it links nothing of the library and
// registers nothing: glibc registers an rseq area for every thread, static
// programs included, and the sequences find it through __rseq_offset.
// Per-CPU memory is laid out as the library lays it out (CPU c's copy at
// p0 + (c << unit_shift)).  The checks themselves are in
// rseq_aarch64_checks.cpp and rseq_aarch64_storms.cpp; this file holds what
// they share and main().
//
// Run on an aarch64 Linux (scripts/vm/arm64-run.sh boots one in QEMU).
// Usage: rseq_aarch64_test [--seconds S]   (minimum length of each storm)
#include "rseq_aarch64_test.hpp"

#include <sys/rseq.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

// The stand-in runtime's definitions.
extern "C" {
__thread __attribute__((tls_model("initial-exec"))) std::int32_t percpu_fault_countdown = INT32_MAX;
}
percpu::detail::runtime_state percpu::detail::runtime;

namespace archtest {

std::atomic<int> failures{0};
double storm_seconds = 2.0;
std::atomic<std::uint64_t> aborts_seen{0};
std::atomic<std::uint64_t> stops_seen{0};
std::atomic<std::uint64_t> injected{0};
std::uint64_t kernel_aborts_in_storms = 0;
std::int32_t inject_every = 0;

namespace {
cpu_set_t initial_mask;
}

void check_failed(const char* file, int line, const char* what) {
  std::fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
  failures.fetch_add(1);
}

block::block() : slots(static_cast<unsigned>(get_nprocs_conf())) {
  void* p = mmap(nullptr, std::size_t{slots} << unit_shift, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::abort();
  }
  base = static_cast<char*>(p);
  for (unsigned c = 0; c < slots; ++c) {
    on(c)->array = {on(c)->items, 0, max_items};
    on(c)->records = {on(c)->record_buffer, 0, max_records, {}};
  }
}

block::~block() {
  munmap(base, std::size_t{slots} << unit_shift);
}

std::int64_t block::slot_sum() const {
  std::int64_t sum = 0;
  for (unsigned c = 0; c < slots; ++c) {
    sum += std::atomic_ref<std::int64_t>(on(c)->slot).load(std::memory_order_relaxed);
  }
  return sum;
}

std::vector<unsigned> allowed_cpus() {
  std::vector<unsigned> cpus;
  for (unsigned c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &initial_mask)) cpus.push_back(c);
  }
  return cpus;
}

bool pin(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

void unpin() {
  sched_setaffinity(0, sizeof initial_mask, &initial_mask);
}

void wait_while_stopped(const std::uint32_t* stop0) {
  int cpu = rs::cpu_id();
  if (cpu < 0) return;
  std::atomic_ref<const std::uint32_t> word(*copy_on(stop0, static_cast<unsigned>(cpu)));
  for (unsigned spins = 0; word.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins > 16) sched_yield();
  }
}

void note_abort() {
  aborts_seen.fetch_add(1, std::memory_order_relaxed);
#if PERCPU_FAULT_INJECTION
  if (percpu_fault_countdown <= 0) {
    injected.fetch_add(1, std::memory_order_relaxed);
    percpu_fault_countdown = inject_every != 0 ? inject_every : INT32_MAX;
  }
#endif
}

const char* name(status st) {
  switch (st) {
    case status::committed:
      return "committed";
    case status::failed:
      return "failed";
    case status::stopped:
      return "stopped";
    case status::unregistered:
      return "unregistered";
    case status::aborted:
      return "aborted";
    case status::moved:
      return "moved";
  }
  return "?";
}

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

}  // namespace archtest

int main(int argc, char** argv) {
  using namespace archtest;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      storm_seconds = std::strtod(argv[++i], nullptr);
    } else {
      std::fprintf(stderr, "usage: %s [--seconds S]\n", argv[0]);
      return 2;
    }
  }
  sched_getaffinity(0, sizeof initial_mask, &initial_mask);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto start = clock_type::now();
  if (!check_environment()) {
    std::printf("rseq_aarch64_test: FAIL (no rseq registration to test with)\n");
    return 1;
  }
  percpu::detail::runtime.rseq_offset = __rseq_offset;
  using test = void (*)();
  const test tests[] = {check_descriptors,   check_cpu_id,       check_operations,
                        check_stopped_exits, check_unregistered, check_fault_injection,
                        storm_adds,          storm_items,        storm_records,
                        storm_stop_protocol};
  for (test t : tests) {
    int before = failures.load();
    auto t0 = clock_type::now();
    t();
    std::printf("  -> %s (%.2f s)\n", failures.load() == before ? "ok" : "FAIL", seconds_since(t0));
  }
  // The storms prove nothing unless the kernel aborted sequences in them.
  // Under emulation a signal or preemption lands inside one seldom (a few
  // times a second), so the check covers all storms together.
  std::printf("kernel aborts over all storms: %llu\n",
              static_cast<unsigned long long>(kernel_aborts_in_storms));
  CHECK(kernel_aborts_in_storms > 0);
  int f = failures.load();
  std::printf("rseq_aarch64_test: %s, %d failed check%s, %.1f s\n", f == 0 ? "PASS" : "FAIL", f,
              f == 1 ? "" : "s", seconds_since(start));
  return f == 0 ? 0 : 1;
}
