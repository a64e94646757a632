// peers.hpp - benchmark bodies that several rows share: the floors and
// baselines a per-CPU operation is held against.
#pragma once

#include <atomic>
#include <cstdint>

#include "harness.hpp"

namespace percpu_bench {

// Keeps a value alive without a store the optimiser could drop.
template <class T>
inline void keep(T& value) {
  asm volatile("" : "+r"(value));
}

// The floor: a plain thread-local add, a read-modify-write of memory each
// time (as the per-CPU add is), with no CPU lookup and no restart.
class thread_local_add final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      value_ += 1;
      asm volatile("" : "+m"(value_));
    }
  }

 private:
  static inline thread_local std::int64_t value_ = 0;
};

// What a program without per-CPU data does: one shared atomic.
class atomic_shared_add final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) value_.fetch_add(1, std::memory_order_relaxed);
  }

 private:
  alignas(64) std::atomic<std::int64_t> value_{0};
};

}  // namespace percpu_bench
