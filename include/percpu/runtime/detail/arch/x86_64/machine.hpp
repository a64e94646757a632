// percpu/runtime/detail/arch/x86_64/machine.hpp - the thread pointer and the spin hint, x86-64.
//
// Problem: the rseq area (glibc's or the library's own) sits at a fixed
// offset from the thread pointer, and start-up must learn that offset for
// the areas it registers itself; a thread that spins on a word should tell
// the core so.  Each is one instruction, and a different one on every
// architecture.
#pragma once

namespace percpu::detail::arch {

// The calling thread's thread pointer (the address %fs points at).  On
// x86-64 the TCB's first word holds its own address (the TLS ABI), so one
// load through %fs gives it as a plain address.  Not volatile: the value is
// fixed for the thread's lifetime, so the compiler may merge repeated reads.
inline char* thread_pointer() noexcept {
  char* tp;
  asm("movq %%fs:0, %0" : "=r"(tp));  // tp = *(char**)(%fs:0)
  return tp;
}

// One step of a spin-wait: `pause` lets the sibling hyperthread run and
// keeps the loop from flooding the memory pipeline.
inline void cpu_relax() noexcept {
  __builtin_ia32_pause();
}

}  // namespace percpu::detail::arch
