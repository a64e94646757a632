// percpu/runtime/detail/arch/aarch64/rseq.hpp - the library's restartable sequences, aarch64.
//
// Problem: the same as on x86-64 (arch/x86_64/rseq.hpp): an update of "this
// CPU's" data must belong together with the CPU number it was made for, at
// the price of a few plain instructions.  aarch64 adds a second problem:
// its loads and stores become visible to other CPUs in any order unless an
// instruction says otherwise, where x86-64 keeps loads in order and stores in
// order.  Every place where the x86-64 sequences lean on that is made explicit
// here, and only there: one load-acquire per sequence, on the stop word, and
// one store-release, in the commit of push_record and add_release.
//
// Mechanism, shared with the x86-64 file: each sequence publishes a
// descriptor (start, length, abort address) in the thread's rseq area, reads
// cpu_id, tests the structure's stop word for this CPU, prepares, and commits
// with one final store.  A preemption, migration or signal between the start
// label and the commit makes the kernel resume the thread at the abort
// handler, which leaves through `aborted`; the caller retries.
//
// Every sequence here:
//  - is one asm goto statement with numeric local labels (1: start,
//    2: post-commit, 3: descriptor in __rseq_cs, 4: abort handler in
//    __rseq_failure), both sections opened with the "?" flag so that they
//    join the section group of the code around them: when the linker
//    discards a duplicate copy of an inline function, that copy's descriptor
//    and handler go with it;
//  - precedes each abort handler with the signature glibc registers (below);
//  - finds the rseq area at tpidr_el0 + rseq_offset_now(), writes only its
//    rseq_cs field and reads only the slot index (cpu_id or mm_cid);
//  - leaves through `unregistered` when that is negative, through `stopped`
//    when the structure's stop word for this CPU is set, through `moved`
//    when a sequence bound to one CPU runs on another, and through `failed`
//    when its own condition fails (full, empty, guard), exactly as the
//    x86-64 sequences do, with the status values of arch.hpp;
//  - uses x9-x15 as scratch and clobbers x16/x17 (the fault-injection hook's
//    registers, and the ones a linker veneer may use for the branch from
//    __rseq_failure back into the function);
//  - uses no atomic read-modify-write: ordinary loads and stores, one ldar;
//  - branches to the C++ exit labels with tbnz (reach 32 KiB), cbnz and
//    b.cond (1 MiB): GCC keeps asm goto targets in the function's own
//    section, never in its .cold part, so the reach is the function's size.
// CPU c's copy is at p0 + (c << unit_shift): one shift serves every operand.
//
// Memory ordering (docs/design.md, "aarch64: the ordering argument"):
//  - the stop word is read with ldar before any data the sequence commits
//    to (see add());
//  - the commit is a plain str where every reader that needs the data is
//    ordered by something else (the fence of a stop, a happens-before edge,
//    single-copy atomicity of an aligned store), and stlr where a reader
//    that sees the committed word must also see what preceded it
//    (add_release, push_record);
//  - nothing else: the rseq_cs store and the index load concern only this
//    thread and the kernel on this CPU, which sees them in program order.
// Included by runtime/detail/arch.hpp only (which describes the interface).
#pragma once

#include <linux/rseq.h>

#include <cstddef>
#include <cstdint>

#include "percpu/runtime/detail/arch/aarch64/machine.hpp"
#include "percpu/runtime/detail/arch/rseq_descriptor.hpp"
#include "percpu/runtime/detail/runtime.hpp"

