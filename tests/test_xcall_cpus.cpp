// Which CPUs on-CPU calls reach: a service thread whose mask someone else
// changed, CPUs the process cannot run on (offline, outside the cpuset, or
// beyond the kernel's range), CPU numbers past glibc's cpu_set_t.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <string>
#include <vector>

#include "cpu_mask.hpp"
#include "percpu/cpu.hpp"
#include "percpu/xcall.hpp"
#include "xcall_internal.hpp"

namespace {

namespace xc = percpu::xcall;

std::vector<unsigned> reachable_cpus() {
  std::vector<unsigned> cpus;
  for (unsigned cpu : percpu::allowed_cpus()) {
    if (cpu < xc::cpu_limit()) cpus.push_back(cpu);
  }
  return cpus;
}

// A service thread whose affinity was widened (taskset -a -p, a cgroup-v1
// cpuset update, the kernel's fallback when its CPU went offline) may run
// on its CPU by chance when a call arrives, and migrate during the call.
// It must pin itself again first: every call runs with the service
// thread's mask exactly {cpu}.
TEST(XcallCpus, WidenedServiceThreadIsPinnedAgainBeforeACall) {
  auto cpus = reachable_cpus();
  if (cpus.size() < 2) GTEST_SKIP() << "needs two CPUs";
  int calls = 0;
  int wide = 0;
  int elsewhere = 0;
  auto check = [&calls, &wide, &elsewhere](unsigned cpu) {
    ++calls;
    wide += percpu::allowed_cpus() != std::vector<unsigned>{cpu};
    elsewhere += sched_getcpu() != static_cast<int>(cpu);
  };
  for (int round = 0; round < 20; ++round) {
    for (unsigned cpu : cpus) {
      xc::unicast_sync(cpu, [] {});
      pthread_t thread;
      ASSERT_TRUE(xc::testing::service_thread(cpu, thread));
      // From outside, as `taskset -a -p` does.
      ASSERT_TRUE(percpu_test::set_mask(thread, cpus));
      xc::unicast_sync(cpu, check);
      // From inside a call: the thread still runs on `cpu` when it takes
      // the next call.
      static_cast<void>(xc::unicast(cpu, [&cpus] { percpu_test::allow(cpus); }));
      xc::wait(xc::unicast(cpu, check));
    }
  }
  EXPECT_EQ(wide, 0) << "calls run with a widened mask, of " << calls;
  EXPECT_EQ(elsewhere, 0) << "calls run off their CPU, of " << calls;
}

}  // namespace
