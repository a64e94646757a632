// percpu/xcall.hpp - cross-CPU calls: NetBSD xcall(9), Linux smp_call_function.
//
// Problem: some work must be done by or for one particular CPU.  Draining a
// CPU's cache of objects, resetting its counters or moving value off it can
// be done from outside while the CPU's per-CPU data is stopped (stop.hpp);
// other work must really run *on* the CPU - it touches state only that CPU
// may touch, or must block, or must observe the CPU from inside.  User space
// has no IPIs and no per-CPU softints; what it has is threads that can be
// pinned, futexes, and the rseq fence.
//
// Mechanism, two priorities as in xcall(9):
//  - on-CPU calls (low priority, XC_LOWPRI; smp_call_function*):
//    unicast/broadcast copy the callable into a call descriptor owned by the
//    calling thread and push it on the target CPU's lock-free queue; a
//    service thread pinned to that CPU (created on the first call to it)
//    runs the queue in order, and may block.  wait(ticket) returns once the
//    functions have returned, with their writes visible to the waiter.
//  - stopped-CPU visits (high priority, XC_HIGHPRI): visit/visit_all run
//    f(cpu) on the caller's own thread while the named per-CPU structures
//    are stopped on `cpu` (one fence for one CPU, one broadcast fence for
//    all).  They need no cooperation from the CPU: idle CPUs and CPUs the
//    process may not run on are reached too.
//
// See docs/xcall.md for the guarantees, the contexts each call may be made
// from, and the mapping to the kernel APIs.
#pragma once

#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string_view>
#include <utility>

#include "percpu/core/stop.hpp"
#include "percpu/detail/inline_function.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/error.hpp"

namespace percpu::xcall {

// ---- Errors -----------------------------------------------------------------
//
// On-CPU calls throw percpu::error (runtime/error.hpp) with these codes;
// what() names the CPU and the function, and cpu() gives the CPU:
//   errc::out_of_range     not a CPU number on-CPU calls accept (see
//                          cpu_limit()); cpu() is -1
//   errc::cpu_unavailable  the process may not run there (offline, cpuset,
//                          restricted)
//   errc::would_deadlock   a call to the CPU whose service thread is the
//                          caller (a recursive call), or a broadcast or
//                          barrier from a service thread
//   errc::timeout          did not complete within timeout(); still in flight
// An exception thrown by the called function itself reaches the waiter
// unchanged.

// ---- Tickets ------------------------------------------------------------------

// A set of CPU numbers, of any size.  CPUs below inline_cpus live in the
// object itself, so on machines whose CPU numbers are below 1024 a set
// never allocates; room for larger numbers is allocated by reserve() or by
// the first set() that needs it (std::bad_alloc), and kept by reset().
class cpu_bits {
 public:
  static constexpr unsigned inline_cpus = 1024;

  cpu_bits() noexcept = default;
  cpu_bits(const cpu_bits& other) { *this = other; }
  cpu_bits(cpu_bits&& other) noexcept { swap(other); }
  cpu_bits& operator=(const cpu_bits& other) {
    if (this != &other) {
      reserve(other.room());
      reset();
      *this |= other;
    }
    return *this;
  }
  cpu_bits& operator=(cpu_bits&& other) noexcept {
    swap(other);
    return *this;
  }
  ~cpu_bits() { delete[] more_; }

  // Room for CPU numbers below `cpus`, so that set() of them cannot throw.
  void reserve(unsigned cpus) {
    std::size_t words = cpus > inline_cpus ? (cpus - inline_cpus + 63) / 64 : 0;
    if (words <= more_words_) return;
    auto* more = new std::uint64_t[words]();
    for (std::size_t i = 0; i < more_words_; ++i) more[i] = more_[i];
    delete[] more_;
    more_ = more;
    more_words_ = words;
  }
  unsigned room() const noexcept { return inline_cpus + static_cast<unsigned>(more_words_ * 64); }

  bool test(unsigned cpu) const noexcept {
    return cpu < room() && ((word(cpu) >> (cpu % 64)) & 1) != 0;
  }
  void set(unsigned cpu) {
    reserve(cpu + 1);
    word(cpu) |= std::uint64_t{1} << (cpu % 64);
  }
  void reset(unsigned cpu) noexcept {
    if (cpu < room()) word(cpu) &= ~(std::uint64_t{1} << (cpu % 64));
  }
  void reset() noexcept {
    for (std::size_t i = 0; i < words(); ++i) at(i) = 0;
  }
  std::size_t count() const noexcept {
    std::size_t n = 0;
    for (std::size_t i = 0; i < words(); ++i) n += static_cast<std::size_t>(std::popcount(at(i)));
    return n;
  }
  bool none() const noexcept { return count() == 0; }
  bool any() const noexcept { return !none(); }

