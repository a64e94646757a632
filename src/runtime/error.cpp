// error.cpp - percpu's error category and the out-of-range error (see
// percpu/runtime/error.hpp); error_text (runtime_internal.hpp).
#include "percpu/runtime/error.hpp"

#include <cstring>
#include <string>

#include "runtime_internal.hpp"

namespace percpu {

namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "percpu"; }

  std::string message(int code) const override {
    switch (static_cast<errc>(code)) {
      case errc::invalid_argument:
        return "invalid argument";
      case errc::out_of_range:
        return "out of range";
      case errc::too_large:
        return "beyond the library's limit";
      case errc::no_memory:
        return "no address space left for per-CPU memory";
      case errc::configuration:
        return "impossible configuration";
      case errc::cpu_unavailable:
        return "CPU unavailable";
      case errc::would_deadlock:
        return "the call would wait for itself";
      case errc::not_owner:
        return "not the owner";
      case errc::timeout:
        return "timed out";
    }
    return "unknown percpu error " + std::to_string(code);
  }

  std::error_condition default_error_condition(int code) const noexcept override {
    switch (static_cast<errc>(code)) {
      case errc::invalid_argument:
      case errc::out_of_range:
        return std::errc::invalid_argument;
      case errc::too_large:
        return std::errc::value_too_large;
      case errc::no_memory:
        return std::errc::not_enough_memory;
      case errc::would_deadlock:
        return std::errc::resource_deadlock_would_occur;
      case errc::not_owner:
        return std::errc::operation_not_permitted;
      case errc::timeout:
        return std::errc::timed_out;
      case errc::configuration:
      case errc::cpu_unavailable:
        break;
    }
    return {code, *this};
  }
};

}  // namespace

const std::error_category& error_category() noexcept {
  // Constant-initialised and never destroyed (a union member's destructor
  // runs only when called): an error may be thrown from a user's static
  // initialiser or destructor, before or after this file's own.
  union holder {
    category value;
    constexpr holder() : value() {}
    ~holder() {}
  };
  static constinit holder instance;
  return instance.value;
}

namespace detail {

void throw_out_of_range(const char* where, const char* what, std::uint64_t value,
                        const char* limit_name, std::uint64_t limit) {
  throw error(errc::out_of_range, std::string(where) + ": " + what + " " + std::to_string(value) +
                                      " is out of range (" + limit_name + " is " +
                                      std::to_string(limit) + ")");
}

namespace {
// strerror_r is the XSI one (returns int) or the GNU one (returns the
// message, which need not be in the buffer); these pick whichever it is.
[[maybe_unused]] const char* strerror_r_result(int rc, const char* buf) noexcept {
  return rc == 0 ? buf : "unknown error";
}
[[maybe_unused]] const char* strerror_r_result(const char* message, const char*) noexcept {
  return message;
}
}  // namespace

const char* error_text(int err, char* buf, std::size_t size) noexcept {
  return strerror_r_result(strerror_r(err, buf, size), buf);
}

}  // namespace detail

}  // namespace percpu
