// child_process.hpp - run this test binary again, in a fresh process.
//
// Start-up decisions (backend, slots) are made once per process, and some
// tests need a process that hits a resource limit; both run the test binary
// again with a filter and extra environment, and look at its exit status and
// output.
#pragma once

#include <string>
#include <vector>

namespace percpu_test {

struct child_result {
  int exit_code = -1;  // -1: killed by a signal
  std::string output;  // stdout and stderr together
};

// Runs this executable with --gtest_filter=<filter> and `env` (NAME=VALUE
// entries) added to or replacing the current environment.
child_result run_self(const std::string& filter, const std::vector<std::string>& env);

// Runs `test` (one child-only test) with run_self and expects it to pass;
// when the child skipped it (the machine lacks what it needs), the calling
// test is skipped too.
void expect_child_passes(const std::string& test, const std::vector<std::string>& env);

// True inside a process started by run_self (child-only tests skip otherwise).
bool in_child();

}  // namespace percpu_test
