// expect_error.hpp - checks that a call fails with the library's error and
// a given code: EXPECT_TRUE(fails_with(percpu::errc::out_of_range, [&] { ... })).
#pragma once

#include <exception>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "percpu/runtime/error.hpp"

namespace percpu_test {

// Success when f() throws percpu::error whose code is `code` (in percpu's
// category) and whose message is not empty; the message on failure says
// what happened instead.
template <class F>
::testing::AssertionResult fails_with(percpu::errc code, F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const percpu::error& e) {
    if (e.code() != code) {
      return ::testing::AssertionFailure()
             << "threw percpu::error with another code: " << e.code().message() << " (" << e.what()
             << ")";
    }
    if (&e.code().category() != &percpu::error_category() || e.what()[0] == '\0') {
      return ::testing::AssertionFailure() << "wrong category or empty message";
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw another exception: " << e.what();
  } catch (...) {
    return ::testing::AssertionFailure() << "threw something that is not an exception";
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace percpu_test
