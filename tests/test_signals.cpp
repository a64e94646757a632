// Signal handlers that interrupt their own thread's per-CPU work: what they
// may do, what is deferred, and that nothing deferred is lost or left
// unfolded.  White-box where the interrupted state cannot be reached from
// outside (a thread inside a portable operation, a thread holding a cache's
// lock): each scenario runs in a child process with an alarm, so a deadlock
// fails the test instead of hanging the suite.
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "percpu/counter.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/runtime/error.hpp"
#include "pool_cache/pool_core.hpp"
#include "runtime/runtime_internal.hpp"
#include "storm_util.hpp"

namespace {

bool pin_to_one_cpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(percpu::allowed_cpus().front(), &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;
}

// A child that deadlocks is killed by its alarm (and its parent test fails).
void arm_deadlock_alarm() {
  signal(SIGALRM, SIG_DFL);
  alarm(20);
}

// ---- a deferred add is applied, and folded ----------------------------------

std::atomic<percpu::counter_array*> deferred_array{nullptr};
std::atomic<percpu::counter*> deferred_counter{nullptr};

void add_in_handler(int) {
  if (auto* a = deferred_array.load()) a->add(0, 1);
  if (auto* c = deferred_counter.load()) c->add(10);
}

// Thread B is inside an operation (white-box: counted as inside one) when
// a signal arrives whose handler adds; every slot is stopped by the main
// thread, so the handler cannot add now and the add is deferred.  B then
// leaves the operation and exits.  The add must be applied (not lost with
// B's thread-local state), and a counter's add must be folded like any
// other: once every add has returned, read_approx() is within
// error_bound().
void interrupt_an_operation_with_every_slot_stopped(percpu::stop_state& stops) {
  percpu_test::scoped_handler handler(SIGUSR1, add_in_handler);
  ASSERT_TRUE(handler.installed());
  stops.stop_all();
  std::atomic<bool> raised{false};
  std::thread b([&] {
    percpu::detail::no_wait_enter();
    raise(SIGUSR1);
    raised = true;
    percpu::detail::no_wait_leave();
  });
  while (!raised.load()) std::this_thread::yield();
  stops.start_all();
  b.join();
}

TEST(SignalsChild, DeferredAddOfAnExitingThreadIsApplied) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  arm_deadlock_alarm();
  percpu::counter_array a(1);
  deferred_array = &a;
  interrupt_an_operation_with_every_slot_stopped(a.stops());
  deferred_array = nullptr;
  EXPECT_EQ(a.read(0), 1);
}

TEST(SignalsChild, DeferredCounterAddIsFolded) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  arm_deadlock_alarm();
  percpu::counter c(4);
  deferred_counter = &c;
  interrupt_an_operation_with_every_slot_stopped(c.stops());
  deferred_counter = nullptr;
  EXPECT_EQ(c.read(), 10);
  EXPECT_LE(std::abs(c.read() - c.read_approx()), c.error_bound());
}

// Portable backend (the only one that defers adds), one slot and many.
TEST(Signals, DeferredAddsAreAppliedAndFolded) {
  for (const char* slots : {"PERCPU_SLOTS=1", "PERCPU_SLOTS=4"}) {
    for (const char* test : {"SignalsChild.DeferredAddOfAnExitingThreadIsApplied",
                             "SignalsChild.DeferredCounterAddIsFolded"}) {
      SCOPED_TRACE(std::string(test) + " " + slots);
      percpu_test::expect_child_passes(test, {"PERCPU_BACKEND=portable", slots});
    }
  }
}

// ---- a handler takes no lock of any cache its thread holds -------------------

percpu::detail::pool_core& core_of(percpu::raw_pool_cache& c) {
  return percpu::detail::pool_core::of(c);
}

percpu::pool_options small_objects() {
  percpu::pool_options o;
  o.size = 64;
  o.magazine_size = 4;
  return o;
}

std::atomic<percpu::raw_pool_cache*> cache_x{nullptr};
std::atomic<percpu::raw_pool_cache*> cache_y{nullptr};
std::atomic<void*> put_in_handler{nullptr};
std::atomic<int> handler_gets{0};

// The innermost handler: a get and a put on cache X, whose slow paths
// would take X's locks.
void use_x(int) {
  percpu::raw_pool_cache* x = cache_x.load();
  if (void* object = put_in_handler.exchange(nullptr)) x->put(object);
  void* got = x->get();
  if (got != nullptr) x->put(got);
  handler_gets.fetch_add(1);
}

// The outer handler: holds cache Y's depot lock and takes a second signal.
void hold_y_then_raise(int) {
  percpu::raw_pool_cache* y = cache_y.load();
  core_of(*y).locked(core_of(*y).depot_lock, [] { raise(SIGUSR2); });
}

