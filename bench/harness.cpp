#include "harness.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <regex>
#include <stdexcept>
#include <thread>

#include "percpu/cpu.hpp"

namespace percpu_bench {

std::vector<row> all_rows(std::vector<missing_peer>& missing) {
  std::vector<row> rows;
  add_foundation_rows(rows);
  add_counter_rows(rows, missing);
  add_pool_rows(rows, missing);
  add_xcall_rows(rows);
  add_queue_rows(rows);
  add_pool_resource_rows(rows);
  return rows;
}

namespace {

using clock_type = std::chrono::steady_clock;

// What the scheduler did to the calling thread so far: how often another
// task took its CPU (involuntary context switches) and how long it waited,
// runnable, for a CPU (run_delay in /proc/thread-self/schedstat; -1 where
// that file cannot be read).
struct schedule_sample {
  long involuntary_switches = 0;
  double waited_ns = -1;
};

// Reads the sample through `schedstat_fd`, the calling thread's
// /proc/thread-self/schedstat opened by that thread (or -1).
schedule_sample sample_schedule(int schedstat_fd) {
  schedule_sample s;
  rusage usage{};
  getrusage(RUSAGE_THREAD, &usage);
  s.involuntary_switches = usage.ru_nivcsw;
  char text[128];
  if (schedstat_fd >= 0) {
    // "<ns on the CPU> <ns waiting for it> <timeslices>"
    ssize_t n = pread(schedstat_fd, text, sizeof text - 1, 0);
    if (n > 0) {
      text[n] = '\0';
      char* end = nullptr;
      std::strtoull(text, &end, 10);
      char* waiting_end = nullptr;
      unsigned long long waiting = std::strtoull(end, &waiting_end, 10);
      if (end != text && waiting_end != end) s.waited_ns = static_cast<double>(waiting);
    }
  }
  return s;
}

// Worker threads, pinned one per allowed CPU (round robin beyond that),
// started once and fed one job at a time.
class pool {
 public:
  explicit pool(unsigned count) {
    auto cpus = percpu::allowed_cpus();
    for (unsigned i = 0; i < count; ++i) {
      unsigned cpu = cpus.empty() ? 0 : cpus[i % cpus.size()];
      workers_.emplace_back([this, i, cpu, pin = !cpus.empty()] { loop(i, cpu, pin); });
    }
  }
  ~pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      ++generation_;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  struct measurement {
    double ns = 0;         // the duration the operations took
    long preemptions = 0;  // times another task took a worker's CPU meanwhile
    double wall_ns = 0;    // common start to last finish, other tasks included
  };

  // Runs body->run(i, iterations) on workers 0..threads-1, started together.
  // The duration is the longest worker's time less the time it waited,
  // runnable, while another task held its CPU: on a shared machine that
  // time belongs to others, not to the operation (time the operation
  // itself spends blocked still counts).  Where the scheduler statistics
  // cannot be read, it is the wall time from the common start to the last
  // finish.
  measurement measure(body& b, unsigned threads, std::uint64_t iterations) {
    std::unique_lock<std::mutex> lock(mutex_);
    body_ = &b;
    active_ = threads;
    iterations_ = iterations;
    arrived_ = 0;
    finished_ = 0;
    preemptions_ = 0;
    longest_ns_ = 0;
    all_sampled_ = true;
    go_.store(false);
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [&] { return arrived_ == active_; });
    auto start = clock_type::now();
    go_.store(true, std::memory_order_release);
    done_.wait(lock, [&] { return finished_ == active_; });
    auto end = clock_type::now();
    double wall = std::chrono::duration<double, std::nano>(end - start).count();
    double self_timed = b.timed_ns();
    if (self_timed >= 0) return {self_timed, preemptions_, wall};
    return {all_sampled_ ? longest_ns_ : wall, preemptions_, wall};
  }

 private:
  void loop(unsigned index, unsigned cpu, bool pin) {
    if (pin) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu, &set);
      sched_setaffinity(0, sizeof(set), &set);
    }
    int schedstat_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    std::uint64_t seen = 0;
    for (;;) {
      body* b;
      std::uint64_t iterations;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (stopping_) {
          if (schedstat_fd >= 0) close(schedstat_fd);
          return;
        }
        if (index >= active_) continue;
        b = body_;
        iterations = iterations_;
        ++arrived_;
        if (arrived_ == active_) done_.notify_all();
      }
      while (!go_.load(std::memory_order_acquire)) {
      }
      // The samples lie inside the timed window, so the wait they measure
      // is part of it.
      auto start = clock_type::now();
      schedule_sample before = sample_schedule(schedstat_fd);
      b->run(index, iterations);
      schedule_sample after = sample_schedule(schedstat_fd);
      auto end = clock_type::now();
      double ran = std::chrono::duration<double, std::nano>(end - start).count();
      bool sampled = before.waited_ns >= 0 && after.waited_ns >= 0;
      if (sampled) ran = std::max(ran - (after.waited_ns - before.waited_ns), 0.0);
      std::lock_guard<std::mutex> lock(mutex_);
      preemptions_ += after.involuntary_switches - before.involuntary_switches;
      longest_ns_ = std::max(longest_ns_, ran);
      all_sampled_ = all_sampled_ && sampled;
      if (++finished_ == active_) done_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::atomic<bool> go_{false};
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
  body* body_ = nullptr;
  unsigned active_ = 0;
  unsigned arrived_ = 0;
  unsigned finished_ = 0;
  long preemptions_ = 0;
  double longest_ns_ = 0;
  bool all_sampled_ = true;
  std::uint64_t iterations_ = 0;
};

