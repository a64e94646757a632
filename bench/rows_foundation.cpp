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
#include "percpu/cpu.hpp"
#include "percpu/storage.hpp"

namespace percpu_bench {

namespace {

// Keeps a value alive without a store the optimiser could drop.
template <class T>
inline void keep(T& value) {
  asm volatile("" : "+r"(value));
}

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

thread_local std::int64_t thread_counter = 0;

class slot_add_thread_local final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      // A read-modify-write of memory each time, as the per-CPU add does.
      thread_counter += 1;
      asm volatile("" : "+m"(thread_counter));
    }
  }
};

class slot_add_atomic_shared final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) counter_.fetch_add(1, std::memory_order_relaxed);
  }

 private:
  alignas(64) std::atomic<std::int64_t> counter_{0};
};

template <class B>
row make_row(const char* name, const char* impl, std::vector<unsigned> threads) {
  return row{name, impl, std::move(threads), [](unsigned) { return std::make_unique<B>(); }};
}

}  // namespace

void add_foundation_rows(std::vector<row>& rows) {
  rows.push_back(make_row<current_cpu_percpu>("cpu.current", "percpu", {1}));
  rows.push_back(make_row<current_cpu_sched_getcpu>("cpu.current", "sched_getcpu", {1}));
  rows.push_back(make_row<slot_add_percpu>("slot.add", "percpu", {1, 2}));
  rows.push_back(make_row<slot_add_thread_local>("slot.add", "thread_local", {1, 2}));
  rows.push_back(make_row<slot_add_atomic_shared>("slot.add", "atomic_shared", {1, 2}));
}

}  // namespace percpu_bench
