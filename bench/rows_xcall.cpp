// Rows for cross-CPU calls.
//
//   xcall.unicast         a synchronous on-CPU call to another CPU, round trip,
//                         vs two pinned threads handing a std::binary_semaphore
//                         back and forth, each spinning up to percpu's own
//                         spin budget before it sleeps, and vs a mutex +
//                         condition variable hand-off (what a thread pool
//                         does)
//   xcall.broadcast       a synchronous on-CPU call to every allowed CPU
//   xcall.visit_all       a stopped visit of every CPU with an empty function,
//                         the other CPUs idle, vs one raw broadcast rseq fence
//                         (membarrier PRIVATE_EXPEDITED_RSEQ: the floor)
//   xcall.visit_all_busy  the same two with a thread of the process spinning
//                         on another CPU: the fence must interrupt it
//
// "The other CPU" is the second allowed CPU (the harness pins worker 0 to
// the first); with a single allowed CPU it is that CPU.
//
// The unicast rows measure round trips in steady state: each measurement
// first makes warm_up_trips untimed round trips, so that both sides are
// awake.
//
// Why the semaphore peer spins: std::binary_semaphore::acquire in libstdc++
// spins and yields for a few microseconds before it sleeps in the kernel,
// and on a virtual machine waking a sleeping thread takes longer than that.
// A plain semaphore ping-pong is therefore bistable: once one side has
// slept, the other's wait outlasts its spin and it sleeps too (about 13 us
// a round trip here); once both catch each other spinning they stay there
// (about 0.6 us).  Which rhythm it is in changes every few milliseconds,
// and in what mix changes from one minute to the next: over six quick runs
// its geometric mean went from 2.6 to 5.8 us, while percpu's calls stayed
// at 0.70-0.76 us.  No run can give that peer a ratio that the next run
// reproduces.  The peer therefore waits as percpu's calls do, spinning on
// try_acquire for up to spin_budget before it blocks, which keeps it in
// its fast rhythm: the semaphore at its best, the comparison that cannot
// flatter percpu.  The sleeping hand-off is what condvar_pingpong measures.
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <semaphore>
#include <thread>

#include "harness.hpp"
#include "peers.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/arch.hpp"
#include "percpu/xcall.hpp"

