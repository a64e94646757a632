#include "child_process.hpp"

#include <gtest/gtest.h>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

extern char** environ;

namespace percpu_test {

namespace {

// Whether `env` asks the child for the portable backend, or leads it there
// (simulated slots, a pretended kernel without rseq or its fence).
bool may_run_portable(const std::vector<std::string>& env) {
  const std::string pretend = "PERCPU_PRETEND_MISSING=";
  for (const auto& e : env) {
    if (e.rfind("PERCPU_SLOTS=", 0) == 0 && e.size() > 13) return true;
    if (e == "PERCPU_BACKEND=portable") return true;
    if (e.rfind(pretend, 0) == 0) {
      std::string names = "," + e.substr(pretend.size()) + ",";
      if (names.find(",rseq,") != std::string::npos ||
          names.find(",membarrier_rseq,") != std::string::npos) {
        return true;
      }
    }
  }
  return false;
}

bool names(const std::vector<std::string>& env, const std::string& var) {
  for (const auto& e : env) {
    if (e.rfind(var + "=", 0) == 0) return true;
  }
  return false;
}

}  // namespace

child_result run_self(const std::string& filter, const std::vector<std::string>& env) {
  std::vector<std::string> entries = env;
  entries.emplace_back("PERCPU_TEST_CHILD=1");
  // The suite runs once with PERCPU_INDEX=mm_cid (tests/CMakeLists.txt),
  // which start-up refuses beside the portable backend: a child that asks
  // for that backend gets its index mode chosen for it, unless it names one.
  if (may_run_portable(env) && !names(env, "PERCPU_INDEX")) entries.emplace_back("PERCPU_INDEX=");
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    std::string name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& own : entries) replaced |= own.compare(0, name.size() + 1, name + "=") == 0;
    if (!replaced) entries.push_back(entry);
  }
  std::vector<char*> envp;
  for (auto& entry : entries) envp.push_back(entry.data());
  envp.push_back(nullptr);

  char out_path[] = "/tmp/percpu_child_XXXXXX";
  int fd = mkstemp(out_path);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fd, 1);
  posix_spawn_file_actions_adddup2(&actions, fd, 2);
  std::string filter_arg = "--gtest_filter=" + filter;
  std::string exe = "/proc/self/exe";
  char* argv[] = {exe.data(), filter_arg.data(), nullptr};
  pid_t pid = -1;
  child_result result;
  if (posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv, envp.data()) == 0) {
    int status = 0;
    waitpid(pid, &status, 0);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  close(fd);
  std::ifstream in(out_path);
  std::stringstream text;
  text << in.rdbuf();
  result.output = text.str();
  unlink(out_path);
  return result;
}

void expect_child_passes(const std::string& test, const std::vector<std::string>& env) {
  child_result r = run_self(test, env);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  if (r.output.find("[  SKIPPED ] 1 test") != std::string::npos) {
    GTEST_SKIP() << r.output.substr(0, 2000);
  }
  EXPECT_NE(r.output.find("[  PASSED  ] 1 test"), std::string::npos) << r.output;
}

bool in_child() {
  return std::getenv("PERCPU_TEST_CHILD") != nullptr;
}

}  // namespace percpu_test
