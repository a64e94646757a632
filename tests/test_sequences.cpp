// The shared per-CPU sequences: semantics alone, and conservation under load.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/rseq.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <thread>
#include <vector>

#include "percpu/core/storage.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "storm_util.hpp"

// The rseq descriptors of this program, gathered by the linker.
extern "C" {
extern const char __start___rseq_cs[] __attribute__((weak));
extern const char __stop___rseq_cs[] __attribute__((weak));
extern const char __start___rseq_failure[] __attribute__((weak));
extern const char __stop___rseq_failure[] __attribute__((weak));
}

namespace {

namespace seq = percpu::detail::seq;
using percpu::detail::cpu_array;

// Per-CPU arrays of `capacity` items each, with their backing buffers.
struct arrays {
  explicit arrays(std::uint32_t capacity) : buffers(percpu::cpu_count()) {
    for (unsigned cpu = 0; cpu < per_cpu.cpus(); ++cpu) {
      buffers[cpu].resize(capacity);
      per_cpu.on(cpu)->items = buffers[cpu].data();
      per_cpu.on(cpu)->capacity = capacity;
    }
  }
  cpu_array* arr0() { return per_cpu.on(0); }
  std::uint32_t* stop0() { return per_cpu.stops().words(); }
  std::size_t total() {
    std::size_t n = 0;
    per_cpu.for_each_cpu([&](unsigned, cpu_array& a) { n += a.count; });
    return n;
  }
  percpu::storage<cpu_array> per_cpu;
  std::vector<std::vector<void*>> buffers;
};

void* item(std::uintptr_t i) {
  return reinterpret_cast<void*>(i << 4);
}

// Item i of thread t in PushPopConservesObjects: distinct for every pair.
void* thread_item(int t, int i) {
  return item(static_cast<std::uintptr_t>(t) * 1000 + static_cast<std::uintptr_t>(i) + 1);
}

TEST(Sequences, PushPopIsLastInFirstOutPerCpu) {
  arrays a(4);
  // Pin so every operation sees the same CPU's array.
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(percpu::allowed_cpus().front()));
    // (The portable backend may use any free slot, but a lone pinned thread
    // always finds its preferred slot free.)
    EXPECT_EQ(seq::pop(a.arr0(), a.stop0()), nullptr);
    for (std::uintptr_t i = 1; i <= 4; ++i) EXPECT_TRUE(seq::push(a.arr0(), a.stop0(), item(i)));
    EXPECT_FALSE(seq::push(a.arr0(), a.stop0(), item(5)));
    for (std::uintptr_t i = 4; i >= 1; --i) EXPECT_EQ(seq::pop(a.arr0(), a.stop0()), item(i));
    EXPECT_EQ(seq::pop(a.arr0(), a.stop0()), nullptr);
  }).join();
}

TEST(Sequences, BatchMovesAreBoundedAndOrdered) {
  arrays a(8);
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(percpu::allowed_cpus().front()));
    void* in[10];
    for (std::uintptr_t i = 0; i < 10; ++i) in[i] = item(i + 1);
    EXPECT_EQ(seq::push_batch(a.arr0(), a.stop0(), in, 5), 5u);
    EXPECT_EQ(seq::push_batch(a.arr0(), a.stop0(), in + 5, 5), 3u);  // only 3 fit
    EXPECT_EQ(seq::push_batch(a.arr0(), a.stop0(), in, 1), 0u);      // full
    EXPECT_EQ(seq::push_batch(a.arr0(), a.stop0(), in, 0), 0u);
    void* out[10] = {};
    EXPECT_EQ(seq::pop_batch(a.arr0(), a.stop0(), out, 3), 3u);
    // The top three, in array order: items 6, 7, 8.
    EXPECT_EQ(out[0], item(6));
    EXPECT_EQ(out[1], item(7));
    EXPECT_EQ(out[2], item(8));
    EXPECT_EQ(seq::pop_batch(a.arr0(), a.stop0(), out, 10), 5u);
    for (std::uintptr_t i = 0; i < 5; ++i) EXPECT_EQ(out[i], item(i + 1));
    EXPECT_EQ(seq::pop_batch(a.arr0(), a.stop0(), out, 10), 0u);
  }).join();
}

