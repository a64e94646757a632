// runtime_internal.hpp - internal helpers shared by the library's sources.
#pragma once

namespace percpu::detail {

// The portable backend's slot for the calling thread now.
unsigned portable_slot() noexcept;

// One step of a polite spin: pause at first, then yield the CPU.
void relax(unsigned spins) noexcept;

}  // namespace percpu::detail
