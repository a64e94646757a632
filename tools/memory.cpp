// percpu memory - what per-CPU structures cost in resident memory here.
//
// A per-CPU structure reserves a slot for every possible CPU; what it costs
// is the slots its threads touch.  This command builds the two workloads of
// docs/design.md, section 6 (many counters; a pool_cache holding many
// objects), runs them on one unpinned thread per CPU the process may use,
// and prints how much resident memory each added.  Run it confined
// (`taskset -c 0-3 percpu memory`) under PERCPU_INDEX=cpu and =mm_cid, and
// with transparent huge pages `always` and `never` (--compare-thp runs
// both and fails above 1.25x), to see what the index mode and the
// huge-page advice bound.
#include <sched.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "percpu/counter.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/runtime/cpu.hpp"

namespace percpu_tool {

namespace {

struct options {
  std::size_t counters = 1000;
  std::size_t objects = 100'000;
  unsigned threads = 0;       // 0: one per allowed CPU
  bool compare_thp = false;   // --compare-thp
  bool numbers_only = false;  // --numbers (the children of --compare-thp)
};

options parse(const std::vector<std::string>& args) {
  options o;
  for (std::size_t i = 0; i < args.size(); i += 2) {
    const std::string& a = args[i];
    if (a == "--compare-thp" || a == "--numbers") {
      (a == "--numbers" ? o.numbers_only : o.compare_thp) = true;
      --i;
      continue;
    }
    if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
    std::size_t used = 0;
    unsigned long long n = std::stoull(args[i + 1], &used);
    if (used != args[i + 1].size() || n == 0 || n > 10'000'000) {
      throw std::invalid_argument(a + " wants a number from 1 to 10000000, not " + args[i + 1]);
    }
    if (a == "--counters") {
      o.counters = n;
    } else if (a == "--objects") {
      o.objects = n;
    } else if (a == "--threads" && n <= 1024) {
      o.threads = static_cast<unsigned>(n);
    } else {
      throw std::invalid_argument("unknown option " + a + " (or --threads above 1024)");
    }
  }
  return o;
}

// Resident memory of the process, kB: the Rss of /proc/self/smaps_rollup,
// counted from the page tables.  Not /proc/self/statm: before Linux 6.2
// each thread holds back its share of that count until its 64th page fault
// or its exit, which moved a child's figure by 2 MB at random on 6.1.
long resident_kb() {
  std::ifstream rollup("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(rollup, line)) {
    if (line.rfind("Rss:", 0) == 0) return std::strtol(line.c_str() + 4, nullptr, 10);
  }
  return 0;
}

std::string thp_mode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  std::getline(f, line);
  return line.empty() ? "(none)" : line;
}

template <class F>
void on_threads(unsigned threads, F f) {
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(f, t);
  for (auto& t : pool) t.join();
}

// `counters` counters, each added to 16 times by every thread, a yield
// between rounds so that the threads move between CPUs as a busy program's
// do.  Returns the kB they added; checks that no add was lost.
long counters_kb(const options& o, unsigned threads) {
  constexpr int rounds = 16;
  long before = resident_kb();
  std::vector<std::unique_ptr<percpu::counter>> all;
  for (std::size_t i = 0; i < o.counters; ++i) all.push_back(std::make_unique<percpu::counter>());
  on_threads(threads, [&](unsigned) {
    for (int r = 0; r < rounds; ++r) {
      for (auto& c : all) c->add(1);
      sched_yield();
    }
  });
  long added = resident_kb() - before;
  for (auto& c : all) {
    if (c->read() != std::int64_t{rounds} * threads)
      throw std::runtime_error("a counter lost adds");
  }
  return added;
}

// A pool_cache of 64-byte objects, its options the defaults: the threads
// take `objects` in all, then (when all have taken theirs: otherwise a
// thread that finished early would hand its objects to the others, and the
// count that ever existed would depend on the threads' timing) put every
// one back, where the cache keeps them constructed.
long pool_kb(const options& o, unsigned threads) {
  long before = resident_kb();
  percpu::pool_options po;
  po.size = 64;
  po.name = "memory";
  auto cache = std::make_unique<percpu::raw_pool_cache>(std::move(po));
  std::latch all_taken(threads);
  on_threads(threads, [&](unsigned t) {
    std::size_t mine = o.objects / threads + (t < o.objects % threads ? 1 : 0);
    std::vector<void*> held;
    held.reserve(mine);
    for (std::size_t i = 0; i < mine; ++i) held.push_back(cache->get());
    all_taken.arrive_and_wait();
    for (void* p : held) cache->put(p);
  });
  long added = resident_kb() - before;
  if (cache->stats().objects_cached == 0) throw std::runtime_error("the pool_cache kept no object");
  return added;
}

// What the workloads' threads cost apart from percpu (their stacks, which
// the C library keeps for the next threads; the heap that holds their
// vectors), paid once before anything is measured, so that the figures
// are the structures' alone.
void warm_up(const options& o, unsigned threads) {
  on_threads(threads, [&](unsigned) {
    std::vector<void*> held;
    held.reserve(o.objects / threads + 1);
    percpu::counter c;
    c.add(1);
  });
}

// Runs this command again with --numbers, transparent huge pages disabled
// for it or not (PR_SET_THP_DISABLE, which a child inherits: as THP
// `never`), and returns its two figures.
std::pair<long, long> run_child(const options& o, bool thp_disabled) {
  char self[4096] = {};
  if (readlink("/proc/self/exe", self, sizeof self - 1) <= 0) throw std::runtime_error("no exe");
  std::string command = std::string(self) + " memory --numbers --counters " +
                        std::to_string(o.counters) + " --objects " + std::to_string(o.objects) +
                        (o.threads != 0 ? " --threads " + std::to_string(o.threads) : "");
  if (thp_disabled && prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) {
    throw std::runtime_error("prctl(PR_SET_THP_DISABLE) failed");
  }
  std::FILE* child = popen(command.c_str(), "r");
  if (thp_disabled) prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0);
  if (child == nullptr) throw std::runtime_error("cannot run " + command);
  char line[128] = {};
  bool read = std::fgets(line, sizeof line, child) != nullptr;
  if (pclose(child) != 0 || !read) throw std::runtime_error(command + " failed");
  char* end = nullptr;
  long counters = std::strtol(line, &end, 10);
  long pool = std::strtol(end, &end, 10);
  if (*end != '\n') throw std::runtime_error(command + " printed '" + line + "'");
  return {counters, pool};
}

