// The error model (percpu/runtime/error.hpp): every kind of error the
// library reports, each produced by a real misuse, with its type, category,
// message and std::error_code comparisons.  Where a kind needs a machine
// state a test cannot set up here, the test that produces it is named.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "child_process.hpp"
#include "percpu/core/stop.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/counter.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/error.hpp"
#include "percpu/rwlock.hpp"
#include "percpu/xcall.hpp"

namespace {

using percpu::errc;

// Runs f, which must throw percpu::error; returns it.
template <class F>
percpu::error caught(F&& f) {
  try {
    f();
  } catch (const percpu::error& e) {
    return e;
  }
  ADD_FAILURE() << "no percpu::error thrown";
  return percpu::error(errc::invalid_argument, "none");
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Errors, CategoryNamesEveryCode) {
  const std::error_category& category = percpu::error_category();
  EXPECT_STREQ(category.name(), "percpu");
  std::vector<std::string> seen;
  for (errc code : {errc::invalid_argument, errc::out_of_range, errc::too_large, errc::no_memory,
                    errc::configuration, errc::cpu_unavailable, errc::would_deadlock,
                    errc::not_owner, errc::timeout}) {
    std::error_code ec = code;  // is_error_code_enum: converts implicitly
    EXPECT_EQ(&ec.category(), &category);
    EXPECT_EQ(ec, percpu::make_error_code(code));
    EXPECT_TRUE(static_cast<bool>(ec));
    std::string message = ec.message();
    EXPECT_FALSE(message.empty());
    for (const auto& other : seen) EXPECT_NE(message, other);
    seen.push_back(message);
  }
  // Codes without a portable equivalent stay in percpu's category.
  EXPECT_EQ(std::error_code(errc::configuration).default_error_condition().category(), category);
  EXPECT_EQ(std::error_code(errc::cpu_unavailable).default_error_condition().category(), category);
}

TEST(Errors, InvalidArgument) {
  percpu::error e = caught([] { (void)percpu::allocate_raw(0); });
  const std::system_error& as_system = e;  // one library type, a std::system_error
  EXPECT_EQ(as_system.code(), errc::invalid_argument);
  EXPECT_EQ(e.code(), std::errc::invalid_argument);
  EXPECT_NE(e.code(), errc::out_of_range);
  EXPECT_EQ(e.cpu(), -1);
  EXPECT_TRUE(contains(e.what(), "percpu: allocation of size 0")) << e.what();
  EXPECT_TRUE(contains(e.what(), e.code().message())) << e.what();
  // More of the same kind: an empty callback, a bad batch, malformed text.
  EXPECT_EQ(caught([] { percpu::counter c(0); }).code(), errc::invalid_argument);
  EXPECT_EQ(caught([] { (void)percpu::parse_cpu_list("1-"); }).code(), errc::invalid_argument);
  int local = 0;
  EXPECT_EQ(caught([&] { percpu::free_raw(&local); }).code(), errc::invalid_argument);
}

TEST(Errors, OutOfRangeNamesTheValueAndTheLimit) {
  percpu::storage<long> s;
  percpu::error e = caught([&] { (void)s.on(s.cpus()); });
  EXPECT_EQ(e.code(), errc::out_of_range);
  EXPECT_EQ(e.code(), std::errc::invalid_argument);
  std::string expected = "percpu::storage::on: CPU " + std::to_string(s.cpus()) +
                         " is out of range (cpus() is " + std::to_string(s.cpus()) + ")";
  EXPECT_EQ(std::string(e.what()).rfind(expected, 0), 0u) << e.what();
  // The same builder for every structure: stops, counters, queues, xcall.
  percpu::stop_state stops;
  EXPECT_TRUE(contains(caught([&] { stops.start(stops.size()); }).what(),
                       "percpu::stop_state::start: CPU "));
  percpu::counter_array a(2);
  EXPECT_TRUE(contains(caught([&] { (void)a.read(2); }).what(),
                       "percpu::counter_array::read: counter 2 is out of range (size() is 2)"));
  unsigned limit = percpu::xcall::cpu_limit();
  EXPECT_TRUE(contains(caught([&] { percpu::xcall::unicast_sync(limit, [] {}); }).what(),
                       "percpu::xcall: CPU " + std::to_string(limit) +
                           " is out of range (cpu_limit() is " + std::to_string(limit) + ")"));
}

TEST(Errors, TooLarge) {
  percpu::error e = caught([] { (void)percpu::allocate_raw(percpu::max_allocation() + 1); });
  EXPECT_EQ(e.code(), errc::too_large);
  EXPECT_EQ(e.code(), std::errc::value_too_large);
  EXPECT_TRUE(contains(e.what(), "exceeds the per-CPU unit of " +
                                     std::to_string(percpu::max_allocation()) + " bytes"))
      << e.what();
  percpu::pool_options huge;
  huge.size = std::size_t{1} << 40;
  huge.name = "huge";
  percpu::error pool = caught([&] { percpu::raw_pool_cache c(huge); });
  EXPECT_EQ(pool.code(), errc::too_large);
  EXPECT_TRUE(contains(pool.what(), "\"huge\"")) << pool.what();
}

// errc::no_memory: StorageChild.ExhaustedAddressSpace (test_storage.cpp)
// exhausts the address space in a child process and checks the code, its
// std::errc::not_enough_memory equivalence and the message.

TEST(ErrorsChild, Configuration) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  for (int attempt = 0; attempt < 2; ++attempt) {  // the second call reports it again
    try {
      (void)percpu::cpu_count();
      std::printf("no error\n");
    } catch (const percpu::error& e) {
      std::printf("code=%s category=%s cpu=%d what=%s\n",
                  e.code() == errc::configuration ? "configuration" : "other",
                  e.code().category().name(), e.cpu(), e.what());
    }
  }
}

