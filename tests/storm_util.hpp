// storm_util.hpp - fault injection shared by the concurrency tests: threads
// that move themselves between CPUs, and a signaller that interrupts them.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu_mask.hpp"
#include "percpu/runtime/cpu.hpp"
#include "test_scale.hpp"

namespace percpu_test {

// How long a storm runs: at least `least` (scaled by PERCPU_TEST_SCALE,
// test_scale.hpp, but never below a tenth of it), then on until happened() says
// that the storm really happened (enough migrations, signals, visits for
// the test's checks to mean something), but no longer than `cap` (ten times
// `least`, at least 10 s).  A machine loaded by other work may not produce
// the storm within the cap: the test then reports it after its checks
// (GTEST_SKIP with the figures), since that is no bug of the library.
class storm_clock {
 public:
  using clock = std::chrono::steady_clock;
  explicit storm_clock(std::chrono::milliseconds least)
      : start_(clock::now()),
        least_end_(start_ + scaled(least, least / 10)),
        cap_end_(start_ + std::max<clock::duration>(10 * least, std::chrono::seconds(10))) {}

  // True while the storm should go on.
  template <class Happened>
  bool more(Happened happened) const {
    auto now = clock::now();
    if (now >= cap_end_) return false;
    return now < least_end_ || !happened();
  }
  // Runs until more() is false, checking every millisecond.
  template <class Happened>
  void wait(Happened happened) const {
    while (more(happened)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  double seconds() const { return std::chrono::duration<double>(clock::now() - start_).count(); }

 private:
  clock::time_point start_;
  clock::time_point least_end_;
  clock::time_point cap_end_;
};

// Moves the calling thread to a pseudo-random single allowed CPU, or to all
// of them; returns whether the affinity call succeeded.
inline bool migrate(unsigned& rng, const std::vector<unsigned>& allowed) {
  rng = rng * 1664525u + 1013904223u;
  unsigned pick = (rng >> 16) % (static_cast<unsigned>(allowed.size()) + 1);
  return pick == allowed.size() ? allow(allowed) : pin(allowed[pick]);
}

// Installs `handler` for `signal` (SA_RESTART) for the object's lifetime.
class scoped_handler {
 public:
  scoped_handler(int signal, void (*handler)(int)) : signal_(signal) {
    struct sigaction sa {};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    installed_ = sigaction(signal, &sa, &previous_) == 0;
  }
  ~scoped_handler() {
    if (installed_) sigaction(signal_, &previous_, nullptr);
  }
  scoped_handler(const scoped_handler&) = delete;
  scoped_handler& operator=(const scoped_handler&) = delete;
  bool installed() const { return installed_; }

 private:
  int signal_;
  struct sigaction previous_ {};
  bool installed_ = false;
};

// Sends `signal` to every registered thread every few microseconds until
// stopped.  Threads register themselves with enroll() before working.
class signaller {
 public:
  explicit signaller(int signal) : signal_(signal) {}
  void enroll() {
    std::lock_guard<std::mutex> lock(mutex_);
    threads_.push_back(pthread_self());
  }
  void start() {
    thread_ = std::thread([this] {
      while (!done_.load()) {
        {
          std::lock_guard<std::mutex> lock(mutex_);
          for (auto t : threads_) {
            pthread_kill(t, signal_);
            sent_.fetch_add(1, std::memory_order_relaxed);
          }
        }
        auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(5);
        while (std::chrono::steady_clock::now() < until) {
        }
      }
    });
  }
  // Stop before the enrolled threads exit.
  void stop() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
  }
  long sent() const { return sent_.load(); }

 private:
  int signal_;
  std::mutex mutex_;
  std::vector<pthread_t> threads_;
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::atomic<long> sent_{0};
};

// Worker threads under a signal storm.  The constructor starts `count`
// threads, each of which enrolls with `signals` and then runs
// body(t, stopping) until `stopping` reads true; once every worker is
// enrolled it starts the storm.  stop() (or the destructor) ends the storm
// and joins the workers.
class storm_workers {
 public:
  template <class Body>
  storm_workers(signaller& signals, int count, Body body) : signals_(signals) {
    threads_.reserve(static_cast<std::size_t>(count));
    for (int t = 0; t < count; ++t) {
      threads_.emplace_back([this, t, body] {
        signals_.enroll();
        ready_.fetch_add(1);
        body(t, static_cast<const std::atomic<bool>&>(stopping_));
      });
    }
    while (ready_.load() < count) std::this_thread::yield();
    signals_.start();
  }
  ~storm_workers() { stop(); }
  storm_workers(const storm_workers&) = delete;
  storm_workers& operator=(const storm_workers&) = delete;

  bool stopping() const { return stopping_.load(std::memory_order_relaxed); }
  void stop() {
    stopping_ = true;
    signals_.stop();
    for (auto& th : threads_) th.join();
    threads_.clear();
  }

 private:
  signaller& signals_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> ready_{0};
  std::vector<std::thread> threads_;
};

}  // namespace percpu_test
