#include "harness.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <regex>
#include <stdexcept>
#include <thread>

#include "percpu/runtime/cpu.hpp"

namespace percpu_bench {

std::vector<row> all_rows(std::vector<missing_peer>& missing) {
  std::vector<row> rows;
  add_foundation_rows(rows);
  add_counter_rows(rows, missing);
  add_rwlock_rows(rows, missing);
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
      b->warm_up(index, iterations);
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
  std::string note;             // the body's note() after its last measurement
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
    double fraction = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
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
constexpr double quick_budget_ns = 35e9;
// ... and on a busy machine shortens them further to stay within this much
// wall time.
constexpr double quick_wall_budget_ns = 60e9;
// One measurement never gets shorter than this (timer and scheduler noise
// would dominate) nor, in a quick run, longer than the full run's target.
constexpr double min_target_ns = 2e6;
constexpr double quick_max_target_ns = 20e6;
// Many short repetitions rather than a few long ones: the two sides of a
// short pair mostly run in the same state of the machine, and more pairs,
// each taken at another moment of the run, sample more of the machine's
// states.  With 15 repetitions of 20 ms, each group measured in one
// stretch, two consecutive quick runs on the development VM disagreed by
// more than 25 % on 4 to 11 of 68 ratios; with 45 in passes of five, on 0
// to 3; with 60 in passes of one, on none, in 15 consecutive pairs of runs
// (docs/benchmarks.md has the figures).
constexpr unsigned quick_repetitions = 60;
constexpr unsigned full_repetitions = 100;
constexpr double full_target_ns = 20e6;
// A group's ratio leaves out this fraction of its pairs at each end.
constexpr double ratio_trim = 0.05;
// A group whose ratios are known less well than this (the standard error of
// their mean logarithm: two runs then agree within 25 % about 19 times in
// 20) gets more passes, up to extra_repetitions_factor times its
// repetitions in all, while a quick run's wall-time budget allows.
constexpr double ratio_log_error_goal = 0.08;
constexpr unsigned extra_repetitions_factor = 5;
// Each pass makes a group's bodies afresh and warms each up with this
// fraction of a measurement before measuring it (see run()).
constexpr double warm_up_fraction = 0.25;

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
  // Calibration costs about one measurement, and every pass (one per
  // repetition) a warm-up.
  double measurements = static_cast<double>(p.implementations) *
                        (p.repetitions + 1 + warm_up_fraction * p.repetitions);
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

// The geometric mean of `values` (positive) without their lowest and
// highest `trim` fraction, and the standard error of its logarithm (how far
// another run's mean may fall, as a factor: e^(2 error) covers 95 % of
// them).  For the ratios of a group: on a machine that alternates between
// two speeds, a median of pairs flips from one state's ratio to the other's
// as their mix crosses one half, while a mean moves with the mix; the
// trimming keeps the weight of the rare wild pair low.
struct mean_estimate {
  double mean = 0;
  double log_error = 0;
};
mean_estimate trimmed_geometric_mean(std::vector<double> values, double trim) {
  std::sort(values.begin(), values.end());
  auto cut = static_cast<std::size_t>(trim * static_cast<double>(values.size()));
  std::vector<double> logs;
  for (std::size_t i = cut; i + cut < values.size(); ++i) {
    if (values[i] > 0) logs.push_back(std::log(values[i]));
  }
  if (logs.empty()) return {};
  auto n = static_cast<double>(logs.size());
  double sum = 0;
  for (double l : logs) sum += l;
  double mean = sum / n;
  double squares = 0;
  for (double l : logs) squares += (l - mean) * (l - mean);
  double error = logs.size() > 1 ? std::sqrt(squares / (n - 1) / n) : 0;
  return {std::exp(mean), error};
}

// The ratios time(c) / time(base) of the pairs measured side by side.
std::vector<double> pair_ratios(const std::vector<double>& c, const std::vector<double>& base) {
  std::vector<double> ratios;
  for (std::size_t i = 0; i < c.size() && i < base.size(); ++i) {
    if (base[i] > 0 && c[i] > 0) ratios.push_back(c[i] / base[i]);
  }
  return ratios;
}

// A group as the run measures it: its implementations (candidates) and the
// label the progress bar shows ("name/size xthreads ").
struct measured_group {
  const group* g;
  std::string label;
  std::vector<candidate> cands;
};

// The group's baseline: its `percpu` implementation, else its first.
std::vector<candidate>::const_iterator baseline_of(const std::vector<candidate>& cands) {
  auto base = std::find_if(cands.begin(), cands.end(),
                           [](const candidate& c) { return is_preferred_baseline(c.r->impl); });
  return base == cands.end() ? cands.begin() : base;
}

// One run: the groups, the workers that measure them, the progress bar and
// the clock; run() below drives it.
class runner {
 public:
  runner(const std::vector<group>& groups, const plan& p, const options& opts)
      : p_(p),
        opts_(opts),
        workers_(max_threads(groups)),
        bar_(opts.progress, p.implementations * p.repetitions * 2),
        measurement_ns_(p.target_ns) {
    for (const auto& g : groups) {
      measured_group m{&g, g.name, {}};
      if (g.size != 0) {
        m.label += '/';
        m.label += std::to_string(g.size);
      }
      m.label += " x";
      m.label += std::to_string(g.threads);
      m.label += ' ';
      for (const row* r : g.members) m.cands.push_back(candidate{r, nullptr, 0, {}, 0, {}});
      measured_.push_back(std::move(m));
    }
  }

  // Each repetition is a pass over the whole selection, so that a group's
  // pairs are spread evenly over the run instead of lying within one
  // second of it.  On this kind of machine the speed of whole code paths
  // changes for seconds at a time (another virtual machine on the same
  // physical core), and the ratio between a plain path and an atomic one
  // differs between the two speeds: a group measured inside one phase
  // would carry it whole, and so would the pairs of one pass.  With one
  // pair per pass, each pair samples the machine's state at another moment
  // of the run, and every group of every run sees a mix of states that
  // differs from the run's own mix as little as the number of passes
  // allows.  A group's bodies live for one pass only (some keep a thread
  // spinning or a child process, which must not disturb the other groups):
  // made, calibrated on the first pass, warmed up, measured, destroyed.
  // Within a pass the group's implementations are measured in turn, the
  // order reversed every other pass (A B C, C B A, ...), so that neither a
  // drift nor the position after a given neighbour favours one of them;
  // the groups' order is reversed every other pass too.
  void planned_passes() {
    for (unsigned pass = 0; pass < p_.repetitions; ++pass) {
      if (opts_.quick && pass > 0) keep_to_budget(pass);
      for (std::size_t gi = 0; gi < measured_.size(); ++gi) {
        measure_pass(measured_[pass % 2 == 0 ? gi : measured_.size() - 1 - gi]);
      }
    }
  }

  // Groups whose pairs spread widely (a lock that two threads sometimes
  // share politely and sometimes fight over, a path that the machine's two
  // speeds treat differently) need more pairs for the same certainty: the
  // error of a mean shrinks with the square root of their number, and the
  // pairs, each from its own pass, are as independent as the run can make
  // them.
  void extra_passes() {
    for (;;) {
      std::vector<measured_group*> chosen;
      for (auto& m : measured_) {
        if (needs_more(m)) chosen.push_back(&m);
      }
      if (chosen.empty() || (opts_.quick && elapsed_ns() > quick_wall_budget_ns)) break;
      for (auto* m : chosen) measure_pass(*m);
    }
  }

  // Every candidate's figures, and its ratio against the group's baseline.
  std::vector<result> results() const {
    std::vector<result> out;
    for (const auto& m : measured_) {
      auto base = baseline_of(m.cands);
      for (const auto& c : m.cands) out.push_back(result_of(*m.g, c, *base));
    }
    return out;
  }

 private:
  static unsigned max_threads(const std::vector<group>& groups) {
    unsigned most = 1;
    for (const auto& g : groups) most = std::max(most, g.threads);
    return most;
  }

  double elapsed_ns() const {
    return std::chrono::duration<double, std::nano>(clock_type::now() - started_).count();
  }

  // A busy machine makes the passes longer than planned (others hold the
  // CPU part of the time).  A quick run then shortens the measurements
  // left, so that it stays within its wall-time budget.
  void keep_to_budget(unsigned pass) {
    double per_pass = elapsed_ns() / pass;
    double fits = (quick_wall_budget_ns - elapsed_ns()) / (p_.repetitions - pass);
    if (per_pass <= fits || measurement_ns_ <= min_target_ns) return;
    double scale = std::max(fits / per_pass, min_target_ns / measurement_ns_);
    measurement_ns_ *= scale;
    for (auto& m : measured_) {
      for (auto& c : m.cands) {
        c.iterations = std::max<std::uint64_t>(
            100, static_cast<std::uint64_t>(static_cast<double>(c.iterations) * scale));
      }
    }
  }

  // One pass of group `m`: its bodies made (and calibrated, the first
  // time), warmed up, each measured once, destroyed.
  void measure_pass(measured_group& m) {
    unsigned threads = m.g->threads;
    auto& cands = m.cands;
    for (auto& c : cands) {
      c.b = c.r->make(threads);
      if (c.iterations == 0) c.iterations = calibrate(workers_, *c.b, threads, measurement_ns_);
      auto warm_up =
          static_cast<std::uint64_t>(static_cast<double>(c.iterations) * warm_up_fraction);
      workers_.measure(*c.b, threads, std::max<std::uint64_t>(1, warm_up));
      bar_.step(m.label + c.r->impl);
    }
    bool reversed = cands.front().samples.size() % 2 != 0;
    for (std::size_t k = 0; k < cands.size(); ++k) {
      auto& c = cands[reversed ? cands.size() - 1 - k : k];
      auto res = workers_.measure(*c.b, threads, c.iterations);
      c.samples.push_back(res.ns / static_cast<double>(c.iterations));
      if (res.preemptions != 0) ++c.interrupted;
      bar_.step(m.label + c.r->impl);
    }
    for (auto& c : cands) {
      c.note = c.b->note();
      c.b.reset();
    }
  }

  bool needs_more(const measured_group& m) const {
    auto base = baseline_of(m.cands);
    if (base->samples.size() >= std::size_t{extra_repetitions_factor} * p_.repetitions)
      return false;
    for (const auto& c : m.cands) {
      if (&c == &*base) continue;
      auto ratios = pair_ratios(c.samples, base->samples);
      if (trimmed_geometric_mean(ratios, ratio_trim).log_error > ratio_log_error_goal) return true;
    }
    return false;
  }

  static result result_of(const group& g, const candidate& c, const candidate& base) {
    result res;
    res.name = g.name;
    res.impl = c.r->impl;
    res.threads = g.threads;
    res.size = g.size;
    res.median_ns = quantile(c.samples, 0.5);
    res.min_ns = *std::min_element(c.samples.begin(), c.samples.end());
    res.max_ns = *std::max_element(c.samples.begin(), c.samples.end());
    res.repetitions = static_cast<unsigned>(c.samples.size());
    res.interrupted = c.interrupted;
    res.note = c.note;
    if (&c != &base) {
      // Pair by pair: each sample against the baseline's sample of the
      // same repetition, measured just before or after it.
      auto ratios = pair_ratios(c.samples, base.samples);
      res.baseline = base.r->impl;
      res.ratio = trimmed_geometric_mean(ratios, ratio_trim).mean;
      res.ratio_q1 = quantile(ratios, 0.25);
      res.ratio_q3 = quantile(ratios, 0.75);
    }
    return res;
  }

  const plan p_;
  const options& opts_;
  pool workers_;
  progress_bar bar_;
  clock_type::time_point started_ = clock_type::now();
  std::vector<measured_group> measured_;
  double measurement_ns_;  // what the measurements are calibrated for
};

}  // namespace

bool is_preferred_baseline(const std::string& impl) {
  return impl == "percpu";
}

plan make_plan(const std::vector<row>& rows, const options& opts) {
  return plan_for(select_groups(rows, opts), opts);
}

std::vector<result> run(const std::vector<row>& rows, const options& opts) {
  auto groups = select_groups(rows, opts);
  runner r(groups, plan_for(groups, opts), opts);
  r.planned_passes();
  r.extra_passes();
  return r.results();
}

double measure_once(body& b, unsigned threads, std::uint64_t iterations) {
  static pool* workers =
      new pool(std::max<unsigned>(1, static_cast<unsigned>(percpu::allowed_cpus().size())));
  return workers->measure(b, threads, iterations).ns;
}

}  // namespace percpu_bench
