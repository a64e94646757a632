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
// path that reads a negative cpu_id asks slow::register_thread()).  The own
// area lives in initial-exec TLS so that, like glibc's, it sits at a fixed
// offset from the thread pointer and the sequences address both the same way.
// It never writes a kernel-owned field of either area.
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define PERCPU_HAVE_VALGRIND_H 1
#endif
#endif

#include "percpu/cpu.hpp"
#include "percpu/detail/runtime.hpp"
#include "percpu/detail/sequences.hpp"
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

constexpr std::uint32_t rseq_signature = 0x53053053;  // glibc's RSEQ_SIG, x86-64
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
  std::uint32_t mm_cid = 0;
  unsigned char rest[own_area_size - 28] = {};
};
static_assert(sizeof(own_rseq_area) == own_area_size);

// Constant-initialised, initial-exec: every thread's copy sits at the same
// offset from the thread pointer, and exists from the thread's first
// instruction with cpu_id = -1 (not registered).
thread_local own_rseq_area own_area __attribute__((tls_model("initial-exec")));

// The portable backend points the sequences here: an area that is never
// registered, so its cpu_id stays -1 and every sequence leaves through its
// `unregistered` exit to the portable code.  (Not own_area: start-up may
// have registered that one before deciding against rseq.)
thread_local own_rseq_area portable_area __attribute__((tls_model("initial-exec")));

std::mutex start_mutex;  // constant-initialised
std::atomic<bool> started{false};

// Start-up's findings, and its error (non-empty: start-up failed with this
// message).  Built on first use and never destroyed, like every library
// global a user's object at namespace scope can reach: that object may start
// the library from its static initialiser, before this file's initialisers
// ran, or ask from its destructor, after this file's destructors ran.
backend_info& info() {
  static backend_info* const i = new backend_info;
  return *i;
}
std::string& start_error() {
  static std::string* const e = new std::string;
  return *e;
}
unsigned own_registration_length = rseq_original_size;
unsigned real_cpu_slots = 1;  // highest possible CPU + 1 (portable slot mapping)
std::atomic<unsigned> next_thread_index{0};

char* thread_pointer() noexcept {
  char* tp;
  asm("movq %%fs:0, %0" : "=r"(tp));
  return tp;
}

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
    throw config_error(std::string("PERCPU_SLOTS='") + text +
                       "' is not a whole number between 1 and " + std::to_string(max_slots));
  }
  return static_cast<unsigned>(value);
}

// What the rseq backend needs besides a registered area: the membarrier
// rseq fence (to stop a CPU) and a known possible-CPU set.  Empty when all
// is there.
std::string probe_fences(bool sysfs_ok) {
  long commands = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (commands < 0 || (commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) == 0) {
    return "membarrier has no PRIVATE_EXPEDITED_RSEQ fence (needed to stop a CPU)";
  }
  if (syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0) {
    int err = errno;
    char buf[128];
    return std::string("membarrier rseq registration failed (") + error_text(err, buf, sizeof buf) +
           ")";
  }
  info().membarrier_rseq = true;
  if (!sysfs_ok) {
    return "the possible-CPU set is unknown (/sys/devices/system/cpu/possible unreadable), "
           "so CPU ids could exceed the slots";
  }
  return {};
}

