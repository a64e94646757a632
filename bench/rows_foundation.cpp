// Rows for the foundation: reading the CPU number and adding to a slot.
//
//   cpu.current  percpu (rseq cpu_id, or the portable slot) vs sched_getcpu()
//   slot.add     percpu storage add vs a plain thread-local add (the floor:
//                no CPU lookup, no restart) vs one shared std::atomic (what
//                a program without per-CPU data does)
#include <sched.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "harness.hpp"
#include "peers.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/runtime/cpu.hpp"

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

}  // namespace

void add_foundation_rows(std::vector<row>& rows) {
  rows.push_back(make_row<current_cpu_percpu>("cpu.current", "percpu", {1}));
  rows.push_back(make_row<current_cpu_sched_getcpu>("cpu.current", "sched_getcpu", {1}));
  rows.push_back(make_row<slot_add_percpu>("slot.add", "percpu", {1, 2}));
  rows.push_back(make_row<thread_local_add>("slot.add", "thread_local", {1, 2}));
  rows.push_back(make_row<atomic_shared_add>("slot.add", "atomic_shared", {1, 2}));
}

}  // namespace percpu_bench
