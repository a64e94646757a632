// percpu/detail/inline_function.hpp - a callable stored inside a call
// descriptor, never on the heap.
//
// Problem: an asynchronous cross-CPU call outlives the statement that issued
// it, so it cannot point at the caller's stack (a lambda capturing locals by
// reference, NetBSD's first percpu(9) resize did exactly that).  It must
// carry its own copy of the callable; yet the call path may not allocate, so
// std::function (which allocates beyond its small buffer) will not do.
//
// Mechanism: a fixed inline buffer and two function pointers (invoke,
// destroy).  A callable that does not fit or is over-aligned is rejected at
// compile time (the static_asserts in emplace()), never allocated.  The
// callable is copied or moved into the buffer once and never moved again,
// so a throwing move or copy is allowed: it throws from emplace(), before
// the call is queued (xcall.hpp gives the descriptor back).
#pragma once

#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

namespace percpu::detail {

class inline_function {
 public:
  // Bytes a callable may occupy (captures included).
  static constexpr std::size_t capacity = 64;

  // Strictest alignment a callable may ask for.
  static constexpr std::size_t alignment = alignof(std::max_align_t);

  static constexpr bool fits_layout(std::size_t size, std::size_t align) noexcept {
    return size <= capacity && align <= alignment;
  }
  template <class F>
  static constexpr bool fits = fits_layout(sizeof(F), alignof(F));

  inline_function() = default;
  inline_function(const inline_function&) = delete;
  inline_function& operator=(const inline_function&) = delete;
  ~inline_function() { reset(); }

  // Stores a copy (or the moved value) of `f`; replaces nothing (the
  // descriptor is empty when a call is issued).  f is called as f(cpu) when
  // it accepts an unsigned, otherwise as f().
  template <class F>
  void emplace(F&& f) {
    using stored = std::decay_t<F>;
    static_assert(fits<stored>,
                  "percpu::xcall: the callable is larger than the descriptor's inline buffer "
                  "(detail::inline_function::capacity bytes); capture a pointer to the data "
                  "instead");
    static_assert(std::is_invocable_v<stored&, unsigned> || std::is_invocable_v<stored&>,
                  "percpu::xcall: the callable must be callable as f() or f(unsigned cpu)");
    ::new (static_cast<void*>(buffer_)) stored(std::forward<F>(f));
    invoke_ = [](void* p, unsigned cpu) {
      auto& fn = *std::launder(static_cast<stored*>(p));
      if constexpr (std::is_invocable_v<stored&, unsigned>) {
        fn(cpu);
      } else {
        fn();
      }
    };
    destroy_ = [](void* p) noexcept { std::launder(static_cast<stored*>(p))->~stored(); };
  }

  // Calls the stored callable; it must hold one.
  void operator()(unsigned cpu) { invoke_(buffer_, cpu); }

  // Drops the stored callable without destroying it (a forked child
  // abandoning calls whose captures belong to the parent's threads).
  void forget() noexcept {
    destroy_ = nullptr;
    invoke_ = nullptr;
  }

  // Destroys the stored callable, if any.
  void reset() noexcept {
    if (destroy_ != nullptr) destroy_(buffer_);
    destroy_ = nullptr;
    invoke_ = nullptr;
  }

 private:
  // The two pointers first, then the buffer: a small callable's captures
  // then share a cache line with them (and, in a call descriptor, with the
  // words the target reads; src/xcall/internal.hpp).
  void (*invoke_)(void*, unsigned) = nullptr;
  void (*destroy_)(void*) noexcept = nullptr;
  alignas(alignment) std::byte buffer_[capacity];
};

}  // namespace percpu::detail
