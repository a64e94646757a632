// CPU hotplug: a CPU taken offline and brought back while the program runs.
//
// Only where the environment says the machine may be changed
// (PERCPU_TEST_HOTPLUG=1, set by the emulated machines of the vm stage in
// scripts/vm/) and /sys/devices/system/cpu/cpuN/online is writable (root):
// taking a CPU of a developer's own machine offline is not a test's
// business.  Elsewhere every test here is skipped.
//
// What is documented and checked: a CPU's per-CPU data stays reachable
// while it is offline (visits, pool_cache invalidate, queue flush_all);
// an on-CPU call to it is refused with errc::cpu_unavailable and does not
// run; a call racing with the CPU going away either runs on that CPU or is
// refused that way (never elsewhere, never a time-out); once it is back,
// calls to it work again.
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "percpu/core/storage.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/queue.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/xcall.hpp"

namespace {

namespace xc = percpu::xcall;

struct update {
  std::uint64_t key;
  std::uint64_t value;
};

std::string online_file(unsigned cpu) {
  return "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/online";
}

bool set_online(unsigned cpu, bool online) {
  std::ofstream out(online_file(cpu));
  out << (online ? "1" : "0") << std::flush;
  return static_cast<bool>(out);
}

// A CPU this test may take offline: online, hotpluggable (CPU 0 usually is
// not), and not the only CPU left.  Empty when hotplug is not allowed here.
std::optional<unsigned> hotpluggable_cpu() {
  const char* allowed = std::getenv("PERCPU_TEST_HOTPLUG");
  if (allowed == nullptr || std::string(allowed) != "1") return std::nullopt;
  auto online = percpu::online_cpus();
  if (online.size() < 2) return std::nullopt;
  for (auto it = online.rbegin(); it != online.rend(); ++it) {
    if (access(online_file(*it).c_str(), W_OK) == 0) return *it;
  }
  return std::nullopt;
}

constexpr const char* no_hotplug = "CPU hotplug is not allowed here (PERCPU_TEST_HOTPLUG=1)";

// Takes `cpu` offline for the object's lifetime.
class offline_cpu {
 public:
  explicit offline_cpu(unsigned cpu) : cpu_(cpu), done_(set_online(cpu, false)) {}
  ~offline_cpu() {
    if (done_) set_online(cpu_, true);
  }
  offline_cpu(const offline_cpu&) = delete;
  offline_cpu& operator=(const offline_cpu&) = delete;
  bool done() const { return done_; }

