// test_scale.hpp - one knob for how much work the long concurrency tests do.
//
// Problem: some tests repeat an operation many times, or let a storm blow
// for a while, only to make a rare interleaving likely; the property they
// check does not change with the count.  On an emulated machine (QEMU's TCG
// runs 10-100x slower than the host) the same counts take minutes, and a
// stage of several guests cannot afford them, while no guest run may skip
// what it is there for.  So such counts and soft durations are multiplied
// by one factor, PERCPU_TEST_SCALE (a positive number; default 1; the
// emulated-machine stage uses less than 1, a long soak more than 1), and
// never below a floor that still gives the check a meaning.  Thresholds a
// test asserts (at least N migrations, N signals) are not scaled: a test
// that scales its storm down runs until those are met, up to a hard limit
// that is not scaled either.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>

namespace percpu_test {

// PERCPU_TEST_SCALE, read once; a value that is not a positive number, or
// is absurdly large, counts as 1.
inline double test_scale() {
  static const double scale = [] {
    const char* text = std::getenv("PERCPU_TEST_SCALE");
    if (text == nullptr || *text == '\0') return 1.0;
    char* end = nullptr;
    double value = std::strtod(text, &end);
    return *end == '\0' && value > 0 && value <= 1000 ? value : 1.0;
  }();
  return scale;
}

// `n` repetitions scaled, at least `floor`.
template <class Int>
Int scaled(Int n, Int floor) {
  double value = static_cast<double>(n) * test_scale();
  return value < static_cast<double>(floor) ? floor : static_cast<Int>(value);
}

// A soft duration scaled, at least `floor`.
inline std::chrono::milliseconds scaled(std::chrono::milliseconds d,
                                        std::chrono::milliseconds floor) {
  auto value = std::chrono::milliseconds(
      static_cast<std::int64_t>(static_cast<double>(d.count()) * test_scale()));
  return value < floor ? floor : value;
}

}  // namespace percpu_test
