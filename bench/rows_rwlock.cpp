// Rows for the big-reader lock.
//
//   rwlock.read         lock_shared + unlock_shared: percpu::rwlock vs
//                       std::shared_mutex, pthread_rwlock_t and liburcu's
//                       membarrier flavour read lock (the reader-side
//                       reference) when installed
//   rwlock.write        lock + unlock back to back, no readers (for liburcu:
//                       a synchronize_rcu, its writer-side wait)
//   rwlock.write_burst  bursts of 1000 write sections, each burst on a lock
//                       fresh from construction (percpu's is then biased,
//                       as after a quiet period); per section
//   rwlock.mixed_1pct   two threads, each doing read sections with a write
//   rwlock.mixed_10pct  section every 100th (10th) time; per section
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>

#include "harness.hpp"
#include "peers.hpp"
#include "percpu/rwlock.hpp"

#if defined(PERCPU_BENCH_HAVE_URCU)
#define _LGPL_SOURCE  // liburcu's inline read-side fast path
#include <urcu/urcu-memb.h>
#endif

namespace percpu_bench {

namespace {

struct pthread_rwlock {
  pthread_rwlock() { pthread_rwlock_init(&handle, nullptr); }
  ~pthread_rwlock() { pthread_rwlock_destroy(&handle); }
  pthread_rwlock(const pthread_rwlock&) = delete;
  pthread_rwlock& operator=(const pthread_rwlock&) = delete;
  void lock() { pthread_rwlock_wrlock(&handle); }
  void unlock() { pthread_rwlock_unlock(&handle); }
  void lock_shared() { pthread_rwlock_rdlock(&handle); }
  void unlock_shared() { pthread_rwlock_unlock(&handle); }
  pthread_rwlock_t handle;
};

#if defined(PERCPU_BENCH_HAVE_URCU)
// liburcu's memb flavour as a lock: readers are read-side critical sections
// (each thread registers once); a writer takes a mutex against other
// writers and, before it lets the next one in, waits for the readers that
// may still see its predecessor's state (synchronize_rcu), as an RCU updater
// that frees what it replaced does.
struct urcu_lock {
  static void enter_thread() {
    thread_local bool registered = false;
    if (!registered) {
      urcu_memb_register_thread();
      registered = true;
    }
  }
  void lock() { writers.lock(); }
  void unlock() {
    urcu_memb_synchronize_rcu();
    writers.unlock();
  }
  void lock_shared() { urcu_memb_read_lock(); }
  void unlock_shared() { urcu_memb_read_unlock(); }
  std::mutex writers;
};
#endif

// Per-thread set-up a lock type needs (liburcu's registration).
template <class Lock>
void enter_thread() {
  if constexpr (requires { Lock::enter_thread(); }) Lock::enter_thread();
}

// Read sections and write sections over one lock type.
template <class Lock>
class lock_rows final : public body {
 public:
  explicit lock_rows(bool write) : write_(write) {}
  void run(unsigned, std::uint64_t n) override {
    if (write_) {
      for (std::uint64_t i = 0; i < n; ++i) {
        lock_.lock();
        lock_.unlock();
      }
    } else {
      for (std::uint64_t i = 0; i < n; ++i) {
        lock_.lock_shared();
        lock_.unlock_shared();
      }
    }
  }

 private:
  bool write_;
  Lock lock_;
};

#if defined(PERCPU_BENCH_HAVE_URCU)
// liburcu's memb flavour: readers register once per thread; the "write"
// is synchronize_rcu, the wait for pre-existing readers.
class urcu_rows final : public body {
 public:
  explicit urcu_rows(bool write) : write_(write) {}
  void run(unsigned, std::uint64_t n) override {
    urcu_lock::enter_thread();
    if (write_) {
      for (std::uint64_t i = 0; i < n; ++i) urcu_memb_synchronize_rcu();
    } else {
      for (std::uint64_t i = 0; i < n; ++i) {
        urcu_memb_read_lock();
        urcu_memb_read_unlock();
      }
    }
  }

