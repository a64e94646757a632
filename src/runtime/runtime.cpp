// runtime.cpp - start-up: pick a backend, find the rseq area, size the slots.
//
// Problem: the rseq backend needs three things from the system - a registered
// rseq area for every thread, membarrier's rseq fence (for stop.hpp), and
// the true possible-CPU count (cpu_id is an index into every per-CPU array,
// so an undercount is memory corruption).  Any of them may be missing: old
// kernels, valgrind, seccomp sandboxes, containers without /sys, glibc told
// not to register (GLIBC_TUNABLES=glibc.pthread.rseq=0).  A sanitizer that
// cannot see inside the sequences must not silently run them either.
//
// Mechanism: start-up runs once, on first use, under a mutex.  It prefers
// glibc's rseq registration (__rseq_offset/__rseq_size); when glibc did not
// register, it registers an area of its own for each thread, lazily (a fast
// path that reads a negative cpu_id asks slow::use_sequences()).  The own
// area lives in initial-exec TLS so that, like glibc's, it sits at a fixed
// offset from the thread pointer and the sequences address both the same way.
// It never writes a kernel-owned field of either area.
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define PERCPU_HAVE_VALGRIND_H 1
#endif
#endif

#include "index_mode.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/arch.hpp"
#include "percpu/runtime/detail/runtime.hpp"
#include "percpu/runtime/detail/sequences.hpp"
#include "percpu/runtime/error.hpp"
#include "runtime_internal.hpp"
#include "topology.hpp"

// glibc >= 2.35 exports these when it registered rseq for every thread.
// Weak, so the library also loads on an older glibc (they read as absent).
extern "C" {
extern const std::ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));
}

#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27
#endif
#ifndef AT_RSEQ_ALIGN
#define AT_RSEQ_ALIGN 28
#endif

#if defined(__SANITIZE_THREAD__)
#define PERCPU_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PERCPU_UNDER_TSAN 1
#endif
#endif

extern "C" {
__thread __attribute__((tls_model("initial-exec"))) std::int32_t percpu_fault_countdown = 1;
}

