// percpu/runtime/detail/arch/aarch64/machine.hpp - the thread pointer and the spin hint, aarch64.
//
// Problem: the rseq area (glibc's or the library's own) sits at a fixed
// offset from the thread pointer, and start-up must learn that offset for
// the area it registers itself; a thread that spins on a word should tell
// the core so.  Each is one instruction, and a different one on every
// architecture.
//
// Mechanism: on aarch64 the thread pointer is the system register
// TPIDR_EL0, read with one mrs.  glibc's __rseq_offset is relative to it
// and negative (the area lies in the thread descriptor below the TCB); an
// initial-exec TLS variable lies above it.
//
// Included by arch/aarch64/rseq.hpp only.
#pragma once

namespace percpu::detail::arch {

// The calling thread's thread pointer.  Not volatile: the value is fixed for
// the thread's lifetime, so the compiler may merge repeated reads.
inline char* thread_pointer() noexcept {
  char* tp;
  asm("mrs %0, tpidr_el0" : "=r"(tp));  // tp = TPIDR_EL0
  return tp;
}

// One step of a spin-wait: `yield` tells a multithreaded core that this
// thread does no useful work (a no-op on most single-threaded cores, where
// the spin loop's own backoff in the callers does the rest).
inline void cpu_relax() noexcept {
  asm volatile("yield" ::: "memory");
}

}  // namespace percpu::detail::arch
