// percpu/runtime/detail/arch/x86_64/thread_pointer.hpp - the thread pointer, x86-64.
//
// Problem: the rseq area (glibc's or the library's own) sits at a fixed
// offset from the thread pointer, and start-up must learn that offset for
// the areas it registers itself.  Reading the thread pointer is one
// instruction, and a different one on every architecture.
//
// Mechanism: on x86-64 the TCB's first word holds its own address (the TLS
// ABI), so one load through %fs gives the thread pointer as a plain address.
// Not volatile: the value is fixed for the thread's lifetime, so the
// compiler may merge repeated reads.
#pragma once

namespace percpu::detail::arch {

// The calling thread's thread pointer (the address %fs points at).
inline char* thread_pointer() noexcept {
  char* tp;
  asm("movq %%fs:0, %0" : "=r"(tp));  // tp = *(char**)(%fs:0)
  return tp;
}

}  // namespace percpu::detail::arch