TEST(Errors, Configuration) {
  auto r = percpu_test::run_self("ErrorsChild.Configuration", {"PERCPU_BACKEND=fast"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::string line =
      "code=configuration category=percpu cpu=-1 what=percpu: PERCPU_BACKEND='fast' is not "
      "one of: rseq, portable";
  auto first = r.output.find(line);
  ASSERT_NE(first, std::string::npos) << r.output;
  EXPECT_NE(r.output.find(line, first + 1), std::string::npos) << r.output;
}

// errc::cpu_unavailable: Xcall.CpuOutsideTheAffinityMaskIsReportedAndStillVisited
// (test_xcall.cpp) restricts the process to one CPU mid-run and checks the
// code and the CPU; it needs two CPUs.

TEST(Errors, WouldDeadlock) {
  percpu::rwlock lock;
  lock.lock();
  percpu::error e = caught([&] { lock.lock(); });
  EXPECT_EQ(e.code(), errc::would_deadlock);
  EXPECT_EQ(e.code(), std::errc::resource_deadlock_would_occur);
  EXPECT_TRUE(contains(e.what(), "recursive write lock")) << e.what();
  EXPECT_EQ(caught([&] { (void)lock.try_lock(); }).code(), errc::would_deadlock);
  lock.unlock();
  // The same code for a cross-CPU call that would wait for itself; the
  // error names the CPU.
  unsigned cpu = percpu::allowed_cpus().front();
  int refused_on = -2;
  std::error_code code;
  percpu::xcall::unicast_sync(cpu, [&] {
    try {
      percpu::xcall::unicast_sync(cpu, [] {});
    } catch (const percpu::error& inner) {
      code = inner.code();
      refused_on = inner.cpu();
    }
  });
  EXPECT_EQ(code, errc::would_deadlock);
  EXPECT_EQ(refused_on, static_cast<int>(cpu));
}

TEST(Errors, NotOwner) {
  percpu::rwlock lock;
  percpu::error e = caught([&] { lock.unlock(); });
  EXPECT_EQ(e.code(), errc::not_owner);
  EXPECT_EQ(e.code(), std::errc::operation_not_permitted);
  EXPECT_TRUE(contains(e.what(), "does not hold the write lock")) << e.what();
  // Another thread's lock is not this thread's to release.
  lock.lock();
  std::error_code other;
  std::thread([&] {
    try {
      lock.unlock();
    } catch (const percpu::error& inner) {
      other = inner.code();
    }
  }).join();
  EXPECT_EQ(other, errc::not_owner);
  lock.unlock();
}

TEST(Errors, Timeout) {
  unsigned cpu = percpu::allowed_cpus().front();
  auto saved = percpu::xcall::timeout();
  percpu::xcall::set_timeout(std::chrono::milliseconds(20));
  std::atomic<bool> release{false};
  auto t = percpu::xcall::unicast(cpu, [&release] {
    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  percpu::error e = caught([&] { (void)percpu::xcall::wait(t); });
  EXPECT_EQ(e.code(), errc::timeout);
  EXPECT_EQ(e.code(), std::errc::timed_out);
  EXPECT_EQ(e.cpu(), static_cast<int>(cpu));
  EXPECT_TRUE(contains(e.what(), "did not complete within 20 ms")) << e.what();
  release = true;
  percpu::xcall::set_timeout(saved);
  EXPECT_NO_THROW((void)percpu::xcall::wait(t));
}

// A user's own exception is not wrapped: it reaches the caller as thrown.
TEST(Errors, UsersOwnExceptionsPassUnchanged) {
  struct mine {};
  EXPECT_THROW(percpu::storage<long>().visit(0, [](long&) { throw mine{}; }), mine);
  unsigned cpu = percpu::allowed_cpus().front();
  EXPECT_THROW(percpu::xcall::unicast_sync(cpu, [] { throw mine{}; }), mine);
}

}  // namespace
