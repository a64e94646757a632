// A plugin that uses percpu through the shared library, loaded with
// dlopen() and unloaded with dlclose() while the library's service threads
// live: the library must stay mapped (it is linked -z nodelete), or those
// threads run unmapped code the next time they wake.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/xcall.hpp"

namespace {

// The child's environment: the plugin and, for glibc, room for the
// library's static TLS.  libpercpu's rseq areas are initial-exec TLS, so
// its whole TLS block (about 10 KB, most of it the portable backend's
// per-thread deferral queue) must fit in the static TLS that glibc keeps
// for modules loaded later; the default (optional_static_tls=512) does not
// hold it, and dlopen() fails with "cannot allocate memory in static TLS
// block".
std::vector<std::string> plugin_env(const char* plugin) {
  std::string tunables = "glibc.rtld.optional_static_tls=65536";
  if (const char* own = std::getenv("GLIBC_TUNABLES")) tunables = std::string(own) + ":" + tunables;
  return {std::string("PERCPU_TEST_PLUGIN_PATH=") + plugin, "GLIBC_TUNABLES=" + tunables};
}

// Loads the plugin named by PERCPU_TEST_PLUGIN_PATH, runs it, unloads it,
// then wakes the service threads it left (they sleep in the library's
// code, as they do between calls), twice.
TEST(PluginChild, UnloadWhileServiceThreadsLive) {
  if (!percpu_test::in_child()) GTEST_SKIP() << "runs in a child process";
  const char* path = std::getenv("PERCPU_TEST_PLUGIN_PATH");
  ASSERT_NE(path, nullptr);
  for (int round = 0; round < 2; ++round) {
    void* plugin = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(plugin, nullptr) << dlerror();
    using run_function = unsigned (*)(const void**, unsigned, unsigned*);
    auto run = reinterpret_cast<run_function>(dlsym(plugin, "percpu_plugin_run"));
    ASSERT_NE(run, nullptr) << dlerror();
    std::vector<const void*> words(4096);
    unsigned count = 0;
    EXPECT_GT(run(words.data(), static_cast<unsigned>(words.size()), &count), 0u);
    EXPECT_GT(count, 0u);
    ASSERT_EQ(dlclose(plugin), 0) << dlerror();
    // Past the service threads' polling: they sleep in futex_wait.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (unsigned i = 0; i < count; ++i) {
      syscall(SYS_futex, words[i], FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::printf("the process outlived the unloads\n");
}

TEST(Plugin, UnloadWhileServiceThreadsLiveLeavesTheProcessWorking) {
  auto child = percpu_test::run_self("PluginChild.*", plugin_env(PERCPU_TEST_PLUGIN));
  EXPECT_EQ(child.exit_code, 0) << child.output;
  EXPECT_NE(child.output.find("the process outlived the unloads"), std::string::npos)
      << child.output;
}

// The same plugin against a copy of the library linked without -z nodelete:
// the first wake-up runs unmapped code.  (What the test above would see
// without the flag; it shows that the test can tell.)
TEST(Plugin, WithoutNodeleteTheSameUnloadKillsTheProcess) {
  auto child = percpu_test::run_self("PluginChild.*", plugin_env(PERCPU_TEST_PLUGIN_DELETABLE));
  EXPECT_EQ(child.exit_code, -1) << child.output;
  EXPECT_EQ(child.output.find("the process outlived the unloads"), std::string::npos)
      << child.output;
}

}  // namespace