// One thread: holds X's depot lock; a handler takes Y's lock; a second
// signal inside that handler uses X.  The thread counts as nested for X as
// well as for Y, so the second handler must not take X's lock (its get
// fails or takes a deferred object, its put is deferred).
TEST(SignalsChild, HandlerNestedInTwoCachesTakesNeitherLock) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  arm_deadlock_alarm();
  percpu::raw_pool_cache x(small_objects());
  percpu::raw_pool_cache y(small_objects());
  cache_x = &x;
  cache_y = &y;
  percpu_test::scoped_handler outer(SIGUSR1, hold_y_then_raise);
  percpu_test::scoped_handler inner(SIGUSR2, use_x);
  // X's array empty: the handler's get reaches get_slow.
  core_of(x).locked(core_of(x).depot_lock, [] { raise(SIGUSR1); });
  EXPECT_EQ(handler_gets.load(), 1);
  // X's array full: the handler's put reaches put_slow.  (Pinned, so that
  // every operation uses the same CPU's array.)
  ASSERT_TRUE(pin_to_one_cpu());
  std::vector<void*> objects;
  for (int i = 0; i < 17; ++i) objects.push_back(x.get());
  put_in_handler = objects.back();
  objects.pop_back();
  percpu::detail::cpu_array& array = core_of(x).part_on(percpu::current_cpu())->array;
  while (array.count < array.capacity) {
    ASSERT_FALSE(objects.empty());
    x.put(objects.back());
    objects.pop_back();
  }
  core_of(x).locked(core_of(x).depot_lock, [] { raise(SIGUSR1); });
  for (void* o : objects) x.put(o);
  EXPECT_EQ(handler_gets.load(), 2);
  EXPECT_EQ(put_in_handler.load(), nullptr);
  auto stats = x.stats();
  EXPECT_EQ(stats.objects_in_use, 0u) << "the deferred put was applied";
  cache_x = nullptr;
  cache_y = nullptr;
}

std::atomic<int> holding{0};

// Two threads: A holds X's depot lock, B holds Y's; each takes a signal
// whose handler gets from the other cache (whose array is empty).  Neither
// handler may wait for the other thread's lock.
thread_local percpu::raw_pool_cache* my_handler_cache = nullptr;

void get_from_my_handler_cache(int) {
  void* got = my_handler_cache->get();
  if (got != nullptr) my_handler_cache->put(got);
  handler_gets.fetch_add(1);
}

TEST(SignalsChild, HandlersOfTwoThreadsHoldingTwoCachesDoNotDeadlock) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  arm_deadlock_alarm();
  percpu::raw_pool_cache x(small_objects());
  percpu::raw_pool_cache y(small_objects());
  percpu_test::scoped_handler handler(SIGUSR1, get_from_my_handler_cache);
  handler_gets = 0;
  auto run = [&](percpu::raw_pool_cache& held, percpu::raw_pool_cache& other) {
    my_handler_cache = &other;
    core_of(held).locked(core_of(held).depot_lock, [&] {
      holding.fetch_add(1);
      while (holding.load() < 2) std::this_thread::yield();  // both locks are held
      raise(SIGUSR1);
    });
  };
  std::thread a([&] { run(x, y); });
  std::thread b([&] { run(y, x); });
  a.join();
  b.join();
  EXPECT_EQ(handler_gets.load(), 2);
}

TEST(Signals, PoolCacheHandlersTakeNoLockTheirThreadHolds) {
  for (const char* backend : {"PERCPU_BACKEND=", "PERCPU_BACKEND=portable"}) {
    for (const char* test : {"SignalsChild.HandlerNestedInTwoCachesTakesNeitherLock",
                             "SignalsChild.HandlersOfTwoThreadsHoldingTwoCachesDoNotDeadlock"}) {
      SCOPED_TRACE(std::string(test) + " " + backend);
      percpu_test::expect_child_passes(test, {backend, "PERCPU_SLOTS="});
    }
  }
}

// ---- a stop from a handler inside an operation is refused ---------------------

std::atomic<percpu::counter_array*> stopping_array{nullptr};
std::atomic<int> stop_outcome{0};  // 1: returned, 2: refused, 3: another error

void stop_in_handler(int) {
  try {
    stopping_array.load()->stops().stop_all();
    stopping_array.load()->stops().start_all();
    stop_outcome = 1;
  } catch (const percpu::error& e) {
    stop_outcome = e.code() == percpu::errc::would_deadlock ? 2 : 3;
  }
}

// The handler interrupts its thread inside an operation that holds a slot
// (white-box: the slot's word taken, the thread counted inside a no-wait
// section, as a portable operation does), and stops every CPU of the same
// structure (what counter::exchange() in a handler does): that stop would
// wait for the interrupted operation forever.
// It is refused with percpu::error (errc::would_deadlock) instead.
TEST(SignalsChild, StopFromAHandlerInsideAnOperationIsRefused) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  arm_deadlock_alarm();
  ASSERT_TRUE(pin_to_one_cpu());
  percpu::counter_array a(1);
  stopping_array = &a;
  percpu_test::scoped_handler handler(SIGUSR1, stop_in_handler);
  unsigned cpu = percpu::current_cpu();
  a.stops().stop(cpu);
  percpu::detail::no_wait_enter();
  raise(SIGUSR1);
  percpu::detail::no_wait_leave();
  a.stops().start(cpu);
  stopping_array = nullptr;
  EXPECT_EQ(stop_outcome.load(), 2);
  EXPECT_NO_THROW((void)a.exchange_all()) << "outside a section, stops work";
}

TEST(Signals, StopFromAHandlerInsideAnOperationIsRefused) {
  for (const char* backend : {"PERCPU_BACKEND=", "PERCPU_BACKEND=portable"}) {
    SCOPED_TRACE(backend);
    // (The refusal is an exception, whose allocation ThreadSanitizer would
    // report as a signal-unsafe call: the handler chose to risk it.)
    percpu_test::expect_child_passes(
        "SignalsChild.StopFromAHandlerInsideAnOperationIsRefused",
        {backend, "PERCPU_SLOTS=", "TSAN_OPTIONS=report_signal_unsafe=0"});
  }
}

}  // namespace