// --compare-thp: both workloads with huge pages as the system has them and
// without, the median of five runs each: a run's figure can still move by
// a few hundred kB with how its threads met the C library's allocator (in
// a 6.12 guest, one run of 1000 counters in 16 printed 504 kB where the
// others printed 860 to 940); exit status 1 when either costs more than
// 1.25x (+ 64 kB) with them.
int compare_thp(const options& o) {
  constexpr int runs = 5;
  std::vector<long> c_thp, p_thp, c_none, p_none;
  for (int r = 0; r < runs; ++r) {
    for (bool disabled : {false, true}) {
      auto [c, p] = run_child(o, disabled);
      (disabled ? c_none : c_thp).push_back(c);
      (disabled ? p_none : p_thp).push_back(p);
    }
  }
  auto median = [](std::vector<long>& v) {
    std::nth_element(v.begin(), v.begin() + runs / 2, v.end());
    return v[runs / 2];
  };
  long counters_with = median(c_thp), counters_without = median(c_none);
  long pool_with = median(p_thp), pool_without = median(p_none);
  bool ok = true;
  for (auto [what, with, without] : {std::tuple{"counters", counters_with, counters_without},
                                     std::tuple{"pool_cache", pool_with, pool_without}}) {
    bool fits = static_cast<double>(with) <= 1.25 * static_cast<double>(without) + 64;
    std::printf("%-11s %8ld kB with THP %s, %8ld kB without (median of %d): %.2fx%s\n", what, with,
                thp_mode().c_str(), without, runs,
                static_cast<double>(with) / static_cast<double>(without > 0 ? without : 1),
                fits ? "" : "  OVER 1.25x");
    ok = ok && fits;
  }
  return ok ? 0 : 1;
}

}  // namespace

int memory(const std::vector<std::string>& args) {
  options o = parse(args);
  if (o.compare_thp) return compare_thp(o);
  const percpu::backend_info& b = percpu::backend();
  unsigned threads =
      o.threads != 0 ? o.threads : static_cast<unsigned>(percpu::allowed_cpus().size());
  if (threads == 0) threads = 1;
  warm_up(o, threads);
  if (o.numbers_only) {
    long counters = counters_kb(o, threads);
    std::printf("%ld %ld\n", counters, pool_kb(o, threads));
    return 0;
  }
  std::printf("percpu memory: backend %s, index %s (%s), %u slots, %u threads, THP %s\n",
              b.kind == percpu::backend_kind::rseq ? "rseq" : "portable",
              b.index == percpu::slot_index::mm_cid ? "mm_cid" : "cpu", b.index_reason.c_str(),
              b.slots, threads, thp_mode().c_str());
  std::printf("counters    %8zu x 8 B, 16 adds per thread each: %8ld kB resident\n", o.counters,
              counters_kb(o, threads));
  std::printf("pool_cache  %8zu x 64 B objects, all cached:    %8ld kB resident\n", o.objects,
              pool_kb(o, threads));
  return 0;
}

}  // namespace percpu_tool