namespace percpu::detail {

runtime_state runtime;

namespace {

constexpr std::uint32_t cpu_id_uninitialized = 0xffffffffu;
constexpr unsigned rseq_original_size = 32;
constexpr unsigned own_area_size = 256;
constexpr unsigned own_area_alignment = 64;
constexpr unsigned max_slots = 4096;

// The kernel ABI's struct rseq, as far as the library reads it, padded so
// that later kernel features (AT_RSEQ_FEATURE_SIZE) still fit.
struct alignas(own_area_alignment) own_rseq_area {
  std::uint32_t cpu_id_start = 0;
  std::uint32_t cpu_id = cpu_id_uninitialized;  // user space initialises, kernel owns
  std::uint64_t rseq_cs = 0;
  std::uint32_t flags = 0;
  std::uint32_t node_id = 0;
  std::uint32_t mm_cid = cpu_id_uninitialized;  // likewise: negative until registered
  unsigned char rest[own_area_size - 28] = {};
};
static_assert(sizeof(own_rseq_area) == own_area_size);
static_assert(offsetof(own_rseq_area, mm_cid) - offsetof(own_rseq_area, cpu_id) == mm_cid_shift,
              "runtime.rseq_offset's mm_cid mode names mm_cid where cpu_id was");

// Constant-initialised, initial-exec: every thread's copy sits at the same
// offset from the thread pointer, and exists from the thread's first
// instruction with cpu_id = -1 (not registered).
thread_local own_rseq_area own_area __attribute__((tls_model("initial-exec")));

// The portable backend points the sequences here: an area that is never
// registered, so its cpu_id stays -1 and every sequence leaves through its
// `unregistered` exit to the portable code.  (Not own_area: start-up may
// have registered that one before deciding against rseq.)
thread_local own_rseq_area portable_area __attribute__((tls_model("initial-exec")));

// Offset of `area` (this thread's copy, and so every thread's) from the
// thread pointer.
std::ptrdiff_t offset_of(own_rseq_area& area) noexcept {
  return reinterpret_cast<char*>(&area) - arch::thread_pointer();
}

// Before start-up the sequences must not address the thread pointer's own
// offset 0: runtime.rseq_offset is constant-initialised to 0, and a sequence
// would store its descriptor at 8 bytes from the thread pointer, inside
// glibc's thread control block.  So a constructor aims them at
// portable_area first: a sequence that runs before start-up (on memory the
// library did not hand out - an object used before its constructor ran)
// finds it unregistered and leaves through `unregistered`, whose slow path
// starts the library (slow::use_sequences).  Priority 101 runs it before
// every initialiser of default priority in a static link, and a shared
// library's initialisers run before those of the objects that need it; it
// allocates nothing and touches no other global.
[[gnu::constructor(101)]] void aim_sequences_at_an_unregistered_area() noexcept {
  if constexpr (arch::has_sequences) {
    if (backend_now() == backend_code::uninitialized) {
      runtime.rseq_offset.store(offset_of(portable_area), std::memory_order_relaxed);
    }
  }
}

std::ptrdiff_t found_rseq_offset = 0;  // start-up's finding, see probe_rseq

// Where start-up stands (runtime_internal.hpp's once_claim): once_idle,
// claimed, started, or refused (start_error() says why, to every caller).
constexpr std::uintptr_t start_done = 2;
constexpr std::uintptr_t start_refused = 4;
std::atomic<std::uintptr_t> start_state{once_idle};

// Start-up's findings and its error, built by each start-up afresh with
// placement new: no initialiser or destructor of this file runs around a
// user's objects at namespace scope, and no C++ guard that fork() could copy
// half done.
struct start_record {
  backend_info info;
  std::string error;
};
alignas(start_record) unsigned char record_storage[sizeof(start_record)];
backend_info& info() {
  return std::launder(reinterpret_cast<start_record*>(record_storage))->info;
}
std::string& start_error() {
  return std::launder(reinterpret_cast<start_record*>(record_storage))->error;
}

// Why start-up refuses the environment; ensure_started() reports it as a
// percpu::error (errc::configuration).
struct refusal {
  std::string why;
};
unsigned own_registration_length = rseq_original_size;
unsigned real_cpu_slots = 1;  // highest possible CPU + 1 (portable slot mapping)
std::atomic<unsigned> next_thread_index{0};

using arch::rseq_signature;
using arch::thread_pointer;

bool glibc_registered() noexcept {
  return &__rseq_size != nullptr && __rseq_size > 0;
}

int register_own_area() noexcept {
  long rc = syscall(__NR_rseq, &own_area, own_registration_length, 0, rseq_signature);
  if (rc == 0 || errno == EBUSY) return 0;  // EBUSY: this thread already registered
  return errno;
}

void unregister_own_area() noexcept {
  constexpr int rseq_flag_unregister = 1;
  syscall(__NR_rseq, &own_area, own_registration_length, rseq_flag_unregister, rseq_signature);
}

bool under_valgrind() noexcept {
#if defined(PERCPU_HAVE_VALGRIND_H)
  if (RUNNING_ON_VALGRIND) return true;
#endif
  const char* preload = std::getenv("LD_PRELOAD");
  return preload != nullptr && std::strstr(preload, "vgpreload") != nullptr;
}

unsigned parse_slots(const char* text) {
  char* end = nullptr;
  errno = 0;
  unsigned long value = std::strtoul(text, &end, 10);
  if (*text == '\0' || *end != '\0' || errno != 0 || value < 1 || value > max_slots) {
    throw refusal{std::string("PERCPU_SLOTS='") + text + "' is not a whole number between 1 and " +
                  std::to_string(max_slots)};
  }
  return static_cast<unsigned>(value);
}

// PERCPU_PRETEND_MISSING=name,name,...: start-up and the fences behave as
// if these kernel features were missing, so that the suite and `percpu
// info` can be run as on a kernel without them:
//   rseq              the rseq system call (glibc's registration included);
//   membarrier_rseq   membarrier's PRIVATE_EXPEDITED_RSEQ fence;
//   membarrier_fence  that fence failing at run time (as under a seccomp
//                     filter installed after start-up): fences run the
//                     calling thread on the CPUs instead.
struct pretended_missing {
  bool rseq = false;
  bool membarrier_rseq = false;
  bool membarrier_fence = false;
};
pretended_missing pretend;

void read_pretend() {
  const char* text = std::getenv("PERCPU_PRETEND_MISSING");
  if (text == nullptr) return;
  std::string all = text;
  for (std::size_t at = 0; at <= all.size();) {
    std::size_t end = std::min(all.find(',', at), all.size());
    std::string name = all.substr(at, end - at);
    at = end + 1;
    if (name.empty()) continue;
    bool* flag = name == "rseq"               ? &pretend.rseq
                 : name == "membarrier_rseq"  ? &pretend.membarrier_rseq
                 : name == "membarrier_fence" ? &pretend.membarrier_fence
                                              : nullptr;
    if (flag == nullptr) {
      throw refusal{"PERCPU_PRETEND_MISSING names '" + name +
                    "', not one of: rseq, membarrier_rseq, membarrier_fence"};
    }
    *flag = true;
  }
  info().pretend_missing = all;
}

constexpr const char* pretended = " (pretended: PERCPU_PRETEND_MISSING)";

// What the rseq backend needs besides a registered area: the membarrier
// rseq fence (to stop a CPU) and a known possible-CPU set.  Empty when all
// is there.
std::string probe_fences(bool sysfs_ok) {
  long commands = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (commands < 0 || (commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) == 0 ||
      pretend.membarrier_rseq) {
    return std::string("membarrier has no PRIVATE_EXPEDITED_RSEQ fence (needed to stop a CPU)") +
           (pretend.membarrier_rseq ? pretended : "");
  }
  if (syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0) {
    int err = errno;
    char buf[128];
    return std::string("membarrier rseq registration failed (") + error_text(err, buf, sizeof buf) +
           ")";
  }
  info().membarrier_rseq = true;
  if (pretend.membarrier_fence) pretend_membarrier_broken();
  if (!sysfs_ok) {
    return "the possible-CPU set is unknown (/sys/devices/system/cpu/possible unreadable), "
           "so CPU ids could exceed the slots";
  }
  return {};
}

// Why rseq cannot be used here; empty when it can.  Fills the rseq fields of
// `info` and found_rseq_offset (published with the backend at the end of
// start-up, so that no sequence on another thread uses an area before the
// backend that goes with it is chosen).
std::string probe_rseq(bool sysfs_ok) {
  if constexpr (!arch::has_sequences) {
    return "no restartable sequences for this architecture yet";
  }
  info().feature_size = static_cast<unsigned>(getauxval(AT_RSEQ_FEATURE_SIZE));
  info().alignment = static_cast<unsigned>(getauxval(AT_RSEQ_ALIGN));
  unsigned usable = info().feature_size != 0 ? info().feature_size : 20;
  info().node_id = usable >= 24;
  info().mm_cid = usable >= 28;

  if (pretend.rseq) {
    char buf[128];
    return std::string("the rseq system call failed (") + error_text(ENOSYS, buf, sizeof buf) +
           ")" + pretended;
  }
  if (glibc_registered()) {
    info().source = rseq_source::glibc;
    found_rseq_offset = __rseq_offset;
    // The sequences tell the index modes apart by the offset's low bits
    // (runtime.hpp): an rseq area is 32-byte aligned, and so is the thread
    // pointer wherever glibc runs (x86-64: 64; aarch64: the offset is -32).
    if ((found_rseq_offset & 31) != 0) {
      return "glibc's rseq area is at offset " + std::to_string(found_rseq_offset) +
             " from the thread pointer, not a multiple of 32";
    }
    auto* cpu_id = reinterpret_cast<volatile std::int32_t*>(thread_pointer() + __rseq_offset + 4);
    if (*cpu_id < 0) return "glibc's rseq registration failed for this thread";
  } else {
    if (info().feature_size > own_area_size || info().alignment > own_area_alignment) {
      return "the kernel's rseq area (size " + std::to_string(info().feature_size) +
             ", alignment " + std::to_string(info().alignment) +
             ") is larger than the library's own area";
    }
    if (info().feature_size > rseq_original_size) own_registration_length = info().feature_size;
    found_rseq_offset = offset_of(own_area);
    if (int err = register_own_area(); err != 0) {
      info().source = rseq_source::none;
      char buf[128];
      return std::string("the rseq system call failed (") + error_text(err, buf, sizeof buf) + ")";
    }
    info().source = rseq_source::own;
  }
  std::string why_not = probe_fences(sysfs_ok);
  if (!why_not.empty() && info().source == rseq_source::own) unregister_own_area();
  return why_not;
}

// Fault injection (debug builds, see runtime/detail/arch.hpp): sequences abort
// themselves when this thread's countdown reaches zero.  It starts at 1, so
// a thread's first sequence rearms it with the configured rate.
// Constant-initialised; start-up reads PERCPU_FAULT_ABORT_RATE into it.
std::atomic<unsigned> fault_abort_every{0};

void read_fault_rate() noexcept {
  const char* text = std::getenv("PERCPU_FAULT_ABORT_RATE");
  if (text != nullptr) {
    fault_abort_every.store(static_cast<unsigned>(std::strtoul(text, nullptr, 10)),
                            std::memory_order_relaxed);
  }
}
std::atomic<std::uint64_t> fault_injected{0};

// The slot count of the rseq backend, where cpu_id indexes every per-CPU
// array: the possible CPUs, but never fewer than the kernel shows the
// process.  A PERCPU_SYSFS_CPU_DIR override that names fewer (a test's
// directory that does not match the machine) would let a thread on a
// higher CPU write past every structure: it is ignored here, and said so.
unsigned rseq_slots() {
  unsigned kernel = kernel_cpu_slots();
  if (kernel <= real_cpu_slots) return real_cpu_slots;
  info().reason += "; " + sysfs_cpu_dir() + "/possible names " + std::to_string(real_cpu_slots) +
                   " CPUs, fewer than the kernel's " + std::to_string(kernel) + ": ignored";
  real_cpu_slots = kernel;
  return kernel;
}

// PERCPU_INDEX (index_mode.hpp), once the backend is known: true for mm_cid.
bool choose_index_mode(unsigned possible_count) {
  index_inputs in;
  in.requested = std::getenv("PERCPU_INDEX");
  in.rseq_backend = info().kind == backend_kind::rseq;
  in.kernel_has_mm_cid = info().mm_cid;
  in.allowed_cpus = allowed_cpu_count();
  in.possible_cpus = possible_count;
  index_choice c = choose_index(in);
  if (!c.error.empty()) throw refusal{c.error};
  info().index = c.mm_cid ? slot_index::mm_cid : slot_index::cpu;
  info().index_reason = c.why;
  return c.mm_cid;
}

void start_locked() {
  read_fault_rate();
  read_pretend();
  // A malformed PERCPU_INDEX is refused before anything is registered.
  if (std::string e = index_request_error(std::getenv("PERCPU_INDEX")); !e.empty()) {
    throw refusal{e};
  }
  const char* forced = std::getenv("PERCPU_BACKEND");
  std::string want = forced != nullptr ? forced : "";
  if (!want.empty() && want != "rseq" && want != "portable") {
    throw refusal{"PERCPU_BACKEND='" + want + "' is not one of: rseq, portable"};
  }
  const char* slots_text = std::getenv("PERCPU_SLOTS");
  bool slots_forced = slots_text != nullptr && *slots_text != '\0';
  unsigned forced_slots = slots_forced ? parse_slots(slots_text) : 0;
  if (slots_forced && want == "rseq") {
    throw refusal{
        "PERCPU_SLOTS simulates CPUs with the portable backend; it cannot be "
        "combined with PERCPU_BACKEND=rseq"};
  }

  possible_set possible = read_possible_cpus(sysfs_cpu_dir());
  info().sysfs_possible = possible.from_sysfs;
  real_cpu_slots = possible.cpus.back() + 1;
  info().under_valgrind = under_valgrind();
#if defined(PERCPU_UNDER_TSAN)
  info().under_sanitizer = true;
#endif

  std::string portable_reason;
  if (info().under_sanitizer) {
    portable_reason = "built with ThreadSanitizer, which cannot see inside rseq sequences";
  } else if (info().under_valgrind) {
    portable_reason = "running under valgrind, which does not support rseq";
  } else if (slots_forced) {
    portable_reason = "PERCPU_SLOTS=" + std::to_string(forced_slots) + " simulates CPUs";
  } else if (want == "portable") {
    portable_reason = "PERCPU_BACKEND=portable";
  } else {
    std::string why_not = probe_rseq(possible.from_sysfs);
    if (why_not.empty()) {
      info().kind = backend_kind::rseq;
      info().reason =
          want == "rseq" ? "PERCPU_BACKEND=rseq" : "rseq and membarrier rseq fences available";
      runtime.slots = rseq_slots();
    } else {
      portable_reason = why_not;
    }
  }
  if (!portable_reason.empty()) {
    if (want == "rseq") {
      throw refusal{"PERCPU_BACKEND=rseq, but rseq cannot be used here: " + portable_reason};
    }
    info().kind = backend_kind::portable;
    info().reason = portable_reason;
    runtime.slots = slots_forced ? forced_slots : real_cpu_slots;
  }
  // With the portable backend the sequences' own test sends every operation
  // to the portable code: portable_area is never registered, so its cpu_id
  // stays negative.
  // In mm_cid mode the offset names mm_cid where it named cpu_id
  // (runtime.hpp).
  bool mm_cid = choose_index_mode(static_cast<unsigned>(possible.cpus.size()));
  if constexpr (arch::has_sequences) {
    runtime.rseq_offset.store(info().kind == backend_kind::rseq
                                  ? found_rseq_offset + (mm_cid ? mm_cid_shift : 0)
                                  : offset_of(portable_area),
                              std::memory_order_relaxed);
  }
  info().slots = runtime.slots;
  runtime.light_barrier_is_compiler_barrier = info().kind == backend_kind::rseq;
  // Last, with release: a thread that reads it with acquire sees all of
  // the above (runtime.hpp).
  runtime.backend.store(
      info().kind == backend_kind::rseq ? backend_code::rseq : backend_code::portable,
      std::memory_order_release);
}

}  // namespace

// Start-up runs once per process (once_claim: a start-up that fork() caught
// half done is redone by the child).
void ensure_started() {
  if (start_state.load(std::memory_order_acquire) == start_done) [[likely]]
    return;
  std::uintptr_t state = once_claim(start_state);
  if (state == start_done) return;
  if (state == start_refused) throw error(errc::configuration, start_error());
  // Claimed.  One that fork() caught after it published the backend (its
  // last step) is done: the child's threads already use it.  Else start
  // from nothing (a record half filled by the parent is leaked).
  if (backend_acquire() == backend_code::uninitialized) {
    new (record_storage) start_record;
    try {
      start_locked();
    } catch (const refusal& r) {
      start_error() = "percpu: " + r.why;
      // Release: pairs with once_claim's acquire; the message first.
      start_state.store(start_refused, std::memory_order_release);
      throw error(errc::configuration, start_error());
    } catch (...) {
      start_state.store(once_idle, std::memory_order_release);
      throw;
    }
  }
  // Release: pairs with the acquire loads above; every finding first.
  start_state.store(start_done, std::memory_order_release);
}

void start_from_an_operation() noexcept {
  try {
    ensure_started();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s (start-up from a per-CPU operation, which cannot report it)\n",
                 e.what());
    std::abort();
  }
}

