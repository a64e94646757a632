// stress_faults.cpp - the faults of `percpu stress`: signals, migrations,
// CPUs removed and restored, invalidates, widened service-thread masks,
// forks.
#include <dirent.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "percpu/xcall.hpp"
#include "stress.hpp"

namespace percpu_tool::stress_detail {

// SIGQUIT: every thread writes its call stack (raw return addresses, for
// addr2line) to stderr, so that a run that stops making progress, in a
// guest without a debugger, says where each thread is.  The thread that
// takes SIGQUIT signals the others with dump_signal; both handlers use
// only system calls and backtrace(), whose first call (which may load its
// unwinder) install_stack_dumper() makes.
const int dump_signal = SIGRTMIN + 5;

void dump_own_stack(int) {
  void* pcs[40];
  int n = backtrace(pcs, 40);
  char line[40 * 19 + 32];
  int len = std::snprintf(line, 32, "stack %ld:", static_cast<long>(syscall(SYS_gettid)));
  for (int i = 0; i < n && len < static_cast<int>(sizeof line) - 20; ++i)
    len += std::snprintf(line + len, 20, " %p", pcs[i]);
  line[len++] = '\n';
  if (write(STDERR_FILENO, line, static_cast<std::size_t>(len)) < 0) return;
}

void dump_all_stacks(int) {
  int dir =
      static_cast<int>(syscall(SYS_openat, AT_FDCWD, "/proc/self/task", O_RDONLY | O_DIRECTORY));
  if (dir < 0) return;
  alignas(8) char buf[4096];
  long self = syscall(SYS_gettid);
  for (;;) {
    long got = syscall(SYS_getdents64, dir, buf, sizeof buf);
    if (got <= 0) break;
    for (long at = 0; at < got;) {
      auto* entry = reinterpret_cast<dirent64*>(buf + at);
      at += entry->d_reclen;
      long tid = std::strtol(entry->d_name, nullptr, 10);
      if (tid > 0 && tid != self) syscall(SYS_tgkill, getpid(), tid, dump_signal);
    }
  }
  close(dir);
  dump_own_stack(0);
}

void install_stack_dumper() {
  void* warm[1];
  backtrace(warm, 1);
  signal(dump_signal, dump_own_stack);
  signal(SIGQUIT, dump_all_stacks);
}

void install_signal_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);
  install_stack_dumper();
}

void on_signal(int) {
  int saved = errno;
  state->slots.add(1);
  state->slots_added.fetch_add(1, std::memory_order_relaxed);
  state->count.add(1);
  state->count_added.fetch_add(1, std::memory_order_relaxed);
  if (pooled* p = checked_get(state->pool)) checked_put(state->pool, p);
  if (pooled* p = checked_get(state->pool2)) checked_put(state->pool2, p);
  count(signals);
  errno = saved;
}

void migrate(std::mt19937_64& rng) {
  std::vector<unsigned> usable;
  {
    std::lock_guard g(state->cpus_mutex);
    usable = state->usable;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  std::size_t pick = rng() % (usable.size() + 1);
  if (pick == usable.size()) {
    for (unsigned cpu : usable) CPU_SET(cpu, &set);
  } else {
    CPU_SET(usable[pick], &set);
  }
  if (sched_setaffinity(0, sizeof(set), &set) == 0) count(migrations);
}

namespace {

// A child of fork(): fresh objects of every kind must work there.  Each
// step is numbered; a child that hangs (the 20 s alarm) exits with 10 + the
// step it was in, so that the parent can say where.
volatile sig_atomic_t child_step = 0;

void child_alarm(int) {
  _exit(10 + child_step);
}

int child_checks() {
  child_step = 1;
  percpu::counter c;
  for (int i = 0; i < 1000; ++i) c.add(1);
  if (c.read() != 1000) return 1;
  child_step = 2;
  percpu::storage<std::int64_t> s;
  s.add(5);
  std::int64_t sum = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  if (sum != 5) return 2;
  child_step = 3;
  percpu::pool_cache<pooled> pool("stress.child");
  pooled* p = pool.get();
  pool.put(p);
  pool.invalidate();
  child_step = 4;
  // A call to the child's own CPU.  That CPU may go offline between
  // sched_getcpu() and the call; the call is then refused with
  // cpu_unavailable without running (docs/xcall.md), and the child tries
  // the CPU it is on next.  Any other outcome is a failure.
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::atomic<int> ran{0};
    try {
      percpu::xcall::unicast_sync(static_cast<unsigned>(sched_getcpu()), [&] { ran = 1; });
      return ran.load() == 1 ? 0 : 3;
    } catch (const percpu::error& e) {
      if (e.code() != percpu::errc::cpu_unavailable || ran.load() != 0) return 4;
    }
  }
  return 5;
}

// The thread ids of xcall's service threads (named "percpu-xc/CPU").
std::vector<pid_t> service_threads() {
  std::vector<pid_t> tids;
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return tids;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    std::string path = std::string("/proc/self/task/") + entry->d_name + "/comm";
    FILE* file = std::fopen(path.c_str(), "r");
    if (file == nullptr) continue;
    char name[32] = {};
    if (std::fgets(name, sizeof name, file) != nullptr &&
        std::strncmp(name, "percpu-xc/", 10) == 0) {
      tids.push_back(static_cast<pid_t>(std::strtol(entry->d_name, nullptr, 10)));
    }
    std::fclose(file);
  }
  closedir(dir);
  return tids;
}

