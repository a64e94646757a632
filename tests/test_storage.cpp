// Per-CPU storage: initialisation, destruction, stable addresses, bad input.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "cpu_mask.hpp"
#include "expect_error.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/counter.hpp"
#include "percpu/runtime/cpu.hpp"

namespace {

std::atomic<int> constructed{0};
std::atomic<int> destroyed{0};

struct tracked {
  tracked() : value(42) { ++constructed; }
  tracked(const tracked& other) : value(other.value) { ++constructed; }
  ~tracked() { ++destroyed; }
  long value;
};

TEST(Storage, ConstructsAndDestroysEveryCpusCopyOnce) {
  constructed = 0;
  destroyed = 0;
  unsigned n = percpu::cpu_count();
  {
    percpu::storage<tracked> s;
    EXPECT_EQ(constructed.load(), static_cast<int>(n));
    for (unsigned cpu = 0; cpu < n; ++cpu) EXPECT_EQ(s.on(cpu)->value, 42);
    s.on(n - 1)->value = 7;
  }
  EXPECT_EQ(destroyed.load(), static_cast<int>(n));
}

TEST(Storage, CopyConstructsFromInitialValue) {
  percpu::storage<long> s(17);
  s.for_each_cpu([](unsigned, long& v) { EXPECT_EQ(v, 17); });
}

struct throws_on_third {
  static inline int built = 0;
  static inline int torn_down = 0;
  throws_on_third() {
    if (built == 2) throw std::runtime_error("constructor failed");
    ++built;
  }
  ~throws_on_third() { ++torn_down; }
};

TEST(Storage, ConstructorFailureUndoesAndPropagates) {
  if (percpu::cpu_count() < 3) GTEST_SKIP() << "needs three slots";
  EXPECT_THROW(percpu::storage<throws_on_third>{}, std::runtime_error);
  EXPECT_EQ(throws_on_third::torn_down, 2);
}

TEST(Storage, CopiesAreZeroAndDistinct) {
  percpu::storage<std::int64_t> s;
  std::set<std::int64_t*> addresses;
  for (unsigned cpu = 0; cpu < s.cpus(); ++cpu) {
    EXPECT_EQ(*s.on(cpu), 0);
    addresses.insert(s.on(cpu));
  }
  EXPECT_EQ(addresses.size(), s.cpus());
  // Pinned: local() and current_cpu() each read the CPU.
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(percpu::allowed_cpus().front()));
    EXPECT_EQ(s.local(), s.on_unchecked(percpu::current_cpu()));
  }).join();
}

TEST(Storage, ReusedMemoryIsZeroAgain) {
  void* first = percpu::allocate_raw(256, 64);
  for (unsigned cpu = 0; cpu < percpu::cpu_count(); ++cpu) {
    std::memset(percpu::raw_on(static_cast<char*>(first), cpu), 0xab, 256);
  }
  percpu::free_raw(first);
  void* again = percpu::allocate_raw(256, 64);
  for (unsigned cpu = 0; cpu < percpu::cpu_count(); ++cpu) {
    const char* copy = percpu::raw_on(static_cast<char*>(again), cpu);
    for (int i = 0; i < 256; ++i) ASSERT_EQ(copy[i], 0) << "cpu " << cpu << " byte " << i;
  }
  percpu::free_raw(again);
}

// The mapping that holds `address`, as /proc/self/smaps describes it: its
// VmFlags and AnonHugePages lines ("" when not found), and its Rss in kB
// (-1 when not found; pages mapped to the kernel's zero page do not count).
struct mapping_flags {
  std::string vm_flags;
  std::string huge;
  long rss_kb = -1;
};
mapping_flags mapping_of(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  auto at = reinterpret_cast<std::uintptr_t>(address);
  mapping_flags found;
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    // A mapping's first line: "LO-HI perms ...", both in hex.
    char* dash = nullptr;
    unsigned long lo = std::strtoul(line.c_str(), &dash, 16);
    char* space = nullptr;
    unsigned long hi = *dash == '-' ? std::strtoul(dash + 1, &space, 16) : 0;
    if (*dash == '-' && space != nullptr && *space == ' ') {
      inside = at >= lo && at < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      found.vm_flags = line;
    } else if (inside && line.rfind("AnonHugePages:", 0) == 0) {
      found.huge = line;
    } else if (inside && line.rfind("Rss:", 0) == 0) {
      found.rss_kb = std::strtol(line.c_str() + 4, nullptr, 10);
    }
  }
  return found;
}

