// stress.cpp - `percpu stress`: every facility at once, under faults.
//
// Problem: per-CPU code fails in ways a unit test rarely shows - a lost
// update when a migration, a signal and a remote visit meet, an object
// handed out twice when an invalidate races a refill.  Each facility has its
// own storm test; this command runs them all together, for as long as asked,
// with the faults a real process meets, and checks every invariant the
// facilities promise.
//
// Workers (2 per allowed CPU, at least 4) pick operations at random from a
// seeded generator: per-CPU storage adds and growth, counter adds,
// big-reader lock sections, cross-CPU calls, stopped-CPU visits that drain a
// storage, pool cache gets and puts with invalidates and reclaims, operation
// queue updates and reads.  Faults:
// workers migrate every few hundred operations; a signaller interrupts them
// every ~20 us and the handler uses the async-signal-safe operations; workers
// exit and are replaced; the CPUs the workers may use shrink to one and grow
// back; the process forks and the child checks that the library works.
// Every invariant is checked where it can be (each lock section, each call,
// each get) and the conservation laws at the end.  Exit status 1 on any
// violation.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "commands.hpp"
#include "percpu/counter.hpp"
#include "percpu/cpu.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/queue.hpp"
#include "percpu/rwlock.hpp"
#include "percpu/storage.hpp"
#include "percpu/xcall.hpp"

extern char** environ;

