// report.hpp - what `percpu bench` reports, and the three forms it takes.
//
// Problem: one run must be readable three ways - a table on the terminal, a
// JSON file other tools can check and compare, and a chart a person would
// rather look at than read - and the three must never disagree.  So a run
// produces one `report` (the machine, the command, the results, the peers
// that were missing) and each form is written from it alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "harness.hpp"

namespace percpu_tool {

struct machine_info {
  std::string cpu_model;  // /proc/cpuinfo "model name", or "unknown"
  unsigned cpus = 0;      // online CPUs
  std::string kernel;     // uname release
  std::string arch;       // uname machine
  std::string backend;    // "rseq" or "portable"
  unsigned slots = 0;     // per-CPU slots the library uses
};

struct report {
  machine_info machine;
  std::string date;     // UTC, ISO 8601
  std::string command;  // the command line that produced the report
  bool quick = false;
  double wall_s = 0;  // how long the measurements took
  std::vector<percpu_bench::missing_peer> missing_peers;
  std::vector<percpu_bench::result> results;
};

// This machine, as the report describes it.
machine_info describe_machine();

// The facility a row belongs to: its name up to the first dot.
std::string facility_of(const std::string& row_name);

// Ratios this close to 1 (either way) are reported as even rather than as
// faster or slower: one run on a shared machine cannot tell them apart.
constexpr double even_band = 0.05;
// Whether a ratio is within even_band of 1: "even" rather than "undecided"
// where a comparison has no direction.
bool within_even_band(double ratio);

// Which way a comparison points: +1 where the implementation is slower than
// its baseline (ratio above 1), -1 where it is faster, 0 (even) where the
// run cannot tell - the median ratio is within even_band of 1, or the
// middle half of the pair-by-pair ratios (q1 to q3) straddles 1.
int direction(double ratio, double ratio_q1, double ratio_q3);
int direction(const percpu_bench::result& r);

// Whether a result compares a peer with percpu's own line: a rival, whose
// verdict says who wins.  Not one of percpu's variants (percpu_cpu,
// percpu_mm_cid: the same operation in another index mode), nor a result
// against any other baseline.
bool is_rival(const percpu_bench::result& r);

// For a rival: "percpu 3.37x faster", "percpu 1.07x slower", "even
// (1.03x)" within even_band, or "undecided (0.71x)" where the quartiles
// straddle 1 (until 2026-12-07 that read "even (0.71x)").  For any other
// comparison: "1.32x the time of percpu", or "even with percpu (1.02x)"
// (or "undecided against percpu") between two of percpu's own lines.
// (Until 2026-12-07 percpu_mm_cid's row read "percpu 1.32x faster", as if
// mm_cid mode were the faster.)  "baseline" for the baseline itself.
std::string verdict(const percpu_bench::result& r);

// A warning when other processes interrupted more than a tenth of the
// measurements (involuntary context switches of the workers), else "".
std::string busy_note(const report& rep);

// The table, grouped by facility, with the ratio to the best peer and a verdict.
void print_table(const report& rep);

// The JSON form, as docs/bench-schema.json describes it.  Throws
// std::runtime_error when the file cannot be written.
void write_json(const std::string& path, const report& rep);

// The chart: one panel per facility, one group of bars per (row, threads,
// size), one bar per implementation.  Throws std::runtime_error when the
// file cannot be written.
void write_svg(const std::string& path, const report& rep);

// Compares two JSON reports for reproducibility: every ratio must point the
// same way in both, and, for rows whose medians exceed 20 ns, agree within
// 25 %.  Prints one line per ratio and a verdict; returns 0 when they agree.
int compare_reports(const std::string& first_path, const std::string& second_path);

}  // namespace percpu_tool