// Each CPU's unit is 1 MiB and each CPU touches its own: a transparent huge
// page would back 2 MiB for one CPU's few bytes (1 MiB per CPU per chunk,
// seen with THP `always`).  Chunks carry MADV_NOHUGEPAGE, which smaps shows
// as the VmFlags "nh", whatever the system's THP mode.
TEST(Storage, ChunksAreNeverBackedByHugePages) {
  if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) != 0) {
    GTEST_SKIP() << "this kernel has no transparent huge pages";
  }
  void* p = percpu::allocate_raw(64, 64);
  std::memset(percpu::raw_on(static_cast<char*>(p), 0), 1, 64);
  mapping_flags m = mapping_of(p);
  EXPECT_NE(m.vm_flags.find(" nh"), std::string::npos) << m.vm_flags;
  EXPECT_NE(m.huge.find(" 0 kB"), std::string::npos) << m.huge;
  percpu::free_raw(p);
}

// A percpu::counter takes its 8 bytes of a CPU's unit (and 4 for its stop
// word), not a cache line: every counter_array was once 64-byte aligned, and
// 4000 counters added to on one CPU touched 248 kB of the chunk against
// 44 kB since.
TEST(Storage, SmallCountersShareTheirCpusCacheLines) {
  constexpr int n = 4000;
  void* probe = percpu::allocate_raw(8, 8);  // in the chunk the counters fill
  long before = mapping_of(probe).rss_kb;
  ASSERT_GE(before, 0);
  std::vector<std::unique_ptr<percpu::counter>> all;
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(percpu::allowed_cpus().front()));
    for (int i = 0; i < n; ++i) all.push_back(std::make_unique<percpu::counter>());
    for (auto& c : all) c->add(1);
  }).join();
  long after = mapping_of(probe).rss_kb;
  EXPECT_LE(after - before, 96) << "kB of the chunk " << n << " counters touched";
  for (auto& c : all) EXPECT_EQ(c->read(), 1);
  percpu::free_raw(probe);
}

// A reused range is zeroed in the slots that wrote it, and costs no memory
// in those that never did (64 simulated slots, two of them written): the
// reuse used to write zeros into every slot, a page each.
TEST(StorageChild, ReuseTouchesOnlyTheSlotsThatWrote) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  ASSERT_EQ(percpu::cpu_count(), 64u);
  constexpr std::size_t page = 4096;
  void* first = percpu::allocate_raw(page, page);
  std::memset(percpu::raw_on(static_cast<char*>(first), 0), 1, page);
  std::memset(percpu::raw_on(static_cast<char*>(first), 40), 1, page);
  long before = mapping_of(first).rss_kb;
  percpu::free_raw(first);
  void* again = percpu::allocate_raw(page, page);
  ASSERT_EQ(again, first) << "the freed range is the first that fits";
  long after = mapping_of(again).rss_kb;
  EXPECT_LE(after - before, 0) << "kB of Rss the reuse added (" << before << " -> " << after << ")";
  for (unsigned slot : {0u, 40u, 63u}) {
    const char* copy = percpu::raw_on(static_cast<char*>(again), slot);
    for (std::size_t i = 0; i < page; ++i)
      ASSERT_EQ(copy[i], 0) << "slot " << slot << " byte " << i;
  }
  percpu::free_raw(again);
}

TEST(Storage, ReuseTouchesOnlyTheSlotsThatWrote) {
  percpu_test::expect_child_passes("StorageChild.ReuseTouchesOnlyTheSlotsThatWrote",
                                   {"PERCPU_BACKEND=portable", "PERCPU_SLOTS=64"});
}

// The NUMA nodes this process may allocate from (/proc/self/status).
std::vector<unsigned> allowed_mems() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Mems_allowed_list:", 0) == 0) {
      std::string list = line.substr(line.find_first_not_of(" \t", 18));
      return percpu::parse_cpu_list(list);
    }
  }
  return {};
}

