// percpu/core/detail/scope_exit.hpp - run a function when a scope ends.
//
// The library's one scope guard.  A visit restarts the CPUs it stopped when
// its visitor returns or throws (stop.hpp); a pool cache releases its lock
// and applies the puts deferred meanwhile, whichever way the locked work
// ends.  Written once here rather than as a local struct at each place.
#pragma once

#include <type_traits>
#include <utility>

namespace percpu::detail {

// Calls f() when destroyed.  f must not throw (the destructor is noexcept).
template <class F>
class [[nodiscard]] scope_exit {
 public:
  explicit scope_exit(F f) noexcept(std::is_nothrow_move_constructible_v<F>) : f_(std::move(f)) {}
  ~scope_exit() { f_(); }
  scope_exit(const scope_exit&) = delete;
  scope_exit& operator=(const scope_exit&) = delete;

 private:
  F f_;
};

}  // namespace percpu::detail
