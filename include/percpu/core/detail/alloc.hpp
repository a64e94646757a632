// percpu/core/detail/alloc.hpp - the per-CPU chunk allocator's entry points,
// and cpu_memory, the one owner of an allocation.
//
// Declared here, below storage.hpp, because every per-CPU structure (stop
// words included) allocates per-CPU memory, while storage.hpp is the public
// face.  See src/core/allocator.cpp for the mechanism.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "percpu/runtime/detail/runtime.hpp"

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

// `count` T per CPU slot in one per-CPU allocation, owned: freed when the
// object is destroyed.  The memory starts as zero bytes on every CPU; which
// objects live in it is the owner's business (the facilities keep
// implicit-lifetime types there, for which zero bytes are a value; storage<T>
// constructs its objects in place).  Throws what allocate_percpu throws.
template <class T>
class cpu_memory {
 public:
  explicit cpu_memory(std::size_t count = 1, std::size_t alignment = alignof(T))
      : count_(count), data0_(static_cast<T*>(allocate_percpu(bytes(count), alignment))) {}
  ~cpu_memory() { free_percpu(data0_); }
  cpu_memory(const cpu_memory&) = delete;
  cpu_memory& operator=(const cpu_memory&) = delete;

  // CPU 0's copy: what the sequences take.
  T* data0() const noexcept { return data0_; }
  // CPU `cpu`'s copy; no range check (cpu < cpu_count() is the caller's).
  T* on(unsigned cpu) const noexcept { return copy_on(data0_, cpu); }
  // T per CPU.
  std::size_t count() const noexcept { return count_; }

 private:
  // A count too large for size_t asks for the largest size, which the
  // allocator refuses as too large.
  static std::size_t bytes(std::size_t count) noexcept {
    return count > std::numeric_limits<std::size_t>::max() / sizeof(T)
               ? std::numeric_limits<std::size_t>::max()
               : count * sizeof(T);
  }

  std::size_t count_;
  T* data0_;
};

}  // namespace percpu::detail