 private:
  bool write_;
};
#endif

// Bursts of `burst_length` write sections back to back, each burst on a
// lock constructed for it (untimed).  A configuration reload that takes the
// lock a thousand times after a quiet period.
constexpr std::uint64_t burst_length = 1000;

template <class Lock>
class write_burst final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    enter_thread<Lock>();
    double total = 0;
    for (std::uint64_t done = 0; done < n;) {
      std::uint64_t k = std::min(burst_length, n - done);
      auto lock = std::make_unique<Lock>();
      auto start = std::chrono::steady_clock::now();
      for (std::uint64_t i = 0; i < k; ++i) {
        lock->lock();
        lock->unlock();
      }
      total += std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start)
                   .count();
      done += k;
    }
    ns_ = total;
  }
  double timed_ns() const override { return ns_; }

 private:
  double ns_ = 0;
};

// Two threads, each doing read sections and, every `period`-th time, a write
// section (the two threads' writes half a period apart).  A read section
// reads a value that write sections change.
template <class Lock>
class mixed final : public body {
 public:
  explicit mixed(unsigned period) : period_(period) {}
  void run(unsigned thread, std::uint64_t n) override {
    enter_thread<Lock>();
    std::uint64_t sum = 0;
    unsigned countdown = 1 + (thread % 2) * period_ / 2;
    for (std::uint64_t i = 0; i < n; ++i) {
      if (--countdown == 0) {
        countdown = period_;
        lock_.lock();
        value_.store(value_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        lock_.unlock();
      } else {
        lock_.lock_shared();
        sum += value_.load(std::memory_order_relaxed);
        lock_.unlock_shared();
        keep(sum);
      }
    }
  }

 private:
  unsigned period_;
  Lock lock_;
  alignas(64) std::atomic<std::uint64_t> value_{0};
};

template <class B>
row with_flag(const char* name, const char* impl, std::vector<unsigned> threads, bool flag) {
  return row{name, impl, std::move(threads),
             [flag](unsigned) { return std::make_unique<B>(flag); }};
}

template <class Lock>
void add_lock_rows(std::vector<row>& rows, const char* impl) {
  rows.push_back(make_row<write_burst<Lock>>("rwlock.write_burst", impl, {1}));
  for (auto [name, period] : {std::pair{"rwlock.mixed_1pct", 100u}, {"rwlock.mixed_10pct", 10u}}) {
    rows.push_back(row{name, impl, {2}, [period = period](unsigned) {
                         return std::make_unique<mixed<Lock>>(period);
                       }});
  }
}

}  // namespace

void add_rwlock_rows(std::vector<row>& rows, [[maybe_unused]] std::vector<missing_peer>& missing) {
  for (bool write : {false, true}) {
    const char* name = write ? "rwlock.write" : "rwlock.read";
    std::vector<unsigned> threads = write ? std::vector<unsigned>{1} : std::vector<unsigned>{1, 2};
    rows.push_back(with_flag<lock_rows<percpu::rwlock>>(name, "percpu", threads, write));
    rows.push_back(
        with_flag<lock_rows<std::shared_mutex>>(name, "std_shared_mutex", threads, write));
    rows.push_back(with_flag<lock_rows<pthread_rwlock>>(name, "pthread_rwlock", threads, write));
#if defined(PERCPU_BENCH_HAVE_URCU)
    rows.push_back(with_flag<urcu_rows>(name, "urcu_memb", threads, write));
#endif
  }
  add_lock_rows<percpu::rwlock>(rows, "percpu");
  add_lock_rows<std::shared_mutex>(rows, "std_shared_mutex");
  add_lock_rows<pthread_rwlock>(rows, "pthread_rwlock");
#if defined(PERCPU_BENCH_HAVE_URCU)
  add_lock_rows<urcu_lock>(rows, "urcu_memb");
#else
  missing.push_back({"urcu_memb", "liburcu-dev"});
#endif
}

}  // namespace percpu_bench