// What `taskset -a -p` or a cgroup-v1 cpuset update does to a service
// thread: its mask becomes every CPU.  It must pin itself again
// (docs/xcall.md); xcall_step checks every call's CPU and mask.
void widen_a_service_thread(const std::vector<unsigned>& all_cpus, std::mt19937_64& rng) {
  std::vector<pid_t> tids = service_threads();
  if (tids.empty()) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (unsigned cpu : all_cpus) CPU_SET(cpu, &set);
  // Before the widening: a call that sees it is inside the window.
  last_widening_ns.store(steady_ns());
  if (sched_setaffinity(tids[rng() % tids.size()], sizeof set, &set) == 0) count(widened_masks);
}

}  // namespace

void fork_once(tally& forks_tally) {
  pid_t pid = fork();
  if (pid == 0) {
    signal(SIGALRM, child_alarm);
    alarm(20);  // a hang in the child is a failure, not a stuck run
    _exit(child_checks());
  }
  if (pid < 0) return;
  count(forks);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  forks_tally.check(ok);
  if (!ok) {
    // Which check failed (child_checks' return value), where it hung, or
    // which signal ended it.
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
    if (code > 10) {
      std::fprintf(stderr, "percpu stress: fork child hung for 20 s in its step %d\n", code - 10);
    } else if (WIFEXITED(status)) {
      std::fprintf(stderr, "percpu stress: fork child failed its check %d\n", code);
    } else if (WIFSIGNALED(status)) {
      std::fprintf(stderr, "percpu stress: fork child killed by signal %d\n", WTERMSIG(status));
    }
  }
}

void load_plugin_once(const std::string& path) {
  tally& t = tallies[plugin_f];
  t.operations.fetch_add(1, std::memory_order_relaxed);
  void* plugin = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  t.check(plugin != nullptr);
  if (plugin == nullptr) {
    std::fprintf(stderr, "percpu stress: %s\n", dlerror());
    return;
  }
  auto run = reinterpret_cast<int (*)()>(dlsym(plugin, "percpu_stress_plugin_run"));
  t.check(run != nullptr && run() == 0);
  t.check(dlclose(plugin) == 0);
  count(plugin_loads);
}

void signal_workers(worker_ids& workers, const std::atomic<bool>& stop) {
  while (!stop.load()) {
    {
      std::lock_guard g(workers.mutex);
      for (pthread_t id : workers.ids) {
        if (id != pthread_t{}) pthread_kill(id, SIGUSR1);
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void inject_faults(const std::vector<unsigned>& all_cpus, std::uint64_t seed, tally& forks_tally,
                   const std::atomic<bool>& stop) {
  std::mt19937_64 frng(seed ^ 0x9e3779b97f4a7c15);
  shared_state& shared = *state;
  // The first fork at a random moment of the start, when the workers make
  // the process's first calls and build the library's registries: a fork
  // in the middle of a build once hung its child (core/process_wide.hpp).
  auto next_fork = clock_type::now() + std::chrono::milliseconds(frng() % 700);
  auto next_plugin = clock_type::now() + std::chrono::milliseconds(400);
  while (!stop.load()) {
    // A CPU goes away for a while, then comes back.
    if (all_cpus.size() > 1 && frng() % 4 == 0) {
      {
        std::lock_guard g(shared.cpus_mutex);
        shared.usable = {all_cpus[frng() % all_cpus.size()]};
      }
      count(cpu_shrinks);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::lock_guard g(shared.cpus_mutex);
      shared.usable = all_cpus;
    }
    // An invalidate and a reclaim of the pool.
    invalidates_started.fetch_add(1);
    shared.pool.invalidate();
    invalidates_returned.fetch_add(1);
    count(invalidates);
    if (frng() % 8 == 0) shared.pool.reclaim();
    if (frng() % 4 == 0) shared.queue.flush_all();  // idle CPUs' buffers too
    if (frng() % 8 == 0) widen_a_service_thread(all_cpus, frng);
    if (clock_type::now() > next_fork) {
      fork_once(forks_tally);
      next_fork = clock_type::now() + std::chrono::milliseconds(700 + frng() % 600);
    }
    if (!shared.plugin.empty() && clock_type::now() > next_plugin) {
      load_plugin_once(shared.plugin);
      next_plugin = clock_type::now() + std::chrono::milliseconds(400 + frng() % 400);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1 + frng() % 5));
  }
}

}  // namespace percpu_tool::stress_detail
