// percpu - the command: what this machine gives (info) and how fast the
// library is against the alternatives a program would otherwise use (bench).
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "child.hpp"
#include "commands.hpp"

namespace {

void usage(std::FILE* out) {
  std::fprintf(
      out,
      "usage: percpu <command> [options]\n"
      "\n"
      "commands:\n"
      "  info                     backend, rseq and membarrier support, CPUs, NUMA nodes\n"
      "  bench [options]          measure every facility against its peers\n"
      "      --quick              fewer repetitions, shorter runs (under 2 minutes)\n"
      "      --json FILE          also write the results as JSON (docs/bench-schema.json)\n"
      "      --svg FILE           also write the results as a chart (SVG)\n"
      "      --filter REGEX       only rows whose \"name/impl\" matches\n"
      "      --threads LIST       thread counts to run, e.g. 1,2 (default: each row's own)\n"
      "      --repetitions N      measurements per row (default 15 quick, 21 full)\n"
      "      --compare A.json B.json  do two runs' ratios agree (direction; 25 %% above 20 ns)?\n"
      "  stress [options]         every facility at once under faults; exit 1 on a violation\n"
      "      --seconds N          how long (default 10)\n"
      "      --seed S             reproduce a run (default: from the clock, printed)\n"
      "      --backend rseq|portable, --slots N   the backend (N: portable, N CPUs)\n"
      "      --threads N          workers (default: 2 per CPU, at least 4)\n"
      "      --plugin PATH|none   the plugin loaded and unloaded as a fault\n"
      "                           (default: libpercpu_stress_plugin.so beside the command)\n"
      "  memory [options]         resident memory of per-CPU counters and a pool_cache\n"
      "      --counters N         counters (default 1000)\n"
      "      --objects N          pool_cache objects of 64 bytes (default 100000)\n"
      "      --threads N          workers (default: one per allowed CPU)\n"
      "      --compare-thp        with and without transparent huge pages; exit 1 above 1.25x\n"
      "\n"
      "environment:\n"
      "  PERCPU_BACKEND=rseq|portable   force a backend\n"
      "  PERCPU_SLOTS=N                 portable backend simulating N CPUs\n"
      "  PERCPU_PRETEND_MISSING=LIST    behave as without rseq, membarrier_rseq,\n"
      "                                 membarrier_fence (comma-separated)\n"
      "  PERCPU_INDEX=cpu|mm_cid|auto   what indexes the slots (default auto)\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (command == "info") return percpu_tool::info(args);
    if (command == "bench") return percpu_tool::bench(args);
    if (command == "bench-child") return percpu_bench::child_main(args);
    if (command == "stress") return percpu_tool::stress(args);
    if (command == "memory") return percpu_tool::memory(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "percpu %s: %s\n", command.c_str(), e.what());
    return 1;
  }
  std::fprintf(stderr, "percpu: unknown command '%s'\n\n", command.c_str());
  usage(stderr);
  return 2;
}