namespace percpu::detail::arch {

inline constexpr bool has_sequences = true;
// A seq_cst read-modify-write (LSE `ldaddal`/`casal`, or ldaxr/stlxr)
// orders the plain accesses around it only as far as its acquire and
// release halves go: a plain store before it may still be performed after
// a plain load after it.  fence.hpp adds a `dmb ish`.
inline constexpr bool rmw_is_full_barrier = false;

// glibc's RSEQ_SIG for aarch64 (also the kernel's selftests' and librseq's):
// BRK #0x45E0, encoded 0xd428bc00 (0xd4200000 | 0x45e0 << 5), which
// PERCPU_RSEQ_END emits before every abort handler.  The kernel compares
// the 32-bit word before the abort handler, read as data, with the
// registered value.  aarch64 instructions are little-endian even on a
// big-endian system, so `.inst` emits the same bytes everywhere, and the
// registered value is those bytes read in the data byte order.  A stray
// jump onto the word traps instead of running on.
#if defined(__AARCH64EB__)
inline constexpr std::uint32_t rseq_signature = 0x00bc28d4;
#else
inline constexpr std::uint32_t rseq_signature = 0xd428bc00;
#endif

// The assembly addresses these fields by offset.
static_assert(offsetof(struct rseq, cpu_id) == 4 && offsetof(struct rseq, rseq_cs) == 8,
              "the rseq sequences hard-code the rseq area's layout");

// Start of every sequence: the descriptor, its store in rseq_cs, the start
// label, and the slot index in w9 (x9 zero-extended), as on x86-64:
//
//   area = tpidr_el0 + (rseq_offset & ~31)
//   rs = tpidr_el0 + rseq_offset    // mm_cid mode: 20 past the area
//   if (rseq_offset % 32 != 0 && area->cpu_id < 0) goto unregistered
//   area->rseq_cs = &descriptor     // the last instruction before 1:
// 1:
//   index = *(int32_t*)(rs + 4)    // cpu_id or mm_cid
//   if (index < 0) goto unregistered
//
// The store (one 64-bit store, as the kernel requires) is the instruction
// just before the start in both modes (the x86-64 file's rule and the bug
// that made it; tests/arch checks it), for `and` and `add` more in CPU
// mode, unmeasured on arm64 hardware.  The mm_cid test is inline (another
// section may be out of a conditional branch's range).  No ordering needed:
// the kernel reads rseq_cs and writes the index in the thread's order.
#define PERCPU_RSEQ_BEGIN                        \
  PERCPU_RSEQ_DESCRIPTOR_TEXT                    \
  "mrs x10, tpidr_el0\n\t"                       \
  "and x11, %[rseq_off], #-32\n\t"               \
  "add x11, x10, x11\n\t" /* the area */         \
  "add x10, x10, %[rseq_off]\n\t"                \
  "tst %[rseq_off], #31\n\t"                     \
  "b.eq 8f\n\t"                                  \
  "ldr w9, [x11, #4]\n\t" /* cpu_id */           \
  "tbnz w9, #31, %l[unregistered]\n\t"           \
  "8:\n\t"                                       \
  "adrp x9, 3b\n\t"                              \
  "add x9, x9, :lo12:3b\n\t"                     \
  "str x9, [x11, #8]\n\t" /* rseq_cs */          \
  "1:\n\t"                                       \
  "ldr w9, [x10, #4]\n\t" /* cpu_id or mm_cid */ \
  "tbnz w9, #31, %l[unregistered]\n\t"

// The CPU's byte offset in x10; leaves through `stopped` if the structure's
// stop word for this CPU is set.
//
//   off = cpu << unit_shift
//   if (load_acquire(stop0 + off)) goto stopped
//
// Acquire (ldar): every load that follows in program order - the guard, the
// data the sequence commits to - is performed after the word was read.  It
// pairs with the release store of stop_state::start(): a sequence that
// reads the word clear after a visit sees everything the visitor wrote.
// (A sequence that reads it clear before a stop is aborted by the stop's
// fence or commits before it; see add().)
#define PERCPU_RSEQ_CHECK_STOP \
  "lsl x10, x9, %[shift]\n\t"  \
  "add x11, %[stop0], x10\n\t" \
  "ldar w11, [x11]\n\t"        \
  "cbnz w11, %l[stopped]\n\t"

// The guard of push and push_batch: leaves through `failed` unless the word
// at %[guard] holds %[expected].  A plain load, ordered after the stop
// word's ldar (see push()).
//
//   if (*guard != expected) goto failed
#define PERCPU_RSEQ_CHECK_GUARD \
  "ldr x11, [%[guard]]\n\t"     \
  "cmp x11, %[expected]\n\t"    \
  "b.ne %l[failed]\n\t"

// End of every sequence: the post-commit label and the signed abort handler.
#define PERCPU_RSEQ_END                      \
  "2:\n\t"                                   \
  ".pushsection __rseq_failure, \"ax?\"\n\t" \
  ".inst 0xd428bc00\n\t"                     \
  "4:\n\t"                                   \
  "b %l[aborted]\n\t"                        \
  ".popsection\n\t"

// Fault injection (PERCPU_FAULT_INJECTION, decided at the library's build:
// arch.hpp), the hook of the x86-64 file: just before its commit, each sequence decrements
// this thread's countdown (runtime.hpp) and, when it reaches zero, leaves
// through its own abort handler as a kernel abort would, its speculative
// stores done and its commit not.  The decrement is a plain load and store:
// the countdown is the thread's own, and a signal between the two aborts the
// sequence before its store.  The branch to 4f goes through an
// unconditional `b`: a conditional branch reaches only 1 MiB, and
// __rseq_failure may lie further away in a large program.
//
//   t = &percpu_fault_countdown
//   if (--*t == 0) goto abort_handler
#if PERCPU_FAULT_INJECTION
#define PERCPU_RSEQ_INJECT                                     \
  "mrs x16, tpidr_el0\n\t"                                     \
  "adrp x17, :gottprel:percpu_fault_countdown\n\t"             \
  "ldr x17, [x17, #:gottprel_lo12:percpu_fault_countdown]\n\t" \
  "add x16, x16, x17\n\t"                                      \
  "ldr w17, [x16]\n\t"                                         \
  "subs w17, w17, #1\n\t"                                      \
  "str w17, [x16]\n\t"                                         \
  "b.ne 7f\n\t"                                                \
  "b 4f\n\t"                                                   \
  "7:\n\t"
#else
#define PERCPU_RSEQ_INJECT
#endif
#define PERCPU_RSEQ_CLOBBERS "memory", "cc", "x9", "x10", "x11", "x16", "x17"

// The C++ side of every sequence's exits: each asm goto label returns the
// matching status.
#define PERCPU_RSEQ_RETURNS    \
  return status::committed;    \
  unregistered:                \
  return status::unregistered; \
  stopped:                     \
  return status::stopped;      \
  aborted:                     \
  return status::aborted;

#define PERCPU_RSEQ_RETURNS_WITH_FAILED \
  PERCPU_RSEQ_RETURNS                   \
  failed:                               \
  return status::failed;

#define PERCPU_RSEQ_RETURNS_WITH_MOVED \
  PERCPU_RSEQ_RETURNS_WITH_FAILED      \
  moved:                               \
  return status::moved;

#define PERCPU_RSEQ_COMMON_INPUTS \
  [rseq_off] "r"(rseq_offset_now()), [shift] "i"(unit_shift), [stop0] "r"(stop0)

// The body of add() and add_release(), which differ in the commit only.
//
//   p = slot0 + off
//   sum = *p + v
//   *p = sum                  (commit: str, or stlr for add_release)
#define PERCPU_RSEQ_ADD(commit)                                                                 \
  asm goto(PERCPU_RSEQ_BEGIN PERCPU_RSEQ_CHECK_STOP                                             \
           "add x12, %[slot0], x10\n\t"                                                         \
           "ldr x13, [x12]\n\t"                                                                 \
           "add x13, x13, %[v]\n\t" PERCPU_RSEQ_INJECT commit " x13, [x12]\n\t" PERCPU_RSEQ_END \
           :                                                                                    \
           : PERCPU_RSEQ_COMMON_INPUTS, [slot0] "r"(slot0), [v] "rI"(v)                         \
           : PERCPU_RSEQ_CLOBBERS, "x12", "x13"                                                 \
           : unregistered, stopped, aborted)

// *slot += v on the current CPU.  The store of the sum is the commit.
//
// Protocol rule (the x86-64 file tells the bug that made it): every
// sequence tests the stop word before it reads any data it commits to.  The
// fence of stop() aborts only the sequences running when it arrives; a
// sequence that starts later is kept off the CPU's data by the stop word
// alone, so if it reads the word clear it must also read the slot as the
// visitor left it.  x86-64 gives that by keeping loads in order.  Here the
// word is read with ldar, which no later load can pass; its clear value was
// stored by start() with release, after the visit's stores, so the slot
// load that follows sees them.
//
// Commit: a plain str.  The readers of a counter's slots on other CPUs
// (counter sums, read_on) need only the value itself, which an aligned
// 64-bit store writes in one piece; no other data rides on it.  A visitor
// needs nothing of the commit either: the fence's full barrier on this CPU
// (the membarrier IPI runs one before it aborts the sequence) makes every
// store committed before it visible.  A reader that must see what the adding
// thread did before the add uses add_release().
inline status add(std::int64_t* slot0, const std::uint32_t* stop0, std::int64_t v) noexcept {
  PERCPU_RSEQ_ADD("str");
  PERCPU_RSEQ_RETURNS
}

// add() whose commit is a store-release: a thread on another CPU that reads
// the slot with acquire and sees the new value also sees every load and
// store this thread made before the add.  x86-64 gives every store that
// order, so there it is add() itself.
//
// For: the "out" count of a read section (rwlock::unlock_shared).  A writer
// that reads the "out" counts with acquire and finds them equal to the "in"
// counts must know that the section's loads are over; without the release,
// aarch64 may make the count store visible before a load of the section has
// read its value, and that load could then see the writer's update.
inline status add_release(std::int64_t* slot0, const std::uint32_t* stop0,
                          std::int64_t v) noexcept {
  PERCPU_RSEQ_ADD("stlr");
  PERCPU_RSEQ_RETURNS
}

#undef PERCPU_RSEQ_ADD

// *slot += v on the current CPU, like add(); *cpu_out = the CPU and
// *negative_out = the new value's sign, from the commit's registers.
//
//   p = slot0 + off
//   sum = *p + v
//   *p = sum                  (commit)
// 2:
//   *negative_out = sum < 0; *cpu_out = cpu
//
// Ordering as add(): the counter's fold compares and stores the slot on the
// same CPU (compare_and_store) or under a stop.
inline status add_sign(std::int64_t* slot0, const std::uint32_t* stop0, std::int64_t v,
                       unsigned* cpu_out, bool* negative_out) noexcept {
  asm goto(PERCPU_RSEQ_BEGIN PERCPU_RSEQ_CHECK_STOP
           "add x12, %[slot0], x10\n\t"
           "ldr x13, [x12]\n\t"
           "add x13, x13, %[v]\n\t" PERCPU_RSEQ_INJECT "str x13, [x12]\n\t" PERCPU_RSEQ_END
           "lsr x13, x13, #63\n\t"
           "strb w13, [%[negative_out]]\n\t"
           "str w9, [%[cpu_out]]\n\t"
           :
           : PERCPU_RSEQ_COMMON_INPUTS, [slot0] "r"(slot0), [v] "r"(v), [cpu_out] "r"(cpu_out),
             [negative_out] "r"(negative_out)
           : PERCPU_RSEQ_CLOBBERS, "x12", "x13"
           : unregistered, stopped, aborted);
  PERCPU_RSEQ_RETURNS
}

// If the thread runs on `cpu` and its slot holds `expected`, store `desired`.
// moved: the thread is not on `cpu`; failed: the slot held another value.
// (PERCPU_RSEQ_BEGIN has already left through `unregistered` for a negative
// cpu_id, so a thread without registration is never reported as moved.)
//
//   if (cpu_id != cpu) goto moved
//   p = slot0 + off
//   if (*p != expected) goto failed
//   *p = desired              (commit)
//
// Commit: a plain str.  Its one user, the counter's fold, moves the value it
// took out of the slot to the central count with an atomic add afterwards;
// sums read both without needing an order between them (the error bound
// covers a value in transit).
inline status compare_and_store(std::int64_t* slot0, const std::uint32_t* stop0, unsigned cpu,
                                std::int64_t expected, std::int64_t desired) noexcept {
  asm goto(PERCPU_RSEQ_BEGIN
           "cmp w9, %w[cpu]\n\t"
           "b.ne %l[moved]\n\t" PERCPU_RSEQ_CHECK_STOP
           "add x12, %[slot0], x10\n\t"
           "ldr x13, [x12]\n\t"
           "cmp x13, %[expected]\n\t"
           "b.ne %l[failed]\n\t" PERCPU_RSEQ_INJECT "str %[desired], [x12]\n\t" PERCPU_RSEQ_END
           :
           : PERCPU_RSEQ_COMMON_INPUTS, [slot0] "r"(slot0), [cpu] "r"(cpu),
             [expected] "r"(expected), [desired] "r"(desired)
           : PERCPU_RSEQ_CLOBBERS, "x12", "x13"
           : unregistered, stopped, aborted, failed, moved);
  PERCPU_RSEQ_RETURNS_WITH_MOVED
}

// Per-CPU array layout (cpu_array in sequences.hpp): items at offset 0,
// count at 8, capacity at 12 (so one ldp reads count and capacity).

// items[count++] = item, unless count == capacity or *guard != expected
// (failed).
//
//   if (*guard != expected) goto failed
//   a = arr0 + off
//   if (a->count >= a->capacity) goto failed
//   a->items[a->count] = item                  (speculative: above count)
//   a->count = a->count + 1                    (commit)
//
// The guard (pool_cache's generation) is changed by a remote party before it
// stops and fences every CPU.  Its load comes after the stop word's ldar, so
// a push that reads the word clear after that party's start() reads the new
// guard; one that read the word before the stop is aborted by the fence or
// committed before it, and the visit sees its item.
//
// Commit: a plain str.  Only this CPU's later sequences and visitors read
// the array, and a visitor comes after the fence, which makes the item and
// the count visible together.
inline status push(void* arr0, const std::uint32_t* stop0, void* item, const std::uint64_t* guard,
                   std::uint64_t expected) noexcept {
  asm goto(PERCPU_RSEQ_BEGIN PERCPU_RSEQ_CHECK_STOP PERCPU_RSEQ_CHECK_GUARD
           "add x12, %[arr0], x10\n\t"
           "ldp w13, w14, [x12, #8]\n\t"
           "cmp w13, w14\n\t"
           "b.hs %l[failed]\n\t"
           "ldr x14, [x12]\n\t"
           "str %[item], [x14, x13, lsl #3]\n\t"
           "add w13, w13, #1\n\t" PERCPU_RSEQ_INJECT "str w13, [x12, #8]\n\t" PERCPU_RSEQ_END
           :
           : PERCPU_RSEQ_COMMON_INPUTS, [arr0] "r"(arr0), [item] "r"(item), [guard] "r"(guard),
             [expected] "r"(expected)
           : PERCPU_RSEQ_CLOBBERS, "x12", "x13", "x14"
           : unregistered, stopped, aborted, failed);
  PERCPU_RSEQ_RETURNS_WITH_FAILED
}

// *out = items[--count], unless count == 0 (failed).  The item comes out in
// a register (an asm goto output, valid on the committed path) and is stored
// to *out after the sequence.
//
//   a = arr0 + off
//   if (a->count == 0) goto failed
//   item = a->items[a->count - 1]
//   a->count = a->count - 1                    (commit)
//
// Ordering: the item load follows the stop word's ldar (see add()); the
// commit is a plain str, as in push().
inline status pop(void* arr0, const std::uint32_t* stop0, void** out) noexcept {
  void* item;
  asm goto(PERCPU_RSEQ_BEGIN PERCPU_RSEQ_CHECK_STOP
           "add x12, %[arr0], x10\n\t"
           "ldr w13, [x12, #8]\n\t"
           "cbz w13, %l[failed]\n\t"
           "sub w13, w13, #1\n\t"
           "ldr x14, [x12]\n\t"
           "ldr %[item], [x14, x13, lsl #3]\n\t" PERCPU_RSEQ_INJECT
           "str w13, [x12, #8]\n\t" PERCPU_RSEQ_END
           : [item] "=&r"(item)
           : PERCPU_RSEQ_COMMON_INPUTS, [arr0] "r"(arr0)
           : PERCPU_RSEQ_CLOBBERS, "x12", "x13", "x14"
           : unregistered, stopped, aborted, failed);
  *out = item;
  PERCPU_RSEQ_RETURNS_WITH_FAILED
}

// Moves k = min(n, count) items from the top of the array to out[0..k), in
// array order, and stores k in *moved.  n must be > 0.  The copies are
// private until the count store commits.
//
//   a = arr0 + off
//   k = min(n, a->count); *moved = k
//   c = a->count - k
//   for (i = 0; i < k; i++) out[i] = a->items[c + i]
//   a->count = c                               (commit)
//
// Ordering as pop().
inline status pop_batch(void* arr0, const std::uint32_t* stop0, void** out, std::size_t n,
                        std::size_t* moved) noexcept {
  asm goto(
      PERCPU_RSEQ_BEGIN PERCPU_RSEQ_CHECK_STOP
      "add x12, %[arr0], x10\n\t"
      "ldr w13, [x12, #8]\n\t"  // count
      "cmp %[n], x13\n\t"
      "csel x14, x13, %[n], hi\n\t"  // k = n > count ? count : n
      "str x14, [%[moved]]\n\t"
      "sub w13, w13, w14\n\t"  // new count
      "ldr x15, [x12]\n\t"
      "add x15, x15, x13, lsl #3\n\t"  // first item to move
      "mov x11, #0\n\t"                // i
      "5:\n\t"
      "cmp x11, x14\n\t"
      "b.hs 6f\n\t"
      "ldr x10, [x15, x11, lsl #3]\n\t"
      "str x10, [%[out], x11, lsl #3]\n\t"
      "add x11, x11, #1\n\t"
      "b 5b\n\t"
      "6:\n\t" PERCPU_RSEQ_INJECT "str w13, [x12, #8]\n\t" PERCPU_RSEQ_END
      :
      : PERCPU_RSEQ_COMMON_INPUTS, [arr0] "r"(arr0), [out] "r"(out), [n] "r"(n), [moved] "r"(moved)
      : PERCPU_RSEQ_CLOBBERS, "x12", "x13", "x14", "x15"
      : unregistered, stopped, aborted);
  PERCPU_RSEQ_RETURNS
}

// Appends k = min(n, capacity - count) items from in[0..k) and stores k in
// *moved (failed, with nothing moved, when the array is full or *guard !=
// expected; the guard works as in push()).  The item stores are
// speculative; the count store commits.
//
//   if (*guard != expected) goto failed
//   a = arr0 + off
//   if (a->capacity <= a->count) goto failed
//   k = min(n, a->capacity - a->count); *moved = k
//   for (i = 0; i < k; i++) a->items[a->count + i] = in[i]
//   a->count = a->count + k                    (commit)
//
// Ordering as push().
inline status push_batch(void* arr0, const std::uint32_t* stop0, void* const* in, std::size_t n,
                         std::size_t* moved, const std::uint64_t* guard,
                         std::uint64_t expected) noexcept {
  asm goto(PERCPU_RSEQ_BEGIN PERCPU_RSEQ_CHECK_STOP PERCPU_RSEQ_CHECK_GUARD
           "add x12, %[arr0], x10\n\t"
           "ldp w13, w14, [x12, #8]\n\t"  // count, capacity
           "cmp w14, w13\n\t"
           "b.ls %l[failed]\n\t"
           "sub w14, w14, w13\n\t"  // room
           "cmp x14, %[n]\n\t"
           "csel x14, %[n], x14, hi\n\t"  // k = room > n ? n : room
           "str x14, [%[moved]]\n\t"
           "ldr x15, [x12]\n\t"
           "add x15, x15, x13, lsl #3\n\t"  // first free item
           "mov x11, #0\n\t"                // i
           "5:\n\t"
           "cmp x11, x14\n\t"
           "b.hs 6f\n\t"
           "ldr x10, [%[in], x11, lsl #3]\n\t"
           "str x10, [x15, x11, lsl #3]\n\t"
           "add x11, x11, #1\n\t"
           "b 5b\n\t"
           "6:\n\t"
           "add w13, w13, w14\n\t" PERCPU_RSEQ_INJECT "str w13, [x12, #8]\n\t" PERCPU_RSEQ_END
           :
           : PERCPU_RSEQ_COMMON_INPUTS, [arr0] "r"(arr0), [in] "r"(in), [n] "r"(n),
             [moved] "r"(moved), [guard] "r"(guard), [expected] "r"(expected)
           : PERCPU_RSEQ_CLOBBERS, "x12", "x13", "x14", "x15"
           : unregistered, stopped, aborted, failed);
  PERCPU_RSEQ_RETURNS_WITH_FAILED
}

// ---- push_record: a keyed record onto a per-CPU record buffer (batch_queue) ----
//
// Layout (record_array in sequences.hpp): records pointer at 0, count at 8,
// capacity at 12 (both in records), scoreboard words from 16.
//
// If the thread runs on `cpu` and count < capacity: copy the record's Words
// 8-byte words to records[count] and OR `bit` into the scoreboard word at
// byte offset `scoreboard_offset` (both speculative; a bit left by an
// aborted attempt only costs a reader a look at the count), then commit
// count + 1.  failed: the buffer is full, or the thread is not on `cpu`;
// *cpu_out is written before either test with the CPU the thread runs on.
//
//   *cpu_out = cpu_id
//   if (cpu_id != cpu) goto failed
//   a = arr0 + off
//   if (a->count >= a->capacity) goto failed
//   r = a->records + a->count * Words
//   r[0..Words) = record[0..Words)
//   a->scoreboard[word] |= bit
//   store_release(&a->count, a->count + 1)     (commit)
//
// Commit: stlr.  The queue's reader (flush_for_bit_locked) loads a CPU's
// scoreboard word and count without stopping it, with acquire; the property
// the queue states for it - whoever sees the new count also sees the bit,
// and the record - holds on x86-64 because stores stay in order, and holds
// in the portable twin because it stores the count with release.  The stlr
// gives it here: the record copy and the scoreboard store cannot become
// visible after the count.  (read()'s guarantee itself rests on the
// happens-before edge from the enqueue's return, which would order plain
// stores too; the release keeps the stronger property the same on every
// backend, for the price of one stlr per enqueue.)
template <unsigned Words>
inline status push_record(void* arr0, const std::uint32_t* stop0, unsigned cpu,
                          const std::uint64_t* record, std::size_t scoreboard_offset,
                          std::uint64_t bit, unsigned* cpu_out) noexcept {
  static_assert(Words >= 1 && Words <= 8, "a record is 1 to 8 words");
  asm goto(PERCPU_RSEQ_BEGIN
           "str w9, [%[cpu_out]]\n\t"
           "cmp w9, %w[cpu]\n\t"
           "b.ne %l[failed]\n\t" PERCPU_RSEQ_CHECK_STOP
           "add x12, %[arr0], x10\n\t"
           "ldp w13, w14, [x12, #8]\n\t"  // count, capacity
           "cmp w13, w14\n\t"
           "b.hs %l[failed]\n\t"
           "ldr x14, [x12]\n\t"
           "mov x15, %[bytes]\n\t"
           "madd x14, x13, x15, x14\n\t"  // &records[count]
           // The copy, unrolled by the assembler: Words pairs of ldr/str at
           // offsets 0, 8, ... (.set may redefine the offset symbol, so every
           // inlined copy of the statement can use it).
           ".set .Lpercpu_record_offset, 0\n\t"
           ".rept %c[words]\n\t"
           "ldr x15, [%[record], #.Lpercpu_record_offset]\n\t"
           "str x15, [x14, #.Lpercpu_record_offset]\n\t"
           ".set .Lpercpu_record_offset, .Lpercpu_record_offset + 8\n\t"
           ".endr\n\t"
           "ldr x15, [x12, %[scoreboard_offset]]\n\t"
           "orr x15, x15, %[bit]\n\t"
           "str x15, [x12, %[scoreboard_offset]]\n\t"
           "add w13, w13, #1\n\t"
           "add x14, x12, #8\n\t" PERCPU_RSEQ_INJECT "stlr w13, [x14]\n\t" PERCPU_RSEQ_END
           :
           : PERCPU_RSEQ_COMMON_INPUTS, [arr0] "r"(arr0), [cpu] "r"(cpu), [record] "r"(record),
             [scoreboard_offset] "r"(scoreboard_offset), [bit] "r"(bit), [cpu_out] "r"(cpu_out),
             [bytes] "i"(Words * 8), [words] "i"(Words)
           : PERCPU_RSEQ_CLOBBERS, "x12", "x13", "x14", "x15"
           : unregistered, stopped, aborted, failed);
  PERCPU_RSEQ_RETURNS_WITH_FAILED
}

// The rseq area's cpu_id: the CPU this thread runs on, or a negative value
// when the area is not registered.  The "memory" clobber makes the read a
// compiler barrier: fence_cpu's own-CPU rule reads cpu_id after a
// compare-and-swap and relies on that order (x86-64's file says why nothing
// else would; docs/design.md, section 5, why aarch64 needs no more).
inline int cpu_id() noexcept {
  int cpu;
  char* tp;
  asm volatile(
      "mrs %[tp], tpidr_el0\n\t"
      "ldr %w[cpu], [%[tp], %[cpu_id_off]]"
      : [cpu] "=r"(cpu), [tp] "=&r"(tp)
      : [cpu_id_off] "r"((rseq_offset_now() & ~std::ptrdiff_t{31}) +
                         static_cast<std::ptrdiff_t>(offsetof(struct rseq, cpu_id)))
      : "memory");
  return cpu;
}

// The slot index (cpu_id or mm_cid), the same way; negative when the area
// is not registered, whichever the mode.
inline int slot_index() noexcept {
  int index;
  char* tp;
  asm volatile("mrs %[tp], tpidr_el0\n\tldr %w[index], [%[tp], %[off]]"
               : [index] "=r"(index), [tp] "=&r"(tp)
               : [off] "r"(rseq_offset_now() + 4)
               : "memory");
  return cpu_id() < 0 ? -1 : index;
}

#undef PERCPU_RSEQ_BEGIN
#undef PERCPU_RSEQ_DESCRIPTOR_TEXT
#undef PERCPU_RSEQ_CHECK_STOP
#undef PERCPU_RSEQ_CHECK_GUARD
#undef PERCPU_RSEQ_END
#undef PERCPU_RSEQ_INJECT
#undef PERCPU_RSEQ_CLOBBERS
#undef PERCPU_RSEQ_COMMON_INPUTS
#undef PERCPU_RSEQ_RETURNS
#undef PERCPU_RSEQ_RETURNS_WITH_FAILED
#undef PERCPU_RSEQ_RETURNS_WITH_MOVED

}  // namespace percpu::detail::arch
