// Cross-CPU calls: exactly once, on the right CPU, writes visible after the
// wait, in order, no loss under concurrency, no allocation after warm-up,
// clean errors for CPUs out of reach, fork and thread exit.
#include <dirent.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "child_process.hpp"
#include "cpu_mask.hpp"
#include "expect_error.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/xcall.hpp"
#include "probes.hpp"
#include "test_scale.hpp"
#include "xcall_util.hpp"

// ---- Counting allocator: every operator new in this program ----------------

namespace {
std::atomic<std::uint64_t> heap_allocations{0};

void* counted(std::size_t size) {
  heap_allocations.fetch_add(1, std::memory_order_relaxed);
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* counted_aligned(std::size_t size, std::align_val_t align) {
  heap_allocations.fetch_add(1, std::memory_order_relaxed);
  auto a = static_cast<std::size_t>(align);
  void* p = std::aligned_alloc(a, (size + a - 1) / a * a);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t size) {
  return counted(size);
}
void* operator new[](std::size_t size) {
  return counted(size);
}
void* operator new(std::size_t size, std::align_val_t align) {
  return counted_aligned(size, align);
}
void* operator new[](std::size_t size, std::align_val_t align) {
  return counted_aligned(size, align);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}

namespace {

namespace xc = percpu::xcall;

using percpu_test::reachable_cpus;

bool built_with_tsan() {
  return percpu::backend().under_sanitizer;
}

// A callable too large for a descriptor is rejected at compile time.
struct too_large {
  char bytes[percpu::detail::inline_function::capacity + 1];
  void operator()() const {}
};
static_assert(!percpu::detail::inline_function::fits<too_large>);
static_assert(percpu::detail::inline_function::fits<void (*)()>);

TEST(Xcall, UnicastRunsOnceOnTheTargetAndItsWritesAreVisible) {
  for (unsigned cpu : reachable_cpus()) {
    int ran = 0;  // plain ints: the wait's acquire makes the callee's writes visible
    int where = -1;
    xc::unicast_sync(cpu, [&] {
      ++ran;
      where = sched_getcpu();
    });
    EXPECT_EQ(ran, 1);
    EXPECT_EQ(where, static_cast<int>(cpu));

    struct {
      long value = 0;
      unsigned cpu_arg = 0;
    } out;
    auto t = xc::unicast(cpu, [p = &out](unsigned c) {
      p->value = 42;
      p->cpu_arg = c;
    });
    (void)xc::wait(t);
    EXPECT_EQ(out.value, 42);
    EXPECT_EQ(out.cpu_arg, cpu);
  }
}

TEST(Xcall, BroadcastRunsOnceOnEveryAllowedCpu) {
  auto cpus = reachable_cpus();
  std::vector<std::atomic<int>> ran(xc::cpu_limit());
  std::vector<std::atomic<int>> where(xc::cpu_limit());
  auto t = xc::broadcast_sync([&](unsigned cpu) {
    ran[cpu].fetch_add(1);
    where[cpu].store(sched_getcpu());
  });
  unsigned expected = 0;
  for (unsigned cpu = 0; cpu < xc::cpu_limit(); ++cpu) {
    bool allowed = std::find(cpus.begin(), cpus.end(), cpu) != cpus.end();
    EXPECT_EQ(ran[cpu].load(), allowed ? 1 : 0) << "CPU " << cpu;
    EXPECT_EQ(t.targets.test(cpu), allowed);
    if (allowed) {
      EXPECT_EQ(where[cpu].load(), static_cast<int>(cpu));
    }
    expected += allowed;
  }
  EXPECT_EQ(t.targets.count(), expected);
}

// One thread's calls to one CPU run in issue order; wait(t) covers every
// earlier ticket; barrier() covers calls other threads issued before it.
TEST(Xcall, TicketsCompleteInOrderAndBarrierCoversEveryEarlierCall) {
  unsigned cpu = reachable_cpus().back();
  std::vector<int> order;  // appended by the one service thread of `cpu`
  order.reserve(400);
  std::atomic<int> completed{0};
  std::vector<xc::ticket> tickets(50);
  for (int i = 0; i < 50; ++i) {
    tickets[static_cast<std::size_t>(i)] = xc::unicast(cpu, [&order, &completed, i] {
      if (i == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      order.push_back(i);
      completed.fetch_add(1);
    });
  }
  (void)xc::wait(tickets[24]);
  EXPECT_GE(completed.load(), 25);
  (void)xc::wait(tickets.back());
  ASSERT_EQ(order.size(), 50U);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(order[static_cast<std::size_t>(i)], i);

  // Another thread issues calls without waiting and stays alive (its exit
  // would wait for them); the barrier alone must cover them.
  order.clear();
  std::atomic<bool> issued{false};
  std::atomic<bool> release{false};
  std::thread other([&] {
    for (int i = 0; i < 200; ++i) {
      static_cast<void>(xc::unicast(cpu, [&order, i] {
        if (i == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
        order.push_back(i);
      }));
    }
    issued = true;
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (!issued) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  xc::barrier();
  std::size_t seen = order.size();
  release = true;
  other.join();
  EXPECT_EQ(seen, 200U);
  for (std::size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], static_cast<int>(i));
}

TEST(Xcall, ConcurrentCallersLoseAndDuplicateNothing) {
  constexpr int threads = 4;
  const int calls = percpu_test::scaled(10000, 500);
  auto cpus = reachable_cpus();
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(threads) * calls);
  std::vector<int> expected(hits.size(), 0);
  std::vector<std::thread> callers;
  callers.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    callers.emplace_back([&, t] {
      xc::ticket last;
      for (int i = 0; i < calls; ++i) {
        std::size_t id = static_cast<std::size_t>(t) * calls + static_cast<std::size_t>(i);
        auto bump = [h = &hits[id]] { h->fetch_add(1, std::memory_order_relaxed); };
        if (i % 2 == 0) {
          last = xc::unicast(cpus[static_cast<std::size_t>(i / 2) % cpus.size()], bump);
          expected[id] = 1;
        } else {
          auto b = xc::broadcast(bump);
          last = b;
          expected[id] = static_cast<int>(b.targets.count());
        }
        if (i % 16 == 15) (void)xc::wait(last);
      }
      (void)xc::wait(last);
    });
  }
  for (auto& c : callers) c.join();
  std::size_t wrong = 0;
  for (std::size_t id = 0; id < hits.size(); ++id) wrong += hits[id].load() != expected[id];
  EXPECT_EQ(wrong, 0U);
}

TEST(Xcall, NoHeapAllocationAfterWarmUp) {
  auto cpus = reachable_cpus();
  std::atomic<long> sum{0};
  auto work = [&](int i) {
    unsigned cpu = cpus[static_cast<std::size_t>(i) % cpus.size()];
    switch (i % 3) {
      case 0:
        xc::unicast_sync(cpu, [&sum] { sum.fetch_add(1); });
        break;
      case 1:
        (void)xc::wait(xc::unicast(cpu, [&sum](unsigned c) { sum.fetch_add(c + 1); }));
        break;
      default:
        (void)xc::broadcast_sync([&sum] { sum.fetch_add(1); });
    }
  };
  for (int i = 0; i < 300; ++i) work(i);
  const int calls = percpu_test::scaled(10000, 300);
  std::uint64_t before = heap_allocations.load();
  for (int i = 0; i < calls; ++i) work(i);
  std::uint64_t after = heap_allocations.load();
  EXPECT_EQ(after - before, 0U) << "in " << calls << " calls";
  EXPECT_GT(sum.load(), calls);
}

TEST(Xcall, ErrorsNameTheCpu) {
  unsigned cpu = reachable_cpus().front();
  try {
    xc::unicast_sync(xc::cpu_limit(), [] {});
    ADD_FAILURE() << "no error";
  } catch (const percpu::error& e) {
    EXPECT_EQ(e.code(), percpu::errc::out_of_range);
    std::string what = e.what();
    EXPECT_NE(what.find("CPU " + std::to_string(xc::cpu_limit())), std::string::npos) << what;
  }
  // The callee's exception reaches the waiter.
  EXPECT_THROW(xc::unicast_sync(cpu, [] { throw std::runtime_error("callee failed"); }),
               std::runtime_error);
  // And the machinery still works.
  int ran = 0;
  xc::unicast_sync(cpu, [&] { ++ran; });
  EXPECT_EQ(ran, 1);
}

// A call to the CPU the caller is serving is refused instead of deadlocking;
// a call from inside a call to another CPU works.
TEST(Xcall, CallFromInsideACallToTheSameCpuIsAnError) {
  auto cpus = reachable_cpus();
  unsigned cpu = cpus.front();
  std::error_code code;
  int refused_cpu = -1;
  bool threw = false;
  int nested_where = -1;
  xc::unicast_sync(cpu, [&] {
    try {
      xc::unicast_sync(cpu, [] {});
    } catch (const percpu::error& e) {
      threw = true;
      code = e.code();
      refused_cpu = e.cpu();
    }
    if (cpus.size() > 1) {
      xc::unicast_sync(cpus[1], [&] { nested_where = sched_getcpu(); });
    }
  });
  EXPECT_TRUE(threw);
  EXPECT_EQ(code, percpu::errc::would_deadlock);
  EXPECT_EQ(refused_cpu, static_cast<int>(cpu));
  if (cpus.size() > 1) {
    EXPECT_EQ(nested_where, static_cast<int>(cpus[1]));
  }
}

TEST(Xcall, SlowCallIsReportedWithCpuAndFunctionAndCanBeWaitedAgain) {
  unsigned cpu = reachable_cpus().front();
  auto saved = xc::timeout();
  xc::set_timeout(std::chrono::milliseconds(50));
  std::atomic<bool> release{false};
  auto slow = [&release] {
    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  auto t = xc::unicast(cpu, slow);
  try {
    (void)xc::wait(t);
    ADD_FAILURE() << "no timeout";
  } catch (const percpu::error& e) {
    EXPECT_EQ(e.code(), percpu::errc::timeout);
    EXPECT_EQ(e.cpu(), static_cast<int>(cpu));
    std::string what = e.what();
    EXPECT_NE(what.find("CPU " + std::to_string(cpu)), std::string::npos) << what;
    // The function's type, as the compiler names it (no RTTI needed).
    std::string name = xc::detail::callable_name<decltype(slow)>::text.data();
    EXPECT_NE(name.find("lambda"), std::string::npos) << name;
    EXPECT_NE(what.find(name), std::string::npos) << what;
  }
  release = true;
  xc::set_timeout(saved);
  EXPECT_NO_THROW((void)xc::wait(t));
}

// Restricting the whole process (every thread's mask) to one CPU mid-run:
// calls to the other CPU fail cleanly (broadcasts skip it) and never run f
// off that CPU; visits still reach it.
TEST(Xcall, CpuOutsideTheAffinityMaskIsReportedAndStillVisited) {
  auto cpus = reachable_cpus();
  if (cpus.size() < 2) GTEST_SKIP() << "needs two CPUs";
  unsigned kept = cpus[0];
  unsigned other = cpus[1];
  xc::unicast_sync(other, [] {});  // its service thread exists

  // Restrict every thread of the process, remembering each one's mask.
  std::vector<std::pair<pid_t, std::vector<unsigned>>> saved;
  DIR* dir = opendir("/proc/self/task");
  ASSERT_NE(dir, nullptr);
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    pid_t tid = static_cast<pid_t>(std::strtol(e->d_name, nullptr, 10));
    std::vector<unsigned> mask = percpu_test::mask_of(tid);
    if (mask.empty()) continue;
    saved.emplace_back(tid, mask);
    percpu_test::set_mask_of(tid, {kept});
  }
  closedir(dir);

  bool failed_cleanly = false;
  bool ran_off_cpu = false;
  try {
    xc::unicast_sync(other, [&] { ran_off_cpu = true; });
  } catch (const percpu::error& e) {
    failed_cleanly =
        e.code() == percpu::errc::cpu_unavailable && e.cpu() == static_cast<int>(other);
  }
  std::atomic<int> ran_other{0};
  auto b = xc::broadcast_sync([&](unsigned c) { ran_other += c == other; });
  std::vector<unsigned> visited;
  percpu::storage<std::int64_t> s;
  *s.on(other % s.cpus()) = 5;
  std::int64_t taken = 0;
  xc::visit(other % s.cpus(), {&s.stops()}, [&](unsigned c) {
    visited.push_back(c);
    std::swap(taken, *s.on(c));
  });
  unsigned visited_all = 0;
  xc::visit_all([&](unsigned) { ++visited_all; });

  for (auto& [tid, mask] : saved) percpu_test::set_mask_of(tid, mask);

  EXPECT_TRUE(failed_cleanly);
  EXPECT_FALSE(ran_off_cpu);
  EXPECT_EQ(ran_other.load(), 0);
  EXPECT_TRUE(b.skipped.test(other));
  EXPECT_FALSE(b.targets.test(other));
  EXPECT_TRUE(b.targets.test(kept));
  EXPECT_EQ(visited, std::vector<unsigned>{other % s.cpus()});
  EXPECT_EQ(taken, 5);
  EXPECT_EQ(visited_all, percpu::cpu_count());
  // Mask restored: the other CPU is reachable again.
  int where = -1;
  xc::unicast_sync(other, [&] { where = sched_getcpu(); });
  EXPECT_EQ(where, static_cast<int>(other));
}

// Visits of several structures: one stop of both, values conserved while
// workers add to both on every CPU.
TEST(Xcall, VisitAllStopsEveryListedStructure) {
  percpu::storage<std::int64_t> a;
  percpu::storage<std::int64_t> b;
  auto cpus = percpu::allowed_cpus();
  std::atomic<bool> done{false};
  std::vector<long> added(cpus.size(), 0);
  std::vector<std::thread> workers;
  for (std::size_t i = 0; i < cpus.size(); ++i) {
    workers.emplace_back([&, i] {
      percpu_test::pin(cpus[i]);
      long n = 0;
      while (!done.load(std::memory_order_relaxed)) {
        a.add(1);
        b.add(2);
        ++n;
      }
      added[i] = n;
    });
  }
  std::int64_t drained_a = 0;
  std::int64_t drained_b = 0;
  long changed = 0;
  const int rounds = percpu_test::scaled(200, 20);
  for (int round = 0; round < rounds; ++round) {
    auto drain = [&](unsigned cpu) {
      std::int64_t before = std::atomic_ref<std::int64_t>(*a.on(cpu)).load();
      std::this_thread::yield();
      changed += std::atomic_ref<std::int64_t>(*a.on(cpu)).load() != before;
      drained_a += std::exchange(*a.on(cpu), 0);
      drained_b += std::exchange(*b.on(cpu), 0);
    };
    if (round % 2 == 0) {
      xc::visit_all({&a.stops(), &b.stops()}, drain);
    } else {
      xc::visit(static_cast<unsigned>(round) % a.cpus(), {&b.stops(), &a.stops()}, drain);
    }
  }
  done = true;
  for (auto& w : workers) w.join();
  long total = 0;
  for (long n : added) total += n;
  a.for_each_cpu([&](unsigned, std::int64_t& v) { drained_a += v; });
  b.for_each_cpu([&](unsigned, std::int64_t& v) { drained_b += v; });
  EXPECT_EQ(changed, 0);
  EXPECT_EQ(drained_a, total);
  EXPECT_EQ(drained_b, 2 * total);

  // With no structure: f(cpu) for every slot, ascending, once.
  std::vector<unsigned> order;
  xc::visit_all([&](unsigned cpu) { order.push_back(cpu); });
  ASSERT_EQ(order.size(), percpu::cpu_count());
  for (unsigned i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], i);
}

// A thread that exits with calls in flight waits for them: its descriptors
// are not freed under a service thread.
TEST(Xcall, ThreadExitWithCallsInFlight) {
  unsigned cpu = reachable_cpus().back();
  std::atomic<int> done{0};
  for (int round = 0; round < 20; ++round) {
    std::thread t([&] {
      for (int i = 0; i < 10; ++i) {
        static_cast<void>(xc::unicast(cpu, [&done] {
          std::this_thread::sleep_for(std::chrono::microseconds(200));
          done.fetch_add(1);
        }));
      }
    });
    t.join();
  }
  EXPECT_EQ(done.load(), 200);
}

// The program exits (std::exit from main's thread) while its service
// threads are alive and calls are still queued: the exit neither hangs nor
// crashes, and the exiting thread's calls complete first.
TEST(Xcall, ProgramExitWithServiceThreadsAlive) {
  if (percpu_test::in_child()) {
    static std::atomic<int> ran{0};
    for (unsigned cpu : reachable_cpus()) {
      for (int i = 0; i < 20; ++i) {
        static_cast<void>(xc::unicast(cpu, [] {
          std::this_thread::sleep_for(std::chrono::microseconds(100));
          ran.fetch_add(1);
        }));
      }
    }
    static_cast<void>(xc::broadcast([] { ran.fetch_add(1); }));
    std::atexit([] { std::printf("calls run before exit: %d\n", ran.load()); });
    std::exit(0);  // NOLINT(concurrency-mt-unsafe): exiting while threads run is the test
  }
  auto child = percpu_test::run_self("Xcall.ProgramExitWithServiceThreadsAlive", {});
  EXPECT_EQ(child.exit_code, 0) << child.output;
  EXPECT_EQ(child.output.find("leaked"), std::string::npos) << child.output;
  auto expected = "calls run before exit: " + std::to_string(21 * reachable_cpus().size());
  EXPECT_NE(child.output.find(expected), std::string::npos) << child.output;
}

// fork() while calls are in flight: parent and child both keep working.
TEST(Xcall, ForkDuringActivityLeavesBothProcessesWorking) {
  if (built_with_tsan()) GTEST_SKIP() << "ThreadSanitizer cannot start threads after fork";
  auto cpus = reachable_cpus();
  std::atomic<bool> stop{false};
  std::atomic<long> calls{0};
  std::thread busy([&] {
    for (std::size_t i = 0; !stop.load(); ++i) {
      xc::unicast_sync(cpus[i % cpus.size()], [&calls] { calls.fetch_add(1); });
    }
  });
  while (calls.load() < 100) std::this_thread::yield();
  for (int round = 0; round < 3; ++round) {
    // Leave a few of this thread's own calls in flight across the fork.
    for (unsigned cpu : cpus) {
      static_cast<void>(
          xc::unicast(cpu, [] { std::this_thread::sleep_for(std::chrono::microseconds(300)); }));
    }
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int bad = 0;
      for (unsigned cpu : cpus) {
        int where = -1;
        try {
          xc::unicast_sync(cpu, [&] { where = sched_getcpu(); });
        } catch (...) {
          bad |= 2;
        }
        bad |= where != static_cast<int>(cpu);
      }
      std::atomic<int> n{0};
      try {
        auto b = xc::broadcast_sync([&] { n.fetch_add(1); });
        bad |= n.load() != static_cast<int>(b.targets.count()) ? 4 : 0;
        xc::barrier();
      } catch (...) {
        bad |= 8;
      }
      _exit(bad);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
  long before = calls.load();
  while (calls.load() < before + 100) std::this_thread::yield();
  stop = true;
  busy.join();
  xc::barrier();
}

}  // namespace