  cpu_bits& operator|=(const cpu_bits& other) {
    reserve(other.room());
    for (std::size_t i = 0; i < other.words(); ++i) at(i) |= other.at(i);
    return *this;
  }
  cpu_bits& operator&=(const cpu_bits& other) noexcept {
    for (std::size_t i = 0; i < words(); ++i) at(i) &= i < other.words() ? other.at(i) : 0;
    return *this;
  }
  // Removes every CPU of `other`.
  cpu_bits& operator-=(const cpu_bits& other) noexcept {
    for (std::size_t i = 0; i < words() && i < other.words(); ++i) at(i) &= ~other.at(i);
    return *this;
  }
  friend bool operator==(const cpu_bits& a, const cpu_bits& b) noexcept {
    for (std::size_t i = 0; i < a.words() || i < b.words(); ++i) {
      if ((i < a.words() ? a.at(i) : 0) != (i < b.words() ? b.at(i) : 0)) return false;
    }
    return true;
  }

  void swap(cpu_bits& other) noexcept {
    for (std::size_t i = 0; i < inline_words; ++i) std::swap(inline_[i], other.inline_[i]);
    std::swap(more_, other.more_);
    std::swap(more_words_, other.more_words_);
  }

 private:
  static constexpr std::size_t inline_words = inline_cpus / 64;
  std::size_t words() const noexcept { return inline_words + more_words_; }
  // i < words(): more_ holds more_words_ words (the analyzer cannot see it).
  std::uint64_t& at(std::size_t i) noexcept {
    return i < inline_words ? inline_[i] : more_[i - inline_words];  // NOLINT(clang-analyzer-*)
  }
  std::uint64_t at(std::size_t i) const noexcept {
    return i < inline_words ? inline_[i] : more_[i - inline_words];
  }
  std::uint64_t& word(unsigned cpu) noexcept { return at(cpu / 64); }
  std::uint64_t word(unsigned cpu) const noexcept { return at(cpu / 64); }

