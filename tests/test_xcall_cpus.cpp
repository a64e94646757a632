// Which CPUs on-CPU calls reach: a service thread whose mask someone else
// changed, CPUs the process cannot run on (offline, outside the cpuset, or
// beyond the kernel's range), CPU numbers past glibc's cpu_set_t.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "child_process.hpp"
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

// A directory that stands in for /sys/devices/system/cpu
// (PERCPU_SYSFS_CPU_DIR): its `possible` file names the machine's real CPUs
// plus `extra`, CPUs the kernel does not have, so no thread can be pinned
// there - as on a machine with more possible CPUs than online ones.
class fake_sysfs {
 public:
  explicit fake_sysfs(const std::string& extra) {
    char dir[] = "/tmp/percpu_sysfs_XXXXXX";
    if (mkdtemp(dir) != nullptr) dir_ = dir;
    std::string real;
    for (unsigned cpu : percpu::possible_cpus()) real += std::to_string(cpu) + ",";
    std::ofstream(dir_ + "/possible") << real << extra << "\n";
    std::ofstream(dir_ + "/online") << real.substr(0, real.size() - 1) << "\n";
  }
  ~fake_sysfs() {
    std::remove((dir_ + "/possible").c_str());
    std::remove((dir_ + "/online").c_str());
    rmdir(dir_.c_str());
  }
  fake_sysfs(const fake_sysfs&) = delete;
  fake_sysfs& operator=(const fake_sysfs&) = delete;
  std::string env() const { return "PERCPU_SYSFS_CPU_DIR=" + dir_; }

 private:
  std::string dir_;
};

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

// CPU numbers from 1024 up (glibc's cpu_set_t ends at 1023): such a CPU is
// a CPU like any other, refused only because no thread can run there - not
// dropped, and not out of range.
TEST(XcallCpusChild, CpuNumbersPast1023AreCpusLikeAnyOther) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  EXPECT_EQ(xc::cpu_limit(), 1501u);
  try {
    xc::unicast_sync(1500, [] {});
    ADD_FAILURE() << "a call to CPU 1500, which the kernel does not have, ran";
  } catch (const xc::error& e) {
    EXPECT_EQ(e.code(), xc::errc::cpu_unavailable) << e.what();
    EXPECT_EQ(e.cpu(), 1500u);
  }
  auto b = xc::broadcast_sync([] {});
  EXPECT_TRUE(b.skipped.test(1500));
  EXPECT_FALSE(b.targets.test(1500));
  EXPECT_EQ(b.targets.count(), reachable_cpus().size());
  EXPECT_EQ(b.skipped.count(), 1u);
  for (unsigned cpu : reachable_cpus()) EXPECT_TRUE(b.targets.test(cpu)) << cpu;
}

TEST(XcallCpus, CpuNumbersPast1023AreCpusLikeAnyOther) {
  fake_sysfs sysfs("1500");
  auto child = percpu_test::run_self("XcallCpusChild.CpuNumbersPast1023*", {sysfs.env()});
  EXPECT_EQ(child.exit_code, 0) << child.output;
}

}  // namespace
