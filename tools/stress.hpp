// stress.hpp - what the parts of `percpu stress` share: the tallies of
// operations, checks and faults, and the objects every worker and every
// fault acts on.  stress.cpp runs the command and the workers,
// stress_faults.cpp injects the faults.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "percpu/core/storage.hpp"
#include "percpu/counter.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/pool_resource.hpp"
#include "percpu/queue.hpp"
#include "percpu/rwlock.hpp"

namespace percpu_tool::stress_detail {

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

enum facility {
  storage_f,
  counter_f,
  rwlock_f,
  xcall_f,
  visit_f,
  pool_f,
  resource_f,
  queue_f,
  plugin_f,
  facility_count
};
inline tally tallies[facility_count] = {{"storage"},       {"counter"}, {"rwlock"},
                                        {"xcall"},         {"visit"},   {"pool_cache"},
                                        {"pool_resource"}, {"queue"},   {"plugin"}};

enum fault {
  migrations,
  signals,
  thread_exits,
  cpu_shrinks,
  forks,
  invalidates,
  widened_masks,
  plugin_loads,
  fault_count
};
inline const char* const fault_names[fault_count] = {
    "migrations", "signals",     "thread exits",          "CPUs removed",
    "forks",      "invalidates", "service masks widened", "plugin loads and unloads"};

// The steady clock in nanoseconds (the time base of last_widening_ns).
inline std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch())
      .count();
}

// When a service thread's mask was last widened (steady clock, ns): a call
// that starts within the documented window after it may run with the
// widened mask (docs/xcall.md), and is not counted against xcall.
inline std::atomic<std::int64_t> last_widening_ns{0};
inline std::atomic<std::uint64_t> faults[fault_count];

inline void count(fault f) noexcept {
  faults[f].fetch_add(1, std::memory_order_relaxed);
}

// ---- the shared objects ------------------------------------------------------------

// An object of the pool: constructed, generation-checked, handed out once.
inline std::atomic<std::uint64_t> invalidates_started{0};
inline std::atomic<std::uint64_t> invalidates_returned{0};
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
inline std::unordered_map<std::uint64_t, std::uint64_t> applied;  // under the queue's target lock

inline void apply_numbered(std::span<const numbered> ops) {
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
  // pools: the invalidated one, a second one that signal handlers use as
  // well (a handler that interrupts a slow path of one cache must take no
  // lock of any cache), and a resource of many size classes (caches whose
  // slow-path locks workers hold while handlers use the other two).
  percpu::pool_cache<pooled> pool{"stress"};
  percpu::pool_cache<pooled> pool2{"stress.second"};
  percpu::pool_resource resource;
  // queue: per-thread order, read-your-writes, nothing lost at the end
  percpu::batch_queue<numbered> queue{apply_numbered, [] {
                                        percpu::queue_options o;
                                        o.capacity = 64;
                                        return o;
                                      }()};
  std::atomic<std::uint64_t> next_queue_key{1};
  std::mutex finals_mutex;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> queue_finals;  // (key, last n)
  // the plugin the fault thread loads and unloads ("": none)
  std::string plugin;
  // workers may use these CPUs now (shrunk and restored by the fault thread)
  std::mutex cpus_mutex;
  std::vector<unsigned> usable;
};
inline shared_state* state = nullptr;

// ---- stress.cpp: one worker -----------------------------------------------------

// A pool object, checked: live, handed out once and, from the invalidated
// pool, not older than the last invalidate that returned before the get
// began.  nullptr: the pool failed.
pooled* checked_get(percpu::pool_cache<pooled>& pool) noexcept;
void checked_put(percpu::pool_cache<pooled>& pool, pooled* p) noexcept;

// ---- stress_faults.cpp ----------------------------------------------------------

// The signal handler: async-signal-safe operations only.
void on_signal(int);
// Moves the calling thread to one usable CPU, or to all of them.
void migrate(std::mt19937_64& rng);
// Forks; the child checks that fresh objects of every kind work there.
void fork_once(tally& forks_tally);
// SIGQUIT makes every thread write its call stack to stderr.
void install_stack_dumper();
// on_signal for SIGUSR1, and the stack dumper.
void install_signal_handler();
// Loads the plugin, runs it and unloads it (stress_plugin.cpp).
void load_plugin_once(const std::string& path);

// The workers' pthread ids, for the signaller (a zero id: no thread).
struct worker_ids {
  std::mutex mutex;
  std::vector<pthread_t> ids;
};
// Interrupts every running worker every ~20 us until `stop`.
void signal_workers(worker_ids& workers, const std::atomic<bool>& stop);
// Until `stop`: takes CPUs away and gives them back, invalidates and
// reclaims the pool, flushes the queue, widens xcall service threads'
// masks, forks.
void inject_faults(const std::vector<unsigned>& all_cpus, std::uint64_t seed, tally& forks_tally,
                   const std::atomic<bool>& stop);

}  // namespace percpu_tool::stress_detail
