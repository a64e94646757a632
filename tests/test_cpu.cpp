// CPU identity, topology and backend selection.
#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "child_process.hpp"
#include "cpu_mask.hpp"
#include "expect_error.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/fence.hpp"
#include "runtime/topology.hpp"

namespace {

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

TEST(CpuList, ParsesRangesAndSparseSets) {
  EXPECT_EQ(percpu::parse_cpu_list("0"), (std::vector<unsigned>{0}));
  EXPECT_EQ(percpu::parse_cpu_list("0-3\n"), (std::vector<unsigned>{0, 1, 2, 3}));
  EXPECT_EQ(percpu::parse_cpu_list("0,2-3,8,10-11"), (std::vector<unsigned>{0, 2, 3, 8, 10, 11}));
  EXPECT_EQ(percpu::parse_cpu_list("5,1-2,1"), (std::vector<unsigned>{1, 2, 5}));
  EXPECT_TRUE(percpu::parse_cpu_list("").empty());
}

TEST(CpuList, RejectsMalformedInput) {
  for (const char* bad : {"a", "1-", "-1", "3-1", "1,,2", "1 2", "0-99999999", "1;2"}) {
    EXPECT_TRUE(percpu_test::fails_with(percpu::errc::invalid_argument, [&] {
      (void)percpu::parse_cpu_list(bad);
    })) << bad;
  }
}

TEST(Topology, SetsAreConsistent) {
  auto possible = percpu::possible_cpus();
  auto online = percpu::online_cpus();
  auto allowed = percpu::allowed_cpus();
  ASSERT_FALSE(possible.empty());
  ASSERT_FALSE(online.empty());
  ASSERT_FALSE(allowed.empty());
  for (unsigned cpu : online)
    EXPECT_TRUE(std::binary_search(possible.begin(), possible.end(), cpu));
  for (unsigned cpu : allowed)
    EXPECT_TRUE(std::binary_search(possible.begin(), possible.end(), cpu));
  EXPECT_FALSE(percpu::numa_nodes().empty());
  EXPECT_GE(percpu::numa_node_of(online.front()), -1);
  EXPECT_EQ(percpu::numa_node_of(1u << 20), -1);
}

TEST(Topology, MissingSysfsFallsBackToSysconf) {
  auto fallback = percpu::detail::read_possible_cpus("/nonexistent/percpu");
  EXPECT_FALSE(fallback.from_sysfs);
  ASSERT_FALSE(fallback.cpus.empty());
  for (unsigned cpu : percpu::allowed_cpus()) {
    EXPECT_TRUE(std::binary_search(fallback.cpus.begin(), fallback.cpus.end(), cpu));
  }
}

TEST(Backend, CurrentCpuIsBelowCount) {
  unsigned count = percpu::cpu_count();
  for (int i = 0; i < 1000; ++i) EXPECT_LT(percpu::current_cpu(), count);
  std::thread([count] { EXPECT_LT(percpu::current_cpu(), count); }).join();
}

TEST(Backend, FollowsTheEnvironment) {
  const auto& info = percpu::backend();
  std::string forced = env_or_empty("PERCPU_BACKEND");
  std::string slots = env_or_empty("PERCPU_SLOTS");
  EXPECT_FALSE(info.reason.empty());
  EXPECT_EQ(info.slots, percpu::cpu_count());
  if (forced == "portable" || !slots.empty()) {
    EXPECT_EQ(info.kind, percpu::backend_kind::portable);
  }
  if (!slots.empty()) {
    EXPECT_EQ(percpu::cpu_count(), static_cast<unsigned>(std::stoul(slots)));
  } else {
    EXPECT_EQ(percpu::cpu_count(), percpu::possible_cpus().back() + 1);
  }
  if (info.kind == percpu::backend_kind::rseq) {
    EXPECT_TRUE(info.membarrier_rseq);
    bool glibc_off =
        env_or_empty("GLIBC_TUNABLES").find("glibc.pthread.rseq=0") != std::string::npos;
    EXPECT_EQ(info.source, glibc_off ? percpu::rseq_source::own : percpu::rseq_source::glibc);
  }
}

// With rseq the CPU comes from the kernel: pinned, it must be exact.  With
// slots indexed by mm_cid the slot is a concurrency id instead, within the
// slots wherever the thread runs.
TEST(Backend, RseqCpuMatchesSchedGetcpuWhenPinned) {
  if (percpu::backend().kind != percpu::backend_kind::rseq) GTEST_SKIP() << "portable backend";
  bool by_mm_cid = percpu::backend().index == percpu::slot_index::mm_cid;
  auto allowed = percpu::allowed_cpus();
  for (unsigned cpu : allowed) {
    std::thread([cpu, by_mm_cid] {
      ASSERT_TRUE(percpu_test::pin(cpu));
      if (by_mm_cid) {
        EXPECT_LT(percpu::current_cpu(), percpu::cpu_count());
      } else {
        EXPECT_EQ(percpu::current_cpu(), cpu);
      }
      EXPECT_EQ(sched_getcpu(), static_cast<int>(cpu));
    }).join();
  }
}

// Start-up decisions, checked in fresh processes.
TEST(BackendChild, ReportsBackend) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  const auto& info = percpu::backend();
  std::printf("kind=%s source=%d slots=%u sysfs=%d reason=%s\n",
              info.kind == percpu::backend_kind::rseq ? "rseq" : "portable",
              static_cast<int>(info.source), info.slots, info.sysfs_possible ? 1 : 0,
              info.reason.c_str());
  std::printf("membarrier_failure=%d\n", percpu::detail::membarrier_failure());
  percpu::storage<long> s;  // allocation works in the chosen backend
  s.add(3);
  long sum = 0;
  s.for_each_cpu([&](unsigned, long& v) { sum += v; });
  EXPECT_EQ(sum, 3);
}

