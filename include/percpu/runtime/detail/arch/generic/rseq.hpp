// percpu/runtime/detail/arch/generic/rseq.hpp - an architecture without sequences.
//
// Problem: the library must build and run on any Linux architecture g++
// targets, including those it has no restartable sequences for yet.
//
// Mechanism: this file is the interface of runtime/detail/arch.hpp with no
// sequences behind it.  has_sequences is false, so the operations of
// sequences.hpp go straight to the portable backend and start-up never
// chooses rseq ("no restartable sequences for this architecture").  The
// functions below exist so that the neutral code compiles unchanged; none
// of them is ever called with effect.  Plain C++: no assembly.
//
// Included by runtime/detail/arch.hpp only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace percpu::detail::arch {

inline constexpr bool has_sequences = false;
// Whether a seq_cst read-modify-write is also a full barrier: not assumed.
inline constexpr bool rmw_is_full_barrier = false;

// No abort handlers exist; the value is never passed to the kernel.
inline constexpr std::uint32_t rseq_signature = 0;

inline char* thread_pointer() noexcept {
  return nullptr;
}

inline void cpu_relax() noexcept {}

// No rseq area is ever read: "not registered".
inline int cpu_id() noexcept {
  return -1;
}
inline int slot_index() noexcept {
  return -1;
}

inline status add(std::int64_t*, const std::uint32_t*, std::int64_t) noexcept {
  return status::unregistered;
}
inline status add_release(std::int64_t*, const std::uint32_t*, std::int64_t) noexcept {
  return status::unregistered;
}
inline status add_sign(std::int64_t*, const std::uint32_t*, std::int64_t, unsigned*,
                       bool*) noexcept {
  return status::unregistered;
}
inline status compare_and_store(std::int64_t*, const std::uint32_t*, unsigned, std::int64_t,
                                std::int64_t) noexcept {
  return status::unregistered;
}
inline status push(void*, const std::uint32_t*, void*, const std::uint64_t*,
                   std::uint64_t) noexcept {
  return status::unregistered;
}
inline status pop(void*, const std::uint32_t*, void**) noexcept {
  return status::unregistered;
}
inline status pop_batch(void*, const std::uint32_t*, void**, std::size_t, std::size_t*) noexcept {
  return status::unregistered;
}
inline status push_batch(void*, const std::uint32_t*, void* const*, std::size_t, std::size_t*,
                         const std::uint64_t*, std::uint64_t) noexcept {
  return status::unregistered;
}
template <unsigned Words>
inline status push_record(void*, const std::uint32_t*, unsigned, const std::uint64_t*, std::size_t,
                          std::uint64_t, unsigned*) noexcept {
  return status::unregistered;
}

}  // namespace percpu::detail::arch
