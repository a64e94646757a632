// futex.cpp - the futex system calls behind runtime/detail/futex.hpp.
#include "percpu/runtime/detail/futex.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <climits>

namespace percpu::detail {

namespace {

// std::atomic<uint32_t> is a plain 32-bit word on Linux; the futex acts on it.
const std::uint32_t* address_of(const std::atomic<std::uint32_t>& word) {
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
  return reinterpret_cast<const std::uint32_t*>(&word);
}

}  // namespace

void futex_wait(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                long timeout_ns) noexcept {
  timespec timeout{timeout_ns / 1000000000, timeout_ns % 1000000000};
  syscall(SYS_futex, address_of(word), FUTEX_WAIT_PRIVATE, expected,
          timeout_ns > 0 ? &timeout : nullptr, nullptr, 0);
}

void futex_wake_all(const std::atomic<std::uint32_t>& word) noexcept {
  syscall(SYS_futex, address_of(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

}  // namespace percpu::detail
