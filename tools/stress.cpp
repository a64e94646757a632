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
// storage, pool cache gets and puts (two caches) with invalidates and
// reclaims, pool_resource blocks of many sizes, operation queue updates and
// reads.  Faults: workers migrate every few hundred operations; a signaller
// interrupts them every ~20 us and the handler uses the async-signal-safe
// operations of both caches; workers exit and are replaced; the CPUs the
// workers may use shrink to one and grow back; xcall's service threads have
// their masks widened; a plugin with its own copy of the library is loaded
// and unloaded (stress_plugin.cpp); the process forks and the child checks
// that the library works.
// Every invariant is checked where it can be (each lock section, each call,
// each get) and the conservation laws at the end.  Exit status 1 on any
// violation.
//
// This file runs the command and the workers; the faults are in
// stress_faults.cpp, what both share in stress.hpp.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/runtime.hpp"
#include "percpu/xcall.hpp"
#include "stress.hpp"

extern char** environ;

namespace percpu_tool {

namespace stress_detail {

// ---- one worker ----------------------------------------------------------------------

pooled* checked_get(percpu::pool_cache<pooled>& pool) noexcept {
  std::uint64_t returned = invalidates_returned.load();
  pooled* p = pool.try_get();
  tally& t = tallies[pool_f];
  t.operations.fetch_add(1, std::memory_order_relaxed);
  if (p == nullptr) return nullptr;
  t.check(p->mark == pooled::live);
  t.check(p->handed_out.exchange(1) == 0);
  if (&pool == &state->pool) t.check(p->started_at_end >= returned);
  return p;
}

void checked_put(percpu::pool_cache<pooled>& pool, pooled* p) noexcept {
  p->handed_out.store(0);
  pool.put(p);
}

namespace {

// A service thread reads its mask when its last reading is 100 us old
// (docs/xcall.md), by its own clock, just before it runs a call, which is
// after the call was issued.  So a call issued at `issued` may run with a
// widened mask only if a widening came after issued - 100 us; 200 us leaves
// room for the clocks' and the fault thread's slack.  (A bound on the time
// the function itself runs would not do: a busy machine can deschedule the
// service thread between its check and the function for milliseconds.)
bool widened_since(std::int64_t issued) {
  return last_widening_ns.load() > issued - 200000;
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
      std::int64_t issued = steady_ns();
      int ran_on = -1;
      std::size_t mask_cpus = 0;
      percpu::xcall::unicast_sync(target, [&] {
        runs.fetch_add(1);
        // Off its CPU, or with a mask wider than it, only if that CPU went
        // offline while the call ran (the kernel moves every thread off a
        // CPU it takes down) or the service thread's mask was widened just
        // before or during the call (widened_since).
        // One reading of the mask (ANDed with the active CPUs, which a CPU
        // going down leaves before sysfs says offline: a second reading
        // once fell in between, a false violation under hotplug).  A mask
        // without the target: the target is going down, forgiven.
        ran_on = sched_getcpu();
        std::vector<unsigned> mask = percpu::allowed_cpus();
        mask_cpus = mask.size();
        bool going_down = std::find(mask.begin(), mask.end(), target) == mask.end();
        bool off = ran_on != static_cast<int>(target) || mask != std::vector<unsigned>{target};
        if (off && !going_down && cpu_is_online(target) && !widened_since(issued)) {
          wrong_cpu.fetch_add(1);
        }
      });
      t.check(runs.load() == 1);
      t.check(wrong_cpu.load() == 0);
      if (wrong_cpu.load() != 0) {
        std::fprintf(stderr,
                     "percpu stress: a call to CPU %u ran on CPU %d with %zu CPUs in its "
                     "mask; last widening %.1f us before the call was issued\n",
                     target, ran_on, mask_cpus,
                     static_cast<double>(issued - last_widening_ns.load()) / 1000.0);
      }
    }
  } catch (const percpu::error& e) {
    // A CPU removed from the process meanwhile: refused cleanly, not run.
    t.check(e.code() != percpu::errc::timeout && runs.load() == 0);
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

// A block of the pool_resource, filled with a byte of its own.
struct resource_block {
  unsigned char* bytes;
  std::size_t size;
  unsigned char fill;
};

// Allocates a block of one of many size classes, or frees one after
// checking that nobody else wrote it (handed out twice); `drain` frees.
void resource_step(std::mt19937_64& rng, std::vector<resource_block>& blocks, bool drain = false) {
  tally& t = tallies[resource_f];
  t.operations.fetch_add(1, std::memory_order_relaxed);
  if (drain || blocks.size() >= 16 || (!blocks.empty() && rng() % 2 == 0)) {
    resource_block b = blocks.back();
    blocks.pop_back();
    bool intact = true;
    for (std::size_t i = 0; i < b.size; i += 7) intact &= b.bytes[i] == b.fill;
    t.check(intact);
    state->resource.deallocate(b.bytes, b.size);
    return;
  }
  std::size_t size = 8 + rng() % 2040;
  auto* bytes = static_cast<unsigned char*>(state->resource.allocate(size));
  auto fill = static_cast<unsigned char>(rng());
  std::memset(bytes, fill, size);
  blocks.push_back({bytes, size, fill});
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

}  // namespace

// One worker: random operations on the shared objects until `until`, its
// own lifetime or `stop`, checking what can be checked at once.
void worker(std::uint64_t seed, clock_type::time_point until, std::atomic<bool>& stop) {
  std::mt19937_64 rng(seed);
  std::uint64_t queue_key = state->next_queue_key.fetch_add(1);
  std::uint64_t queued = 0;
  std::vector<pooled*> held;
  std::vector<resource_block> blocks;
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
    } else if (pick < 900) {
      if (held.size() < 64 && (held.empty() || rng() % 2 == 0)) {
        if (pooled* p = checked_get(state->pool)) held.push_back(p);
      } else {
        checked_put(state->pool, held.back());
        held.pop_back();
      }
    } else if (pick < 925) {
      if (pooled* p = checked_get(state->pool2)) checked_put(state->pool2, p);
    } else if (pick < 950) {
      resource_step(rng, blocks);
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
  for (pooled* p : held) checked_put(state->pool, p);
  while (!blocks.empty()) resource_step(rng, blocks, true);
}

}  // namespace stress_detail

namespace {

using namespace stress_detail;

struct options {
  double seconds = 10;
  std::uint64_t seed = 1;
  bool seed_given = false;
  std::string backend;
  unsigned slots = 0;
  unsigned threads = 0;
  std::string plugin;  // --plugin: a path, "none", or "" (beside the command)
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
    } else if (a == "--plugin") {
      o.plugin = value();
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

// The plugin the fault thread loads: --plugin's path, or
// libpercpu_stress_plugin.so beside the command; "" when there is none.
std::string plugin_path(const options& o) {
  if (o.plugin == "none") return "";
  std::string path = o.plugin;
  if (path.empty()) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return "";
    path.assign(self, static_cast<std::size_t>(n));
    path = path.substr(0, path.rfind('/') + 1) + "libpercpu_stress_plugin.so";
  }
  if (access(path.c_str(), R_OK) != 0) {
    if (!o.plugin.empty()) throw std::invalid_argument("--plugin " + o.plugin + ": not readable");
    return "";
  }
  return path;
}

// The backend is chosen at start-up, and the room a plugin's copy of the
// library needs in glibc's static TLS (its rseq areas are initial-exec:
// docs/design.md) is set when the program starts: run again with the
// environment set.  Returns only when the exec failed.
int reexec_with(const options& o, const std::vector<std::string>& args) {
  std::vector<std::string> env_strings;
  std::string tunables = "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536";
  // The caller's own PERCPU_BACKEND/PERCPU_SLOTS stand unless options say.
  bool options_choose = !o.backend.empty() || o.slots != 0;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    bool backend_entry =
        entry.rfind("PERCPU_BACKEND=", 0) == 0 || entry.rfind("PERCPU_SLOTS=", 0) == 0;
    if (entry.rfind("GLIBC_TUNABLES=", 0) == 0) {
      tunables = entry + ":glibc.rtld.optional_static_tls=65536";
    } else if (!backend_entry || !options_choose) {
      env_strings.push_back(std::move(entry));
    }
  }
  env_strings.push_back(tunables);
  if (o.slots != 0) {
    env_strings.emplace_back("PERCPU_BACKEND=portable");
    env_strings.push_back("PERCPU_SLOTS=" + std::to_string(o.slots));
  } else if (!o.backend.empty()) {
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

void print_banner(const options& o, const percpu::backend_info& b, unsigned threads,
                  std::size_t cpus) {
  std::printf("percpu stress: %.0f s, seed %" PRIu64
              ", backend %s (%u slots, index %s), %u workers, %zu CPUs\n",
              o.seconds, o.seed, b.kind == percpu::backend_kind::rseq ? "rseq" : "portable",
              b.slots, b.index == percpu::slot_index::mm_cid ? "mm_cid" : "cpu", threads, cpus);
  std::fflush(stdout);
}

// The workers, each replaced as it exits.  Their pthread ids feed the
// signaller.
class worker_pool {
 public:
  worker_pool(unsigned threads, std::uint64_t seed, clock_type::time_point until,
              std::atomic<bool>& stop)
      : workers_(threads), running_(threads), rng_(seed), until_(until), stop_(stop) {
    ids.ids.resize(threads);
    for (unsigned i = 0; i < threads; ++i) launch(i);
  }
  worker_pool(const worker_pool&) = delete;
  worker_pool& operator=(const worker_pool&) = delete;

  void replace_exited() {
    for (unsigned i = 0; i < workers_.size(); ++i) {
      if (!running_[i] && clock_type::now() < until_) {
        workers_[i].join();
        count(thread_exits);
        launch(i);
      }
    }
  }

  void join_all() {
    for (auto& w : workers_) {
      if (w.joinable()) w.join();
    }
  }

  worker_ids ids;

 private:
  void launch(unsigned i) {
    running_[i] = true;
    workers_[i] = std::thread([this, i, seed = rng_()] {
      {
        std::lock_guard g(ids.mutex);
        ids.ids[i] = pthread_self();
      }
      worker(seed, until_, stop_);
      {
        std::lock_guard g(ids.mutex);
        ids.ids[i] = pthread_t{};
      }
      running_[i] = false;
    });
  }

  std::vector<std::thread> workers_;
  std::vector<std::atomic<bool>> running_;
  std::mt19937_64 rng_;
  clock_type::time_point until_;
  std::atomic<bool>& stop_;
};

void print_progress(clock_type::time_point start, clock_type::time_point now,
                    const tally& forks_tally) {
  std::uint64_t ops = 0;
  std::uint64_t bad = forks_tally.violations.load();
  for (auto& t : tallies) {
    ops += t.operations.load();
    bad += t.violations.load();
  }
  std::fprintf(stderr,
               "  %5.0f s  %12" PRIu64 " operations  %8" PRIu64 " faults  %" PRIu64 " violations\n",
               std::chrono::duration<double>(now - start).count(), ops,
               faults[signals].load() + faults[migrations].load(), bad);
}

// Conservation laws, once everyone has stopped.
void check_conservation(shared_state& shared) {
  std::int64_t slot_sum = 0;
  shared.slots.for_each_cpu([&](unsigned, std::int64_t& v) { slot_sum += v; });
  tallies[visit_f].check(slot_sum + shared.drained.load() == shared.slots_added.load());
  tallies[counter_f].check(shared.count.read() + shared.count_taken.load() ==
                           shared.count_added.load());
  shared.queue.flush_all();
  for (auto [key, last] : shared.queue_finals) {
    tallies[queue_f].check(last == 0 || applied[key] == last);
  }
  for (percpu::pool_cache<pooled>* pool : {&shared.pool, &shared.pool2}) {
    percpu::pool_stats ps = pool->stats();
    tallies[pool_f].check(ps.constructions - ps.destructions == ps.objects_cached &&
                          ps.objects_in_use == 0);
  }
}

// The table of tallies and faults; returns the number of violations.
std::uint64_t print_summary(std::uint64_t seed, double elapsed, const tally& forks_tally) {
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
  // Sequences aborted just before their commit (PERCPU_FAULT_ABORT_RATE).
  if constexpr (PERCPU_FAULT_INJECTION)
    std::printf(", %" PRIu64 " aborted sequences", percpu::detail::fault_injections());
  std::printf("\n%.1f s, seed %" PRIu64 ": %s (%" PRIu64 " violations)\n", elapsed, seed,
              total_violations == 0 ? "PASS" : "FAIL", total_violations);
  return total_violations;
}

}  // namespace

int stress(const std::vector<std::string>& args) {
  options o = parse(args);
  std::string plugin = plugin_path(o);
  bool reexec = !o.backend.empty() || o.slots != 0 || !plugin.empty();
  if (reexec && std::getenv("PERCPU_STRESS_CHILD") == nullptr) return reexec_with(o, args);
  if (!o.seed_given)
    o.seed = static_cast<std::uint64_t>(clock_type::now().time_since_epoch().count());
  const percpu::backend_info& b = percpu::backend();
  std::vector<unsigned> all_cpus = percpu::allowed_cpus();
  unsigned threads =
      o.threads != 0 ? o.threads : std::max(4u, 2 * static_cast<unsigned>(all_cpus.size()));
  print_banner(o, b, threads, all_cpus.size());
  std::printf("plugin fault: %s\n",
              plugin.empty() ? "off (no plugin beside the command)" : plugin.c_str());

  shared_state shared;
  shared.usable = all_cpus;
  shared.plugin = plugin;
  state = &shared;
  install_signal_handler();

  auto start = clock_type::now();
  auto until = start + std::chrono::duration_cast<clock_type::duration>(
                           std::chrono::duration<double>(o.seconds));
  std::atomic<bool> stop{false};
  worker_pool workers(threads, o.seed, until, stop);
  std::thread signaller([&] { signal_workers(workers.ids, stop); });
  tally forks_tally{"fork"};
  std::thread faulter([&] { inject_faults(all_cpus, o.seed, forks_tally, stop); });

  auto last_report = start;
  while (clock_type::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    workers.replace_exited();
    if (clock_type::now() - last_report >= std::chrono::seconds(1)) {
      last_report = clock_type::now();
      print_progress(start, last_report, forks_tally);
    }
  }
  stop = true;
  workers.join_all();
  signaller.join();
  faulter.join();

  check_conservation(shared);
  double elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
  std::uint64_t total_violations = print_summary(o.seed, elapsed, forks_tally);
  signal(SIGUSR1, SIG_IGN);
  state = nullptr;
  return total_violations == 0 ? 0 : 1;
}

}  // namespace percpu_tool