namespace percpu_tool {

namespace {

using clock_type = std::chrono::steady_clock;

// Operations, invariant checks and violations of one facility.
struct tally {
  const char* name;
  std::atomic<std::uint64_t> operations{0};
  std::atomic<std::uint64_t> checks{0};
  std::atomic<std::uint64_t> violations{0};
  void check(bool holds) noexcept {
    checks.fetch_add(1, std::memory_order_relaxed);
    if (!holds) violations.fetch_add(1, std::memory_order_relaxed);
  }
};

enum facility { storage_f, counter_f, rwlock_f, xcall_f, visit_f, pool_f, queue_f, facility_count };
tally tallies[facility_count] = {{"storage"}, {"counter"},    {"rwlock"}, {"xcall"},
                                 {"visit"},   {"pool_cache"}, {"queue"}};

enum fault { migrations, signals, thread_exits, cpu_shrinks, forks, invalidates, fault_count };
const char* const fault_names[fault_count] = {"migrations",   "signals", "thread exits",
                                              "CPUs removed", "forks",   "invalidates"};
std::atomic<std::uint64_t> faults[fault_count];

void count(fault f) noexcept {
  faults[f].fetch_add(1, std::memory_order_relaxed);
}

// ---- the shared objects ------------------------------------------------------------

// An object of the pool: constructed, generation-checked, handed out once.
std::atomic<std::uint64_t> invalidates_started{0};
std::atomic<std::uint64_t> invalidates_returned{0};
struct pooled {
  static constexpr std::uint64_t live = 0x5eed5eed5eed5eed;
  std::uint64_t mark = live;
  std::uint64_t started_at_end = invalidates_started.load();
  std::atomic<int> handed_out{0};
  ~pooled() { mark = 0; }
};

// A queued operation: thread `key`'s n-th update.  apply() checks that each
// thread's updates arrive in order, none lost or repeated.
struct numbered {
  std::uint64_t key;
  std::uint64_t n;
};
std::unordered_map<std::uint64_t, std::uint64_t> applied;  // under the queue's target lock

void apply_numbered(std::span<const numbered> ops) {
  for (const numbered& op : ops) {
    std::uint64_t& last = applied[op.key];
    tallies[queue_f].check(op.n == last + 1);
    last = op.n;
  }
}

struct shared_state {
  // storage: every add (workers and handlers) is counted; visits move slot
  // values into `drained`; at the end slots + drained == added.
  percpu::storage<std::int64_t> slots;
  std::atomic<std::int64_t> slots_added{0};
  std::atomic<std::int64_t> drained{0};
  // counter: added == taken by exchanges + what it holds at the end.
  percpu::counter count{64};
  std::atomic<std::int64_t> count_added{0};
  std::atomic<std::int64_t> count_taken{0};
  // rwlock: writers keep a == b; readers must never see a != b.
  percpu::rwlock lock;
  std::uint64_t a = 0;
  std::uint64_t b = 0;
  std::atomic<int> writers_inside{0};
  // pool
  percpu::pool_cache<pooled> pool{"stress"};
  // queue: per-thread order, read-your-writes, nothing lost at the end
  percpu::batch_queue<numbered> queue{apply_numbered, [] {
                                        percpu::queue_options o;
                                        o.capacity = 64;
                                        return o;
                                      }()};
  std::atomic<std::uint64_t> next_queue_key{1};
  std::mutex finals_mutex;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> queue_finals;  // (key, last n)
  // workers may use these CPUs now (shrunk and restored by the fault thread)
  std::mutex cpus_mutex;
  std::vector<unsigned> usable;
};
shared_state* state = nullptr;

// ---- one worker ----------------------------------------------------------------------

pooled* checked_get() noexcept {
  std::uint64_t returned = invalidates_returned.load();
  pooled* p = state->pool.try_get();
  tally& t = tallies[pool_f];
  t.operations.fetch_add(1, std::memory_order_relaxed);
  if (p == nullptr) return nullptr;
  t.check(p->mark == pooled::live);
  t.check(p->handed_out.exchange(1) == 0);
  t.check(p->started_at_end >= returned);
  return p;
}

void checked_put(pooled* p) noexcept {
  p->handed_out.store(0);
  state->pool.put(p);
}

// The signal handler: async-signal-safe operations only.
void on_signal(int) {
  int saved = errno;
  state->slots.add(1);
  state->slots_added.fetch_add(1, std::memory_order_relaxed);
  state->count.add(1);
  state->count_added.fetch_add(1, std::memory_order_relaxed);
  if (pooled* p = checked_get()) checked_put(p);
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

bool cpu_is_online(unsigned cpu) {
  std::vector<unsigned> online = percpu::online_cpus();
  return std::find(online.begin(), online.end(), cpu) != online.end();
}

void xcall_step(std::mt19937_64& rng) {
  tally& t = tallies[xcall_f];
  // The kernel reports the thread's mask ANDed with the active CPUs, which
  // is empty for a moment when the thread's only CPU is going offline
  // (CPU hotplug): then any online CPU will do.
  std::vector<unsigned> cpus = percpu::allowed_cpus();
  if (cpus.empty()) cpus = percpu::online_cpus();
  unsigned target = cpus[rng() % cpus.size()];
  std::atomic<int> runs{0};
  std::atomic<int> wrong_cpu{0};
  try {
    if (rng() % 8 == 0) {
      auto result = percpu::xcall::broadcast_sync([&runs] { runs.fetch_add(1); });
      static_cast<void>(result);
      t.check(runs.load() >= 1);
    } else {
      percpu::xcall::unicast_sync(target, [&] {
        runs.fetch_add(1);
        // Off its CPU only if that CPU went offline while the call ran (the
        // kernel moves every thread off a CPU it takes down; docs/xcall.md).
        if (sched_getcpu() != static_cast<int>(target) && cpu_is_online(target)) {
          wrong_cpu.fetch_add(1);
        }
      });
      t.check(runs.load() == 1);
      t.check(wrong_cpu.load() == 0);
    }
  } catch (const percpu::xcall::error& e) {
    // A CPU removed from the process meanwhile: refused cleanly, not run.
    t.check(e.code() != percpu::xcall::errc::timeout && runs.load() == 0);
  }
  t.operations.fetch_add(1, std::memory_order_relaxed);
}

// Runs f() with every signal blocked: the handler adds to the storage and
// the counter, which must not happen on a thread that holds their stop
// words (a visit, an exchange) - it would wait for itself.
template <class F>
void without_signals(F&& f) {
  sigset_t all;
  sigset_t saved;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &saved);
  f();
  pthread_sigmask(SIG_SETMASK, &saved, nullptr);
}

void visit_step() {
  // Drain every CPU's storage slot while it is stopped: nothing may be lost.
  percpu::xcall::visit_all({&state->slots.stops()}, [](unsigned cpu) {
    std::int64_t* slot = state->slots.on(cpu);
    state->drained.fetch_add(*slot, std::memory_order_relaxed);
    *slot = 0;
  });
  tallies[visit_f].operations.fetch_add(1, std::memory_order_relaxed);
}

void rwlock_step(std::mt19937_64& rng) {
  tally& t = tallies[rwlock_f];
  if (rng() % 64 == 0) {
    std::lock_guard g(state->lock);
    t.check(state->writers_inside.fetch_add(1) == 0);
    std::uint64_t v = rng();
    state->a = v;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    state->b = v;
    state->writers_inside.fetch_sub(1);
  } else {
    std::shared_lock g(state->lock);
    t.check(state->writers_inside.load() == 0 && state->a == state->b);
  }
  t.operations.fetch_add(1, std::memory_order_relaxed);
}

void storage_growth(std::mt19937_64& rng) {
  // A short-lived per-CPU object: the allocator grows and reuses ranges.
  tally& t = tallies[storage_f];
  percpu::storage<std::int64_t> own;
  std::int64_t added = 0;
  for (int i = 0, n = 1 + static_cast<int>(rng() % 64); i < n; ++i) {
    std::int64_t v = static_cast<std::int64_t>(rng() % 100);
    own.add(v);
    added += v;
  }
  std::int64_t sum = 0;
  own.for_each_cpu([&](unsigned, std::int64_t& slot) { sum += slot; });
  t.check(sum == added);
  t.operations.fetch_add(1, std::memory_order_relaxed);
}

void worker(std::uint64_t seed, clock_type::time_point until, std::atomic<bool>& stop) {
  std::mt19937_64 rng(seed);
  std::uint64_t queue_key = state->next_queue_key.fetch_add(1);
  std::uint64_t queued = 0;
  std::vector<pooled*> held;
  std::uint64_t steps = 0;
  auto lifetime_end = clock_type::now() + std::chrono::milliseconds(50 + rng() % 400);
  while (!stop.load(std::memory_order_relaxed)) {
    if (++steps % 256 == 0) {
      migrate(rng);
      if (clock_type::now() > lifetime_end || clock_type::now() > until) break;
    }
    unsigned pick = static_cast<unsigned>(rng() % 1000);
    if (pick < 300) {
      state->slots.add(1);
      state->slots_added.fetch_add(1, std::memory_order_relaxed);
      tallies[storage_f].operations.fetch_add(1, std::memory_order_relaxed);
    } else if (pick < 550) {
      std::int64_t v = 1 + static_cast<std::int64_t>(rng() % 3);
      state->count.add(v);
      state->count_added.fetch_add(v, std::memory_order_relaxed);
      tallies[counter_f].operations.fetch_add(1, std::memory_order_relaxed);
    } else if (pick < 551) {
      without_signals([] {
        state->count_taken.fetch_add(state->count.exchange(0), std::memory_order_relaxed);
      });
    } else if (pick < 700) {
      rwlock_step(rng);
    } else if (pick < 950) {
      if (held.size() < 64 && (held.empty() || rng() % 2 == 0)) {
        if (pooled* p = checked_get()) held.push_back(p);
      } else {
        checked_put(held.back());
        held.pop_back();
      }
    } else if (pick < 953) {
      xcall_step(rng);
    } else if (pick < 954) {
      without_signals(visit_step);
    } else if (pick < 955) {
      storage_growth(rng);
    } else if (pick < 995) {
      state->queue.enqueue(numbered{queue_key, ++queued});
      tallies[queue_f].operations.fetch_add(1, std::memory_order_relaxed);
    } else if (pick < 997 && queued != 0) {
      // Read-your-writes: every update this thread enqueued is applied.
      std::uint64_t seen = state->queue.read(queue_key, [&] { return applied[queue_key]; });
      tallies[queue_f].check(seen == queued);
      tallies[queue_f].operations.fetch_add(1, std::memory_order_relaxed);
    }
  }
  {
    std::lock_guard g(state->finals_mutex);
    state->queue_finals.emplace_back(queue_key, queued);
  }
  for (pooled* p : held) checked_put(p);
}

// ---- faults -------------------------------------------------------------------------

// A child of fork(): fresh objects of every kind must work there.
int child_checks() {
  percpu::counter c;
  for (int i = 0; i < 1000; ++i) c.add(1);
  if (c.read() != 1000) return 1;
  percpu::storage<std::int64_t> s;
  s.add(5);
  std::int64_t sum = 0;
  s.for_each_cpu([&](unsigned, std::int64_t& v) { sum += v; });
  if (sum != 5) return 2;
  percpu::pool_cache<pooled> pool("stress.child");
  pooled* p = pool.get();
  pool.put(p);
  pool.invalidate();
  // A call to the child's own CPU.  That CPU may go offline between
  // sched_getcpu() and the call; the call is then refused with
  // cpu_unavailable without running (docs/xcall.md), and the child tries
  // the CPU it is on next.  Any other outcome is a failure.
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::atomic<int> ran{0};
    try {
      percpu::xcall::unicast_sync(static_cast<unsigned>(sched_getcpu()), [&] { ran = 1; });
      return ran.load() == 1 ? 0 : 3;
    } catch (const percpu::xcall::error& e) {
      if (e.code() != percpu::xcall::errc::cpu_unavailable || ran.load() != 0) return 4;
    }
  }
  return 5;
}

void fork_once(tally& forks_tally) {
  pid_t pid = fork();
  if (pid == 0) {
    alarm(20);  // a hang in the child is a failure, not a stuck run
    _exit(child_checks());
  }
  if (pid < 0) return;
  count(forks);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  forks_tally.check(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

struct options {
  double seconds = 10;
  std::uint64_t seed = 1;
  bool seed_given = false;
  std::string backend;
  unsigned slots = 0;
  unsigned threads = 0;
};

options parse(const std::vector<std::string>& args) {
  options o;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    auto number = [&](const std::string& text) {
      std::size_t used = 0;
      unsigned long long n = std::stoull(text, &used);
      if (used != text.size()) throw std::invalid_argument("not a number: " + text);
      return n;
    };
    if (a == "--seconds") {
      o.seconds = std::stod(value());
      if (!(o.seconds > 0)) throw std::invalid_argument("--seconds must be positive");
    } else if (a == "--seed") {
      o.seed = number(value());
      o.seed_given = true;
    } else if (a == "--backend") {
      o.backend = value();
      if (o.backend != "rseq" && o.backend != "portable") {
        throw std::invalid_argument("--backend must be rseq or portable");
      }
    } else if (a == "--slots") {
      o.slots = static_cast<unsigned>(number(value()));
      if (o.slots == 0 || o.slots > 4096) throw std::invalid_argument("--slots must be 1..4096");
    } else if (a == "--threads") {
      o.threads = static_cast<unsigned>(number(value()));
      if (o.threads == 0 || o.threads > 1024)
        throw std::invalid_argument("--threads must be 1..1024");
    } else {
      throw std::invalid_argument("unknown option " + a);
    }
  }
  return o;
}

// The backend is chosen at start-up: run again with the environment set.
// Returns only when the exec failed.
int reexec_with(const options& o, const std::vector<std::string>& args) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    if (entry.rfind("PERCPU_BACKEND=", 0) != 0 && entry.rfind("PERCPU_SLOTS=", 0) != 0) {
      env_strings.push_back(std::move(entry));
    }
  }
  if (o.slots != 0) {
    env_strings.emplace_back("PERCPU_BACKEND=portable");
    env_strings.push_back("PERCPU_SLOTS=" + std::to_string(o.slots));
  } else {
    env_strings.push_back("PERCPU_BACKEND=" + o.backend);
  }
  env_strings.emplace_back("PERCPU_STRESS_CHILD=1");
  std::vector<std::string> argv_strings{"percpu", "stress"};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  std::vector<char*> env;
  argv.reserve(argv_strings.size() + 1);
  env.reserve(env_strings.size() + 1);
  for (auto& a : argv_strings) argv.push_back(a.data());
  for (auto& e : env_strings) env.push_back(e.data());
  argv.push_back(nullptr);
  env.push_back(nullptr);
  execve("/proc/self/exe", argv.data(), env.data());
  std::perror("percpu stress: exec");
  return 2;
}

}  // namespace

