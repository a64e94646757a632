// Rows for counters and the big-reader lock.
//
//   counter.add   percpu::counter::add vs a thread-local add (the floor), one
//                 shared std::atomic, and TBB's combinable (per-thread) when
//                 installed
//   counter.read  percpu::counter::read (sum of every CPU) vs read_approx
//                 (the central count alone)
//   rwlock.read   lock_shared + unlock_shared: percpu::rwlock vs
//                 std::shared_mutex, pthread_rwlock_t and liburcu's membarrier
//                 flavour read lock (the reader-side reference) when installed
//   rwlock.write  lock + unlock with no readers (for liburcu: a
//                 synchronize_rcu, its writer-side wait)
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <shared_mutex>

#include "harness.hpp"
#include "peers.hpp"
#include "percpu/counter.hpp"
#include "percpu/rwlock.hpp"

#if defined(PERCPU_BENCH_HAVE_TBB)
#include <tbb/combinable.h>
#endif
#if defined(PERCPU_BENCH_HAVE_URCU)
#define _LGPL_SOURCE  // liburcu's inline read-side fast path
#include <urcu/urcu-memb.h>
#endif

namespace percpu_bench {

namespace {

class counter_add_percpu final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) c_.add(1);
  }

 private:
  percpu::counter c_;
};

#if defined(PERCPU_BENCH_HAVE_TBB)
class counter_add_tbb final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      c_.local() += 1;
      asm volatile("" ::: "memory");
    }
  }

 private:
  tbb::combinable<std::int64_t> c_{[] { return std::int64_t{0}; }};
};
#endif

template <bool Exact>
class counter_read_percpu final : public body {
 public:
  counter_read_percpu() {
    for (int i = 0; i < 100000; ++i) c_.add(1);
  }
  void run(unsigned, std::uint64_t n) override {
    std::int64_t sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      sum += Exact ? c_.read() : c_.read_approx();
      keep(sum);
    }
  }

 private:
  percpu::counter c_;
};

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

struct pthread_rwlock {
  pthread_rwlock() { pthread_rwlock_init(&handle, nullptr); }
  ~pthread_rwlock() { pthread_rwlock_destroy(&handle); }
  void lock() { pthread_rwlock_wrlock(&handle); }
  void unlock() { pthread_rwlock_unlock(&handle); }
  void lock_shared() { pthread_rwlock_rdlock(&handle); }
  void unlock_shared() { pthread_rwlock_unlock(&handle); }
  pthread_rwlock_t handle;
};

#if defined(PERCPU_BENCH_HAVE_URCU)
// liburcu's memb flavour: readers register once per thread; the "write"
// is synchronize_rcu, the wait for pre-existing readers.
class urcu_rows final : public body {
 public:
  explicit urcu_rows(bool write) : write_(write) {}
  void run(unsigned, std::uint64_t n) override {
    thread_local bool registered = false;
    if (!registered) {
      urcu_memb_register_thread();
      registered = true;
    }
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

template <class B>
row with_flag(const char* name, const char* impl, std::vector<unsigned> threads, bool flag) {
  return row{name, impl, std::move(threads),
             [flag](unsigned) { return std::make_unique<B>(flag); }};
}

}  // namespace

void add_counter_rows(std::vector<row>& rows, [[maybe_unused]] std::vector<missing_peer>& missing) {
  rows.push_back(make_row<counter_add_percpu>("counter.add", "percpu", {1, 2}));
  rows.push_back(make_row<thread_local_add>("counter.add", "thread_local", {1, 2}));
  rows.push_back(make_row<atomic_shared_add>("counter.add", "atomic_shared", {1, 2}));
#if defined(PERCPU_BENCH_HAVE_TBB)
  rows.push_back(make_row<counter_add_tbb>("counter.add", "tbb_combinable", {1, 2}));
#else
  missing.push_back({"tbb_combinable", "libtbb-dev"});
#endif
  rows.push_back(make_row<counter_read_percpu<true>>("counter.read", "percpu_exact", {1}));
  rows.push_back(make_row<counter_read_percpu<false>>("counter.read", "percpu_approx", {1}));

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
#if !defined(PERCPU_BENCH_HAVE_URCU)
  missing.push_back({"urcu_memb", "liburcu-dev"});
#endif
}

}  // namespace percpu_bench