TEST(Sequences, GuardedPushesCommitOnlyWhileTheGuardHolds) {
  arrays a(8);
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(percpu::allowed_cpus().front()));
    std::uint64_t generation = 7;
    seq::guard current{&generation, 7};
    void* in[3] = {item(1), item(2), item(3)};
    EXPECT_TRUE(seq::push(a.arr0(), a.stop0(), item(9), current));
    EXPECT_EQ(seq::push_batch(a.arr0(), a.stop0(), in, 3, current), 3u);
    generation = 8;  // what an invalidate does before it fences
    EXPECT_FALSE(seq::push(a.arr0(), a.stop0(), item(10), current));
    EXPECT_EQ(seq::push_batch(a.arr0(), a.stop0(), in, 3, current), 0u);
    void* out[8] = {};
    ASSERT_EQ(seq::pop_batch(a.arr0(), a.stop0(), out, 8), 4u);  // nothing after the change
    EXPECT_EQ(out[0], item(9));
    EXPECT_EQ(out[3], item(3));
    EXPECT_TRUE(seq::push(a.arr0(), a.stop0(), item(11), seq::guard{&generation, 8}));
  }).join();
}

TEST(Sequences, CompareAndStore) {
  percpu::storage<std::int64_t> s;
  unsigned cpu = percpu::allowed_cpus().front();
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(cpu));
    unsigned here = percpu::current_cpu();
    EXPECT_TRUE(s.compare_and_store(here, 0, 5));
    EXPECT_EQ(*s.on(here), 5);
    EXPECT_FALSE(s.compare_and_store(here, 0, 6));
    EXPECT_EQ(*s.on(here), 5);
    if (percpu::backend().kind == percpu::backend_kind::rseq && percpu::cpu_count() > 1) {
      unsigned other = here == 0 ? 1 : 0;
      EXPECT_FALSE(s.compare_and_store(other, 0, 9));  // not on that CPU
      EXPECT_EQ(*s.on(other), 0);
    }
  }).join();
}

#if defined(__x86_64__)
// The store of rseq_cs before `start`: `movq %rax, %fs:d8(%base)`, d8 = 8
// (CPU mode) or -12 (mm_cid mode), with or without the SIB byte that a base
// of %rsp or %r12 needs.
bool stores_rseq_cs_before(std::uint64_t start) {
  const auto* at = reinterpret_cast<const unsigned char*>(start);
  auto displacement_ok = [](unsigned char d) { return d == 0x08 || d == 0xf4; };
  auto store = [&](int length) {  // 64 REX.W(B) 89 modrm [sib] d8
    const unsigned char* p = at - length;
    bool sib = length == 6;
    return p[0] == 0x64 && (p[1] & 0xfe) == 0x48 && p[2] == 0x89 && (p[3] & 0xf8) == 0x40 &&
           ((p[3] & 7) == 4) == sib && (!sib || p[4] == 0x24) && displacement_ok(p[length - 1]);
  };
  return store(5) || store(6);
}
#endif

// The rule of PERCPU_RSEQ (the x86-64 sequences): the kernel clears
// rseq_cs when it preempts a thread outside the range of the descriptor it
// holds, so the instruction that stores a descriptor must be the one just
// before its range, and nothing may jump into the range from outside: a
// thread preempted between a store and such a jump runs the sequence with
// no descriptor.  Every descriptor of this program: version and flags 0, an
// abort handler outside the range behind the registered signature, the
// rseq_cs store just before the start, and no jump (jmp or jcc with a 32-bit
// displacement) from the out-of-line code in __rseq_failure onto a start.
// (mm_cid mode's prologue did that until 2026-12-07: this fails on it.)
TEST(Sequences, EveryRangeIsEnteredRightAfterItsDescriptorStore) {
#if defined(__x86_64__)
  std::set<std::uint64_t> starts;
  for (const char* p = __start___rseq_cs; p != nullptr && p + sizeof(rseq_cs) <= __stop___rseq_cs;
       p += sizeof(rseq_cs)) {
    rseq_cs d;  // the kernel's layout of a descriptor (<linux/rseq.h>)
    std::memcpy(&d, p, sizeof d);
    EXPECT_EQ(d.version, 0u);
    EXPECT_EQ(d.flags, 0u);
    EXPECT_GT(d.post_commit_offset, 0u);
    EXPECT_TRUE(d.abort_ip < d.start_ip || d.abort_ip >= d.start_ip + d.post_commit_offset);
    std::uint32_t sig;
    std::memcpy(&sig, reinterpret_cast<const void*>(d.abort_ip - 4), sizeof sig);
    EXPECT_EQ(sig, percpu::detail::arch::rseq_signature);
    EXPECT_TRUE(stores_rseq_cs_before(d.start_ip))
        << "no rseq_cs store just before the range at " << reinterpret_cast<void*>(d.start_ip);
    starts.insert(d.start_ip);
  }
  EXPECT_GE(starts.size(), 16u);  // both modes' copies of each sequence used here
  const auto* code = reinterpret_cast<const unsigned char*>(__start___rseq_failure);
  const auto* end = reinterpret_cast<const unsigned char*>(__stop___rseq_failure);
  ASSERT_NE(code, nullptr);
  for (const unsigned char* p = code; p + 6 <= end; ++p) {
    std::int32_t rel;
    std::uint64_t target;
    if (p[0] == 0xe9) {  // jmp rel32
      std::memcpy(&rel, p + 1, 4);
      target = reinterpret_cast<std::uint64_t>(p + 5) + static_cast<std::uint64_t>(rel);
    } else if (p[0] == 0x0f && (p[1] & 0xf0) == 0x80) {  // jcc rel32
      std::memcpy(&rel, p + 2, 4);
      target = reinterpret_cast<std::uint64_t>(p + 6) + static_cast<std::uint64_t>(rel);
    } else {
      continue;
    }
    EXPECT_EQ(starts.count(target), 0u) << "a jump at " << static_cast<const void*>(p)
                                        << " into the range at " << reinterpret_cast<void*>(target);
  }
#else
  GTEST_SKIP() << "x86-64 encodings; tests/arch checks the aarch64 sequences";
#endif
}

