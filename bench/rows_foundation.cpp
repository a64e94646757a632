// Rows for the foundation: reading the CPU number and adding to a slot.
//
//   cpu.current  percpu (rseq cpu_id, or the portable slot) vs sched_getcpu()
//   slot.add     percpu storage add vs the minimal rseq add (rseq_raw.hpp:
//                the floor of the mechanism), a plain thread-local add (no
//                CPU lookup, no restart) and one shared std::atomic (what a
//                program without per-CPU data does)
#include <sched.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "child.hpp"
#include "harness.hpp"
#include "peers.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/runtime/cpu.hpp"
#include "rseq_raw.hpp"

namespace percpu_bench {

namespace {

class current_cpu_percpu final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    unsigned sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      sum += percpu::current_cpu();
      keep(sum);
    }
  }
};

class current_cpu_sched_getcpu final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    int sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      sum += sched_getcpu();
      keep(sum);
    }
  }
};

class slot_add_percpu final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) slots_.add(1);
  }

 private:
  percpu::storage<std::int64_t> slots_;
};

#if defined(PERCPU_BENCH_HAVE_RSEQ_RAW)
class slot_add_rseq_raw final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) rseq_raw::add(lines_.data(), 1);
  }

 private:
  rseq_raw::lines lines_{percpu::cpu_count()};
};
#endif

}  // namespace

std::unique_ptr<body> make_slot_percpu_body() {
  return std::make_unique<slot_add_percpu>();
}

void add_foundation_rows(std::vector<row>& rows) {
  rows.push_back(make_row<current_cpu_percpu>("cpu.current", "percpu", {1}));
  rows.push_back(make_row<current_cpu_sched_getcpu>("cpu.current", "sched_getcpu", {1}));
  rows.push_back(make_row<slot_add_percpu>("slot.add", "percpu", {1, 2}));
#if defined(PERCPU_BENCH_HAVE_RSEQ_RAW)
  // Not a library one installs: without glibc's registration (valgrind,
  // glibc.pthread.rseq=0) the floor is simply not measured.
  if (rseq_raw::available()) {
    rows.push_back(make_row<slot_add_rseq_raw>("slot.add", "rseq_raw", {1, 2}));
  }
#endif
  // Each index mode, in a child process (docs/design.md, section 6).
  for (const index_peer& peer : index_peers()) {
    rows.push_back(row{"slot.add", peer.impl, {1, 2}, index_maker(peer, "slot.add", 0)});
  }
  rows.push_back(make_row<thread_local_add>("slot.add", "thread_local", {1, 2}));
  rows.push_back(make_row<atomic_shared_add>("slot.add", "atomic_shared", {1, 2}));
}

}  // namespace percpu_bench