 private:
  unsigned cpu_;
  bool done_;
};

bool pin(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

// The documented behaviour of each facility toward an offline CPU, then
// calls to it once it is back.
TEST(Hotplug, OfflineCpuIsRefusedByCallsReachedByVisitsAndWorksWhenBack) {
  auto found = hotpluggable_cpu();
  if (!found) GTEST_SKIP() << no_hotplug;
  const unsigned cpu = *found;
  xc::unicast_sync(cpu, [] {});  // its service thread exists
  percpu::storage<std::int64_t> s;
  percpu::pool_cache<std::uint64_t> pool("hotplug");
  std::uint64_t applied = 0;
  percpu::batch_queue<update> queue([&](std::span<const update> ops) {
    for (const update& op : ops) applied += op.value;
  });
  // Work left on the CPU: a slot value, cached objects, a buffered update.
  std::thread([&] {
    ASSERT_TRUE(pin(cpu));
    s.add(5);
    std::vector<std::uint64_t*> held;
    held.reserve(8);
    for (int i = 0; i < 8; ++i) held.push_back(pool.get());
    for (auto* p : held) pool.put(p);
    queue.enqueue({1, 7});
  }).join();
  ASSERT_EQ(applied, 0u) << "the update was applied before the CPU went away";

  offline_cpu off(cpu);
  ASSERT_TRUE(off.done());
  bool refused = false;
  bool ran = false;
  try {
    xc::unicast_sync(cpu, [&] { ran = true; });
  } catch (const percpu::error& e) {
    refused = e.code() == percpu::errc::cpu_unavailable && e.cpu() == static_cast<int>(cpu);
  }
  EXPECT_TRUE(refused);
  EXPECT_FALSE(ran);
  std::atomic<int> ran_there{0};
  auto b = xc::broadcast_sync([&](unsigned c) { ran_there += c == cpu; });
  EXPECT_EQ(ran_there.load(), 0);
  EXPECT_TRUE(b.skipped.test(cpu));
  EXPECT_FALSE(b.targets.test(cpu));
  // Its data: visited, invalidated, flushed.  With slots indexed by mm_cid
  // the add went to the slot of the id the thread held, which no CPU names:
  // every slot is visited (stale data of a slot no thread holds).
  auto take = [](std::int64_t& v) { return std::exchange(v, 0); };
  if (percpu::backend().index == percpu::slot_index::cpu) {
    EXPECT_EQ(s.visit(cpu, take), 5);
  } else {
    std::int64_t taken = 0;
    for (unsigned slot = 0; slot < percpu::cpu_count(); ++slot) taken += s.visit(slot, take);
    EXPECT_EQ(taken, 5);
  }
  pool.invalidate();
  auto ps = pool.stats();
  EXPECT_EQ(ps.objects_cached, 0u);
  EXPECT_EQ(ps.constructions, ps.destructions);
  queue.flush_all();
  EXPECT_EQ(applied, 7u);

  ASSERT_TRUE(set_online(cpu, true));
  int where = -1;
  xc::unicast_sync(cpu, [&] { where = sched_getcpu(); });
  EXPECT_EQ(where, static_cast<int>(cpu));
  auto again = xc::broadcast_sync([](unsigned) {});
  EXPECT_TRUE(again.targets.test(cpu));
}

// Calls to a CPU while it goes offline and comes back, over and over.
// Each one is refused with cpu_unavailable, or runs on that CPU from start
// to end - unless the CPU went away while it ran: user space cannot hold a
// CPU online, and the kernel moves every thread off a CPU it takes down,
// service threads included (docs/xcall.md).  `changes` is odd from just
// before a removal until the CPU is back, so a call that saw the same even
// value at its start and end ran while the CPU stayed online throughout.
TEST(Hotplug, CallRacingWithItsCpuGoingAwayRunsThereOrIsRefused) {
  auto found = hotpluggable_cpu();
  if (!found) GTEST_SKIP() << no_hotplug;
  const unsigned cpu = *found;
  std::atomic<unsigned> changes{0};
  std::atomic<bool> done{false};
  std::thread toggler([&] {
    for (int round = 0; round < 10; ++round) {
      ++changes;
      set_online(cpu, false);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      set_online(cpu, true);
      ++changes;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    done = true;
  });
  long ran = 0;
  long refused = 0;
  long overlapped = 0;   // ran while the CPU went away or came back
  long off_its_cpu = 0;  // ran, CPU online throughout, but not (only) there
  long other_errors = 0;
  while (!done.load()) {
    int at_start = -1;
    int at_end = -1;
    unsigned before = 0;
    unsigned after = 0;
    try {
      xc::unicast_sync(cpu, [&] {
        before = changes.load();
        at_start = sched_getcpu();
        auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
        while (std::chrono::steady_clock::now() < until) {
        }
        at_end = sched_getcpu();
        after = changes.load();
      });
      ++ran;
      if (before != after || before % 2 != 0) {
        ++overlapped;
      } else if (at_start != static_cast<int>(cpu) || at_end != static_cast<int>(cpu)) {
        ++off_its_cpu;
      }
    } catch (const percpu::error& e) {
      ++(e.code() == percpu::errc::cpu_unavailable ? refused : other_errors);
    }
  }
  toggler.join();
  set_online(cpu, true);
  EXPECT_EQ(off_its_cpu, 0) << "of " << ran << " calls that ran";
  EXPECT_EQ(other_errors, 0);
  EXPECT_GT(ran, 0);
  std::printf("hotplug race: %ld calls ran on CPU %u (%ld while it changed), %ld refused\n", ran,
              cpu, overlapped, refused);
}

}  // namespace
