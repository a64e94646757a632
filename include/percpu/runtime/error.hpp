// percpu/runtime/error.hpp - the library's one error type and its codes.
//
// Problem: a library that throws std::invalid_argument here, its own error
// class there and aborts elsewhere makes every caller learn each call's
// failure style, and leaves no way to test "what went wrong" except by
// parsing messages.
//
// Mechanism: every error the library reports is a percpu::error, a
// std::system_error whose code is a percpu::errc in percpu's error category.
// Callers catch one type (or std::system_error, or std::exception) and
// compare e.code() with a percpu::errc, or with the portable
// std::errc condition it is equivalent to, where there is one.  what()
// names the structure and the call, the value that was refused and the
// limit it broke.  Calls that must not throw (noexcept, async-signal-safe)
// report by return value instead, and say so.  Two kinds of failure keep
// the standard's own types: memory for the heap (std::bad_alloc, also what
// pool_resource and pool_allocator throw, as memory resources and
// allocators must), and an exception thrown by the caller's own code (a
// constructor, a callback), which propagates unchanged.
#pragma once

#include <cstdint>
#include <string>
#include <system_error>
#include <type_traits>

namespace percpu {

// What went wrong.  Zero is not an error (std::error_code's convention).
enum class errc : int {
  // An argument the call never accepts: a size of 0, an alignment that is
  // not a power of two, an empty callback, a pointer the library did not
  // hand out, malformed text.  (std::errc::invalid_argument)
  invalid_argument = 1,
  // A CPU number or an index past the end of what the structure has.
  // (std::errc::invalid_argument)
  out_of_range,
  // A size beyond a fixed limit of the library (max_allocation(), a queue's
  // capacity, a cache's object size).  (std::errc::value_too_large)
  too_large,
  // No address space left for per-CPU memory.  (std::errc::not_enough_memory)
  no_memory,
  // The environment asks for what this machine cannot give (PERCPU_BACKEND,
  // PERCPU_SLOTS); every later call that starts the library reports it
  // again.
  configuration,
  // A cross-CPU call cannot run on its CPU: the CPU is offline, or outside
  // what the process may run on.
  cpu_unavailable,
  // The call would wait for itself: an xcall to the CPU whose service
  // thread makes it, a pool_cache invalidate from inside the same cache's
  // constructor, destructor or interrupted work, a recursive rwlock write
  // lock.  (std::errc::resource_deadlock_would_occur)
  would_deadlock,
  // An unlock by a thread that does not hold the lock.
  // (std::errc::operation_not_permitted)
  not_owner,
  // A cross-CPU call did not complete within xcall::timeout(); it is still
  // in flight.  (std::errc::timed_out)
  timeout,
};

// percpu's error category: name() is "percpu", message() a short phrase
// per code, and equivalent() maps codes to the std::errc conditions above.
const std::error_category& error_category() noexcept;

inline std::error_code make_error_code(errc code) noexcept {
  return {static_cast<int>(code), error_category()};
}

// The library's exception.  what() is the message given, then ": " and the
// code's message (std::system_error's form).
class error : public std::system_error {
 public:
  // `cpu`: the CPU the error concerns, where there is one (a cross-CPU call
  // that timed out or could not run, the CPU whose service thread made a
  // recursive call); -1 otherwise.
  error(errc code, const std::string& message, int cpu = -1)
      : std::system_error(make_error_code(code), message), cpu_(cpu) {}

  int cpu() const noexcept { return cpu_; }

 private:
  int cpu_;
};

namespace detail {

// Throws the library's out-of-range error; the one place its message is
// built: "WHERE: WHAT VALUE is out of range (LIMIT_NAME is LIMIT)", for
// example "percpu::storage::on: CPU 9 is out of range (cpu_count() is 4)".
[[noreturn]] void throw_out_of_range(const char* where, const char* what, std::uint64_t value,
                                     const char* limit_name, std::uint64_t limit);

}  // namespace detail

}  // namespace percpu

template <>
struct std::is_error_code_enum<percpu::errc> : std::true_type {};