// On a machine of several NUMA nodes, each CPU's copy lives on that CPU's
// node, even when one thread on one node touches them all first (as a
// constructor of every copy does).  move_pages with no target nodes only
// reports where each page is.  The vm stage's `four` guest has two nodes.
TEST(Storage, CopiesLiveOnTheirCpusNode) {
  if (percpu::numa_nodes().size() < 2) GTEST_SKIP() << "one NUMA node";
  const auto& b = percpu::backend();
  if (b.kind != percpu::backend_kind::rseq || b.index != percpu::slot_index::cpu) {
    GTEST_SKIP() << "slots are not CPUs here";
  }
  constexpr std::size_t page = 4096;
  void* p = percpu::allocate_raw(page, page);
  std::vector<void*> pages;
  std::vector<int> want;
  for (unsigned cpu = 0; cpu < percpu::cpu_count(); ++cpu) {
    int node = percpu::numa_node_of(cpu);
    if (node < 0) continue;
    char* copy = percpu::raw_on(static_cast<char*>(p), cpu);
    std::memset(copy, 1, page);
    pages.push_back(copy);
    want.push_back(node);
  }
  ASSERT_GE(pages.size(), 2u);
  std::vector<int> status(pages.size(), -1);
  if (syscall(SYS_move_pages, 0, pages.size(), pages.data(), nullptr, status.data(), 0) != 0) {
    int err = errno;
    percpu::free_raw(p);
    std::string why = std::system_category().message(err);
    if (err == EPERM || err == ENOSYS) GTEST_SKIP() << "move_pages refused: " << why;
    FAIL() << "move_pages: " << why;
  }
  // Only nodes this process may take memory from (a cpuset's mems) can
  // hold a copy; the others fall back, as MPOL_PREFERRED allows.
  std::vector<unsigned> mems = allowed_mems();
  for (std::size_t i = 0; i < pages.size(); ++i) {
    bool allowed =
        std::find(mems.begin(), mems.end(), static_cast<unsigned>(want[i])) != mems.end();
    if (allowed) {
      EXPECT_EQ(status[i], want[i]) << "the copy of the " << i << "th CPU with a node";
    }
  }
  percpu::free_raw(p);
}

TEST(Storage, AlignmentIsHonoured) {
  for (std::size_t align : {1u, 8u, 64u, 4096u, 65536u}) {
    void* p = percpu::allocate_raw(24, align);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % align, 0u) << align;
    percpu::free_raw(p);
  }
}

// Addresses never move: grow through many chunks while old pointers stay valid.
TEST(Storage, GrowthNeverMovesExistingCopies) {
  percpu::storage<std::int64_t> anchor;
  std::vector<std::int64_t*> anchor_copies;
  for (unsigned cpu = 0; cpu < anchor.cpus(); ++cpu) {
    *anchor.on(cpu) = 1000 + cpu;
    anchor_copies.push_back(anchor.on(cpu));
  }
  std::vector<void*> big;
  big.reserve(40);
  for (int i = 0; i < 40; ++i)
    big.push_back(percpu::allocate_raw(percpu::max_allocation() / 4, 64));
  for (unsigned cpu = 0; cpu < anchor.cpus(); ++cpu) {
    EXPECT_EQ(anchor.on(cpu), anchor_copies[cpu]);
    EXPECT_EQ(*anchor_copies[cpu], static_cast<std::int64_t>(1000 + cpu));
  }
  for (void* p : big) percpu::free_raw(p);
}

