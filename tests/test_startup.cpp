// Start-up and ABI edges of the runtime: a sequence before start-up, the
// backend word read while another thread starts the library, a thread that
// another rseq user registered first, membarrier failing at run time, a
// possible-CPU override that contradicts the kernel.  Each scenario runs in
// a fresh child process (start-up happens once per process).
#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "percpu/core/storage.hpp"
#include "percpu/counter.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/arch.hpp"
#include "percpu/runtime/detail/fence.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "test_scale.hpp"

// glibc's registration (glibc >= 2.35); weak, as in the library.
extern "C" {
extern const std::ptrdiff_t __rseq_offset __attribute__((weak));
}

namespace {

namespace detail = percpu::detail;

bool in_child() {
  return percpu_test::in_child();
}

bool pin_to(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;
}

// ---- a sequence before start-up ----------------------------------------------

// Memory laid out as the per-CPU allocator lays it out (CPU c's copy 1 MiB
// after CPU c-1's), for as many CPUs as a machine may have, but not from the
// allocator, which would start the library.
struct own_percpu_memory {
  static constexpr std::size_t cpus = 4096;
  static constexpr std::size_t unit = std::size_t{1} << 20;
  own_percpu_memory() {
    std::size_t bytes = (cpus + 1) * unit;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return;
    auto address = reinterpret_cast<std::uintptr_t>(p);
    base = reinterpret_cast<char*>((address + unit - 1) & ~(unit - 1));
  }
  std::int64_t sum(std::size_t offset) const {
    std::int64_t s = 0;
    for (std::size_t c = 0; c < cpus; ++c) {
      s += *reinterpret_cast<const std::int64_t*>(base + c * unit + offset);
    }
    return s;
  }
  char* base = nullptr;
};

// A sequence that runs before anything started the library (a per-CPU
// operation on memory the library did not hand out: an object used before
// its constructor ran) must not write rseq_cs at the thread pointer's own
// offset 8 (glibc's TCB), and must still do its work.
TEST(StartupChild, SequenceBeforeStartUpLeavesTheThreadPointerAlone) {
  if (!in_child()) GTEST_SKIP() << "runs in a child process";
  if (!detail::arch::has_sequences) GTEST_SKIP() << "no sequences on this architecture";
  ASSERT_EQ(detail::backend_now(), detail::backend_code::uninitialized)
      << "something started the library before the test";
  own_percpu_memory memory;
  ASSERT_NE(memory.base, nullptr);
  auto* slot0 = reinterpret_cast<std::int64_t*>(memory.base);
  auto* stop0 = reinterpret_cast<std::uint32_t*>(memory.base + 64);
  char* tp = detail::arch::thread_pointer();
  void* tcb_word = *reinterpret_cast<void**>(tp + 8);
  detail::seq::add(slot0, stop0, 5);
  EXPECT_EQ(*reinterpret_cast<void**>(tp + 8), tcb_word);
  EXPECT_EQ(memory.sum(0), 5);
  EXPECT_NE(detail::backend_now(), detail::backend_code::uninitialized);
}

TEST(Startup, SequenceBeforeStartUpLeavesTheThreadPointerAlone) {
  for (const char* backend : {"PERCPU_BACKEND=", "PERCPU_BACKEND=portable"}) {
    SCOPED_TRACE(backend);
    percpu_test::expect_child_passes(
        "StartupChild.SequenceBeforeStartUpLeavesTheThreadPointerAlone",
        {backend, "PERCPU_SLOTS="});
  }
}

// ---- the backend word while another thread starts the library ---------------

// Threads that ask for the current CPU (which reads the backend word) while
// another thread starts the library: a data race unless the word is atomic
// (ThreadSanitizer, which runs this suite, reports one).
TEST(StartupChild, BackendWordIsReadWhileAnotherThreadStarts) {
  if (!in_child()) GTEST_SKIP() << "runs in a child process";
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  threads.reserve(3);
  std::atomic<unsigned> bad{0};
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load()) {
      }
      if (t == 0) {
        (void)percpu::cpu_count();
      } else {
        for (int i = 0; i < 2000; ++i) {
          if (percpu::current_cpu() >= percpu::cpu_count()) bad.fetch_add(1);
        }
      }
    });
  }
  while (ready.load() < 3) std::this_thread::yield();
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0u);
}

TEST(Startup, BackendWordIsReadWhileAnotherThreadStarts) {
  percpu_test::expect_child_passes("StartupChild.BackendWordIsReadWhileAnotherThreadStarts", {});
}

// ---- a thread that another rseq user registered first ------------------------

