// The process-wide registries (src/core/process_wide.hpp) across fork(): a
// child forked while another thread builds a registry builds its own
// instead of waiting forever for a thread it does not have; a registry whose
// build ends while fork() runs its hooks is not copied as built without
// them; and every registry's fork hooks run once per fork(), in parent and
// child, after a rebuild too.
//
// Each registry type here is built once per process, so a test that finds
// its type built already (--gtest_repeat) skips.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "core/process_wide.hpp"

namespace {

using percpu::detail::process_wide;

template <class T>
bool built_already() {
  return percpu::detail::process_wide_state<T>::word.load() != percpu::detail::once_idle;
}
template <class T>
bool built_already_published() {
  return (percpu::detail::process_wide_state<T>::word.load() & 1) == 0;
}

// Counts of a registry's fork hooks, as the process that ran them saw them.
struct hook_counts {
  int prepared = 0;
  int parent = 0;
  int child = 0;
  pid_t built_in = getpid();
  void prepare_fork() noexcept { ++prepared; }
  void after_fork_parent() noexcept { ++parent; }
  void after_fork_child() noexcept { ++child; }
};

// Forks; the child returns `child()` as its exit status (0: its checks held).
// The alarm ends a child that waits for a thread it does not have, which
// would otherwise keep the parent's wait from returning.  Returns the
// child's exit status, or -1 when a signal ended it.
template <class F>
int in_child(F&& child) {
  pid_t pid = fork();
  if (pid == 0) {
    alarm(60);
    _exit(child());
  }
  if (pid < 0) return -2;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -2;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A registry whose constructor the test holds open until told.
std::atomic<bool> hold_slow{true};
std::atomic<bool> slow_started{false};
struct slow_registry : hook_counts {
  slow_registry() {
    slow_started = true;
    while (hold_slow.load()) std::this_thread::yield();
  }
};

TEST(ProcessWide, ForkWhileARegistryIsBuiltLetsTheChildBuildItsOwn) {
  if (built_already<slow_registry>()) GTEST_SKIP() << "runs once per process";
  slow_registry* built_by_thread = nullptr;
  std::thread builder([&] { built_by_thread = &process_wide<slow_registry>(); });
  while (!slow_started.load()) std::this_thread::yield();
  // The builder is inside the constructor: the fork copies a registry that
  // is half built, by a thread the child does not have.
  int status = in_child([] {
    hold_slow = false;
    slow_registry& r = process_wide<slow_registry>();
    if (r.built_in != getpid()) return 1;
    // Its hooks run exactly once for the next fork (the rebuild did not add
    // them a second time).
    int grandchild = in_child([&r] { return r.prepared == 1 && r.child == 1 ? 0 : 1; });
    return grandchild == 0 && r.prepared == 1 && r.parent == 1 ? 0 : 2;
  });
  EXPECT_EQ(status, 0) << "1: the child's registry is not its own; 2: the rebuilt registry's "
                          "hooks did not run once; -1: the child hung (alarm) or crashed";
  hold_slow = false;
  builder.join();
  // The parent's registry is the one its thread built, and the fork that
  // came while it was half built ran none of its hooks.
  EXPECT_EQ(&process_wide<slow_registry>(), built_by_thread);
  EXPECT_EQ(built_by_thread->built_in, getpid());
  EXPECT_EQ(built_by_thread->prepared, 0);
  EXPECT_EQ(built_by_thread->parent, 0);
}

// A registry whose prepare hook holds the test's fork in its hooks until
// the late registry is built and published (bounded: the test cannot hang
// on it).
std::atomic<bool> fork_in_hooks{false};
struct late_registry : hook_counts {
  late_registry() {
    while (!fork_in_hooks.load()) std::this_thread::yield();
  }
};
struct stretcher {
  void prepare_fork() noexcept {
    if (fork_in_hooks.exchange(true)) return;  // only the test's own fork
    for (int i = 0; i < 5000 && built_already_published<late_registry>() == false; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
};

TEST(ProcessWide, ARegistryBuiltWhileForkRunsItsHooksIsNotCopiedAsBuilt) {
  if (built_already<late_registry>()) GTEST_SKIP() << "runs once per process";
  process_wide<stretcher>();
  late_registry* late = nullptr;
  std::thread builder([&late] { late = &process_wide<late_registry>(); });
  // The stretcher's prepare hook runs after the library's has looked at the
  // late registry (prepare hooks run newest first, and the stretcher was
  // built first); the late registry is built and published meanwhile.  Its
  // prepare hook has not run, so the child must not take the parent's copy
  // (a thread of the parent may hold its lock): it builds its own.
  int status = in_child([] {
    late_registry& r = process_wide<late_registry>();
    return r.built_in == getpid() && r.child == 0 ? 0 : 1;
  });
  builder.join();
  EXPECT_EQ(status, 0) << "1: the child took the parent's registry, built during the fork";
  EXPECT_EQ(late->built_in, getpid());
  EXPECT_EQ(late->prepared, 0);
  EXPECT_EQ(late->parent, 0);
}

// A claim inherited from an ancestor whose pid this process has (a pid
// reused after the ancestor exited, or pid 1 forking a new PID namespace's
// pid 1): the fork generation in the claim still tells it from this
// process's own.  The child forges such a claim, its own pid with its
// parent's generation, and must build rather than wait for it.
struct forged_registry : hook_counts {};

TEST(ProcessWide, AnInheritedClaimWithThisProcesssPidIsStillTheAncestors) {
  if (built_already<forged_registry>()) GTEST_SKIP() << "runs once per process";
  int status = in_child([] {
    using percpu::detail::fork_generation;
    std::uint32_t parents = fork_generation.load() - 1;  // the child hook added one
    std::uintptr_t forged =
        (std::uintptr_t{parents} << 32) | (static_cast<std::uintptr_t>(getpid()) << 1) | 1;
    percpu::detail::process_wide_state<forged_registry>::word.store(forged);
    return process_wide<forged_registry>().built_in == getpid() ? 0 : 1;
  });
  EXPECT_EQ(status, 0) << "-1: the child waited for a claim it took for its own (alarm)";
}

struct quick_registry : hook_counts {};

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
