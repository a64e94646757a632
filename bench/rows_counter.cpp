// Rows for counters.
//
//   counter.add   percpu::counter::add vs a thread-local add (the floor), one
//                 shared std::atomic, and TBB's combinable (per-thread) when
//                 installed
//   counter.read  percpu::counter::read (sum of every CPU) vs read_approx
//                 (the central count alone)
#include <atomic>
#include <cstdint>
#include <memory>

#include "harness.hpp"
#include "peers.hpp"
#include "percpu/counter.hpp"

#if defined(PERCPU_BENCH_HAVE_TBB)
#include <tbb/combinable.h>
#endif

namespace percpu_bench {

namespace {

class counter_add_percpu final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) c_.add(1);
  }

 private:
  percpu::counter c_;
};

#if defined(PERCPU_BENCH_HAVE_TBB)
class counter_add_tbb final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      c_.local() += 1;
      asm volatile("" ::: "memory");
    }
  }

 private:
  tbb::combinable<std::int64_t> c_{[] { return std::int64_t{0}; }};
};
#endif

template <bool Exact>
class counter_read_percpu final : public body {
 public:
  counter_read_percpu() {
    for (int i = 0; i < 100000; ++i) c_.add(1);
  }
  void run(unsigned, std::uint64_t n) override {
    std::int64_t sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      sum += Exact ? c_.read() : c_.read_approx();
      keep(sum);
    }
  }

 private:
  percpu::counter c_;
};

}  // namespace

void add_counter_rows(std::vector<row>& rows, [[maybe_unused]] std::vector<missing_peer>& missing) {
  rows.push_back(make_row<counter_add_percpu>("counter.add", "percpu", {1, 2}));
  rows.push_back(make_row<thread_local_add>("counter.add", "thread_local", {1, 2}));
  rows.push_back(make_row<atomic_shared_add>("counter.add", "atomic_shared", {1, 2}));
#if defined(PERCPU_BENCH_HAVE_TBB)
  rows.push_back(make_row<counter_add_tbb>("counter.add", "tbb_combinable", {1, 2}));
#else
  missing.push_back({"tbb_combinable", "libtbb-dev"});
#endif
  rows.push_back(make_row<counter_read_percpu<true>>("counter.read", "percpu_exact", {1}));
  rows.push_back(make_row<counter_read_percpu<false>>("counter.read", "percpu_approx", {1}));
}

}  // namespace percpu_bench