TEST(Backend, BadEnvironmentIsAClearError) {
  auto bad_backend = percpu_test::run_self("BackendChild.*", {"PERCPU_BACKEND=fast"});
  EXPECT_NE(bad_backend.exit_code, 0);
  EXPECT_NE(bad_backend.output.find("PERCPU_BACKEND='fast' is not one of"), std::string::npos)
      << bad_backend.output;
  for (const char* slots : {"PERCPU_SLOTS=0", "PERCPU_SLOTS=abc", "PERCPU_SLOTS=100000"}) {
    auto bad = percpu_test::run_self("BackendChild.*", {slots});
    EXPECT_NE(bad.exit_code, 0) << slots;
    EXPECT_NE(bad.output.find("is not a whole number between 1 and"), std::string::npos)
        << bad.output;
  }
  auto both = percpu_test::run_self("BackendChild.*", {"PERCPU_BACKEND=rseq", "PERCPU_SLOTS=8"});
  EXPECT_NE(both.exit_code, 0);
  EXPECT_NE(both.output.find("cannot be combined"), std::string::npos) << both.output;
}

TEST(Backend, SlotsSimulateWideMachines) {
  auto wide = percpu_test::run_self("BackendChild.*", {"PERCPU_SLOTS=256", "PERCPU_BACKEND="});
  EXPECT_EQ(wide.exit_code, 0) << wide.output;
  EXPECT_NE(wide.output.find("kind=portable source=0 slots=256"), std::string::npos) << wide.output;
}

TEST(Backend, MissingSysfsStillWorks) {
  auto r = percpu_test::run_self("BackendChild.*",
                                 {"PERCPU_SYSFS_CPU_DIR=/nonexistent/percpu",
                                  "PERCPU_BACKEND=", "PERCPU_SLOTS=", "PERCPU_INDEX="});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("kind=portable"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("sysfs=0"), std::string::npos) << r.output;
}

TEST(Backend, OwnRegistrationWhenGlibcDidNot) {
  if (percpu::backend().kind != percpu::backend_kind::rseq) GTEST_SKIP() << "no rseq here";
  auto r = percpu_test::run_self("BackendChild.*", {"GLIBC_TUNABLES=glibc.pthread.rseq=0",
                                                    "PERCPU_BACKEND=rseq", "PERCPU_SLOTS="});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("kind=rseq source=2"), std::string::npos) << r.output;
}

// PERCPU_PRETEND_MISSING makes start-up see kernel features as missing and
// say so; a name it does not know is a clear error.
TEST(Backend, PretendMissingFeatures) {
  if (percpu::backend().kind != percpu::backend_kind::rseq) GTEST_SKIP() << "no rseq here";
  struct expectation {
    const char* value;
    const char* kind;
  };
  for (auto e :
       {expectation{"rseq", "kind=portable"}, expectation{"membarrier_rseq", "kind=portable"},
        expectation{"membarrier_fence", "kind=rseq"},
        expectation{",rseq,membarrier_fence", "kind=portable"}}) {
    auto r = percpu_test::run_self(
        "BackendChild.*",
        {std::string("PERCPU_PRETEND_MISSING=") + e.value, "PERCPU_BACKEND=", "PERCPU_SLOTS="});
    EXPECT_EQ(r.exit_code, 0) << e.value << r.output;
    EXPECT_NE(r.output.find(e.kind), std::string::npos) << e.value << r.output;
    if (std::string(e.value) == "membarrier_fence") {
      EXPECT_NE(r.output.find("membarrier_failure=" + std::to_string(ENOSYS)), std::string::npos)
          << r.output;
    }
    if (std::string(e.kind) == "kind=portable") {
      EXPECT_NE(r.output.find("pretended: PERCPU_PRETEND_MISSING"), std::string::npos) << r.output;
    }
  }
  auto bad = percpu_test::run_self("BackendChild.*", {"PERCPU_PRETEND_MISSING=futex"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("not one of: rseq, membarrier_rseq, membarrier_fence"),
            std::string::npos)
      << bad.output;
}

}  // namespace
