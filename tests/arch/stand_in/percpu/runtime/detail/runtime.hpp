// Stand-in for percpu/runtime/detail/runtime.hpp, for the standalone
// sequence tests of tests/arch/: only the values the sequences read, and the
// fault-injection countdown, with the library's names and types.  The test
// program defines them; it links nothing of the library.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {
extern __thread __attribute__((tls_model("initial-exec"))) std::int32_t percpu_fault_countdown;
}

namespace percpu::detail {

inline constexpr unsigned unit_shift = 20;
inline constexpr std::size_t unit_size = std::size_t{1} << unit_shift;

struct runtime_state {
  std::ptrdiff_t rseq_offset = 0;
};
extern runtime_state runtime;

inline std::ptrdiff_t rseq_offset_now() noexcept {
  return runtime.rseq_offset;
}

}  // namespace percpu::detail
