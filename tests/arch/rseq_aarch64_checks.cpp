// The single-threaded checks of the aarch64 sequences: environment,
// descriptors, cpu_id, each operation's results and every `status` exit.
#include <linux/membarrier.h>
#include <sys/auxv.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "percpu/runtime/detail/arch.hpp"
#include "rseq_aarch64_test.hpp"

// The rseq descriptors of this program, gathered by the linker.
extern "C" {
extern const char __start___rseq_cs[] __attribute__((weak));
extern const char __stop___rseq_cs[] __attribute__((weak));
}

namespace archtest {

namespace {

constexpr unsigned long at_rseq_feature_size = 27;  // AT_RSEQ_FEATURE_SIZE (Linux 6.3)
constexpr unsigned long at_rseq_align = 28;         // AT_RSEQ_ALIGN

void* item(std::uintptr_t i) {
  return reinterpret_cast<void*>(i << 4);
}

// The guard of unconditional pushes, as in sequences.hpp.
const std::uint64_t always_zero = 0;

}  // namespace

bool check_environment() {
  utsname u{};
  uname(&u);
  long query = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  bool expedited_rseq = query >= 0 && (query & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) != 0;
  std::printf("environment: %s %s, %u possible CPUs, %zu allowed\n", u.release, u.machine,
              static_cast<unsigned>(get_nprocs_conf()), allowed_cpus().size());
  std::printf("  glibc rseq registration: __rseq_size %u, __rseq_offset %td\n", __rseq_size,
              __rseq_offset);
  std::printf("  auxv: AT_RSEQ_FEATURE_SIZE %lu, AT_RSEQ_ALIGN %lu (0: not given)\n",
              getauxval(at_rseq_feature_size), getauxval(at_rseq_align));
  std::printf("  membarrier query 0x%lx: PRIVATE_EXPEDITED_RSEQ %s\n", query,
              expedited_rseq ? "yes" : "no");
  std::printf("  sequences: signature 0x%08x, fault injection %s\n", rs::rseq_signature,
              PERCPU_FAULT_INJECTION ? "compiled in" : "off (NDEBUG)");
  CHECK(expedited_rseq);
  if (expedited_rseq) {
    CHECK(syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0);
  }
  return __rseq_size > 0;
}

namespace {

// Whether the instruction word at `pc` is a branch (b, b.cond) to `target`.
bool branches_to(std::uint32_t insn, std::uint64_t pc, std::uint64_t target) {
  std::int64_t offset;
  if ((insn & 0xfc000000u) == 0x14000000u) {  // b imm26
    offset = static_cast<std::int64_t>(static_cast<std::int32_t>(insn << 6) >> 6) * 4;
  } else if ((insn & 0xff000010u) == 0x54000000u) {  // b.cond imm19
    offset = static_cast<std::int64_t>(static_cast<std::int32_t>(insn << 8) >> 13) * 4;
  } else {
    return false;
  }
  return pc + static_cast<std::uint64_t>(offset) == target;
}

}  // namespace

// Every descriptor the program's sequences put in __rseq_cs: version and
// flags 0, a short critical section, and the signature in the 4 bytes
// before an abort handler that lies outside the section.  And the rule of
// PERCPU_RSEQ_BEGIN: the rseq_cs store (`str x9, [x11, #8]`, 0xf9000569)
// is the instruction just before the start, and no branch of the prologue
// lands on the start (the kernel clears rseq_cs when it preempts a thread
// outside the range, so a store followed by a branch into the range
// protects nothing; mm_cid mode's prologue did that until 2026-12-07).
void check_descriptors() {
  const char* p = __start___rseq_cs;
  unsigned count = 0;
  for (; p != nullptr && p + sizeof(rseq_cs) <= __stop___rseq_cs; p += sizeof(rseq_cs)) {
    rseq_cs d;  // the kernel's layout of a descriptor (<linux/rseq.h>)
    std::memcpy(&d, p, sizeof d);
    std::uint32_t sig;
    std::memcpy(&sig, reinterpret_cast<const void*>(d.abort_ip - 4), sizeof sig);
    CHECK(d.version == 0 && d.flags == 0);
    CHECK(d.post_commit_offset > 0 && d.post_commit_offset < 1024);
    CHECK(d.abort_ip < d.start_ip || d.abort_ip >= d.start_ip + d.post_commit_offset);
    CHECK(sig == rs::rseq_signature);
    std::uint32_t before[16];
    std::memcpy(before, reinterpret_cast<const void*>(d.start_ip - sizeof before), sizeof before);
    CHECK(before[15] == 0xf9000569u);
    for (unsigned i = 0; i < 16; ++i) {
      CHECK(!branches_to(before[i], d.start_ip - sizeof before + 4 * i, d.start_ip));
    }
    ++count;
  }
  std::printf(
      "descriptors: %u in __rseq_cs, each with signature 0x%08x before its handler,\n"
      "  its rseq_cs store just before its start, and no branch onto the start\n",
      count, rs::rseq_signature);
  CHECK(count >= 10);  // at least one per sequence this program uses
}

void check_cpu_id() {
  unsigned checked = 0;
  for (unsigned cpu : allowed_cpus()) {
    CHECK(pin(cpu));
    CHECK(rs::cpu_id() == static_cast<int>(cpu));
    CHECK(rs::cpu_id() == sched_getcpu());
    ++checked;
  }
  unpin();
  std::printf("cpu_id: equals sched_getcpu() pinned on each of %u CPUs\n", checked);
}

namespace {

void check_adds(block& b, unsigned cpu, unsigned other) {
  std::int64_t& slot = b.on(cpu)->slot;
  const std::uint32_t* stop0 = b.stop0();
  CHECK(run(stop0, [&] { return rs::add(b.slot0(), stop0, 5); }) == status::committed);
  CHECK(slot == 5);
  CHECK(run(stop0, [&] { return rs::add_release(b.slot0(), stop0, -2); }) == status::committed);
  CHECK(slot == 3);
  unsigned where = ~0u;
  bool negative = true;
  CHECK(run(stop0, [&] { return rs::add_sign(b.slot0(), stop0, 10, &where, &negative); }) ==
        status::committed);
  CHECK(slot == 13 && !negative && where == cpu);
  CHECK(run(stop0, [&] { return rs::add_sign(b.slot0(), stop0, -14, &where, &negative); }) ==
        status::committed);
  CHECK(slot == -1 && negative && where == cpu);
  CHECK(run(stop0, [&] { return rs::add_sign(b.slot0(), stop0, 14, &where, &negative); }) ==
        status::committed);
  CHECK(slot == 13 && !negative && where == cpu);
  auto cas = [&](unsigned on, std::int64_t expected, std::int64_t desired) {
    return run(stop0,
               [&] { return rs::compare_and_store(b.slot0(), stop0, on, expected, desired); });
  };
  CHECK(cas(cpu, 13, 100) == status::committed && slot == 100);
  CHECK(cas(cpu, 13, 7) == status::failed && slot == 100);  // another value
  if (other != cpu) CHECK(cas(other, 100, 7) == status::moved && slot == 100);
}

void check_push_pop(block& b, unsigned cpu) {
  cpu_array& a = b.on(cpu)->array;
  const std::uint32_t* stop0 = b.stop0();
  std::uint64_t generation = 7;
  auto push = [&](void* it, std::uint64_t expected) {
    return run(stop0, [&] { return rs::push(b.arr0(), stop0, it, &generation, expected); });
  };
  auto pop = [&](void** out) { return run(stop0, [&] { return rs::pop(b.arr0(), stop0, out); }); };
  void* out = nullptr;
  CHECK(pop(&out) == status::failed);  // empty
  CHECK(push(item(1), 7) == status::committed && a.count == 1 && a.items[0] == item(1));
  CHECK(push(item(2), 8) == status::failed && a.count == 1);  // guard
  a.capacity = 3;
  CHECK(push(item(2), 7) == status::committed && push(item(3), 7) == status::committed);
  CHECK(push(item(4), 7) == status::failed && a.count == 3);  // full
  for (std::uintptr_t i = 3; i >= 1; --i) CHECK(pop(&out) == status::committed && out == item(i));
  CHECK(pop(&out) == status::failed && a.count == 0);
  a.capacity = max_items;
}

void check_batches(block& b, unsigned cpu) {
  cpu_array& a = b.on(cpu)->array;
  const std::uint32_t* stop0 = b.stop0();
  std::uint64_t generation = 1;
  std::size_t moved = 99;
  void* in[10];
  for (std::uintptr_t i = 0; i < 10; ++i) in[i] = item(i + 1);
  auto push_batch = [&](void* const* from, std::size_t n, std::uint64_t expected) {
    return run(stop0, [&] {
      return rs::push_batch(b.arr0(), stop0, from, n, &moved, &generation, expected);
    });
  };
  auto pop_batch = [&](void** to, std::size_t n) {
    return run(stop0, [&] { return rs::pop_batch(b.arr0(), stop0, to, n, &moved); });
  };
  a.capacity = 8;
  CHECK(push_batch(in, 5, 1) == status::committed && moved == 5 && a.count == 5);
  CHECK(push_batch(in + 5, 5, 1) == status::committed && moved == 3 && a.count == 8);
  CHECK(push_batch(in, 1, 1) == status::failed && a.count == 8);  // full
  a.count = 6;
  CHECK(push_batch(in, 1, 2) == status::failed && a.count == 6);  // guard
  a.count = 8;
  for (std::uintptr_t i = 0; i < 8; ++i) CHECK(a.items[i] == item(i + 1));
  void* out[10] = {};
  CHECK(pop_batch(out, 3) == status::committed && moved == 3 && a.count == 5);
  CHECK(out[0] == item(6) && out[1] == item(7) && out[2] == item(8));  // array order
  CHECK(pop_batch(out, 10) == status::committed && moved == 5 && a.count == 0);
  for (std::uintptr_t i = 0; i < 5; ++i) CHECK(out[i] == item(i + 1));
  CHECK(pop_batch(out, 1) == status::committed && moved == 0);  // empty: nothing moved
  a.capacity = max_items;
}

template <unsigned Words>
void check_record_words(block& b, unsigned cpu, unsigned other) {
  record_array& r = b.on(cpu)->records;
  const std::uint32_t* stop0 = b.stop0();
  std::uint64_t buffer[3 * Words] = {};
  r = {buffer, 0, 2, {}};
  std::uint64_t record[Words];
  unsigned where = ~0u;
  auto push = [&](unsigned on, unsigned bit) {
    for (unsigned i = 0; i < Words; ++i) record[i] = 1000 * (r.count + 1) + i;
    std::size_t offset = offsetof(record_array, scoreboard) + std::size_t{bit / 64} * 8;
    return run(stop0, [&] {
      return rs::push_record<Words>(b.rec0(), stop0, on, record, offset,
                                    std::uint64_t{1} << (bit % 64), &where);
    });
  };
  CHECK(push(cpu, 3) == status::committed && where == cpu && r.count == 1);
  CHECK(push(cpu, 511) == status::committed && r.count == 2);
  CHECK(r.scoreboard[0] == (std::uint64_t{1} << 3) && r.scoreboard[7] == (std::uint64_t{1} << 63));
  for (unsigned k = 0; k < 2; ++k) {
    for (unsigned i = 0; i < Words; ++i) CHECK(buffer[k * Words + i] == 1000 * (k + 1) + i);
  }
  CHECK(buffer[2 * Words] == 0);
  where = ~0u;
  CHECK(push(cpu, 5) == status::failed && where == cpu && r.count == 2);  // full
  if (other != cpu) {
    r.count = 1;
    where = ~0u;
    CHECK(push(other, 5) == status::failed && where == cpu && r.count == 1);  // moved
  }
  b.on(cpu)->records = {b.on(cpu)->record_buffer, 0, max_records, {}};
}

}  // namespace

void check_operations() {
  std::vector<unsigned> cpus = allowed_cpus();
  unsigned cpu = cpus.front();
  unsigned other = cpus.size() > 1 ? cpus[1] : cpu;
  block b;
  CHECK(pin(cpu));
  check_adds(b, cpu, other);
  check_push_pop(b, cpu);
  check_batches(b, cpu);
  check_record_words<1>(b, cpu, other);
  check_record_words<2>(b, cpu, other);
  check_record_words<5>(b, cpu, other);
  check_record_words<8>(b, cpu, other);
  unpin();
  std::printf(
      "operations: add, add_release, add_sign, compare_and_store, push, pop,\n"
      "  push_batch, pop_batch, push_record<1,2,5,8>: results and failed exits on CPU %u\n",
      cpu);
}

namespace {

// One attempt at each operation on the calling thread's CPU `cpu`, with
// arguments under which it would commit.  Used to check the exits that come
// before any commit: stopped, unregistered, and injected aborts.
struct attempt {
  const char* name;
  status (*run)(block& b, unsigned cpu);
};
bool scratch_negative;
unsigned scratch_cpu;
std::size_t scratch_moved;
void* scratch_items[2];
const std::uint64_t scratch_record[2] = {1, 2};
const attempt attempts[] = {
    {"add", [](block& b, unsigned) { return rs::add(b.slot0(), b.stop0(), 1); }},
    {"add_release", [](block& b, unsigned) { return rs::add_release(b.slot0(), b.stop0(), 1); }},
    {"add_sign",
     [](block& b, unsigned) {
       return rs::add_sign(b.slot0(), b.stop0(), 1, &scratch_cpu, &scratch_negative);
     }},
    {"compare_and_store",
     [](block& b, unsigned cpu) {
       return rs::compare_and_store(b.slot0(), b.stop0(), cpu, b.on(cpu)->slot, 42);
     }},
    {"push",
     [](block& b, unsigned) { return rs::push(b.arr0(), b.stop0(), item(9), &always_zero, 0); }},
    {"pop", [](block& b, unsigned) { return rs::pop(b.arr0(), b.stop0(), scratch_items); }},
    {"push_batch",
     [](block& b, unsigned) {
       return rs::push_batch(b.arr0(), b.stop0(), scratch_items, 2, &scratch_moved, &always_zero,
                             0);
     }},
    {"pop_batch",
     [](block& b, unsigned) {
       return rs::pop_batch(b.arr0(), b.stop0(), scratch_items, 2, &scratch_moved);
     }},
    {"push_record",
     [](block& b, unsigned cpu) {
       return rs::push_record<2>(b.rec0(), b.stop0(), cpu, scratch_record,
                                 offsetof(record_array, scoreboard), 1, &scratch_cpu);
     }},
};

// The words the commits write, to see that nothing committed.
struct committed_state {
  std::int64_t slot;
  std::uint32_t items;
  std::uint32_t records;
  bool operator==(const committed_state&) const = default;
};
committed_state state_of(block& b, unsigned cpu) {
  return {b.on(cpu)->slot, b.on(cpu)->array.count, b.on(cpu)->records.count};
}

// A block whose CPU `cpu` has something to pop.
void prepare(block& b, unsigned cpu) {
  b.on(cpu)->slot = 5;
  b.on(cpu)->array.items[0] = item(1);
  b.on(cpu)->array.items[1] = item(2);
  b.on(cpu)->array.count = 2;
}

}  // namespace

void check_stopped_exits() {
  std::vector<unsigned> cpus = allowed_cpus();
  unsigned cpu = cpus.front();
  unsigned other = cpus.size() > 1 ? cpus[1] : cpu;
  block b;
  prepare(b, cpu);
  CHECK(pin(cpu));
  b.on(cpu)->stop = 1;
  committed_state before = state_of(b, cpu);
  for (const attempt& a : attempts) {
    status st = retry_aborts([&] { return a.run(b, cpu); });
    if (st != status::stopped) std::printf("  %s: %s, not stopped\n", a.name, name(st));
    CHECK(st == status::stopped);
  }
  CHECK(state_of(b, cpu) == before);
  // The CPU test of compare_and_store and push_record comes before the stop
  // test, as on x86-64: a thread on another CPU is `moved` (compare_and_store)
  // or fails (push_record), stopped or not.
  if (other != cpu) {
    CHECK(retry_aborts([&] { return rs::compare_and_store(b.slot0(), b.stop0(), other, 5, 6); }) ==
          status::moved);
    CHECK(retry_aborts([&] {
            return rs::push_record<2>(b.rec0(), b.stop0(), other, scratch_record, 16, 1,
                                      &scratch_cpu);
          }) == status::failed);
  }
  b.on(cpu)->stop = 0;
  for (const attempt& a : attempts)
    CHECK(run(b.stop0(), [&] { return a.run(b, cpu); }) == status::committed);
  unpin();
  std::printf(
      "stopped: all 9 sequences leave through `stopped` on a stopped CPU, commit nothing,\n"
      "  and commit once it is started\n");
}

// A thread whose rseq area is not registered (the library's own area before
// its first use) finds cpu_id negative: every sequence leaves through
// `unregistered` before anything else.  The area here is a fake one in
// initial-exec TLS, where the library keeps its own, found through
// arch::thread_pointer() as start-up finds the library's area.
void check_unregistered() {
  static __thread __attribute__((tls_model("initial-exec"))) struct rseq fake_area;
  fake_area.cpu_id = RSEQ_CPU_ID_UNINITIALIZED;
  std::ptrdiff_t saved = percpu::detail::runtime.rseq_offset;
  char* tp = percpu::detail::arch::thread_pointer();
  CHECK(tp == static_cast<char*>(__builtin_thread_pointer()));
  percpu::detail::runtime.rseq_offset = reinterpret_cast<char*>(&fake_area) - tp;
  block b;
  unsigned cpu = static_cast<unsigned>(sched_getcpu());
  prepare(b, cpu);
  committed_state before = state_of(b, cpu);
  CHECK(rs::cpu_id() == RSEQ_CPU_ID_UNINITIALIZED);
  for (const attempt& a : attempts) CHECK(a.run(b, cpu) == status::unregistered);
  CHECK(state_of(b, cpu) == before);
  percpu::detail::runtime.rseq_offset = saved;
  CHECK(rs::cpu_id() == sched_getcpu());
  std::printf("unregistered: all 9 sequences leave through `unregistered` when cpu_id is -1\n");
}

// Debug builds: a countdown that reaches zero just before a commit leaves
// through the abort handler, as a kernel abort would: the commit undone,
// the speculative stores made.
void check_fault_injection() {
#if PERCPU_FAULT_INJECTION
  unsigned cpu = allowed_cpus().front();
  CHECK(pin(cpu));
  for (const attempt& a : attempts) {
    // A kernel abort (preemption) of either attempt spoils the count: the
    // pair is tried again.
    bool done = false;
    for (int tries = 0; tries < 100 && !done; ++tries) {
      block b;
      prepare(b, cpu);
      percpu_fault_countdown = 2;
      if (a.run(b, cpu) != status::committed) continue;
      committed_state before = state_of(b, cpu);
      status second = a.run(b, cpu);
      if (second == status::aborted && percpu_fault_countdown != 0) continue;
      done = true;
      if (second != status::aborted) std::printf("  %s: %s, not aborted\n", a.name, name(second));
      CHECK(second == status::aborted);
      CHECK(state_of(b, cpu) == before);
      cpu_array& arr = b.on(cpu)->array;
      if (a.run == attempts[4].run) CHECK(arr.items[arr.count] == item(9));  // push
    }
    percpu_fault_countdown = INT32_MAX;
    CHECK(done);
  }
  unpin();
  std::printf(
      "fault injection: every sequence aborts through its handler when the countdown\n"
      "  ends, commit undone, speculative stores made\n");
#else
  std::printf("fault injection: not compiled in (NDEBUG build)\n");
#endif
}

}  // namespace archtest
