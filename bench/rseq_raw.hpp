// rseq_raw.hpp - the floor of a per-CPU operation: a restartable sequence
// that does the operation and nothing else.
//
// Problem: a per-CPU add or a per-CPU pointer-stack pop can be held against
// a thread-local add or an allocator, but neither says how close percpu's
// sequences are to the fastest per-CPU operation possible.  That floor is a
// sequence that publishes its descriptor, reads cpu_id, computes the slot,
// and commits: no stop word (nobody can work on another CPU's data), no
// registration test (glibc registered every thread before it ran), no
// guard, no retry bookkeeping.  What percpu pays above it buys the stop
// words (remote visits, resets, invalidate), threads that glibc did not
// register, and the portable fallback (see docs/benchmarks.md).
//
// Mechanism: glibc's rseq area (__rseq_offset, glibc 2.35 and later); the
// same code-layout care as the library's own sequences
// (percpu/runtime/detail/arch/x86_64/rseq.hpp): one asm goto, the descriptor in
// __rseq_cs and the signed abort handler in __rseq_failure, both joining
// the section group of the code around them, and a cold abort path that
// restarts the sequence.  Per-CPU data is one 64-byte line per CPU in an
// ordinary array, indexed by cpu_id.  x86-64 only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#if defined(__x86_64__) && __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#define PERCPU_BENCH_HAVE_RSEQ_RAW 1
#endif

namespace percpu_bench::rseq_raw {

#if defined(PERCPU_BENCH_HAVE_RSEQ_RAW)

// glibc's offset of the rseq area from the thread pointer, copied once so
// that a sequence reads it with one load (glibc's own symbol takes two,
// through the GOT).  Set by available().
inline std::ptrdiff_t area_offset = 0;

// Whether glibc registered rseq for this process (and so for every thread
// it starts); sets area_offset.  False under valgrind, with
// GLIBC_TUNABLES=glibc.pthread.rseq=0, or with a glibc older than 2.35.
inline bool available() noexcept {
  if (__rseq_size == 0) return false;
  area_offset = __rseq_offset;
  auto* area = reinterpret_cast<const volatile std::int32_t*>(
      static_cast<const char*>(__builtin_thread_pointer()) + area_offset);
  return area[1] >= 0;  // cpu_id of the calling thread
}

// One CPU's data: a 64-byte line, so that CPUs never share one.
struct alignas(64) line {
  std::int64_t value = 0;
  // The pointer stack of pop/push: items[0 .. count) are cached objects.
  void** items = nullptr;
  std::uint32_t count = 0;
  std::uint32_t capacity = 0;
};
static_assert(offsetof(line, items) == 8 && offsetof(line, count) == 16 &&
                  offsetof(line, capacity) == 20 && sizeof(line) == 64,
              "the sequences below hard-code this layout");

// Start of every sequence: the descriptor, its publication in rseq_cs, the
// start label, and cpu_id * 64 in %rax.  1: start, 2: post-commit,
// 3: descriptor, 4: abort handler.
#define PERCPU_RAW_BEGIN                \
  ".pushsection __rseq_cs, \"aw?\"\n\t" \
  ".balign 32\n\t"                      \
  "3:\n\t"                              \
  ".long 0x0, 0x0\n\t"                  \
  ".quad 1f, (2f - 1f), 4f\n\t"         \
  ".popsection\n\t"                     \
  "leaq 3b(%%rip), %%rax\n\t"           \
  "movq %%rax, %%fs:8(%[area])\n\t"     \
  "1:\n\t"                              \
  "movl %%fs:4(%[area]), %%eax\n\t"     \
  "shlq $6, %%rax\n\t"

// The post-commit label and the abort handler, signed with glibc's
// RSEQ_SIG for x86-64 (<sys/rseq.h>; each asm passes it as [sig]).
#define PERCPU_RAW_END                       \
  "2:\n\t"                                   \
  ".pushsection __rseq_failure, \"ax?\"\n\t" \
  ".byte 0x0f, 0xb9, 0x3d\n\t"               \
  ".long %c[sig]\n\t"                        \
  "4:\n\t"                                   \
  "jmp %l[aborted]\n\t"                      \
  ".popsection\n\t"

// lines[cpu].value += v.  The add is the commit.  Its operand is addressed
// through one register, as percpu's add does: an Intel core forwards a store
// to the next load of the same location much faster so (the x86-64 sequences).
inline void add(line* lines, std::int64_t v) noexcept {
  for (;;) {
    asm goto(PERCPU_RAW_BEGIN
             "addq %[lines], %%rax\n\t"
             "addq %[v], (%%rax)\n\t" PERCPU_RAW_END
             :
             : [sig] "i"(RSEQ_SIG), [area] "r"(area_offset), [lines] "r"(lines), [v] "er"(v)
             : "memory", "cc", "rax"
             : aborted);
    return;
  aborted:
    __attribute__((cold));
  }
}

// items[--count] of this CPU's stack, or nullptr when it is empty.  The
// count store commits.
inline void* pop(line* lines) noexcept {
  for (;;) {
    void* item;
    asm goto(PERCPU_RAW_BEGIN
             "addq %[lines], %%rax\n\t"
             "movl 16(%%rax), %%ecx\n\t"
             "testl %%ecx, %%ecx\n\t"
             "jz %l[empty]\n\t"
             "subl $1, %%ecx\n\t"
             "movq 8(%%rax), %%rdx\n\t"
             "movq (%%rdx, %%rcx, 8), %[item]\n\t"
             "movl %%ecx, 16(%%rax)\n\t" PERCPU_RAW_END
             : [item] "=r"(item)
             : [sig] "i"(RSEQ_SIG), [area] "r"(area_offset), [lines] "r"(lines)
             : "memory", "cc", "rax", "rcx", "rdx"
             : aborted, empty);
    return item;
  empty:
    return nullptr;
  aborted:
    __attribute__((cold));
  }
}

// items[count++] = item on this CPU's stack; false when it is full.  The
// item store is speculative (above count); the count store commits.
inline bool push(line* lines, void* item) noexcept {
  for (;;) {
    asm goto(PERCPU_RAW_BEGIN
             "addq %[lines], %%rax\n\t"
             "movl 16(%%rax), %%ecx\n\t"
             "cmpl 20(%%rax), %%ecx\n\t"
             "jae %l[full]\n\t"
             "movq 8(%%rax), %%rdx\n\t"
             "movq %[item], (%%rdx, %%rcx, 8)\n\t"
             "addl $1, %%ecx\n\t"
             "movl %%ecx, 16(%%rax)\n\t" PERCPU_RAW_END
             :
             : [sig] "i"(RSEQ_SIG), [area] "r"(area_offset), [lines] "r"(lines), [item] "r"(item)
             : "memory", "cc", "rax", "rcx", "rdx"
             : aborted, full);
    return true;
  full:
    return false;
  aborted:
    __attribute__((cold));
  }
}

#undef PERCPU_RAW_BEGIN
#undef PERCPU_RAW_END

// One line per possible CPU slot.
class lines {
 public:
  explicit lines(unsigned cpus) : lines_(std::make_unique<line[]>(cpus)), cpus_(cpus) {}
  line* data() noexcept { return lines_.get(); }
  unsigned size() const noexcept { return cpus_; }

 private:
  std::unique_ptr<line[]> lines_;
  unsigned cpus_;
};

#else

inline bool available() noexcept {
  return false;
}

#endif

}  // namespace percpu_bench::rseq_raw