TEST(Storage, BadInputIsAClearError) {
  using percpu::errc;
  using percpu_test::fails_with;
  EXPECT_TRUE(fails_with(errc::invalid_argument, [] { (void)percpu::allocate_raw(0); }));
  EXPECT_TRUE(fails_with(errc::invalid_argument, [] { (void)percpu::allocate_raw(8, 3); }));
  EXPECT_TRUE(fails_with(errc::invalid_argument, [] { (void)percpu::allocate_raw(8, 0); }));
  EXPECT_TRUE(fails_with(errc::too_large,
                         [] { (void)percpu::allocate_raw(percpu::max_allocation() + 1); }));
  EXPECT_TRUE(fails_with(errc::too_large,
                         [] { (void)percpu::allocate_raw(8, percpu::max_allocation() * 2); }));
  int local = 0;
  EXPECT_TRUE(fails_with(errc::invalid_argument, [&] { percpu::free_raw(&local); }));
  void* p = percpu::allocate_raw(16);
  EXPECT_TRUE(
      fails_with(errc::invalid_argument, [&] { percpu::free_raw(static_cast<char*>(p) + 8); }));
  percpu::free_raw(p);
  EXPECT_TRUE(fails_with(errc::invalid_argument, [&] { percpu::free_raw(p); }));  // double free
  percpu::storage<long> s;
  EXPECT_TRUE(fails_with(errc::out_of_range, [&] { (void)s.on(s.cpus()); }));
  EXPECT_TRUE(fails_with(errc::out_of_range, [&] { s.visit(s.cpus(), [](long&) {}); }));
  // A CPU past the end fails and changes nothing, in every backend (the
  // portable one used to lock a word outside the structure; found by
  // tests/fuzz, input tests/fuzz/crashes/portable-compare-and-store-cpu-past-end).
  for (unsigned cpu : {s.cpus(), s.cpus() + 1, ~0u}) {
    EXPECT_FALSE(s.compare_and_store(cpu, 0, 7));
  }
  long sum = 0;
  s.for_each_cpu([&](unsigned, long& v) { sum += v; });
  EXPECT_EQ(sum, 0);
  try {
    (void)percpu::allocate_raw(8, 6);
    ADD_FAILURE() << "no error";
  } catch (const percpu::error& e) {
    EXPECT_NE(std::string(e.what()).find("not a power of two"), std::string::npos);
  }
  // The allocator is still consistent after all that: a new allocation is
  // zero and writable on every CPU, is freed once, and only once.
  auto* q = static_cast<long*>(percpu::allocate_raw(16));
  for (unsigned cpu = 0; cpu < s.cpus(); ++cpu) {
    EXPECT_EQ(*percpu::raw_on(q, cpu), 0);
    *percpu::raw_on(q, cpu) = cpu;
  }
  percpu::free_raw(q);
  EXPECT_TRUE(fails_with(errc::invalid_argument, [&] { percpu::free_raw(q); }));
}

TEST(StorageChild, ExhaustedAddressSpace) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  std::printf("exhausted-ok (skipped: sanitizers need their address space)\n");
  return;
#endif
  percpu::storage<long> before(5);
  rlimit limit{};
  getrlimit(RLIMIT_AS, &limit);
  limit.rlim_cur = 2ull << 30;  // 2 GiB of address space in all
  ASSERT_EQ(setrlimit(RLIMIT_AS, &limit), 0);
  std::vector<void*> blocks;
  bool exhausted = false;
  try {
    for (int i = 0; i < 100000; ++i)
      blocks.push_back(percpu::allocate_raw(percpu::max_allocation()));
  } catch (const percpu::error& e) {
    exhausted = true;
    EXPECT_EQ(e.code(), percpu::errc::no_memory);
    EXPECT_EQ(e.code(), std::errc::not_enough_memory);
    EXPECT_NE(std::string(e.what()).find("cannot reserve"), std::string::npos) << e.what();
  }
  ASSERT_TRUE(exhausted);
  // Consistent afterwards: old data intact, frees and reuse work.
  before.for_each_cpu([](unsigned, long& v) { EXPECT_EQ(v, 5); });
  void* last = blocks.back();
  percpu::free_raw(last);
  blocks.pop_back();
  void* reused = percpu::allocate_raw(percpu::max_allocation());
  EXPECT_EQ(reused, last);
  percpu::free_raw(reused);
  for (void* b : blocks) percpu::free_raw(b);
  std::printf("exhausted-ok\n");
}

TEST(Storage, ExhaustedAddressSpaceIsReportedAndRecoverable) {
  auto r = percpu_test::run_self("StorageChild.ExhaustedAddressSpace", {});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("exhausted-ok"), std::string::npos) << r.output;
}

}  // namespace
