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

child_result run_self(const std::string& filter, const std::vector<std::string>& env) {
  std::vector<std::string> entries = env;
  entries.emplace_back("PERCPU_TEST_CHILD=1");
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