// add() wraps modulo 2^64 like the machine's add, on every backend: the
// portable backend once added with signed C++ arithmetic, undefined at the
// ends of the range (UBSan's stage would stop on it) and wrong for a
// storage<std::uint64_t> used as a wrapping sequence number.
TEST(Sequences, AddWrapsModulo2To64) {
  percpu::storage<std::int64_t> s;
  percpu::storage<std::uint64_t> u;
  unsigned cpu = percpu::allowed_cpus().front();
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(cpu));
    constexpr std::int64_t most = std::numeric_limits<std::int64_t>::max();
    s.add(most);
    s.add(2);
    u.add(std::numeric_limits<std::uint64_t>::max());
    u.add(3);
  }).join();
  // Summed modulo 2^64 too: the adds may have used any slot.
  std::uint64_t sum = 0;
  std::uint64_t usum = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { sum += static_cast<std::uint64_t>(v); });
  u.for_each_cpu([&](unsigned, std::uint64_t& v) { usum += v; });
  EXPECT_EQ(static_cast<std::int64_t>(sum), std::numeric_limits<std::int64_t>::min() + 1);
  EXPECT_EQ(usum, 2u);
}

std::atomic<bool> handler_enabled{false};
percpu::storage<std::int64_t>* handler_target = nullptr;
std::atomic<long> handler_adds{0};

void add_from_handler(int) {
  if (!handler_enabled.load(std::memory_order_relaxed)) return;
  handler_target->add(1);
  handler_adds.fetch_add(1, std::memory_order_relaxed);
}

