// runtime_internal.hpp - internal helpers shared by the library's sources.
#pragma once

#include <cstddef>
#include <cstdint>

namespace percpu::detail {

// The portable backend's slot for the calling thread now.
unsigned portable_slot() noexcept;

// Whether the calling thread is inside a portable-backend operation (a
// signal handler that interrupted one runs with this true): such a thread
// may hold a slot lock, so it must not stop a CPU.
bool portable_in_operation() noexcept;
// Count the calling thread as inside a portable-backend operation, and stop
// counting it (nest like the operations themselves): while it counts, a
// signal handler's operations on this thread make one attempt at a slot lock
// and never wait.
void portable_enter() noexcept;
void portable_leave() noexcept;

// One step of a polite spin: pause at first, then yield the CPU.
void relax(unsigned spins) noexcept;

// CLOCK_MONOTONIC in nanoseconds (the vDSO: no system call).
std::int64_t monotonic_ns() noexcept;

// strerror() without its shared buffer: the message for `err`, either in
// `buf` or in storage that stays valid.  Allocates nothing.
const char* error_text(int err, char* buf, std::size_t size) noexcept;

}  // namespace percpu::detail
