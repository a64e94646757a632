// percpu/runtime/detail/futex.hpp - sleeping on a 32-bit word (Linux futex).
#pragma once

#include <atomic>
#include <cstdint>

namespace percpu::detail {

// Sleeps while *word == expected, for at most timeout_ns (0: no limit).
// Returns on a wake-up, a changed value, a signal or the timeout; callers
// re-check their condition.
void futex_wait(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                long timeout_ns = 0) noexcept;

// Wakes every thread sleeping on `word`.
void futex_wake_all(const std::atomic<std::uint32_t>& word) noexcept;

}  // namespace percpu::detail