// No add is lost with threads racing on the same CPUs and signal handlers
// adding in the middle of the interrupted thread's own sequences.
TEST(Sequences, AddsAreExactUnderContentionAndSignals) {
  percpu::storage<std::int64_t> s;
  handler_target = &s;
  handler_adds = 0;
  percpu_test::scoped_handler handler_guard(SIGUSR1, add_from_handler);
  ASSERT_TRUE(handler_guard.installed());
  handler_enabled = true;
  constexpr int threads = 4;
  std::atomic<bool> done{false};
  std::vector<std::thread> workers;
  std::vector<pthread_t> handles(threads);
  std::vector<std::int64_t> added(threads, 0);
  std::atomic<int> ready{0};
  workers.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      handles[t] = pthread_self();
      ready++;
      std::int64_t step = t % 2 == 0 ? 1 : 3;
      std::int64_t mine = 0;
      while (!done.load(std::memory_order_relaxed)) {
        s.add(step);
        mine += step;
      }
      added[t] = mine;
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  percpu_test::storm_clock clock(std::chrono::milliseconds(300));
  while (clock.more([] { return handler_adds.load() > 0; })) {
    for (auto h : handles) pthread_kill(h, SIGUSR1);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  done = true;
  for (auto& w : workers) w.join();
  handler_enabled = false;
  std::int64_t sum = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  std::int64_t expected = handler_adds.load();
  for (auto a : added) expected += a;
  EXPECT_EQ(sum, expected);
  if (handler_adds.load() == 0) GTEST_SKIP() << "no signal was handled: the machine was too busy";
}

// push_record: copies the record, sets the scoreboard bit, commits the
// count; reports "full" (the CPU it ran on is the expected one) and "moved"
// (another CPU) apart.
TEST(Sequences, PushRecordFillsReportsFullAndMoved) {
  using percpu::detail::record_array;
  percpu::storage<record_array> per_cpu;
  constexpr std::uint32_t capacity = 3;
  std::vector<std::vector<std::uint64_t>> buffers(per_cpu.cpus());
  for (unsigned cpu = 0; cpu < per_cpu.cpus(); ++cpu) {
    buffers[cpu].resize(std::size_t{capacity} * 2);
    per_cpu.on(cpu)->records = buffers[cpu].data();
    per_cpu.on(cpu)->capacity = capacity;
  }
  std::uint32_t* stop0 = per_cpu.stops().words();
  std::thread([&] {
    ASSERT_TRUE(percpu_test::pin(percpu::allowed_cpus().front()));
    unsigned here = seq::current_cpu();
    unsigned on = ~0u;
    for (std::uint64_t i = 0; i < capacity; ++i) {
      std::uint64_t record[2] = {i + 1, 100 + i};
      EXPECT_TRUE(seq::push_record<2>(per_cpu.on(0), stop0, here, record, 70 + unsigned(i), &on));
      EXPECT_EQ(on, here);
    }
    std::uint64_t record[2] = {9, 9};
    EXPECT_FALSE(seq::push_record<2>(per_cpu.on(0), stop0, here, record, 1, &on));
    EXPECT_EQ(on, here);  // full
    if (per_cpu.cpus() > 1) {
      unsigned other = (here + 1) % per_cpu.cpus();
      EXPECT_FALSE(seq::push_record<2>(per_cpu.on(0), stop0, other, record, 1, &on));
      EXPECT_EQ(on, here);  // moved: not on `other`
      EXPECT_EQ(per_cpu.on(other)->count, 0u);
    }
    record_array& mine = *per_cpu.on(here);
    ASSERT_EQ(mine.count, capacity);
    for (std::uint64_t i = 0; i < capacity; ++i) {
      EXPECT_EQ(buffers[here][2 * i], i + 1);
      EXPECT_EQ(buffers[here][2 * i + 1], 100 + i);
    }
    // Bits 70, 71, 72: word 1, bits 6 to 8.
    EXPECT_EQ(mine.scoreboard[1], std::uint64_t{7} << 6);
    EXPECT_EQ(mine.scoreboard[0], 0u);
  }).join();
}

// Objects move between per-CPU arrays and threads; none is lost or doubled.
TEST(Sequences, PushPopConservesObjects) {
  constexpr std::uint32_t capacity = 32;
  arrays a(capacity);
  constexpr int threads = 4;
  constexpr int per_thread_items = 64;
  constexpr int rounds = 200000;
  std::vector<std::vector<void*>> held(threads);
  for (int t = 0; t < threads; ++t) {
    for (int i = 0; i < per_thread_items; ++i) held[t].push_back(thread_item(t, i));
  }
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto& mine = held[t];
      unsigned rng = static_cast<unsigned>(t) * 2654435761u + 1;
      void* batch[8];
      for (int r = 0; r < rounds; ++r) {
        rng = rng * 1664525u + 1013904223u;
        switch (rng >> 29) {
          case 0:
          case 1:
          case 2:
            if (!mine.empty() && seq::push(a.arr0(), a.stop0(), mine.back())) mine.pop_back();
            break;
          case 3:
          case 4:
          case 5:
            if (void* p = seq::pop(a.arr0(), a.stop0())) mine.push_back(p);
            break;
          case 6: {
            std::size_t n = std::min<std::size_t>(mine.size(), 8);
            std::size_t moved =
                seq::push_batch(a.arr0(), a.stop0(), mine.data() + mine.size() - n, n);
            // push_batch takes the first `moved` of the n offered.
            std::vector<void*> rest(mine.end() - static_cast<long>(n) + static_cast<long>(moved),
                                    mine.end());
            mine.resize(mine.size() - n);
            mine.insert(mine.end(), rest.begin(), rest.end());
            break;
          }
          default: {
            std::size_t moved = seq::pop_batch(a.arr0(), a.stop0(), batch, 8);
            mine.insert(mine.end(), batch, batch + moved);
          }
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  std::multiset<void*> all;
  for (auto& h : held) all.insert(h.begin(), h.end());
  a.per_cpu.for_each_cpu([&](unsigned, cpu_array& arr) {
    EXPECT_LE(arr.count, arr.capacity);
    all.insert(arr.items, arr.items + arr.count);
  });
  ASSERT_EQ(all.size(), static_cast<std::size_t>(threads * per_thread_items));
  std::multiset<void*> expected;
  for (int t = 0; t < threads; ++t) {
    for (int i = 0; i < per_thread_items; ++i) expected.insert(thread_item(t, i));
  }
  EXPECT_EQ(all, expected);
}

}  // namespace