namespace percpu_bench {

namespace {

unsigned other_cpu() {
  auto cpus = percpu::allowed_cpus();
  return cpus.size() > 1 ? cpus[1] : (cpus.empty() ? 0 : cpus[0]);
}

void pin_self(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

constexpr std::uint64_t warm_up_trips = 200;

// A round-trip body: run() makes n round trips, warm_up() min(n,
// warm_up_trips) of them, untimed.
template <class Derived>
class round_trips : public body {
 public:
  void run(unsigned, std::uint64_t n) final {
    for (std::uint64_t i = 0; i < n; ++i) static_cast<Derived*>(this)->trip();
  }
  void warm_up(unsigned thread, std::uint64_t n) final { run(thread, std::min(n, warm_up_trips)); }
};

class unicast_percpu final : public round_trips<unicast_percpu> {
 public:
  unicast_percpu() : cpu_(other_cpu()) {
    percpu::xcall::unicast_sync(cpu_, [] {});
  }
  void trip() {
    // The callee writes a word of the caller's stack, as the caller's
    // own data: not a line the caller reads for the next call.
    std::uint64_t ran = 0;
    percpu::xcall::unicast_sync(cpu_, [&ran] { ++ran; });
    keep(ran);
  }

 private:
  unsigned cpu_;
};

// The spin budget of percpu's calls (poll_ns and spin_wait_ns in
// src/xcall/internal.hpp): how long a caller, and a service thread, spin
// before they sleep.
constexpr auto spin_budget = std::chrono::microseconds(20);

// Takes `s`, spinning on try_acquire for up to spin_budget before blocking.
void acquire_after_spinning(std::binary_semaphore& s) {
  auto start = std::chrono::steady_clock::now();
  for (unsigned spins = 0;; ++spins) {
    if (s.try_acquire()) return;
    if (spins % 16 == 15 && std::chrono::steady_clock::now() - start > spin_budget) break;
    percpu::detail::arch::cpu_relax();
  }
  s.acquire();
}

// A partner thread pinned to the other CPU answers each request.
class spinning_semaphore_pingpong final : public round_trips<spinning_semaphore_pingpong> {
 public:
  spinning_semaphore_pingpong()
      : partner_([this] {
          pin_self(other_cpu());
          for (;;) {
            acquire_after_spinning(request_);
            if (stopping_.load(std::memory_order_relaxed)) return;
            reply_.release();
          }
        }) {}
  ~spinning_semaphore_pingpong() override {
    stopping_.store(true, std::memory_order_relaxed);
    request_.release();
    partner_.join();
  }
  void trip() {
    request_.release();
    acquire_after_spinning(reply_);
  }

 private:
  std::binary_semaphore request_{0};
  std::binary_semaphore reply_{0};
  std::atomic<bool> stopping_{false};
  std::thread partner_;
};

class condvar_pingpong final : public round_trips<condvar_pingpong> {
 public:
  condvar_pingpong()
      : partner_([this] {
          pin_self(other_cpu());
          std::unique_lock<std::mutex> lock(mutex_);
          for (;;) {
            changed_.wait(lock, [this] { return requested_ != answered_ || stopping_; });
            if (stopping_) return;
            answered_ = requested_;
            changed_.notify_all();
          }
        }) {}
  ~condvar_pingpong() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    partner_.join();
  }
  void trip() {
    std::unique_lock<std::mutex> lock(mutex_);
    std::uint64_t ticket = ++requested_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return answered_ == ticket; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::uint64_t requested_ = 0;
  std::uint64_t answered_ = 0;
  bool stopping_ = false;
  std::thread partner_;
};

class broadcast_percpu final : public body {
 public:
  broadcast_percpu() {
    static_cast<void>(percpu::xcall::broadcast_sync([] {}));
  }
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      static_cast<void>(percpu::xcall::broadcast_sync([] {}));
    }
  }
};

// Keeps a thread of the process busy on the other CPU while the body lives.
class spinner {
 public:
  explicit spinner(bool on) {
    if (!on) return;
    thread_ = std::thread([this] {
      pin_self(other_cpu());
      std::uint64_t n = 0;
      while (!stopping_.load(std::memory_order_relaxed)) {
        ++n;
        keep(n);
      }
    });
  }
  ~spinner() {
    stopping_.store(true, std::memory_order_relaxed);
    if (thread_.joinable()) thread_.join();
  }
  spinner(const spinner&) = delete;
  spinner& operator=(const spinner&) = delete;

 private:
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

class visit_all_percpu final : public body {
 public:
  explicit visit_all_percpu(bool busy) : spin_(busy) { percpu::cpu_count(); }
  void run(unsigned, std::uint64_t n) override {
    unsigned visited = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      percpu::xcall::visit_all([&visited](unsigned) { ++visited; });
      keep(visited);
    }
  }

 private:
  spinner spin_;
};

// The floor: one raw broadcast rseq fence (the process is registered for it
// by the library's start-up).
class membarrier_fence_all final : public body {
 public:
  explicit membarrier_fence_all(bool busy) : spin_(busy) { percpu::cpu_count(); }
  void run(unsigned, std::uint64_t n) override {
    for (std::uint64_t i = 0; i < n; ++i) {
      syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0);
    }
  }

 private:
  spinner spin_;
};

template <class B>
row busy_row(const char* name, const char* impl, bool busy) {
  return row{name, impl, {1}, [busy](unsigned) { return std::make_unique<B>(busy); }};
}

}  // namespace

void add_xcall_rows(std::vector<row>& rows) {
  rows.push_back(make_row<unicast_percpu>("xcall.unicast", "percpu", {1}));
  rows.push_back(make_row<spinning_semaphore_pingpong>("xcall.unicast", "spinning_semaphore", {1}));
  rows.push_back(make_row<condvar_pingpong>("xcall.unicast", "condvar_pingpong", {1}));
  rows.push_back(make_row<broadcast_percpu>("xcall.broadcast", "percpu", {1}));
  for (bool busy : {false, true}) {
    const char* name = busy ? "xcall.visit_all_busy" : "xcall.visit_all";
    rows.push_back(busy_row<visit_all_percpu>(name, "percpu", busy));
    rows.push_back(busy_row<membarrier_fence_all>(name, "membarrier_fence_all", busy));
  }
}

}  // namespace percpu_bench
