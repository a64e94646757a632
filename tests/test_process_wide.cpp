// The process-wide registries (src/core/process_wide.hpp) across fork():
// a child forked while another thread builds a registry builds its own
// instead of waiting forever for a thread it does not have, and every
// registry's fork hooks run once per fork(), in parent and child, after a
// rebuild too.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "core/process_wide.hpp"

namespace {

using percpu::detail::process_wide;

// Counts of a registry's fork hooks, as the process that ran them saw them.
struct hook_counts {
  int prepared = 0;
  int parent = 0;
  int child = 0;
  void prepare_fork() noexcept { ++prepared; }
  void after_fork_parent() noexcept { ++parent; }
  void after_fork_child() noexcept { ++child; }
};

// A registry whose constructor a test holds open until told.
std::atomic<bool> hold_builds{false};
std::atomic<bool> build_started{false};

struct slow_registry : hook_counts {
  pid_t built_in = getpid();
  slow_registry() {
    build_started = true;
    while (hold_builds.load()) std::this_thread::yield();
  }
};

struct quick_registry : hook_counts {};

// Forks; the child runs `child` (its exit status: 0 when its checks held;
// the alarm ends a child that waits for a thread it does not have, where the
// parent's wait would otherwise never return).  Returns the child's exit
// status, or -1 when a signal ended it.
template <class F>
int in_child(F&& child) {
  pid_t pid = fork();
  if (pid == 0) {
    alarm(60);
    _exit(child());
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -2;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(ProcessWide, ForkWhileARegistryIsBuiltLetsTheChildBuildItsOwn) {
  hold_builds = true;
  slow_registry* built_by_thread = nullptr;
  std::thread builder([&] { built_by_thread = &process_wide<slow_registry>(); });
  while (!build_started.load()) std::this_thread::yield();
  // The builder is inside the constructor: the fork copies a registry that
  // is half built, by a thread the child does not have.
  int status = in_child([] {
    hold_builds = false;
    slow_registry& r = process_wide<slow_registry>();
    if (r.built_in != getpid()) return 1;
    // Its hooks were not run for the fork that copied it half built ...
    if (r.prepared != 0 || r.child != 0) return 2;
    // ... and are run exactly once for the next one (the rebuild added
    // them once, not twice).
    int grandchild = in_child([&r] { return r.prepared == 1 && r.child == 1 ? 0 : 1; });
    return grandchild == 0 && r.prepared == 1 && r.parent == 1 ? 0 : 3;
  });
  EXPECT_EQ(status, 0) << "1: the child's registry is not its own; 2: hooks ran for a half-built "
                          "registry; 3: the rebuilt registry's hooks did not run once; -1: "
                          "the child hung (alarm) or crashed";
  hold_builds = false;
  builder.join();
  // The parent's registry is the one its thread built.
  EXPECT_EQ(&process_wide<slow_registry>(), built_by_thread);
  EXPECT_EQ(built_by_thread->built_in, getpid());
  EXPECT_EQ(built_by_thread->prepared, 0);
}

TEST(ProcessWide, HooksRunOncePerForkInParentAndChild) {
  quick_registry& r = process_wide<quick_registry>();
  hook_counts before = r;
  int status = in_child([&r, before] {
    return r.prepared == before.prepared + 1 && r.child == before.child + 1 &&
                   r.parent == before.parent
               ? 0
               : 1;
  });
  EXPECT_EQ(status, 0);
  EXPECT_EQ(r.prepared, before.prepared + 1);
  EXPECT_EQ(r.parent, before.parent + 1);
  EXPECT_EQ(r.child, before.child);
}

TEST(ProcessWide, EveryThreadGetsTheOneRegistry) {
  struct many_users {
    int value = 7;
  };
  constexpr int threads = 8;
  many_users* seen[threads] = {};
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&seen, i] { seen[i] = &process_wide<many_users>(); });
  }
  for (auto& t : pool) t.join();
  for (many_users* p : seen) {
    EXPECT_EQ(p, seen[0]);
    EXPECT_EQ(p->value, 7);
  }
}

}  // namespace
