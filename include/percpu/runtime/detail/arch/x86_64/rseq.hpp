// percpu/runtime/detail/arch/x86_64/rseq.hpp - the library's restartable sequences, x86-64.
//
// Problem: updating "this CPU's" data needs the CPU number and the update to
// belong together: a thread preempted, migrated or interrupted by a signal
// between reading its CPU and storing would corrupt another CPU's data.  An
// atomic instruction fixes that at 5-20 ns; a restartable sequence fixes it
// for the price of a few plain instructions.
//
// Mechanism: each sequence below publishes a descriptor (start, length, abort
// address) in the thread's rseq area, then reads the CPU id, checks the
// structure's per-CPU stop word, prepares, and commits with one final store.
// If the kernel preempts, migrates or signals the thread between the start
// label and the commit, it resumes the thread at the abort handler, which
// restarts the whole sequence from the caller.  Nothing before the commit is
// visible to anyone as a completed change, so redoing it is always safe.
//
// Every sequence here:
//  - is one asm goto statement with numeric local labels, so the compiler may
//    inline and duplicate it freely;
//  - puts its descriptor and abort handler in sections that join the section
//    group of the code around them (the "?" flag): when the code is an inline
//    or template function whose duplicate copies the linker discards, the
//    descriptors pointing into those copies are discarded with them;
//    1: start, 2: post-commit, 3: descriptor (in __rseq_cs), 4: abort handler
//    (in __rseq_failure, preceded by the RSEQ_SIG signature glibc registered),
//    7: mm_cid mode's copy, 9: where that copy returns (see PERCPU_RSEQ);
//  - stores its descriptor's address in rseq_cs with the instruction just
//    before its start label, and is entered only through that store;
//  - reads the slot index, cpu_id or mm_cid (runtime.hpp), and never
//    writes any kernel-owned field (the only field it writes, rseq_cs,
//    belongs to user space);
//  - leaves the sequence through `unregistered` when that is negative (a
//    thread whose private rseq area is not registered yet, or the area of
//    the portable backend, which is never registered), through `stopped`
//    when the structure's stop word for this CPU is non-zero (a remote
//    visitor owns the CPU's data, see stop.hpp), through `moved` when a
//    sequence bound to one CPU runs on another, and through `failed` when
//    its own condition fails ("full", "empty", "not equal"); the last two
//    need no retry.
//
// Per-CPU addressing: CPU c's copy is at p0 + (c << unit_shift) for every
// per-CPU allocation (storage.hpp), so one shift serves every operand.  The
// data operand is then addressed through a single register, not
// (%base,%index): x86 cores forward a store to the next load of the same
// location much faster with the simple form (0.56 ns against 2.8 ns per
// dependent add, measured on the development VM's Xeon).  Every sequence
// tests the stop word before it reads any of its data (see add()).
//
// Included by runtime/detail/arch.hpp only (the interface this file
// implements is described there).
#pragma once

#include <cstddef>
#include <cstdint>

#include "percpu/runtime/detail/arch/rseq_descriptor.hpp"
#include "percpu/runtime/detail/arch/x86_64/machine.hpp"
#include "percpu/runtime/detail/runtime.hpp"

