// percpu/runtime/detail/arch/aarch64/thread_pointer.hpp - the thread pointer, aarch64.
//
// Problem: the rseq area (glibc's or the library's own) sits at a fixed
// offset from the thread pointer, and start-up must learn that offset for
// the area it registers itself.
//
// Mechanism: on aarch64 the thread pointer is the system register
// TPIDR_EL0, read with one mrs.  glibc's __rseq_offset is relative to it
// and negative (the area lies in the thread descriptor below the TCB); an
// initial-exec TLS variable lies above it.  Not volatile: the value is fixed
// for the thread's lifetime, so the compiler may merge repeated reads.
#pragma once

#if defined(__aarch64__)

namespace percpu::detail::arch {

// The calling thread's thread pointer.
inline char* thread_pointer() noexcept {
  char* tp;
  asm("mrs %0, tpidr_el0" : "=r"(tp));  // tp = TPIDR_EL0
  return tp;
}

}  // namespace percpu::detail::arch

#endif  // __aarch64__
