#include "harness.hpp"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
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
  add_pool_resource_rows(rows);
  return rows;
}

namespace {

using clock_type = std::chrono::steady_clock;

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

  // Runs body->run(i, iterations) on workers 0..threads-1, started together;
  // returns the wall time from the common start to the last finish.
  double measure(body& b, unsigned threads, std::uint64_t iterations) {
    std::unique_lock<std::mutex> lock(mutex_);
    body_ = &b;
    active_ = threads;
    iterations_ = iterations;
    arrived_ = 0;
    finished_ = 0;
    go_.store(false);
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [&] { return arrived_ == active_; });
    auto start = clock_type::now();
    go_.store(true, std::memory_order_release);
    done_.wait(lock, [&] { return finished_ == active_; });
    auto end = clock_type::now();
    return std::chrono::duration<double, std::nano>(end - start).count();
  }

 private:
  void loop(unsigned index, unsigned cpu, bool pin) {
    if (pin) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu, &set);
      sched_setaffinity(0, sizeof(set), &set);
    }
    std::uint64_t seen = 0;
    for (;;) {
      body* b;
      std::uint64_t iterations;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (stopping_) return;
        if (index >= active_) continue;
        b = body_;
        iterations = iterations_;
        ++arrived_;
        if (arrived_ == active_) done_.notify_all();
      }
      while (!go_.load(std::memory_order_acquire)) {
      }
      b->run(index, iterations);
      std::lock_guard<std::mutex> lock(mutex_);
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
  std::uint64_t iterations_ = 0;
};

struct candidate {
  const row* r;
  std::unique_ptr<body> b;
  std::uint64_t iterations = 0;
  std::vector<double> samples;  // ns per operation
};

std::uint64_t calibrate(pool& p, body& b, unsigned threads, double target_ns) {
  std::uint64_t iterations = 1000;
  for (;;) {
    double ns = p.measure(b, threads, iterations);
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
    int filled = static_cast<int>(static_cast<double>(done_) / static_cast<double>(total_) * width);
    std::fprintf(stderr, "\r[%.*s%*s] %zu/%zu %-40.40s", filled, "##############################",
                 width - filled, "", done_, total_, label.c_str());
    std::fflush(stderr);
  }
  ~progress_bar() {
    if (enabled_) std::fprintf(stderr, "\r%*s\r", 90, "");
  }

 private:
  bool enabled_;
  std::size_t total_;
  std::size_t done_ = 0;
};

}  // namespace

std::vector<result> run(const std::vector<row>& rows, const options& opts) {
  std::regex filter(opts.filter.empty() ? ".*" : opts.filter);
  unsigned repetitions = opts.repetitions != 0 ? opts.repetitions : (opts.quick ? 7 : 15);
  double target_ns = opts.quick ? 40e6 : 100e6;

  // Groups: (name, threads) -> rows, in registration order.
  std::vector<std::pair<std::pair<std::string, unsigned>, std::vector<const row*>>> groups;
  unsigned max_threads = 1;
  for (const auto& r : rows) {
    if (!std::regex_search(r.name + "/" + r.impl, filter)) continue;
    for (unsigned t : opts.threads.empty() ? r.threads : opts.threads) {
      if (t == 0) continue;
      max_threads = std::max(max_threads, t);
      auto key = std::make_pair(r.name, t);
      auto it = std::find_if(groups.begin(), groups.end(), [&](auto& g) { return g.first == key; });
      if (it == groups.end()) {
        groups.push_back({key, {}});
        it = groups.end() - 1;
      }
      it->second.push_back(&r);
    }
  }
  std::size_t total = 0;
  for (auto& g : groups) total += g.second.size() * (repetitions + 1);

  pool workers(max_threads);
  progress_bar bar(opts.progress, total);
  std::vector<result> results;
  for (auto& [key, members] : groups) {
    unsigned threads = key.second;
    std::vector<candidate> cands;
    for (const row* r : members) {
      candidate c{r, r->make(threads), 0, {}};
      c.iterations = calibrate(workers, *c.b, threads, target_ns);
      workers.measure(*c.b, threads, c.iterations);  // warm-up
      bar.step(key.first + " " + r->impl);
      cands.push_back(std::move(c));
    }
    for (unsigned rep = 0; rep < repetitions; ++rep) {
      for (auto& c : cands) {  // interleaved: A B C, A B C, ...
        double ns = workers.measure(*c.b, threads, c.iterations);
        c.samples.push_back(ns / static_cast<double>(c.iterations));
        bar.step(key.first + " " + c.r->impl);
      }
    }
    for (auto& c : cands) {
      std::sort(c.samples.begin(), c.samples.end());
      result res;
      res.name = key.first;
      res.impl = c.r->impl;
      res.threads = threads;
      std::size_t n = c.samples.size();
      res.median_ns = n % 2 == 1 ? c.samples[n / 2] : (c.samples[n / 2 - 1] + c.samples[n / 2]) / 2;
      res.min_ns = c.samples.front();
      res.max_ns = c.samples.back();
      res.repetitions = repetitions;
      results.push_back(res);
    }
  }
  return results;
}

}  // namespace percpu_bench