struct candidate {
  const row* r;
  std::unique_ptr<body> b;
  std::uint64_t iterations = 0;
  std::vector<double> samples;  // ns per operation
  unsigned interrupted = 0;     // samples during which a worker was preempted
};

// The iteration count whose measurement lasts about `target_ns` (the
// operations' own time, as measure() counts it).
std::uint64_t calibrate(pool& p, body& b, unsigned threads, double target_ns) {
  std::uint64_t iterations = 1000;
  for (;;) {
    double ns = p.measure(b, threads, iterations).ns;
    if (ns >= target_ns / 4 || iterations >= (1ull << 34)) {
      double per_op = ns / static_cast<double>(iterations);
      return std::max<std::uint64_t>(
          100, static_cast<std::uint64_t>(target_ns / std::max(per_op, 0.01)));
    }
    iterations *= ns < target_ns / 64 ? 16 : 4;
  }
}

class progress_bar {
 public:
  progress_bar(bool enabled, std::size_t total) : enabled_(enabled && isatty(2)), total_(total) {}
  void step(const std::string& label) {
    ++done_;
    if (!enabled_) return;
    int width = 30;
    double fraction = static_cast<double>(done_) / static_cast<double>(total_);
    int filled = static_cast<int>(fraction * width);
    // Time left, extrapolated from the time spent so far.
    double elapsed = std::chrono::duration<double>(clock_type::now() - start_).count();
    double left = elapsed * (1 - fraction) / fraction;
    std::fprintf(stderr, "\r[%.*s%*s] %zu/%zu %3.0f s left  %-36.36s", filled,
                 "##############################", width - filled, "", done_, total_, left,
                 label.c_str());
    std::fflush(stderr);
  }
  ~progress_bar() {
    if (enabled_) std::fprintf(stderr, "\r%*s\r", 100, "");
  }

 private:
  bool enabled_;
  std::size_t total_;
  std::size_t done_ = 0;
  clock_type::time_point start_ = clock_type::now();
};

}  // namespace

namespace {

// Quick runs spread this much measuring time over every selected
// implementation, so that --quick stays within its two minutes (with the
// build) however many rows the facilities define.
constexpr double quick_budget_ns = 30e9;
// ... and on a busy machine shortens them further to stay within this much
// wall time.
constexpr double quick_wall_budget_ns = 45e9;
// One measurement never gets shorter than this (timer and scheduler noise
// would dominate) nor, in a quick run, longer than the full run's target.
constexpr double min_target_ns = 5e6;
constexpr double quick_max_target_ns = 20e6;
// Many short repetitions rather than a few long ones: the ratios are
// medians over pairs, and more pairs outvote more of the moments another
// process took the CPU.
constexpr unsigned quick_repetitions = 15;
constexpr unsigned full_repetitions = 21;
constexpr double full_target_ns = 100e6;
// Calibration costs about one measurement, the warm-up one more.
constexpr double extra_measurements = 2;

struct group {
  std::string name;
  unsigned threads;
  std::uint64_t size;
  std::vector<const row*> members;
};

std::vector<group> select_groups(const std::vector<row>& rows, const options& opts) {
  std::regex filter(opts.filter.empty() ? ".*" : opts.filter);
  std::vector<group> groups;
  for (const auto& r : rows) {
    if (!std::regex_search(r.name + "/" + r.impl, filter)) continue;
    for (unsigned t : opts.threads.empty() ? r.threads : opts.threads) {
      if (t == 0) continue;
      auto it = std::find_if(groups.begin(), groups.end(), [&](const group& g) {
        return g.name == r.name && g.threads == t && g.size == r.size;
      });
      if (it == groups.end()) {
        groups.push_back({r.name, t, r.size, {}});
        it = groups.end() - 1;
      }
      it->members.push_back(&r);
    }
  }
  return groups;
}

plan plan_for(const std::vector<group>& groups, const options& opts) {
  plan p;
  p.groups = groups.size();
  for (const auto& g : groups) p.implementations += g.members.size();
  p.repetitions = opts.repetitions != 0 ? opts.repetitions
                                        : (opts.quick ? quick_repetitions : full_repetitions);
  double measurements =
      static_cast<double>(p.implementations) * (p.repetitions + extra_measurements);
  p.target_ns = full_target_ns;
  if (opts.quick && measurements > 0) {
    p.target_ns = std::clamp(quick_budget_ns / measurements, min_target_ns, quick_max_target_ns);
  }
  p.estimated_s = measurements * p.target_ns / 1e9;
  return p;
}

// The `fraction` quantile of `values` (0.5: the median), interpolated
// between the two nearest values; 0 for no values.
double quantile(std::vector<double> values, double fraction) {
  std::sort(values.begin(), values.end());
  if (values.empty()) return 0;
  double position = fraction * static_cast<double>(values.size() - 1);
  auto below = static_cast<std::size_t>(position);
  std::size_t above = std::min(below + 1, values.size() - 1);
  double weight = position - static_cast<double>(below);
  return values[below] * (1 - weight) + values[above] * weight;
}

}  // namespace

