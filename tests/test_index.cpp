// test_index.cpp - what indexes the slots: CPU numbers or mm_cid.
//
// Start-up's choice is a pure function (src/runtime/index_mode.hpp): every
// decision is checked here, those of kernels without mm_cid included.  The
// process-level checks run in children, whose start-up reads PERCPU_INDEX
// and the affinity mask they were started with.
#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "cpu_mask.hpp"
#include "percpu/counter.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/error.hpp"
#include "runtime/index_mode.hpp"

namespace {

using percpu::detail::choose_index;
using percpu::detail::index_inputs;

index_inputs inputs(const char* requested, bool rseq, bool mm_cid, unsigned allowed,
                    unsigned possible) {
  index_inputs in;
  in.requested = requested;
  in.rseq_backend = rseq;
  in.kernel_has_mm_cid = mm_cid;
  in.allowed_cpus = allowed;
  in.possible_cpus = possible;
  return in;
}

TEST(IndexMode, AutoPicksMmCidOnlyWhereItBoundsTheSlots) {
  auto confined = choose_index(inputs(nullptr, true, true, 4, 64));
  EXPECT_TRUE(confined.mm_cid);
  EXPECT_EQ(confined.why, "auto: 4 of 64 CPUs allowed");
  EXPECT_TRUE(confined.error.empty());
  auto whole = choose_index(inputs("auto", true, true, 64, 64));
  EXPECT_FALSE(whole.mm_cid);
  EXPECT_EQ(whole.why, "auto: 64 of 64 CPUs allowed");
  // Empty is unset.
  EXPECT_TRUE(choose_index(inputs("", true, true, 2, 8)).mm_cid);
}

// A kernel before 6.3 (Debian 12's 6.1): auto falls back, mm_cid is refused.
TEST(IndexMode, KernelWithoutMmCidFallsBackOrRefuses) {
  auto fallback = choose_index(inputs(nullptr, true, false, 4, 64));
  EXPECT_FALSE(fallback.mm_cid);
  EXPECT_TRUE(fallback.error.empty());
  EXPECT_NE(fallback.why.find("no mm_cid"), std::string::npos) << fallback.why;
  auto refused = choose_index(inputs("mm_cid", true, false, 4, 64));
  EXPECT_NE(refused.error.find("this kernel's rseq area has no mm_cid"), std::string::npos)
      << refused.error;
}

TEST(IndexMode, PortableBackendIndexesByCpu) {
  EXPECT_FALSE(choose_index(inputs(nullptr, false, true, 4, 64)).mm_cid);
  EXPECT_NE(choose_index(inputs("mm_cid", false, true, 4, 64)).error.find("needs the rseq"),
            std::string::npos);
  auto forced = choose_index(inputs("cpu", true, true, 4, 64));
  EXPECT_FALSE(forced.mm_cid);
  EXPECT_EQ(forced.why, "PERCPU_INDEX=cpu");
}

TEST(IndexMode, UnknownValueIsAnError) {
  for (const char* bad : {"CPU", "mmcid", "mm_cid ", "1"}) {
    auto c = choose_index(inputs(bad, true, true, 4, 64));
    EXPECT_EQ(c.error, std::string("PERCPU_INDEX='") + bad + "' is not one of: cpu, mm_cid, auto");
  }
}

// In a child: what start-up chose, and the slot every thread gets.
TEST(IndexChild, Report) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  const auto& b = percpu::backend();
  std::printf("index=%s why=%s\n", b.index == percpu::slot_index::mm_cid ? "mm_cid" : "cpu",
              b.index_reason.c_str());
}

TEST(IndexChild, FailsToStart) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  try {
    percpu::backend();
    std::printf("started\n");
  } catch (const percpu::error& e) {
    std::printf("error: %s\n", e.what());
  }
}

bool kernel_has_mm_cid() {
  const auto& b = percpu::backend();
  return b.kind == percpu::backend_kind::rseq && b.mm_cid;
}

TEST(Index, EnvironmentChoosesTheMode) {
  auto bad = percpu_test::run_self("IndexChild.FailsToStart", {"PERCPU_INDEX=fastest"});
  EXPECT_NE(bad.output.find("error: percpu: PERCPU_INDEX='fastest' is not one of"),
            std::string::npos)
      << bad.output;
  auto portable = percpu_test::run_self("IndexChild.FailsToStart",
                                        {"PERCPU_INDEX=mm_cid", "PERCPU_BACKEND=portable"});
  EXPECT_NE(portable.output.find("PERCPU_INDEX=mm_cid needs the rseq backend"), std::string::npos)
      << portable.output;
  auto cpu = percpu_test::run_self("IndexChild.Report", {"PERCPU_INDEX=cpu"});
  EXPECT_NE(cpu.output.find("index=cpu why=PERCPU_INDEX=cpu"), std::string::npos) << cpu.output;
  if (!kernel_has_mm_cid()) GTEST_SKIP() << "this kernel's rseq area has no mm_cid";
  auto mm = percpu_test::run_self("IndexChild.Report", {"PERCPU_INDEX=mm_cid"});
  EXPECT_NE(mm.output.find("index=mm_cid why=PERCPU_INDEX=mm_cid"), std::string::npos) << mm.output;
}

// A process confined to fewer CPUs than are possible gets mm_cid from auto:
// the child inherits the mask of the thread that starts it.
TEST(Index, AutoChoosesMmCidForAConfinedProcess) {
  if (!kernel_has_mm_cid()) GTEST_SKIP() << "this kernel's rseq area has no mm_cid";
  auto allowed = percpu::allowed_cpus();
  if (percpu::possible_cpus().size() < 2 || allowed.empty()) GTEST_SKIP() << "one CPU";
  percpu_test::child_result r;
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(allowed.front()));
    r = percpu_test::run_self("IndexChild.Report", {"PERCPU_INDEX=auto"});
  }).join();
  std::string want = "index=mm_cid why=auto: 1 of " +
                     std::to_string(percpu::possible_cpus().size()) + " CPUs allowed";
  EXPECT_NE(r.output.find(want), std::string::npos) << r.output;
}

// In mm_cid mode every slot a thread gets is below the slot count (what
// memory safety needs: the kernel never gives an id at or above the
// possible CPUs), and the adds land in slots whatever the ids: none lost
// (conservation).  The highest id is printed: it follows the CPUs the
// process may use and its threads (with slack in Linux 6.19's ids), which
// is what bounds the memory touched, but no kernel promises an exact bound.
TEST(Index, MmCidSlotsStayWithinTheSlots) {
  if (percpu::backend().index != percpu::slot_index::mm_cid) {
    GTEST_SKIP() << "slots are CPUs (PERCPU_INDEX=mm_cid runs this)";
  }
  constexpr unsigned threads = 8;
  constexpr int adds = 200'000;
  percpu::counter c;
  std::atomic<unsigned> highest{0};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      unsigned mine = 0;
      for (int i = 0; i < adds; ++i) {
        c.add(1);
        mine = std::max(mine, percpu::current_cpu());
      }
      unsigned seen = highest.load();
      while (mine > seen && !highest.compare_exchange_weak(seen, mine)) {
      }
    });
  }
  for (auto& t : pool) t.join();
  EXPECT_LT(highest.load(), percpu::cpu_count());
  EXPECT_EQ(c.read(), std::int64_t{threads} * adds);
  std::printf("highest mm_cid with %u threads on %zu allowed CPUs: %u\n", threads,
              percpu::allowed_cpus().size(), highest.load());
}

}  // namespace
