// percpu/runtime/detail/arch.hpp - the one place that picks the machine's half of the backend.
//
// Problem: a per-CPU operation is a few instructions whose exact shape
// depends on the architecture (how the thread pointer is read, how a
// restartable sequence is described to the kernel, which word precedes an
// abort handler, how a spinning CPU is told to relax).  Spread over the
// library, each of those would be an #if in every file that touches one,
// and every new architecture would have to find them all.
//
// Mechanism: everything architecture-dependent lives in one folder,
// arch/<name>/, whose rseq.hpp is included below by one line.  An
// architecture without restartable sequences gets arch/generic/, which
// reports that it has none: start-up then chooses the portable backend
// (src/runtime/portable.cpp) and says why.  The rest of the library is
// architecture-neutral C++ and never asks which backend runs
// (scripts/check-tree.sh checks that facilities do not).
//
// What arch/<name>/rseq.hpp provides, in namespace percpu::detail::arch:
//
//   has_sequences      constexpr bool: the sequences below are real (false:
//                      only the portable backend can run);
//   rmw_is_full_barrier  constexpr bool: a seq_cst read-modify-write is also
//                      a full barrier for the plain accesses around it
//                      (full_barrier_after_rmw() in fence.hpp);
//   rseq_signature     constexpr std::uint32_t: the word placed before every
//                      abort handler, which the library's own registration
//                      passes to rseq(2) (glibc's RSEQ_SIG for the
//                      architecture, so that glibc's registration accepts the
//                      same handlers);
//   thread_pointer()   char*: the calling thread's thread pointer, from which
//                      the rseq area sits at runtime.rseq_offset (less
//                      mm_cid_shift in mm_cid mode, runtime.hpp);
//   cpu_relax()        one spin-wait hint (x86 pause, arm yield, or nothing);
//   cpu_id()           int: the rseq area's cpu_id (negative: the area is not
//                      registered), read as a compiler barrier (fence_cpu's
//                      own-CPU rule reads it after a compare-and-swap);
//   slot_index()       int: the word the sequences index by (cpu_id, or
//                      mm_cid in mm_cid mode), the same way, negative when
//                      the area is not registered in either mode;
//   the sequences      add, add_release, add_sign, compare_and_store,
//                      push, pop, push_batch, pop_batch, push_record<Words>,
//                      with the signatures of arch/x86_64/rseq.hpp, each
//                      reading the slot index 4 bytes past rseq_offset
//                      inside its critical section (and cpu_id's sign too
//                      in mm_cid mode),
//                      returning a `status` (below) and honouring the
//                      stop-word rule (docs/design.md, section 2), the
//                      orders of docs/design.md, section 5 (a stop word read
//                      with acquire; add_release and push_record commit with
//                      release) and, in builds with it,
//                      PERCPU_FAULT_INJECTION.
//
// Nothing outside this folder tree contains inline assembly
// (scripts/check-tree.sh).
#pragma once

#include <cstdint>

// Fault injection (PERCPU_FAULT_INJECTION, decided at the library's build:
// percpu/runtime/config.hpp): each sequence counts down this thread's
// percpu_fault_countdown and aborts itself at zero.
#include "percpu/runtime/config.hpp"

namespace percpu::detail::arch {

// Outcome of one attempt at a sequence.  The retry loop in sequences.hpp
// turns it into the backend-neutral results the facilities see.
enum class status : std::uint8_t {
  committed,     // the operation took effect
  failed,        // the sequence's own condition failed (full, empty, not equal)
  stopped,       // a remote visitor holds this CPU: wait, then retry
  unregistered,  // no registered rseq area (a new thread, the portable
                 // backend, or before start-up): the slow path decides
  aborted,       // preempted, migrated or signalled before the commit: retry
  moved,         // a sequence bound to one CPU found the thread on another
};

}  // namespace percpu::detail::arch

// One line per architecture.  PERCPU_ARCH_GENERIC (the CMake option of the
// same name, for the library and its users alike) builds any architecture as
// one without sequences: the portable backend alone, as a port starts.
#if defined(PERCPU_ARCH_GENERIC)
#include "percpu/runtime/detail/arch/generic/rseq.hpp"
#elif defined(__x86_64__)
#include "percpu/runtime/detail/arch/x86_64/rseq.hpp"
#elif defined(__aarch64__)
#include "percpu/runtime/detail/arch/aarch64/rseq.hpp"
#else
#include "percpu/runtime/detail/arch/generic/rseq.hpp"
#endif