bool is_preferred_baseline(const std::string& impl) {
  return impl == "percpu";
}

plan make_plan(const std::vector<row>& rows, const options& opts) {
  return plan_for(select_groups(rows, opts), opts);
}

std::vector<result> run(const std::vector<row>& rows, const options& opts) {
  auto groups = select_groups(rows, opts);
  plan p = plan_for(groups, opts);
  unsigned max_threads = 1;
  for (const auto& g : groups) max_threads = std::max(max_threads, g.threads);

  pool workers(max_threads);
  progress_bar bar(opts.progress, p.implementations * (p.repetitions + 1));
  std::vector<result> results;
  auto started = clock_type::now();
  double planned_ns = 0;  // measuring time the groups so far were planned for
  std::size_t measurements_left = p.implementations;
  for (const auto& g : groups) {
    // On a busy machine a measurement takes longer than its target (others
    // hold the CPU part of the time).  A quick run shortens the remaining
    // measurements by the slowdown seen so far, so that it stays within
    // its wall-time budget.
    double target_ns = p.target_ns;
    double elapsed_ns =
        std::chrono::duration<double, std::nano>(clock_type::now() - started).count();
    if (opts.quick && planned_ns > 0) {
      double slowdown = std::max(1.0, elapsed_ns / planned_ns);
      double per_measurement =
          (quick_wall_budget_ns - elapsed_ns) / (static_cast<double>(measurements_left) *
                                                 (p.repetitions + extra_measurements) * slowdown);
      target_ns = std::clamp(per_measurement, min_target_ns, p.target_ns);
    }
    planned_ns +=
        static_cast<double>(g.members.size()) * (p.repetitions + extra_measurements) * target_ns;
    measurements_left -= g.members.size();
    std::string label = g.name;
    if (g.size != 0) {
      label += '/';
      label += std::to_string(g.size);
    }
    label += " x";
    label += std::to_string(g.threads);
    label += ' ';
    std::vector<candidate> cands;
    for (const row* r : g.members) {
      candidate c{r, r->make(g.threads), 0, {}};
      c.iterations = calibrate(workers, *c.b, g.threads, target_ns);
      workers.measure(*c.b, g.threads, c.iterations);  // warm-up
      bar.step(label + r->impl);
      cands.push_back(std::move(c));
    }
    for (unsigned rep = 0; rep < p.repetitions; ++rep) {
      // Interleaved, the order reversed every other repetition (A B C,
      // C B A, ...) so that neither a drift nor the position after a given
      // neighbour favours one implementation.
      for (std::size_t k = 0; k < cands.size(); ++k) {
        auto& c = cands[rep % 2 == 0 ? k : cands.size() - 1 - k];
        auto m = workers.measure(*c.b, g.threads, c.iterations);
        c.samples.push_back(m.ns / static_cast<double>(c.iterations));
        if (m.preemptions != 0) ++c.interrupted;
        bar.step(label + c.r->impl);
      }
    }
    auto base = std::find_if(cands.begin(), cands.end(),
                             [](const candidate& c) { return is_preferred_baseline(c.r->impl); });
    if (base == cands.end()) base = cands.begin();
    for (auto& c : cands) {
      result res;
      res.name = g.name;
      res.impl = c.r->impl;
      res.threads = g.threads;
      res.size = g.size;
      res.median_ns = quantile(c.samples, 0.5);
      res.min_ns = *std::min_element(c.samples.begin(), c.samples.end());
      res.max_ns = *std::max_element(c.samples.begin(), c.samples.end());
      res.repetitions = p.repetitions;
      res.interrupted = c.interrupted;
      res.note = c.b->note();
      if (&c != &*base) {
        // Pair by pair: each sample against the baseline's sample of the
        // same repetition, measured just before or after it.
        std::vector<double> ratios;
        for (std::size_t i = 0; i < c.samples.size(); ++i) {
          if (base->samples[i] > 0) ratios.push_back(c.samples[i] / base->samples[i]);
        }
        res.baseline = base->r->impl;
        res.ratio = quantile(ratios, 0.5);
        res.ratio_q1 = quantile(ratios, 0.25);
        res.ratio_q3 = quantile(ratios, 0.75);
      }
      results.push_back(res);
    }
  }
  return results;
}

double measure_once(body& b, unsigned threads, std::uint64_t iterations) {
  static pool* workers =
      new pool(std::max<unsigned>(1, static_cast<unsigned>(percpu::allowed_cpus().size())));
  return workers->measure(b, threads, iterations).ns;
}

}  // namespace percpu_bench
