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
//  - rows with the same name, thread count and size form a group; the
//    group's implementations are measured interleaved (A B C, C B A, ...),
//    so drift in the machine's speed affects all of them;
//  - each repetition is a pass over every group, so that each group's
//    measurements are spread evenly over the whole run rather than taken
//    within one second of it (the speed of a virtual machine's core changes
//    for seconds at a time); a group's bodies live for one pass;
//  - each implementation is calibrated to a target duration once, warmed up
//    briefly at the start of each pass, and measured once per pass (many
//    short measurements: 60 of about 5 ms in a quick run, 100 of 20 ms in a
//    full one); the figure is the median of
//    (time of the slowest thread / operations per thread), with min and max
//    beside it, where a thread's time is its wall time less the time it
//    waited, runnable, while another process held its CPU (the kernel's
//    run_delay): on a shared machine that time is not the operation's;
//  - ratios are computed pair by pair: in each repetition an implementation's
//    time is divided by the baseline's time measured next to it (the group's
//    `percpu` implementation), and the row's ratio is the geometric mean of
//    those, the lowest and highest 5 % left out (a median flips between the
//    two states of a machine that alternates between two speeds; a mean moves
//    with their mix);
//  - a group whose ratios the run knows less well than it should (their
//    spread too wide for the number of pairs) gets more passes, up to five
//    times its repetitions, within the quick run's time budget;
//  - the time each measurement takes is chosen so that the whole run fits a
//    budget (--quick) however many rows the facilities define, and shortened
//    as the run goes when other processes slow it down.
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
  // For a body whose operations need untimed set-up (refilling a cache
  // before each invalidate) or run elsewhere (a child process): the
  // nanoseconds the last run() spent in timed work, measured by the body
  // itself; negative to let the harness time run() (the default).
  virtual double timed_ns() const { return -1; }
  // Untimed work each worker does right before its timed run() (waking a
  // partner thread that slept since the last measurement); the default
  // does nothing.  A multi-thread body's workers then start their timed
  // work at slightly different moments.
  virtual void warm_up(unsigned /*thread*/, std::uint64_t /*iterations*/) {}
  // A remark the table prints beside the row, read after the last
  // measurement (e.g. how often a read had to flush); empty for none.
  virtual std::string note() const { return {}; }
};

struct row {
  std::string name;               // "slot.add"; the facility is the part before the dot
  std::string impl;               // "percpu", "thread_local", ...
  std::vector<unsigned> threads;  // thread counts this row is measured at
  // Makes a fresh body for a measurement at `threads` threads.
  std::function<std::unique_ptr<body>(unsigned threads)> make;
  // The row's size parameter (batch length, object size, ...) where it has
  // one, 0 where it has none.  Rows of one name and different sizes form
  // separate groups, measured and compared apart.
  std::uint64_t size = 0;
};

struct result {
  std::string name;
  std::string impl;
  unsigned threads = 0;
  std::uint64_t size = 0;  // 0: the row has no size
  double median_ns = 0;    // median over the repetitions, ns per operation per thread
  double min_ns = 0;
  double max_ns = 0;
  unsigned repetitions = 0;
  // Repetitions during which another process took a worker's CPU: on a
  // busy machine, multi-thread rows then measure threads that did not run
  // at the same time.
  unsigned interrupted = 0;
  std::string note;  // body::note() after the last measurement
  // The implementation this one is compared with (empty for the baseline
  // itself) and the geometric mean of the per-repetition ratios time(this) /
  // time(baseline), the lowest and highest 5 % left out: above 1, this one
  // is slower than the baseline.
  std::string baseline;
  double ratio = 1;
  // The quartiles of those ratios: where the middle half of the pairs lie.
  double ratio_q1 = 1;
  double ratio_q3 = 1;
};

struct options {
  bool quick = false;
  unsigned repetitions = 0;       // 0: 60 (quick) or 100 (full)
  std::string filter;             // ECMAScript regex on "name/impl"
  std::vector<unsigned> threads;  // empty: each row's own list
  bool progress = true;           // progress bar on a terminal (stderr)
};

// What a run with `opts` will do: how many measurements, how long each, and
// about how long the whole run takes.
struct plan {
  std::size_t groups = 0;
  std::size_t implementations = 0;  // (row, threads) pairs measured
  unsigned repetitions = 0;         // one per pass over the whole selection
  double target_ns = 0;             // duration of one measurement
  double estimated_s = 0;           // calibration, warm-up and repetitions, all rows
};

// The baseline of a group: its "percpu" implementation, or, where every
// implementation is percpu's own (counter.read), the first registered.
bool is_preferred_baseline(const std::string& impl);

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

// A row with a size whose body `make(size)` returns.
template <class Make>
row make_sized_row(const char* name, const char* impl, std::vector<unsigned> threads,
                   std::uint64_t size, Make make) {
  return row{name, impl, std::move(threads), [make, size](unsigned) { return make(size); }, size};
}

// A row with a size: its body is constructed from the size, as Body(size).
template <class Body>
row make_sized_row(const char* name, const char* impl, std::vector<unsigned> threads,
                   std::uint64_t size) {
  return row{name, impl, std::move(threads),
             [size](unsigned) { return std::make_unique<Body>(size); }, size};
}

// Every row the facilities define; peers not built are added to `missing`.
std::vector<row> all_rows(std::vector<missing_peer>& missing);

// The plan for running `rows` with `opts`.  Throws std::regex_error for a bad filter.
plan make_plan(const std::vector<row>& rows, const options& opts);

// Runs the selected rows; returns one result per (row, thread count), in
// registration order, grouped by (name, threads, size).
std::vector<result> run(const std::vector<row>& rows, const options& opts);

// Measures `b` once on `threads` pinned workers of a process-wide pool;
// returns nanoseconds (the body's own timed_ns(), or the harness's time).
// For child processes that run a peer's body (bench/child.cpp).
double measure_once(body& b, unsigned threads, std::uint64_t iterations);

// Rows in bench/rows_*.cpp add themselves here.
void add_foundation_rows(std::vector<row>& rows);
void add_counter_rows(std::vector<row>& rows, std::vector<missing_peer>& missing);
void add_rwlock_rows(std::vector<row>& rows, std::vector<missing_peer>& missing);
void add_pool_rows(std::vector<row>& rows, std::vector<missing_peer>& missing);
void add_xcall_rows(std::vector<row>& rows);
void add_queue_rows(std::vector<row>& rows);
void add_pool_resource_rows(std::vector<row>& rows);

}  // namespace percpu_bench
