// percpu/core/detail/alloc.hpp - the per-CPU chunk allocator's entry points.
//
// Declared here, below storage.hpp, because every facility (stop words
// included) allocates per-CPU memory, while storage.hpp is the public face.
// See src/core/allocator.cpp for the mechanism.
#pragma once

#include <cstddef>

namespace percpu::detail {

// Allocates `size` bytes aligned to `alignment` in every CPU's unit and
// returns CPU 0's copy; every copy reads as zero.  Throws percpu::error:
// errc::invalid_argument (size 0, alignment not a power of two),
// errc::too_large (larger than a unit), errc::no_memory (no address space
// left for a new chunk); on a throw nothing is allocated.
void* allocate_percpu(std::size_t size, std::size_t alignment);

// Releases an allocation made by allocate_percpu (CPU 0's copy).  Throws
// percpu::error (errc::invalid_argument) for a pointer that is not a live
// allocation's start.
void free_percpu(void* p0);

}  // namespace percpu::detail