namespace percpu::detail::arch {

inline constexpr bool has_sequences = true;
// A locked read-modify-write (every seq_cst one) is a full barrier here.
inline constexpr bool rmw_is_full_barrier = true;

// glibc's RSEQ_SIG for x86-64: the 4 bytes before each abort handler.  It is
// the displacement of a `ud1` instruction (0f b9 3d, then these 4 bytes), so
// the bytes never execute.  The sequences emit it from here (%c[sig]).
inline constexpr std::uint32_t rseq_signature = 0x53053053;

// The whole of every sequence: PERCPU_RSEQ(body) is the statement's
// assembly.  It publishes a descriptor, reads the slot index into %rax,
// sign-extended, runs `body`, whose last instruction commits, and places
// the signed abort handler.  A negative index means the area is not
// registered (a thread not yet registered in own-registration mode, or the
// portable backend's area, which never is); the body tests the sign with
// PERCPU_RSEQ_CHECK_STOP, from the flags of the shift (a CPU id shifted by
// unit_shift keeps its sign), or PERCPU_RSEQ_CHECK_REGISTERED where it
// compares the CPU id before the shift.  Clobbers %rax.
//
// The slot index is cpu_id, or mm_cid in mm_cid mode (runtime.hpp), and
// runtime.rseq_offset says which: the area's offset (a multiple of 32) in
// CPU mode, 20 more in mm_cid mode, so that 4 bytes past it is cpu_id or
// mm_cid alike; rseq_cs is then 8 bytes past it in CPU mode, 12 bytes below
// it in mm_cid mode.  mm_cid mode must also test cpu_id, since an area that
// is not registered holds mm_cid 0.  So the body is emitted twice: CPU mode
// runs it in line, mm_cid mode out of line (in __rseq_failure, beside the
// abort handlers), each copy with its own descriptor:
//
//   if (rseq_offset % 32 != 0) goto 7        // mm_cid mode
//   rs->rseq_cs = &descriptor               // just before the start
// 1:
//   index = *(int32_t*)(tp + rseq_offset + 4)
//   body
// 2: ...                                     // the caller goes on
// 7:
//   if (rs->cpu_id < 0) goto unregistered
//   rs->rseq_cs = &descriptor_7             // just before the start
// 1:
//   index = *(int32_t*)(tp + rseq_offset + 4)
//   body
// 2: goto 9                                  // back where the caller goes on
//
// Rule: the store of rseq_cs is the instruction just before the range
// (label 1), and nothing jumps into the range.  The kernel clears rseq_cs
// when it preempts a thread outside the range of the descriptor it holds
// (rseq_ip_fixup), so a thread preempted between a store and a jump into
// the range would run the sequence with no descriptor: neither a preemption
// nor a migration would abort it.  Until 2026-12-07 mm_cid mode broke the
// rule: its store and registration test were out of line, and it jumped to
// the in-line label 1 afterwards.  Found by reading the prologue against
// the kernel while looking for mm_cid mode's extra cost (the window is one
// instruction, and no test had met it); the test
// Sequences.EveryRangeIsEnteredRightAfterItsDescriptorStore checks the
// rule on every descriptor of its program, and fails on the old prologue.
//
// What the ways out cost (slot.add, quick runs on the Sapphire Rapids VM,
// 2026-12-07; CPU mode 1.02-1.05 ns and mm_cid 1.36-1.43 ns before):
//  - this one: CPU mode's instructions unchanged; mm_cid mode 1.41-1.44
//    with its copy aligned to 32 bytes, 1.85-1.95 without; in later runs
//    whose 32-byte figure was 1.38-1.46: 1.47-1.61 aligned to 64, and
//    1.49-1.59 with the copy beside the caller's code (`.subsection 1` of
//    its section) rather than in __rseq_failure;
//  - rseq_cs stored inside the range, through a copy of the offset that
//    mm_cid mode lowers by 20 (one prologue, one body): CPU mode 2-9 %
//    slower, mm_cid mode 1.64;
//  - the store through the offset rounded down to 32, the registration test
//    out of line before it: CPU mode 12-20 % slower;
//  - rseq_cs tested rather than stored (the store only when it does not
//    hold the descriptor already, which makes the registration test a slow
//    path too): both modes 1.00 in a loop of one sequence, but every
//    operation that alternates two sequences stores anyway, after a failed
//    test and two jumps: pool.get_put and rwlock.read 1.8-2x slower;
//  - one prologue for both modes (the rseq_cs offset and the index offset
//    loaded as two words, no mode test): mm_cid mode as fast as CPU mode,
//    but CPU mode 1.19-1.28 against 1.03-1.08;
//  - the copy without its registration test: no faster (the two taken
//    branches are mm_cid mode's cost, not the load of cpu_id);
//  - one copy, no mode test: rseq_cs stored through the offset rounded
//    down to 32, no test of cpu_id: mm_cid mode 0.98-1.00x CPU mode, CPU
//    mode 3-4 % slower, and an area another component unregistered
//    (mm_cid 0) no longer refused; with the test, through the rounded
//    offset in both modes, CPU mode 20-30 % slower; both copies in line,
//    either first: mm_cid mode 1.26-1.36x; one copy whose test is
//    branch-free (cpu_id's sign ORed into the index, so that an area not
//    registered would index a unit of stop words that always read as set):
//    mm_cid mode 0.97-1.00x CPU mode, CPU mode 1.56-1.63x rseq_raw against
//    1.26-1.33 (docs/benchmarks.md).
//
// Why one test of the offset's low bits rather than a second offset loaded
// from memory, and the shift's flags rather than a separate `test`: on the
// development VM's cores the time of a sequence in a loop follows its
// instruction count, loads above all (slot.add, AMD EPYC: 1.24 ns with a
// separate test, 0.92 ns without; Intel Xeon: 0.93 ns with the index's
// offset as a second load, 0.86 with the bit test).  The minimal sequence
// of bench/rseq_raw.hpp (no stop word, no registration test) takes
// 0.55-0.85 ns depending on the core.
#define PERCPU_RSEQ_DESCRIPTOR PERCPU_RSEQ_DESCRIPTOR_TEXT "leaq 3b(%%rip), %%rax\n\t"

#define PERCPU_RSEQ(body)                                              \
  PERCPU_RSEQ_DESCRIPTOR                                               \
  "testb $31, %b[rseq_off]\n\t"                                        \
  "jnz 7f\n\t"                                                         \
  "movq %%rax, %%fs:8(%[rseq_off])\n\t"                                \
  "1:\n\t"                                                             \
  "movslq %%fs:4(%[rseq_off]), %%rax\n\t" body                         \
  "2:\n\t"                                                             \
  ".pushsection __rseq_failure, \"ax?\"\n\t" PERCPU_RSEQ_ABORT_HANDLER \
  ".balign 32\n\t"                                                     \
  "7:\n\t"                                                             \
  "cmpl %[zero], %%fs:-16(%[rseq_off])\n\t"                            \
  "js %l[unregistered]\n\t" PERCPU_RSEQ_DESCRIPTOR                     \
  "movq %%rax, %%fs:-12(%[rseq_off])\n\t"                              \
  "1:\n\t"                                                             \
  "movslq %%fs:4(%[rseq_off]), %%rax\n\t" body                         \
  "2:\n\t"                                                             \
  "jmp 9f\n\t" PERCPU_RSEQ_ABORT_HANDLER                               \
  ".popsection\n\t"                                                    \
  "9:\n\t"

// Leaves through `unregistered` if the CPU id in %rax is negative: for the
// sequences that compare the CPU id with an expected one before anything
// else, which must not report a thread without registration as "moved".
#define PERCPU_RSEQ_CHECK_REGISTERED \
  "testq %%rax, %%rax\n\t"           \
  "js %l[unregistered]\n\t"

// Turns the CPU id in %rax into the per-CPU byte offset, leaves through
// `unregistered` if it is negative (the shift's sign flag) and through
// `stopped` if the structure's stop word for this CPU is set.
//
// The stop word is compared with %[zero], a register the compiler keeps at 0
// (loop-invariant, so set once outside a caller's loop): a compare of memory
// with a register fuses with the branch after it into one micro-op, a compare
// of memory with an immediate does not.  `cmpl $0` made slot.add 0.89 ns,
// this 0.83, against rseq_raw's 0.67 (Xeon VM, quick runs, 2026-12-07).  What
// remains of the gap is mostly loads: the loop is bound by them, and percpu's
// add makes six per iteration (the two member pointers, the rseq offset, the
// index, the stop word, the slot) where rseq_raw makes four; in mm_cid mode
// the registration test's load of cpu_id is a seventh, and two taken
// branches take the thread to the out-of-line copy and back (see
// PERCPU_RSEQ).
#define PERCPU_RSEQ_CHECK_STOP          \
  "shlq %[shift], %%rax\n\t"            \
  "js %l[unregistered]\n\t"             \
  "cmpl %[zero], (%[stop0], %%rax)\n\t" \
  "jne %l[stopped]\n\t"

// The guard of push and push_batch: leaves through `failed` unless the word
// at %[guard] holds %[expected] (read after the stop test).
#define PERCPU_RSEQ_CHECK_GUARD      \
  "cmpq %[expected], (%[guard])\n\t" \
  "jne %l[failed]\n\t"

// The abort handler (4), behind its signature: a `ud1` whose 4-byte
// displacement is glibc's RSEQ_SIG (the bytes never execute).
#define PERCPU_RSEQ_ABORT_HANDLER \
  ".byte 0x0f, 0xb9, 0x3d\n\t"    \
  ".long %c[sig]\n\t"             \
  "4:\n\t"                        \
  "jmp %l[aborted]\n\t"

// Fault injection (PERCPU_FAULT_INJECTION, arch.hpp): just before its
// commit, each sequence decrements this thread's countdown (runtime.hpp)
// and, when it reaches zero, leaves through its own abort handler exactly as
// a kernel abort would, with its speculative stores done and its commit not.
// The retry path rearms the countdown.  Costs three instructions and %r11.
#if PERCPU_FAULT_INJECTION
#define PERCPU_RSEQ_INJECT                                 \
  "movq percpu_fault_countdown@gottpoff(%%rip), %%r11\n\t" \
  "subl $1, %%fs:(%%r11)\n\t"                              \
  "jz 4f\n\t"
#define PERCPU_RSEQ_CLOBBERS "memory", "cc", "r11"
#else
#define PERCPU_RSEQ_INJECT
#define PERCPU_RSEQ_CLOBBERS "memory", "cc"
#endif

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

// The inputs every sequence has.  [zero] is the register holding 0 of
// PERCPU_RSEQ_CHECK_STOP in the one-item sequences; the batch moves and
// push_record, which need their registers, compare with an immediate 0
// ("i"), as they did before (push_record with the register made
// queue.read_10pct and _50pct 10 % slower).
#define PERCPU_RSEQ_COMMON_INPUTS_WITH(zero_constraint)                           \
  [rseq_off] "r"(rseq_offset_now()), [shift] "i"(unit_shift), [stop0] "r"(stop0), \
      [zero] zero_constraint(0u), [sig] "i"(rseq_signature)
#define PERCPU_RSEQ_COMMON_INPUTS PERCPU_RSEQ_COMMON_INPUTS_WITH("r")
#define PERCPU_RSEQ_BATCH_INPUTS PERCPU_RSEQ_COMMON_INPUTS_WITH("i")

// *slot += v on the current CPU.  The add is the commit.
//
// Protocol rule: every sequence tests the stop word before it reads any data
// it commits to.  The fence of stop() only aborts sequences running when it
// arrives; a sequence that starts later is kept off the CPU's data by the
// stop word alone.  A form of add that read the slot first (about twice as
// fast in a tight loop on the development VM's Xeon) let such a late
// sequence read the slot before the visitor wrote it, then read the stop
// word after the visitor cleared it, and store a stale sum over the visit:
// lost updates, caught by the storm test when signals and migrations made
// fresh sequence starts during visits frequent.  Reading the word first
// orders it: x86-64 keeps loads in program order, so a sequence that sees
// the word clear also sees what the visitor wrote (an aarch64 version must
// read the word with ldar for the same reason).
//
// The slot's address is formed apart (leaq) and the add uses it alone: the
// development VM's Xeon hands a store on to the next load of the same
// base-only address without the store-to-load latency, not to an indexed
// one.  `addq %[v], (%[slot0], %%rax)`, one instruction fewer, made
// slot.add 2.12 ns against 0.91 in a loop that adds to one slot.
inline status add(std::int64_t* slot0, const std::uint32_t* stop0, std::int64_t v) noexcept {
  asm goto(PERCPU_RSEQ(PERCPU_RSEQ_CHECK_STOP "leaq (%[slot0], %%rax), %%rdx\n\t" PERCPU_RSEQ_INJECT
                                              "addq %[v], (%%rdx)\n\t")
           :
           : PERCPU_RSEQ_COMMON_INPUTS, [slot0] "r"(slot0), [v] "er"(v)
           : PERCPU_RSEQ_CLOBBERS, "rax", "rdx"
           : unregistered, stopped, aborted);
  PERCPU_RSEQ_RETURNS
}

// add() whose commit also orders every earlier load and store of the thread
// before it (a release): for a count whose reader on another CPU must see
// that what the thread did before the add is over (rwlock's "out" counts).
// x86-64 keeps each store after the loads and stores before it in program
// order, so it is add() itself; aarch64 commits with stlr.
inline status add_release(std::int64_t* slot0, const std::uint32_t* stop0,
                          std::int64_t v) noexcept {
  return add(slot0, stop0, v);
}

// *slot += v on the current CPU, like add(), and reports where and what:
// *cpu_out = the CPU, *negative_out = whether the add left the slot
// negative (the add's own sign flag, kept by the flag output "=@ccs": no
// load of the slot after the commit).  The flag and the CPU's offset come
// out of the asm (outputs valid on the committed fall-through path only),
// so that a caller that inlines this branches on the flag and computes the
// CPU only where it uses it.  A counter that keeps its residuals negative
// (counter.cpp) learns from the flag alone whether it must fold: one branch
// on the fast path.  (Reading the slot back after the add, and comparing it
// with the batch, made counter.add 1.33x slot.add's time on the
// development VM's Xeon; this, 1.03x.)
inline status add_sign(std::int64_t* slot0, const std::uint32_t* stop0, std::int64_t v,
                       unsigned* cpu_out, bool* negative_out) noexcept {
  bool negative;
  std::uint64_t offset;
  asm goto(PERCPU_RSEQ(PERCPU_RSEQ_CHECK_STOP "leaq (%[slot0], %%rax), %%rdx\n\t" PERCPU_RSEQ_INJECT
                                              "addq %[v], (%%rdx)\n\t")
           : "=@ccs"(negative), "=&a"(offset)
           : PERCPU_RSEQ_COMMON_INPUTS, [slot0] "r"(slot0), [v] "er"(v)
           : PERCPU_RSEQ_CLOBBERS, "rdx"
           : unregistered, stopped, aborted);
  *negative_out = negative;
  *cpu_out = static_cast<unsigned>(offset >> unit_shift);
  PERCPU_RSEQ_RETURNS
}

// If the thread runs on `cpu` and its slot holds `expected`, store `desired`.
// moved: the thread is not on `cpu`; failed: the slot held another value.
inline status compare_and_store(std::int64_t* slot0, const std::uint32_t* stop0, unsigned cpu,
                                std::int64_t expected, std::int64_t desired) noexcept {
  asm goto(
      PERCPU_RSEQ(PERCPU_RSEQ_CHECK_REGISTERED
                  "cmpl %[cpu], %%eax\n\t"
                  "jne %l[moved]\n\t" PERCPU_RSEQ_CHECK_STOP "leaq (%[slot0], %%rax), %%rdx\n\t"
                  "cmpq %[expected], (%%rdx)\n\t"
                  "jne %l[failed]\n\t" PERCPU_RSEQ_INJECT "movq %[desired], (%%rdx)\n\t")
      :
      : PERCPU_RSEQ_COMMON_INPUTS, [slot0] "r"(slot0), [cpu] "r"(cpu), [expected] "r"(expected),
        [desired] "r"(desired)
      : PERCPU_RSEQ_CLOBBERS, "rax", "rdx"
      : unregistered, stopped, aborted, failed, moved);
  PERCPU_RSEQ_RETURNS_WITH_MOVED
}

// Per-CPU array layout shared by push/pop and the batch moves (the layout is
// defined in sequences.hpp as cpu_array): items at offset 0, count at 8,
// capacity at 12.

// items[count++] = item, unless count == capacity or *guard != expected
// (failed).  The guard is a word outside the per-CPU data (a cache's
// generation, see pool_cache.hpp) that a remote party changes before it
// stops and fences the CPUs: reading it inside the sequence, after the stop
// test, means a push that read the old value is either aborted by that fence
// or committed before it, where the visit that follows sees the item.  The
// item store is speculative (above count, invisible until the commit); the
// count store commits.
inline status push(void* arr0, const std::uint32_t* stop0, void* item, const std::uint64_t* guard,
                   std::uint64_t expected) noexcept {
  asm goto(PERCPU_RSEQ(PERCPU_RSEQ_CHECK_STOP PERCPU_RSEQ_CHECK_GUARD
                       "addq %[arr0], %%rax\n\t"
                       "movl 8(%%rax), %%ecx\n\t"
                       "cmpl 12(%%rax), %%ecx\n\t"
                       "jae %l[failed]\n\t"
                       "movq (%%rax), %%rdx\n\t"
                       "leaq (%%rdx, %%rcx, 8), %%rdx\n\t"
                       "movq %[item], (%%rdx)\n\t"
                       "addl $1, %%ecx\n\t" PERCPU_RSEQ_INJECT "movl %%ecx, 8(%%rax)\n\t")
           :
           : PERCPU_RSEQ_COMMON_INPUTS, [arr0] "r"(arr0), [item] "r"(item), [guard] "r"(guard),
             [expected] "r"(expected)
           : PERCPU_RSEQ_CLOBBERS, "rax", "rcx", "rdx"
           : unregistered, stopped, aborted, failed);
  PERCPU_RSEQ_RETURNS_WITH_FAILED
}

// *out = items[--count], unless count == 0 (failed).  The item comes out
// in a register (an asm goto output, valid on the committed fall-through
// path only) and is stored to *out after the sequence, so that a caller
// which inlines this keeps it in a register; the count store commits.  The
// item is addressed through one register, as in push(): `movq (%%rdx,
// %%rcx, 8)` in both, one instruction fewer each, made pool.get_put 2.51 ns
// against 2.37 (Xeon VM, 2026-12-07): the pop reads what the push wrote.
inline status pop(void* arr0, const std::uint32_t* stop0, void** out) noexcept {
  void* item;
  asm goto(PERCPU_RSEQ(PERCPU_RSEQ_CHECK_STOP "addq %[arr0], %%rax\n\t"
                                              "movl 8(%%rax), %%ecx\n\t"
                                              "subl $1, %%ecx\n\t"
                                              "jb %l[failed]\n\t"  // the count was 0 (the borrow)
                                              "movq (%%rax), %%rdx\n\t"
                                              "leaq (%%rdx, %%rcx, 8), %%rdx\n\t"
                                              "movq (%%rdx), %[item]\n\t" PERCPU_RSEQ_INJECT
                                              "movl %%ecx, 8(%%rax)\n\t")
           : [item] "=r"(item)
           : PERCPU_RSEQ_COMMON_INPUTS, [arr0] "r"(arr0)
           : PERCPU_RSEQ_CLOBBERS, "rax", "rcx", "rdx"
           : unregistered, stopped, aborted, failed);
  *out = item;
  PERCPU_RSEQ_RETURNS_WITH_FAILED
}

// Moves k = min(n, count) items from the top of the array to out[0..k), in
// array order, and stores k in *moved.  n must be > 0.  The copies are
// private until the count store commits.
inline status pop_batch(void* arr0, const std::uint32_t* stop0, void** out, std::size_t n,
                        std::size_t* moved) noexcept {
  asm goto(
      PERCPU_RSEQ(PERCPU_RSEQ_CHECK_STOP "addq %[arr0], %%rax\n\t"
                                         "movl 8(%%rax), %%ecx\n\t"  // count
                                         "movq %[n], %%rdx\n\t"
                                         "cmpq %%rcx, %%rdx\n\t"
                                         "cmovaq %%rcx, %%rdx\n\t"  // k = min(n, count)
                                         "movq %%rdx, (%[moved])\n\t"
                                         "subl %%edx, %%ecx\n\t"  // new count
                                         "movq (%%rax), %%r8\n\t"
                                         "leaq (%%r8, %%rcx, 8), %%r8\n\t"  // first item to move
                                         "5:\n\t"  // copies items k-1 down to 0
                                         "testq %%rdx, %%rdx\n\t"
                                         "jz 6f\n\t"
                                         "subq $1, %%rdx\n\t"
                                         "movq (%%r8, %%rdx, 8), %%r10\n\t"
                                         "movq %%r10, (%[out], %%rdx, 8)\n\t"
                                         "jmp 5b\n\t"
                                         "6:\n\t" PERCPU_RSEQ_INJECT "movl %%ecx, 8(%%rax)\n\t")
      :
      : PERCPU_RSEQ_BATCH_INPUTS, [arr0] "r"(arr0), [out] "r"(out), [n] "rm"(n), [moved] "r"(moved)
      : PERCPU_RSEQ_CLOBBERS, "rax", "rcx", "rdx", "r8", "r10"
      : unregistered, stopped, aborted);
  PERCPU_RSEQ_RETURNS
}

// Appends k = min(n, capacity - count) items from in[0..k) and stores k in
// *moved (failed, with nothing moved, when the array is full or *guard !=
// expected; the guard works as in push()).  The item stores are speculative;
// the count store commits.
inline status push_batch(void* arr0, const std::uint32_t* stop0, void* const* in, std::size_t n,
                         std::size_t* moved, const std::uint64_t* guard,
                         std::uint64_t expected) noexcept {
  // `expected` may live in memory and `moved` is a memory output, and the
  // copy loop counts down in the register that holds k: a build that keeps
  // the frame pointer and a base register (clang's ASan) has too few
  // registers left otherwise ("inline assembly requires more registers than
  // available", the fuzz stage's build; GCC's debug build, "impossible
  // constraints", once the slot index's field took a register).  This is
  // not a fast path.
  asm goto(
      PERCPU_RSEQ(PERCPU_RSEQ_CHECK_STOP "movq %[expected], %%r10\n\t"
                                         "cmpq %%r10, (%[guard])\n\t"
                                         "jne %l[failed]\n\t"
                                         "addq %[arr0], %%rax\n\t"
                                         "movl 8(%%rax), %%ecx\n\t"   // count
                                         "movl 12(%%rax), %%edx\n\t"  // capacity
                                         "cmpl %%ecx, %%edx\n\t"
                                         "jbe %l[failed]\n\t"
                                         "subl %%ecx, %%edx\n\t"  // room
                                         "cmpq %[n], %%rdx\n\t"
                                         "cmovaq %[n], %%rdx\n\t"  // k = min(room, n)
                                         "movq %%rdx, %[moved]\n\t"
                                         "movq (%%rax), %%r8\n\t"
                                         "leaq (%%r8, %%rcx, 8), %%r8\n\t"  // first free item
                                         "addl %%edx, %%ecx\n\t"            // new count
                                         "5:\n\t"  // copies items k-1 down to 0
                                         "testq %%rdx, %%rdx\n\t"
                                         "jz 6f\n\t"
                                         "subq $1, %%rdx\n\t"
                                         "movq (%[in], %%rdx, 8), %%r10\n\t"
                                         "movq %%r10, (%%r8, %%rdx, 8)\n\t"
                                         "jmp 5b\n\t"
                                         "6:\n\t" PERCPU_RSEQ_INJECT "movl %%ecx, 8(%%rax)\n\t")
      : [moved] "+m"(*moved)
      : PERCPU_RSEQ_BATCH_INPUTS, [arr0] "r"(arr0), [in] "r"(in), [n] "rm"(n), [guard] "r"(guard),
        [expected] "rm"(expected)
      : PERCPU_RSEQ_CLOBBERS, "rax", "rcx", "rdx", "r8", "r10"
      : unregistered, stopped, aborted, failed);
  PERCPU_RSEQ_RETURNS_WITH_FAILED
}

// ---- push_record: a keyed record onto a per-CPU record buffer (batch_queue) ----
//
// Layout (record_array in sequences.hpp): records pointer at 0, count at 8,
// capacity at 12 (both in records), scoreboard words from 16.
//
// If the thread runs on `cpu` and count < capacity: copy the record's Words
// 8-byte words to records[count] (speculative: above count, invisible until
// the commit), OR `bit` into the scoreboard word at byte offset
// `scoreboard_offset` (speculative too, and harmless if the sequence is then
// aborted: a spurious scoreboard bit only costs a reader a look at the
// count), then commit count + 1.  The scoreboard store precedes the commit
// store, and x86-64 keeps stores in program order, so whoever sees the new
// count (or anything the thread did after the commit) also sees the bit.
// failed: the buffer is full, or the thread is not on `cpu`.  *cpu_out is
// written before either test with the CPU the thread runs on, so the caller
// tells the two apart by comparing it with `cpu`.
template <unsigned Words>
inline status push_record(void* arr0, const std::uint32_t* stop0, unsigned cpu,
                          const std::uint64_t* record, std::size_t scoreboard_offset,
                          std::uint64_t bit, unsigned* cpu_out) noexcept {
  static_assert(Words >= 1 && Words <= 8, "a record is 1 to 8 words");
  asm goto(PERCPU_RSEQ(PERCPU_RSEQ_CHECK_REGISTERED
                       "movl %%eax, (%[cpu_out])\n\t"
                       "cmpl %[cpu], %%eax\n\t"
                       "jne %l[failed]\n\t" PERCPU_RSEQ_CHECK_STOP "addq %[arr0], %%rax\n\t"
                       "movl 8(%%rax), %%ecx\n\t"  // count
                       "cmpl 12(%%rax), %%ecx\n\t"
                       "jae %l[failed]\n\t"
                       "imulq %[bytes], %%rcx, %%rdx\n\t"
                       "addq (%%rax), %%rdx\n\t"  // &records[count]
                       // The copy, unrolled by the assembler: Words pairs of moves at
                       // offsets 0, 8, ... (.set may redefine the offset symbol, so
                       // every inlined copy of the statement can use it).
                       ".set .Lpercpu_record_offset, 0\n\t"
                       ".rept %c[words]\n\t"
                       "movq .Lpercpu_record_offset(%[record]), %%r8\n\t"
                       "movq %%r8, .Lpercpu_record_offset(%%rdx)\n\t"
                       ".set .Lpercpu_record_offset, .Lpercpu_record_offset + 8\n\t"
                       ".endr\n\t"
                       "orq %[bit], (%%rax, %[scoreboard_offset])\n\t"
                       "addl $1, %%ecx\n\t" PERCPU_RSEQ_INJECT "movl %%ecx, 8(%%rax)\n\t")
           :
           : PERCPU_RSEQ_BATCH_INPUTS, [arr0] "r"(arr0), [cpu] "rm"(cpu), [record] "r"(record),
             [scoreboard_offset] "r"(scoreboard_offset), [bit] "r"(bit), [cpu_out] "r"(cpu_out),
             [bytes] "i"(Words * 8), [words] "i"(Words)
           : PERCPU_RSEQ_CLOBBERS, "rax", "rcx", "rdx", "r8"
           : unregistered, stopped, aborted, failed);
  PERCPU_RSEQ_RETURNS_WITH_FAILED
}

// The rseq area's cpu_id: the CPU this thread runs on, or a negative value
// when the area is not registered.  A plain read of a field the kernel keeps
// current on every return to user space.  (The area's own offset: the low
// bits of runtime.rseq_offset are the index mode's, see PERCPU_RSEQ.)
//
// The "memory" clobber makes the read a compiler barrier.  fence_cpu's
// own-CPU rule reads cpu_id after a compare-and-swap and relies on that
// order; an asm statement without memory operands is not a memory access,
// so nothing else would keep the compiler from hoisting it above the
// compare-and-swap (that GCC does not reorder volatile asm statements among
// themselves says nothing about ordinary accesses).
inline int cpu_id() noexcept {
  int cpu;
  asm volatile("movl %%fs:4(%[area_off]), %[cpu]"
               : [cpu] "=r"(cpu)
               : [area_off] "r"(rseq_offset_now() & ~std::ptrdiff_t{31})
               : "memory");
  return cpu;
}

// The slot index the sequences use: cpu_id, or mm_cid in mm_cid mode
// (runtime.hpp), negative when the area is not registered (cpu_id
// negative, whichever the mode).  A compiler barrier like cpu_id().
inline int slot_index() noexcept {
  int index;
  asm volatile("movl %%fs:4(%[rseq_off]), %[index]"
               : [index] "=r"(index)
               : [rseq_off] "r"(rseq_offset_now())
               : "memory");
  return cpu_id() < 0 ? -1 : index;
}

#undef PERCPU_RSEQ_DESCRIPTOR
#undef PERCPU_RSEQ
#undef PERCPU_RSEQ_CHECK_REGISTERED
#undef PERCPU_RSEQ_CHECK_STOP
#undef PERCPU_RSEQ_CHECK_GUARD
#undef PERCPU_RSEQ_ABORT_HANDLER
#undef PERCPU_RSEQ_DESCRIPTOR_TEXT
#undef PERCPU_RSEQ_INJECT
#undef PERCPU_RSEQ_CLOBBERS
#undef PERCPU_RSEQ_COMMON_INPUTS
#undef PERCPU_RSEQ_COMMON_INPUTS_WITH
#undef PERCPU_RSEQ_BATCH_INPUTS
#undef PERCPU_RSEQ_RETURNS
#undef PERCPU_RSEQ_RETURNS_WITH_FAILED
#undef PERCPU_RSEQ_RETURNS_WITH_MOVED

}  // namespace percpu::detail::arch