// The library's own registration (glibc registered nothing) finds a thread
// that another rseq user registered with an area of its own (the kernel
// answers EINVAL).  The thread must fall back to the portable path - not
// abort - while the other threads keep their sequences, and every add must
// count.
TEST(StartupChild, ThreadRegisteredByAnotherRseqUserFallsBack) {
  if (!in_child()) GTEST_SKIP() << "runs in a child process";
  if (percpu::backend().kind != percpu::backend_kind::rseq ||
      percpu::backend().source != percpu::rseq_source::own) {
    GTEST_SKIP() << "needs the library's own rseq registration";
  }
  percpu::storage<std::int64_t> s;
  constexpr long adds = 200000;
  auto foreign = [&] {
    struct alignas(32) area {
      std::uint32_t cpu_id_start = 0;
      std::uint32_t cpu_id = 0xffffffffu;
      std::uint64_t rseq_cs = 0;
      std::uint32_t flags = 0;
      std::uint32_t rest[3] = {};
    };
    static thread_local area mine;
    ASSERT_EQ(syscall(__NR_rseq, &mine, sizeof(area), 0, 0x12345678), 0) << errno;
    for (long i = 0; i < adds; ++i) s.add(1);
  };
  auto ordinary = [&] {
    for (long i = 0; i < adds; ++i) s.add(1);
  };
  std::thread a(foreign);
  std::thread b(ordinary);
  std::thread c(foreign);
  a.join();
  b.join();
  c.join();
  std::int64_t sum = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  EXPECT_EQ(sum, 3 * adds);
}

TEST(Startup, ThreadRegisteredByAnotherRseqUserFallsBack) {
  percpu_test::expect_child_passes("StartupChild.ThreadRegisteredByAnotherRseqUserFallsBack",
                                   {"GLIBC_TUNABLES=glibc.pthread.rseq=0",
                                    "PERCPU_BACKEND=", "PERCPU_SLOTS=", "PERCPU_PRETEND_MISSING="});
}

// A thread whose glibc rseq area another component unregistered: the
// kernel then sets cpu_id to -1 and mm_cid to 0, and stops aborting its
// sequences.  Its operations must take the portable path, whichever word
// indexes the slots (in mm_cid mode a sequence that read mm_cid 0 as its
// slot raced the thread that holds id 0 and lost adds: 0.5 to 1.2 million
// of 20 million before the sequences tested cpu_id there too).  Pinned to
// different CPUs, so that the other thread runs at the same time.  The
// unregistered thread makes a twentieth of the adds, and stops early when
// the other thread is done: each of its adds takes the slot's lock and
// fences that slot, which in mm_cid mode is a broadcast membarrier that
// also holds up the other thread, so 2 million of them made this test 37 s
// of the release stage (now 0.4-0.6 s).  With the cpu_id test taken out
// of the mm_cid prologue again, this form still lost adds in 5 of 8 runs
// (the form with 2 million on both threads: 1 of 3).
TEST(Startup, ThreadWhoseAreaWasUnregisteredFallsBack) {
  const auto& b = percpu::backend();
  if (b.kind != percpu::backend_kind::rseq || b.source != percpu::rseq_source::glibc) {
    GTEST_SKIP() << "needs glibc's rseq registration";
  }
  auto allowed = percpu::allowed_cpus();
  if (allowed.size() < 2) GTEST_SKIP() << "needs two CPUs";
  percpu::storage<std::int64_t> s;
  const long adds = percpu_test::scaled(2'000'000, 50'000);
  std::atomic<int> ready{0};
  std::atomic<bool> registered_done{false};
  long unregistered_adds = 0;
  auto run = [&](unsigned cpu, bool unregister) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    EXPECT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
    if (unregister) {
      // Unregistration names the length glibc registered: 32, the original
      // struct rseq (glibc 2.36's __rseq_size says 20, the features used).
      char* area = detail::arch::thread_pointer() + __rseq_offset;
      constexpr int rseq_flag_unregister = 1;
      constexpr unsigned registered_length = 32;
      EXPECT_EQ(syscall(__NR_rseq, area, registered_length, rseq_flag_unregister,
                        detail::arch::rseq_signature),
                0)
          << "errno " << errno;
      EXPECT_LT(detail::arch::slot_index(), 0);
    }
    ready.fetch_add(1);
    while (ready.load() < 2) {
    }
    if (unregister) {
      do {
        s.add(1);
      } while (++unregistered_adds < adds / 20 && !registered_done.load(std::memory_order_relaxed));
    } else {
      for (long i = 0; i < adds; ++i) s.add(1);
      registered_done.store(true, std::memory_order_relaxed);
    }
  };
  std::thread a(run, allowed[0], false);
  std::thread c(run, allowed[1], true);
  a.join();
  c.join();
  std::int64_t sum = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  EXPECT_EQ(sum, adds + unregistered_adds);
}

// ---- membarrier failing at run time --------------------------------------------

#if defined(__x86_64__)
constexpr std::uint32_t audit_arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr std::uint32_t audit_arch = AUDIT_ARCH_AARCH64;
#else
constexpr std::uint32_t audit_arch = 0;
#endif

// From now on, every membarrier system call of every thread fails with `err`.
bool forbid_membarrier(int err) {
  sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_membarrier, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (static_cast<std::uint32_t>(err) & 0xffff)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(sizeof code / sizeof code[0]), code};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  return syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &program) == 0;
}

