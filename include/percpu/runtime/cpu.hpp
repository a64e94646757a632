// percpu/runtime/cpu.hpp - which CPU am I on, which CPUs exist, which backend runs.
//
// Problem: per-CPU data is only as good as the CPU number that indexes it.
// sched_getcpu() answers "where was I a moment ago", which is fine for a hint
// but not for a commit; the kernel's restartable sequences (rseq) answer
// "where am I, and tell me if that changes before I commit".  Arrays indexed
// by that number must be sized by the CPUs that could ever exist (the
// *possible* set, which may be sparse), not by the CPUs online now or the
// ones this process may use.
//
// Mechanism: at start-up the library picks one of two backends.
//  - rseq: the thread's rseq area gives the current CPU; glibc's registration
//    is used when glibc made one (glibc >= 2.35), otherwise the library
//    registers an area of its own per thread.  Remote access uses membarrier
//    rseq fences (see stop.hpp).
//  - portable: sched_getcpu() picks a slot and a per-slot lock guards it.
//    Always correct, slower; used under valgrind, TSan, and wherever rseq or
//    membarrier-rseq is missing.
// PERCPU_BACKEND=rseq|portable forces one; PERCPU_SLOTS=N makes the portable
// backend simulate N CPUs, so that wide machines can be exercised anywhere;
// PERCPU_PRETEND_MISSING=rseq,membarrier_rseq,membarrier_fence makes the
// library behave as on a kernel without those features (src/runtime/runtime.cpp);
// PERCPU_INDEX=cpu|mm_cid|auto chooses what indexes the slots (slot_index).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "percpu/runtime/detail/sequences.hpp"
#include "percpu/runtime/error.hpp"

namespace percpu {

// Errors: the calls below that start the library throw percpu::error with
// errc::configuration when the environment asks for something this machine
// cannot give (PERCPU_BACKEND=rseq without rseq, a malformed PERCPU_SLOTS,
// ...); every later call that starts it reports the same error again.

enum class backend_kind : std::uint8_t { rseq, portable };

// What indexes the slots of every structure: CPU numbers, or the kernel's
// per-process concurrency ids (rseq's mm_cid, Linux 6.3+), which keep the
// memory a structure touches bounded by the threads that run at once, not
// by the host's CPUs.  PERCPU_INDEX=cpu|mm_cid|auto chooses (docs/design.md,
// section 6).
enum class slot_index : std::uint8_t { cpu, mm_cid };

// Where the rseq area the library reads comes from.
enum class rseq_source : std::uint8_t { none, glibc, own };

// What start-up found and decided; printed by `percpu info`.
struct backend_info {
  backend_kind kind = backend_kind::portable;
  std::string reason;  // why this backend was chosen
  rseq_source source = rseq_source::none;
  unsigned feature_size = 0;     // AT_RSEQ_FEATURE_SIZE (0: not reported)
  unsigned alignment = 0;        // AT_RSEQ_ALIGN (0: not reported)
  bool node_id = false;          // rseq area carries node_id
  bool mm_cid = false;           // rseq area carries mm_cid (Linux 6.3+)
  bool membarrier_rseq = false;  // MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ usable
  bool sysfs_possible = false;   // possible CPUs read from sysfs (not a fallback)
  bool under_valgrind = false;
  bool under_sanitizer = false;  // built with ThreadSanitizer
  unsigned slots = 0;            // per-CPU slots every structure has
  slot_index index = slot_index::cpu;
  std::string index_reason;     // why this index ("auto: 4 of 64 CPUs allowed", ...)
  std::string pretend_missing;  // PERCPU_PRETEND_MISSING, as given
};

// Starts the library if needed and describes the active backend.
const backend_info& backend();

// Number of per-CPU slots: every CPU number current_cpu() can return is
// below it.  With rseq it is the highest possible CPU + 1; with the portable
// backend, PERCPU_SLOTS when set.  Starts the library if needed.
unsigned cpu_count();

// The slot the calling thread uses: the CPU it runs on, or, when slots are
// indexed by mm_cid, the concurrency id it holds.  A hint: the thread may
// move (or its id change) right after.  Async-signal-safe once the library
// has started.
inline unsigned current_cpu() noexcept {
  return detail::seq::current_cpu();
}

// CPU sets, as sorted lists of CPU numbers.
std::vector<unsigned> possible_cpus();  // may be sparse; falls back to sysconf
std::vector<unsigned> online_cpus();
// This thread's affinity mask, as the kernel reports it: ANDed with the
// active CPUs, so empty for a moment if every CPU of the mask is being
// taken offline (CPU hotplug), until the kernel moves the thread.
std::vector<unsigned> allowed_cpus();
std::vector<unsigned> numa_nodes();  // online NUMA nodes ({0} if unknown)

// NUMA node of `cpu`, or -1 when the system does not say.
int numa_node_of(unsigned cpu);

// Parses a kernel CPU list ("0-3,8,10-11"); throws percpu::error
// (errc::invalid_argument) on malformed input.  Exposed because every sysfs
// CPU file uses this format.
[[nodiscard]] std::vector<unsigned> parse_cpu_list(const std::string& text);

}  // namespace percpu