// Why rseq cannot be used here; empty when it can.  Fills the rseq fields of
// `info` and runtime.rseq_offset.
std::string probe_rseq(bool sysfs_ok) {
#if !defined(PERCPU_HAVE_RSEQ_SEQUENCES)
  (void)sysfs_ok;
  return "no restartable sequences for this architecture yet";
#else
  info().feature_size = static_cast<unsigned>(getauxval(AT_RSEQ_FEATURE_SIZE));
  info().alignment = static_cast<unsigned>(getauxval(AT_RSEQ_ALIGN));
  unsigned usable = info().feature_size != 0 ? info().feature_size : 20;
  info().node_id = usable >= 24;
  info().mm_cid = usable >= 28;

  if (glibc_registered()) {
    info().source = rseq_source::glibc;
    runtime.rseq_offset = __rseq_offset;
    auto* cpu_id = reinterpret_cast<volatile std::int32_t*>(thread_pointer() + __rseq_offset + 4);
    if (*cpu_id < 0) return "glibc's rseq registration failed for this thread";
  } else {
    if (info().feature_size > own_area_size || info().alignment > own_area_alignment) {
      return "the kernel's rseq area (size " + std::to_string(info().feature_size) +
             ", alignment " + std::to_string(info().alignment) +
             ") is larger than the library's own area";
    }
    if (info().feature_size > rseq_original_size) own_registration_length = info().feature_size;
    runtime.rseq_offset = reinterpret_cast<char*>(&own_area) - thread_pointer();
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
#endif
}

// Fault injection (debug builds, see rseq_x86_64.hpp): sequences abort
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

void start_locked() {
  read_fault_rate();
  const char* forced = std::getenv("PERCPU_BACKEND");
  std::string want = forced != nullptr ? forced : "";
  if (!want.empty() && want != "rseq" && want != "portable") {
    throw config_error("PERCPU_BACKEND='" + want + "' is not one of: rseq, portable");
  }
  const char* slots_text = std::getenv("PERCPU_SLOTS");
  bool slots_forced = slots_text != nullptr && *slots_text != '\0';
  unsigned forced_slots = slots_forced ? parse_slots(slots_text) : 0;
  if (slots_forced && want == "rseq") {
    throw config_error(
        "PERCPU_SLOTS simulates CPUs with the portable backend; it cannot be "
        "combined with PERCPU_BACKEND=rseq");
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
      runtime.slots = real_cpu_slots;
    } else {
      portable_reason = why_not;
    }
  }
  if (!portable_reason.empty()) {
    if (want == "rseq") {
      throw config_error("PERCPU_BACKEND=rseq, but rseq cannot be used here: " + portable_reason);
    }
    info().kind = backend_kind::portable;
    info().reason = portable_reason;
    runtime.slots = slots_forced ? forced_slots : real_cpu_slots;
  }
  if (info().kind == backend_kind::portable) {
    // The sequences' own test sends every operation to the portable code:
    // this area is never registered, so its cpu_id stays negative.
    runtime.rseq_offset = reinterpret_cast<char*>(&portable_area) - thread_pointer();
  }
  info().slots = runtime.slots;
  runtime.backend = info().kind == backend_kind::rseq ? backend_code::rseq : backend_code::portable;
}

}  // namespace

void ensure_started() {
  if (started.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(start_mutex);
  if (started.load(std::memory_order_relaxed)) return;
  if (!start_error().empty()) throw config_error(start_error());
  try {
    start_locked();
  } catch (const config_error& e) {
    start_error() = std::string("percpu: ") + e.what();
    throw config_error(start_error());
  }
  started.store(true, std::memory_order_release);
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

void register_thread() noexcept {
  if (info().source == rseq_source::glibc) {
    // glibc registers every thread it creates; this one's registration
    // failed (cpu_id -2), and its area is glibc's, not ours to register.
    std::fprintf(stderr, "percpu: glibc's rseq registration failed for this thread\n");
    std::abort();
  }
  if (int err = register_own_area(); err != 0) {
    char buf[128];
    std::fprintf(stderr, "percpu: rseq registration of a new thread failed (%s)\n",
                 error_text(err, buf, sizeof buf));
    std::abort();
  }
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

namespace {
// strerror_r is the XSI one (returns int) or the GNU one (returns the
// message, which need not be in the buffer); these pick whichever it is.
[[maybe_unused]] const char* strerror_r_result(int rc, const char* buf) noexcept {
  return rc == 0 ? buf : "unknown error";
}
[[maybe_unused]] const char* strerror_r_result(const char* message, const char*) noexcept {
  return message;
}
}  // namespace

const char* error_text(int err, char* buf, std::size_t size) noexcept {
  return strerror_r_result(strerror_r(err, buf, size), buf);
}

void relax(unsigned spins) noexcept {
  if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  } else {
    sched_yield();
  }
}

std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
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