int stress(const std::vector<std::string>& args) {
  options o = parse(args);
  if ((!o.backend.empty() || o.slots != 0) && std::getenv("PERCPU_STRESS_CHILD") == nullptr) {
    return reexec_with(o, args);
  }
  if (!o.seed_given)
    o.seed = static_cast<std::uint64_t>(clock_type::now().time_since_epoch().count());
  const auto& b = percpu::backend();
  std::vector<unsigned> all_cpus = percpu::allowed_cpus();
  unsigned threads =
      o.threads != 0 ? o.threads : std::max(4u, 2 * static_cast<unsigned>(all_cpus.size()));
  std::printf("percpu stress: %.0f s, seed %" PRIu64
              ", backend %s (%u slots), %u workers, %zu CPUs\n",
              o.seconds, o.seed, b.kind == percpu::backend_kind::rseq ? "rseq" : "portable",
              b.slots, threads, all_cpus.size());
  std::fflush(stdout);

  shared_state shared;
  shared.usable = all_cpus;
  state = &shared;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);

  auto start = clock_type::now();
  auto until = start + std::chrono::duration_cast<clock_type::duration>(
                           std::chrono::duration<double>(o.seconds));
  std::atomic<bool> stop{false};
  std::mt19937_64 rng(o.seed);

  // Workers, replaced as they exit.  Their pthread ids feed the signaller.
  std::mutex workers_mutex;
  std::vector<std::thread> workers(threads);
  std::vector<std::atomic<bool>> running(threads);
  std::vector<pthread_t> ids(threads);
  auto launch = [&](unsigned i) {
    running[i] = true;
    workers[i] = std::thread([&, i, seed = rng()] {
      {
        std::lock_guard g(workers_mutex);
        ids[i] = pthread_self();
      }
      worker(seed, until, stop);
      {
        std::lock_guard g(workers_mutex);
        ids[i] = pthread_t{};
      }
      running[i] = false;
    });
  };
  for (unsigned i = 0; i < threads; ++i) launch(i);

  std::thread signaller([&] {
    while (!stop.load()) {
      {
        std::lock_guard g(workers_mutex);
        for (pthread_t id : ids) {
          if (id != pthread_t{}) pthread_kill(id, SIGUSR1);
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  });

  tally forks_tally{"fork"};
  std::thread faulter([&, frng = std::mt19937_64(o.seed ^ 0x9e3779b97f4a7c15)]() mutable {
    auto next_fork = clock_type::now() + std::chrono::milliseconds(700);
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
      if (clock_type::now() > next_fork) {
        fork_once(forks_tally);
        next_fork = clock_type::now() + std::chrono::milliseconds(700 + frng() % 600);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1 + frng() % 5));
    }
  });

  auto last_report = start;
  while (clock_type::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (unsigned i = 0; i < threads; ++i) {
      if (!running[i] && clock_type::now() < until) {
        workers[i].join();
        count(thread_exits);
        launch(i);
      }
    }
    if (clock_type::now() - last_report >= std::chrono::seconds(1)) {
      last_report = clock_type::now();
      std::uint64_t ops = 0;
      std::uint64_t bad = forks_tally.violations.load();
      for (auto& t : tallies) {
        ops += t.operations.load();
        bad += t.violations.load();
      }
      std::fprintf(stderr,
                   "  %5.0f s  %12" PRIu64 " operations  %8" PRIu64 " faults  %" PRIu64
                   " violations\n",
                   std::chrono::duration<double>(last_report - start).count(), ops,
                   faults[signals].load() + faults[migrations].load(), bad);
    }
  }
  stop = true;
  for (auto& w : workers) {
    if (w.joinable()) w.join();
  }
  signaller.join();
  faulter.join();

  // Conservation laws, now that everyone has stopped.
  std::int64_t slot_sum = 0;
  shared.slots.for_each_cpu([&](unsigned, std::int64_t& v) { slot_sum += v; });
  tallies[visit_f].check(slot_sum + shared.drained.load() == shared.slots_added.load());
  tallies[counter_f].check(shared.count.read() + shared.count_taken.load() ==
                           shared.count_added.load());
  shared.queue.flush_all();
  for (auto [key, last] : shared.queue_finals) {
    tallies[queue_f].check(last == 0 || applied[key] == last);
  }
  percpu::pool_stats ps = shared.pool.stats();
  tallies[pool_f].check(ps.constructions - ps.destructions == ps.objects_cached &&
                        ps.objects_in_use == 0);

  double elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
  std::uint64_t total_violations = forks_tally.violations.load();
  std::printf("\n%-12s %14s %14s %10s\n", "facility", "operations", "checks", "violations");
  for (auto& t : tallies) {
    std::printf("%-12s %14" PRIu64 " %14" PRIu64 " %10" PRIu64 "\n", t.name, t.operations.load(),
                t.checks.load(), t.violations.load());
    total_violations += t.violations.load();
  }
  std::printf("%-12s %14" PRIu64 " %14" PRIu64 " %10" PRIu64 "\n", "fork child",
              faults[forks].load(), forks_tally.checks.load(), forks_tally.violations.load());
  std::printf("\nfaults injected:");
  for (int f = 0; f < fault_count; ++f) {
    std::printf("%s %" PRIu64 " %s", f == 0 ? "" : ",", faults[f].load(), fault_names[f]);
  }
  std::printf("\n%.1f s, seed %" PRIu64 ": %s (%" PRIu64 " violations)\n", elapsed, o.seed,
              total_violations == 0 ? "PASS" : "FAIL", total_violations);
  signal(SIGUSR1, SIG_IGN);
  state = nullptr;
  return total_violations == 0 ? 0 : 1;
}

}  // namespace percpu_tool