unsigned portable_slot() noexcept {
  thread_local unsigned thread_index = next_thread_index.fetch_add(1, std::memory_order_relaxed);
  int cpu = sched_getcpu();
  unsigned real = cpu >= 0 ? static_cast<unsigned>(cpu) : 0;
  // Each thread gets its own window of slots: with PERCPU_SLOTS wider than
  // the machine, threads spread over all slots and migrations still move
  // them between slots.
  return (real + thread_index * real_cpu_slots) % runtime.slots;
}

void set_fault_abort_rate(unsigned every) noexcept {
  fault_abort_every.store(every, std::memory_order_relaxed);
  percpu_fault_countdown = 1;
}

std::uint64_t fault_injections() noexcept {
  return fault_injected.load(std::memory_order_relaxed);
}

namespace slow {

namespace {

// Set once this thread's rseq area turned out impossible to register.
thread_local constinit bool area_unregistrable = false;

// Makes the calling thread's rseq area usable; false when it cannot be.
// Such a thread takes the portable path for every operation, with the rest
// of the process on rseq: each of its operations takes the slot's stop
// word as a lock and fences that CPU (portable.cpp), which is a visit, so
// the sequences of the other threads are excluded as from any visitor.
// Slower, and never an abort.
bool register_thread() noexcept {
  // Registered already: the sequence read the offset in use before
  // start-up (portable_area's), and start-up has replaced it since.
  if (arch::cpu_id() >= 0) return true;
  if (area_unregistrable) return false;
  // glibc registers every thread it creates, and this one's registration
  // failed (cpu_id stays negative); its area is glibc's, not ours to
  // register.  Or the library's own registration fails: EINVAL when
  // another rseq user registered the thread with an area of its own, EPERM
  // when with another signature.
  if (info().source == rseq_source::glibc || register_own_area() != 0) {
    area_unregistrable = true;
    return false;
  }
  return true;
}

}  // namespace

bool use_sequences() noexcept {
  if (backend_acquire() == backend_code::uninitialized) start_from_an_operation();
  if (backend_acquire() != backend_code::rseq) return false;
  return register_thread();
}

void fault_rearm() noexcept {
  if (percpu_fault_countdown > 0) return;  // a real abort, not an injected one
  fault_injected.fetch_add(1, std::memory_order_relaxed);
  unsigned every = fault_abort_every.load(std::memory_order_relaxed);
  percpu_fault_countdown = every != 0 ? static_cast<std::int32_t>(every) : INT32_MAX;
}

void wait_while_stopped(const std::uint32_t* stop0) noexcept {
  unsigned cpu = seq::current_cpu();
  std::atomic_ref<const std::uint32_t> word(*copy_on(stop0, cpu));
  for (unsigned spins = 0; word.load(std::memory_order_acquire) != 0; ++spins) {
    relax(spins);
  }
}

}  // namespace slow

void relax(unsigned spins) noexcept {
  if (spins < 64) {
    arch::cpu_relax();
    return;
  }
  // A real-time waiter sleeps every 64th step, longer each time (1 us
  // doubling to about 1 ms): the holder may be a thread of lower priority
  // preempted on this very CPU, which sched_yield never lets run - a
  // SCHED_FIFO waiter behind a SCHED_OTHER stopper would spin until the
  // kernel's real-time throttling stepped in.  Every other waiter yields,
  // which lets any such holder run and wakes the waiter the moment the word
  // clears (sleeping instead cut a storm of short stops to a crawl).
  if (spins % 64 == 63) {
    int policy = sched_getscheduler(0);
    if (policy == SCHED_FIFO || policy == SCHED_RR) {
      unsigned sleeps = spins / 64 - 1;
      timespec pause{0, 1000L << (sleeps < 10 ? sleeps : 10)};
      nanosleep(&pause, nullptr);
      return;
    }
  }
  sched_yield();
}

}  // namespace percpu::detail

namespace percpu {

const backend_info& backend() {
  detail::ensure_started();
  return detail::info();
}

unsigned cpu_count() {
  detail::ensure_started();
  return detail::runtime.slots;
}

}  // namespace percpu