// A seccomp filter installed after start-up makes every membarrier fail
// (EPERM, or ENOMEM as from the kernel's cpumask allocation).  Visits must
// still exclude the sequences - nothing added is lost while workers add and
// a visitor takes everything, CPU by CPU and all at once - and the process
// must not abort.
TEST(StartupChild, VisitsSurviveMembarrierFailingAtRunTime) {
  if (!in_child()) GTEST_SKIP() << "runs in a child process";
  if (percpu::backend().kind != percpu::backend_kind::rseq) GTEST_SKIP() << "rseq backend only";
  const char* err_text = std::getenv("PERCPU_TEST_MEMBARRIER_ERRNO");
  int err = err_text != nullptr ? static_cast<int>(std::strtol(err_text, nullptr, 10)) : EPERM;
  percpu::storage<std::int64_t> s;
  ASSERT_TRUE(forbid_membarrier(err)) << "seccomp: " << errno;
  auto allowed = percpu::allowed_cpus();
  std::atomic<bool> done{false};
  std::vector<std::int64_t> added(allowed.size(), 0);
  std::vector<std::thread> workers;
  for (std::size_t i = 0; i < allowed.size(); ++i) {
    workers.emplace_back([&, i] {
      pin_to(allowed[i]);
      std::int64_t n = 0;
      for (; !done.load(std::memory_order_relaxed); ++n) s.add(1);
      added[i] = n;
    });
  }
  std::int64_t taken = 0;
  auto take = [&](std::int64_t& v) {
    taken += v;
    v = 0;
  };
  // Scaled (tests/test_scale.hpp): every fence here runs on each CPU in
  // turn, which took 141 s of a 191 s suite in an emulated 8-CPU guest.
  for (int round = 0, rounds = percpu_test::scaled(100, 10); round < rounds; ++round) {
    s.visit_all([&](unsigned, std::int64_t& v) { take(v); });
    for (unsigned cpu : allowed) s.visit(cpu, take);
  }
  done = true;
  for (auto& w : workers) w.join();
  std::int64_t total = 0;
  std::int64_t left = 0;
  for (auto n : added) total += n;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { left += v; });
  EXPECT_EQ(taken + left, total);
  EXPECT_GT(taken, 0);
  // A lasting failure is remembered (fences then go straight to running on
  // the CPUs); ENOMEM is taken as passing, and retried each time.
  EXPECT_EQ(detail::membarrier_failure(), err == ENOMEM ? 0 : err);
}

TEST(Startup, VisitsSurviveMembarrierFailingAtRunTime) {
  for (const char* err : {"PERCPU_TEST_MEMBARRIER_ERRNO=1", "PERCPU_TEST_MEMBARRIER_ERRNO=12"}) {
    SCOPED_TRACE(err);
    percpu_test::expect_child_passes(
        "StartupChild.VisitsSurviveMembarrierFailingAtRunTime",
        {err, "PERCPU_BACKEND=", "PERCPU_SLOTS=", "PERCPU_PRETEND_MISSING="});
  }
}

// ---- a possible-CPU override that contradicts the kernel -------------------------

// PERCPU_SYSFS_CPU_DIR names fewer possible CPUs than the kernel has.  With
// rseq, cpu_id indexes every per-CPU array, so the slots must cover the
// kernel's CPUs whatever the override says: an add on the highest CPU must
// land inside the structure.
TEST(StartupChild, PossibleCpuOverrideBelowTheKernelsIsIgnoredWithRseq) {
  if (!in_child()) GTEST_SKIP() << "runs in a child process";
  unsigned highest = percpu::allowed_cpus().back();
  ASSERT_TRUE(pin_to(highest));
  percpu::storage<std::int64_t> s;
  if (percpu::backend().kind == percpu::backend_kind::rseq) {
    EXPECT_GT(percpu::cpu_count(), highest);
    EXPECT_NE(percpu::backend().reason.find("ignored"), std::string::npos)
        << percpu::backend().reason;
  }
  for (int i = 0; i < 1000; ++i) s.add(1);
  std::int64_t sum = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  EXPECT_EQ(sum, 1000);
}

TEST(Startup, PossibleCpuOverrideBelowTheKernelsIsIgnoredWithRseq) {
  if (percpu::allowed_cpus().back() == 0) GTEST_SKIP() << "needs a CPU other than 0";
  std::string dir = "/tmp/percpu_sysfs_" + std::to_string(getpid());
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  std::ofstream(dir + "/possible") << "0\n";
  std::ofstream(dir + "/online") << "0\n";
  percpu_test::expect_child_passes(
      "StartupChild.PossibleCpuOverrideBelowTheKernelsIsIgnoredWithRseq",
      {"PERCPU_SYSFS_CPU_DIR=" + dir, "PERCPU_BACKEND=", "PERCPU_SLOTS="});
  (void)system(("rm -rf " + dir).c_str());
}

}  // namespace