  std::uint64_t inline_[inline_words] = {};
  std::uint64_t* more_ = nullptr;  // words for CPUs from inline_cpus up
  std::size_t more_words_ = 0;
};

// A calling thread's call, by its position in that thread's issue order.
// Tickets of one thread are increasing; wait(t) covers every earlier one.
struct ticket {
  std::uint64_t seq = 0;
};

// A broadcast's ticket and the CPUs it did and did not reach.
struct broadcast_ticket : ticket {
  cpu_bits targets;  // CPUs a call was queued for (run, unless wait() says skipped)
  cpu_bits skipped;  // possible CPUs the process may not run on (no call queued)
};

// ---- Configuration --------------------------------------------------------

// How long a wait waits for one call before reporting errc::timeout
// (default 10 s).  Process-wide; safe to change at any time.
void set_timeout(std::chrono::milliseconds limit) noexcept;
std::chrono::milliseconds timeout() noexcept;

// On-CPU calls take real CPU numbers below cpu_limit(): the highest
// possible CPU + 1.  (With PERCPU_SLOTS the per-CPU
// structures have simulated slots; visits take those slot numbers.)
unsigned cpu_limit();

// The CPU whose service thread is the calling thread, or -1.
int service_cpu() noexcept;

namespace detail {

using percpu::detail::inline_function;

// The steps of issuing calls; the templates below put the callable in place.
// open_ticket: the calling thread's next ticket number (allocates the
// thread's descriptors on its first call).  reserve: checks nothing, waits
// for this thread's oldest call when all descriptors are in flight, and
// returns the next descriptor's function slot for `cpu` (skippable: part of
// a broadcast, skipped rather than failed off-CPU).  post: queues it.
// cancel: gives back a reserved descriptor whose callable could not be
// copied.
std::uint64_t open_ticket();
inline_function& reserve(unsigned cpu, std::uint64_t seq, const char* label, bool skippable);
void post();
void cancel() noexcept;

// Checks of the target, throwing percpu::error: unicast_target checks range
// and recursion and starts the CPU's service thread; broadcast_targets
// refuses recursion, starts every possible CPU's service thread and fills
// the ticket's targets (started) and skipped (could not be started).
void unicast_target(unsigned cpu);
void broadcast_targets(broadcast_ticket& t);

// The name of the callable type F as the compiler spells it, for error
// messages ("function NAME did not run"), without RTTI: the part after
// "F = " of the signature __PRETTY_FUNCTION__ gives a function template
// (GCC: "... pretty_signature() [with F = NAME]", Clang: "... [F = NAME]"),
// kept as a null-terminated string with static storage.
template <class F>
constexpr const char* pretty_signature() noexcept {
  return __PRETTY_FUNCTION__;
}

template <class F>
struct callable_name {
  static constexpr std::string_view signature = pretty_signature<F>();
  static constexpr std::size_t first =
      signature.find("F = ") == std::string_view::npos ? 0 : signature.find("F = ") + 4;
  static constexpr std::size_t last =
      signature.rfind(']') == std::string_view::npos || signature.rfind(']') < first
          ? signature.size()
          : signature.rfind(']');
  static constexpr auto text = [] {
    std::array<char, last - first + 1> out{};
    for (std::size_t i = 0; i < last - first; ++i) out[i] = signature[first + i];
    return out;
  }();
};

template <class F>
void issue(unsigned cpu, std::uint64_t seq, bool skippable, F&& f) {
  inline_function& slot = reserve(cpu, seq, callable_name<std::decay_t<F>>::text.data(), skippable);
  try {
    slot.emplace(std::forward<F>(f));
  } catch (...) {
    cancel();
    throw;
  }
  post();
}

}  // namespace detail

// ---- On-CPU calls -------------------------------------------------------------
//
// f is called as f(cpu) if it accepts an unsigned, otherwise as f(), on the
// service thread pinned to `cpu`; it may block.  It is copied (or moved) into
// a descriptor's inline buffer of detail::inline_function::capacity bytes; a
// larger callable does not compile.  An exception thrown by f is rethrown by
// the wait that covers the call.

// Queues f for `cpu` and returns at once.  The calling thread's own
// affinity mask does not matter (a pinned thread may call any CPU).  Throws
// percpu::error: out_of_range, would_deadlock (the caller is cpu's service
// thread), cpu_unavailable (its service thread cannot be pinned there); or
// timeout when all of the thread's descriptors are in flight and the
// oldest does not complete.
template <class F>
[[nodiscard]] ticket unicast(unsigned cpu, F&& f) {
  detail::unicast_target(cpu);
  ticket t{detail::open_ticket()};
  detail::issue(cpu, t.seq, false, std::forward<F>(f));
  return t;
}

// Queues a copy of f for every possible CPU the process may run on; the
// others are skipped and listed in the result (and in what wait() returns,
// for CPUs found unavailable when the call was run).  Throws
// percpu::error (would_deadlock) from a service thread.
template <class F>
[[nodiscard]] broadcast_ticket broadcast(F&& f) {
  broadcast_ticket t;
  detail::broadcast_targets(t);
  t.seq = detail::open_ticket();
  for (unsigned cpu = 0, n = t.targets.room(); cpu < n; ++cpu) {
    if (t.targets.test(cpu)) detail::issue(cpu, t.seq, true, f);
  }
  return t;
}

// Returns once every call the calling thread issued up to and including `t`
// has returned on its CPU (tickets belong to the thread that issued them);
// the callees' writes are visible to the caller (the completion is a
// release, this wait an acquire).  Returns the CPUs that broadcasts among
// those calls skipped because their service thread found itself off its CPU
// (the process's threads were restricted, the cpuset shrank, the CPU went
// offline): f did not run there.  Rethrows the first exception of those
// calls, or throws percpu::error: cpu_unavailable (the same for a unicast),
// timeout (a call did not complete within timeout(); it stays in flight and
// a later wait waits for it again).
[[nodiscard]] cpu_bits wait(ticket t);

// unicast + wait.
template <class F>
void unicast_sync(unsigned cpu, F&& f) {
  static_cast<void>(wait(unicast(cpu, std::forward<F>(f))));
}

// broadcast + wait; the result says which CPUs f ran on (targets) and
// which were skipped.
template <class F>
[[nodiscard]] broadcast_ticket broadcast_sync(F&& f) {
  broadcast_ticket t = broadcast(std::forward<F>(f));
  cpu_bits skipped_late = wait(t);
  t.targets -= skipped_late;
  t.skipped |= skipped_late;
  return t;
}

// Returns once every on-CPU call issued before it, by any thread, has
// completed (xc_barrier): an empty call goes through every CPU's queue that
// has a service thread, behind everything queued there.  Errors of the
// calling thread's own earlier calls are reported as by wait().  Throws
// percpu::error (would_deadlock) from a service thread.
void barrier();

// ---- Stopped-CPU visits -----------------------------------------------------------
//
// f(cpu) runs on the calling thread while `cpu` is stopped in every structure
// of `states` (stop.hpp): no fast path of those structures runs on that CPU
// until f returns (also when it throws).  CPU numbers are slots, below
// cpu_count().  With no structures, a visit is the fence alone: every fast
// path that was running on the CPU has finished or been aborted before f.
// The rules of stop.hpp apply: do not nest visits.

template <class F>
void visit(unsigned cpu, std::span<stop_state* const> states, F&& f) {
  stop_state::visit(states, cpu, [&] { f(cpu); });
}

template <class F>
void visit(unsigned cpu, std::initializer_list<stop_state*> states, F&& f) {
  visit(cpu, std::span<stop_state* const>(states.begin(), states.size()), std::forward<F>(f));
}

template <class F>
void visit(unsigned cpu, F&& f) {
  visit(cpu, std::span<stop_state* const>(), std::forward<F>(f));
}

// Every CPU slot: stops all structures of `states` on every CPU, issues ONE
// broadcast fence, runs f(cpu) for each CPU in ascending order, restarts all.
template <class F>
void visit_all(std::span<stop_state* const> states, F&& f) {
  stop_state::visit_all(states, std::forward<F>(f));
}

template <class F>
void visit_all(std::initializer_list<stop_state*> states, F&& f) {
  visit_all(std::span<stop_state* const>(states.begin(), states.size()), std::forward<F>(f));
}

template <class F>
void visit_all(F&& f) {
  visit_all(std::span<stop_state* const>(), std::forward<F>(f));
}

}  // namespace percpu::xcall
