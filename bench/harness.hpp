// harness.hpp - how `percpu bench` measures a row.
//
// Problem: the machines this runs on are often small, shared and noisy
// (a 2-core VM where a syscall costs a microsecond).  Absolute nanoseconds
// mean little there; what a user needs is "how much faster than what I use
// now", measured so that noise hits both sides alike.
//
// Method:
//  - every measurement runs on worker threads created once, pinned one per
//    allowed CPU, so the process is multi-threaded (glibc skips atomics in a
//    single-threaded process) and rows never measure thread creation;
//  - rows with the same name and thread count form a group; the group's
//    implementations are measured interleaved (A B C, A B C, ...), so drift
//    in the machine's speed affects all of them;
//  - each implementation is calibrated to a target duration, warmed up once,
//    then measured `repetitions` times; the figure is the median of
//    (wall time of the slowest thread / operations per thread), with min and
//    max beside it;
//  - ratios are computed against the group's `percpu` implementation.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace percpu_bench {

// One implementation's benchmark body.  `run` performs `iterations`
// operations on behalf of worker `thread` (0-based) and must be safe to call
// concurrently for distinct threads.
class body {
 public:
  virtual ~body() = default;
  virtual void run(unsigned thread, std::uint64_t iterations) = 0;
};

struct row {
  std::string name;               // "slot.add"
  std::string impl;               // "percpu", "thread_local", ...
  std::vector<unsigned> threads;  // thread counts this row is measured at
  // Makes a fresh body for a measurement at `threads` threads.
  std::function<std::unique_ptr<body>(unsigned threads)> make;
};

struct result {
  std::string name;
  std::string impl;
  unsigned threads = 0;
  double median_ns = 0;
  double min_ns = 0;
  double max_ns = 0;
  unsigned repetitions = 0;
};

struct options {
  bool quick = false;
  unsigned repetitions = 0;       // 0: 7 (quick) or 15 (full)
  std::string filter;             // ECMAScript regex on "name/impl"
  std::vector<unsigned> threads;  // empty: each row's own list
  bool progress = true;           // progress bar on a terminal (stderr)
};

// A peer implementation that was not built because its library is missing.
struct missing_peer {
  std::string impl;     // "tbb_combinable"
  std::string package;  // Debian package that provides it
};

// A row whose body is default-constructed for every measurement.
template <class Body>
row make_row(const char* name, const char* impl, std::vector<unsigned> threads) {
  return row{name, impl, std::move(threads), [](unsigned) { return std::make_unique<Body>(); }};
}

// Every row the facilities define; peers not built are added to `missing`.
std::vector<row> all_rows(std::vector<missing_peer>& missing);

// Runs the selected rows; returns one result per (row, thread count).
std::vector<result> run(const std::vector<row>& rows, const options& opts);

// Rows in bench/rows_*.cpp add themselves here.
void add_foundation_rows(std::vector<row>& rows);
void add_counter_rows(std::vector<row>& rows, std::vector<missing_peer>& missing);
void add_pool_resource_rows(std::vector<row>& rows);

}  // namespace percpu_bench
