// The concurrent checks of the aarch64 sequences: threads that move
// themselves between CPUs and take signals whose handlers use the same
// structures, more threads than CPUs (so preemption aborts too), fault
// injection every 7th sequence in debug builds, and a visitor that stops
// CPUs while the records and the adds storm.  Each storm runs at least the
// minimum time and until the kernel has aborted 200 of its sequences, up to
// five times the minimum: a slow or busy machine makes it longer, never
// makes it fail.
#include <linux/membarrier.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <thread>

#include "rseq_aarch64_test.hpp"

namespace archtest {

namespace {

constexpr unsigned max_workers = 16;
constexpr std::uint64_t aborts_wanted = 200;
constexpr std::uint64_t hop_every = 16384;  // iterations between a worker's moves

// The storm's handler body, run by SIGUSR1 on a worker thread.
void (*handler_body)(unsigned worker) = nullptr;
// Set when the running storm ends: a worker waiting for a visitor (a full
// buffer) stops waiting, since the visitor is gone.
std::atomic<bool> storm_ending{false};
thread_local int worker_index = -1;

void on_signal(int) {
  int saved = errno;
  if (worker_index >= 0 && handler_body != nullptr)
    handler_body(static_cast<unsigned>(worker_index));
  errno = saved;
}

struct storm_result {
  double seconds;
  std::uint64_t signals;
  std::uint64_t aborts;
  std::uint64_t injected;
  std::uint64_t stops;
};

unsigned worker_count() {
  auto cpus = static_cast<unsigned>(allowed_cpus().size());
  return std::clamp(2 * cpus, 4u, max_workers);
}

// Runs body(worker, iteration) on worker_count() threads until the storm
// has lasted long enough, with a thread signalling every worker every
// ~100 us, and each worker moving itself to the next allowed CPU every
// hop_every iterations.  Both are rationed: a worker busy with a move or a
// signal is not inside a sequence, where they are meant to strike.  (Under
// QEMU's emulation a move costs more than a thousand iterations; moving
// every 1024 iterations, or signalling without a pause, cut the aborts per
// second tenfold.)  `extra`, if set, runs on one
// more thread meanwhile (a visitor) and is told to stop through the same flag.
template <class Body>
storm_result storm(Body body, void (*handler)(unsigned), void (*extra)(const std::atomic<bool>&)) {
  std::vector<unsigned> cpus = allowed_cpus();
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> signals{0};
  handler_body = handler;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);
  storm_ending = false;
  aborts_seen = 0;
  stops_seen = 0;
  injected = 0;
  inject_every = PERCPU_FAULT_INJECTION ? 7 : 0;
  auto start = clock_type::now();
  std::vector<std::thread> workers;
  for (unsigned w = 0; w < worker_count(); ++w) {
    workers.emplace_back([&, w] {
      worker_index = static_cast<int>(w);
      if (inject_every != 0) percpu_fault_countdown = inject_every;
      for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        if (i % hop_every == 0) pin(cpus[(w + i / hop_every) % cpus.size()]);
        body(w, i);
      }
    });
  }
  std::thread visitor;
  if (extra != nullptr) visitor = std::thread([&] { extra(stop); });
  std::thread signaller([&] {
    timespec pause{0, 100000};
    while (!stop.load(std::memory_order_relaxed)) {
      for (auto& t : workers) pthread_kill(t.native_handle(), SIGUSR1);
      signals.fetch_add(workers.size(), std::memory_order_relaxed);
      nanosleep(&pause, nullptr);
    }
  });
  for (;;) {
    double s = seconds_since(start);
    std::uint64_t kernel_aborts = aborts_seen.load() - injected.load();
    if ((s >= storm_seconds && kernel_aborts >= aborts_wanted) || s >= 5 * storm_seconds) break;
    timespec tick{0, 50000000};
    nanosleep(&tick, nullptr);
  }
  stop = true;
  storm_ending = true;
  signaller.join();
  if (visitor.joinable()) visitor.join();
  for (auto& t : workers) t.join();
  handler_body = nullptr;
  inject_every = 0;
  return {seconds_since(start), signals.load(), aborts_seen.load(), injected.load(),
          stops_seen.load()};
}

void report(const storm_result& r) {
  std::printf(
      "  storm: %u threads on %zu CPUs, %.1f s, %llu signals, %llu aborts (%llu injected),"
      " %llu stopped exits\n",
      worker_count(), allowed_cpus().size(), r.seconds, static_cast<unsigned long long>(r.signals),
      static_cast<unsigned long long>(r.aborts), static_cast<unsigned long long>(r.injected),
      static_cast<unsigned long long>(r.stops));
  kernel_aborts_in_storms += r.aborts - r.injected;
}

// ---- adds --------------------------------------------------------------------

block* the_block = nullptr;
std::atomic<std::int64_t> added[max_workers];
std::atomic<std::int64_t> added_by_handlers[max_workers];

void add_one_way(unsigned w, std::uint64_t i, std::int64_t v, std::atomic<std::int64_t>& tally) {
  block& b = *the_block;
  const std::uint32_t* stop0 = b.stop0();
  status st;
  switch (i % 3) {
    case 0:
      st = run(stop0, [&] { return rs::add(b.slot0(), stop0, v); });
      break;
    case 1:
      st = run(stop0, [&] { return rs::add_release(b.slot0(), stop0, v); });
      break;
    default: {
      unsigned cpu;
      bool negative;
      st = run(stop0, [&] { return rs::add_sign(b.slot0(), stop0, v, &cpu, &negative); });
      break;
    }
  }
  CHECK(st == status::committed);
  tally.fetch_add(v, std::memory_order_relaxed);
  (void)w;
}

void reset_tallies() {
  for (unsigned w = 0; w < max_workers; ++w) {
    added[w] = 0;
    added_by_handlers[w] = 0;
  }
}

std::int64_t tallies() {
  std::int64_t sum = 0;
  for (unsigned w = 0; w < max_workers; ++w) sum += added[w] + added_by_handlers[w];
  return sum;
}

}  // namespace

void storm_adds() {
  block b;
  the_block = &b;
  reset_tallies();
  storm_result r = storm([](unsigned w, std::uint64_t i) { add_one_way(w, i, 1, added[w]); },
                         [](unsigned w) {
                           static thread_local std::uint64_t n = 0;
                           add_one_way(w, n++, 1000, added_by_handlers[w]);
                         },
                         nullptr);
  std::printf("adds: slots sum to %lld, threads and handlers added %lld\n",
              static_cast<long long>(b.slot_sum()), static_cast<long long>(tallies()));
  CHECK(b.slot_sum() == tallies());
  report(r);
  the_block = nullptr;
}

// ---- items: push, pop and the batch moves conserve every item ---------------

namespace {

void* item_of(std::uintptr_t i) {
  return reinterpret_cast<void*>(i << 4);
}

// Takes up to n items from this CPU (pop or pop_batch) and puts them back
// on whatever CPU the thread is on then (push or push_batch); `hop` moves
// the thread to another CPU in between.
void move_items(std::uint64_t i, std::size_t n, unsigned hop = ~0u) {
  block& b = *the_block;
  const std::uint32_t* stop0 = b.stop0();
  static const std::uint64_t zero = 0;
  void* held[4];
  std::size_t k = 0;
  if (i % 2 == 0) {
    CHECK(run(stop0, [&] { return rs::pop_batch(b.arr0(), stop0, held, n, &k); }) ==
          status::committed);
  } else {
    k = run(stop0, [&] { return rs::pop(b.arr0(), stop0, held); }) == status::committed ? 1 : 0;
  }
  if (k == 0) return;
  if (hop != ~0u) pin(hop);
  if (k > 1 || i % 4 < 2) {
    std::size_t moved = 0;
    CHECK(run(stop0, [&] { return rs::push_batch(b.arr0(), stop0, held, k, &moved, &zero, 0); }) ==
          status::committed);
    CHECK(moved == k);
  } else {
    CHECK(run(stop0, [&] { return rs::push(b.arr0(), stop0, held[0], &zero, 0); }) ==
          status::committed);
  }
}

}  // namespace

void storm_items() {
  block b;
  the_block = &b;
  const std::uintptr_t n = 64;
  for (std::uintptr_t i = 0; i < n; ++i) b.on(0)->items[i] = item_of(i + 1);
  b.on(0)->array.count = n;
  static std::vector<unsigned> cpus;
  cpus = allowed_cpus();
  storm_result r = storm(
      [](unsigned w, std::uint64_t i) {
        // Every 1024th move carries its items to another CPU.
        move_items(i, 1 + i % 4, i % 1024 == 0 ? cpus[(w + i / 1024) % cpus.size()] : ~0u);
      },
      [](unsigned) {
        static thread_local std::uint64_t k = 0;
        move_items(k++, 2);
      },
      nullptr);
  std::vector<std::uintptr_t> seen;
  unsigned holding = 0;
  for (unsigned c = 0; c < b.slots; ++c) {
    cpu_array& a = b.on(c)->array;
    holding += a.count != 0 ? 1 : 0;
    for (std::uint32_t j = 0; j < a.count; ++j) {
      seen.push_back(reinterpret_cast<std::uintptr_t>(a.items[j]) >> 4);
    }
  }
  std::sort(seen.begin(), seen.end());
  bool exact = seen.size() == n;
  for (std::uintptr_t i = 0; exact && i < n; ++i) exact = seen[i] == i + 1;
  std::printf("items: %zu of %zu items found, each once: %s (spread over %u CPUs)\n", seen.size(),
              static_cast<std::size_t>(n), exact ? "yes" : "no", holding);
  CHECK(exact);
  report(r);
  the_block = nullptr;
}

// ---- stopping CPUs, as stop_state does -----------------------------------------

namespace {

// The membarrier rseq fence of one CPU (cpu >= 0) or of all.
void fence(int cpu) {
  for (;;) {
    long rc = cpu >= 0 ? syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
                                 MEMBARRIER_CMD_FLAG_CPU, cpu)
                       : syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0);
    if (rc == 0) return;
    if (errno != EINTR && errno != EAGAIN) {
      CHECK(rc == 0);
      return;
    }
  }
}

// Sets the stop words of `cpus` (acquire), then fences them: one CPU, or
// all with one broadcast fence.  The only stopper, so the words are clear.
void stop_cpus(const std::vector<unsigned>& cpus) {
  for (unsigned c : cpus) {
    std::uint32_t expected = 0;
    CHECK(std::atomic_ref<std::uint32_t>(the_block->on(c)->stop)
              .compare_exchange_strong(expected, 1, std::memory_order_acquire));
  }
  fence(cpus.size() == 1 ? static_cast<int>(cpus[0]) : -1);
}

void start_cpus(const std::vector<unsigned>& cpus) {
  for (unsigned c : cpus) {
    std::atomic_ref<std::uint32_t>(the_block->on(c)->stop).store(0, std::memory_order_release);
  }
}

}  // namespace

// ---- records: push_record under the storm, drained as batch_queue drains --------

namespace {

// Writers: worker w is writer w, its signal handler writer max_workers + w.
constexpr unsigned writers = 2 * max_workers;
std::atomic<std::uint64_t> next_seq[writers];
// Taken by the drainer: each writer's sequence numbers, and per CPU the
// last one taken of each writer.
std::vector<std::uint64_t> taken[writers];
std::vector<std::vector<std::int64_t>> last_taken;
std::atomic<std::uint64_t> bad_records{0};
std::atomic<std::uint64_t> drains{0};

unsigned scoreboard_bit(std::uint64_t key) {
  return static_cast<unsigned>((key * 0x9e3779b97f4a7c15ull) >> 55);
}

// Appends writer's next record on the CPU it runs on; `cpu` is its guess,
// corrected by every "moved" failure as batch_queue does.  A full buffer
// waits for the drainer, or gives up when the storm ends (the drainer has
// gone; next_seq counts only what was pushed).
void push_one(unsigned writer, unsigned& cpu) {
  block& b = *the_block;
  const std::uint32_t* stop0 = b.stop0();
  std::uint64_t seq = next_seq[writer].load(std::memory_order_relaxed);
  std::uint64_t key = (std::uint64_t{writer} << 32) | seq;
  const std::uint64_t record[record_words] = {key, ~key};
  unsigned bit = scoreboard_bit(key);
  std::size_t offset = offsetof(record_array, scoreboard) + std::size_t{bit / 64} * 8;
  for (;;) {
    unsigned where = ~0u;
    status st = run(stop0, [&] {
      return rs::push_record<record_words>(b.rec0(), stop0, cpu, record, offset,
                                           std::uint64_t{1} << (bit % 64), &where);
    });
    if (st == status::committed) break;
    if (where == cpu) {  // full
      if (storm_ending.load(std::memory_order_relaxed)) return;
      sched_yield();
    }
    cpu = where;
  }
  next_seq[writer].store(seq + 1, std::memory_order_relaxed);
}

// With CPU c stopped (or no writer left): takes its records, each intact,
// with its scoreboard bit, and in order per writer on this CPU across all
// drains; then clears count and scoreboard.
void drain_stopped(unsigned c) {
  record_array& r = the_block->on(c)->records;
  for (std::uint32_t j = 0; j < r.count; ++j) {
    std::uint64_t key = r.records[j * record_words];
    auto writer = static_cast<unsigned>(key >> 32);
    auto seq = static_cast<std::int64_t>(key & 0xffffffff);
    unsigned bit = scoreboard_bit(key);
    bool ok = r.records[j * record_words + 1] == ~key && writer < writers &&
              seq > last_taken[c][writer] && (r.scoreboard[bit / 64] >> (bit % 64) & 1) != 0;
    if (!ok) {
      bad_records.fetch_add(1);
      continue;
    }
    last_taken[c][writer] = seq;
    taken[writer].push_back(static_cast<std::uint64_t>(seq));
  }
  std::atomic_ref<std::uint32_t>(r.count).store(0, std::memory_order_relaxed);
  for (std::uint64_t& word : r.scoreboard) {
    std::atomic_ref<std::uint64_t>(word).store(0, std::memory_order_relaxed);
  }
  drains.fetch_add(1);
}

void drainer(const std::atomic<bool>& stop) {
  for (unsigned k = 0; !stop.load(std::memory_order_relaxed); ++k) {
    std::vector<unsigned> cpus{k % the_block->slots};
    stop_cpus(cpus);
    drain_stopped(cpus[0]);
    start_cpus(cpus);
  }
}

// Every writer's records 0 .. next_seq - 1 taken exactly once.
bool all_taken_once() {
  for (unsigned w = 0; w < writers; ++w) {
    std::sort(taken[w].begin(), taken[w].end());
    if (taken[w].size() != next_seq[w].load()) return false;
    for (std::uint64_t s = 0; s < taken[w].size(); ++s) {
      if (taken[w][s] != s) return false;
    }
  }
  return true;
}

}  // namespace

void storm_records() {
  block b;
  the_block = &b;
  for (unsigned w = 0; w < writers; ++w) {
    next_seq[w] = 0;
    taken[w].clear();
  }
  last_taken.assign(b.slots, std::vector<std::int64_t>(writers, -1));
  bad_records = 0;
  drains = 0;
  storm_result r = storm(
      [](unsigned w, std::uint64_t) {
        static thread_local unsigned cpu = 0;
        push_one(w, cpu);
      },
      [](unsigned w) {
        static thread_local unsigned cpu = 0;
        push_one(max_workers + w, cpu);
      },
      drainer);
  for (unsigned c = 0; c < b.slots; ++c) drain_stopped(c);  // the writers are gone
  std::uint64_t total = 0;
  for (auto& s : next_seq) total += s.load();
  bool exact = all_taken_once();
  std::printf(
      "records: %llu records in %llu drains, each taken once, intact, with its scoreboard\n"
      "  bit, in order per writer on each CPU: %s\n",
      static_cast<unsigned long long>(total), static_cast<unsigned long long>(drains.load()),
      exact && bad_records.load() == 0 ? "yes" : "no");
  CHECK(bad_records.load() == 0);
  CHECK(exact);
  report(r);
  the_block = nullptr;
}

// ---- the stop protocol: stop, fence, visit, start ----------------------------

namespace {

std::atomic<std::int64_t> moved_away{0};
std::atomic<std::uint64_t> visits{0};
std::atomic<std::uint64_t> commits_while_stopped{0};

// With `cpus` stopped and fenced: their slots must not change while the
// visitor yields to whoever wants to run; then their values move away.
void visit(const std::vector<unsigned>& cpus) {
  block& b = *the_block;
  std::vector<std::int64_t> first;
  first.reserve(cpus.size());
  for (unsigned c : cpus) first.push_back(std::atomic_ref<std::int64_t>(b.on(c)->slot).load());
  for (int k = 0; k < 8; ++k) {
    sched_yield();
    for (std::size_t j = 0; j < cpus.size(); ++j) {
      if (std::atomic_ref<std::int64_t>(b.on(cpus[j])->slot).load() != first[j]) {
        commits_while_stopped.fetch_add(1);
      }
    }
  }
  for (std::size_t j = 0; j < cpus.size(); ++j) {
    moved_away.fetch_add(first[j]);
    std::atomic_ref<std::int64_t>(b.on(cpus[j])->slot).store(0, std::memory_order_relaxed);
  }
  visits.fetch_add(1);
}

// One CPU at a time, and every eighth time all CPUs with one broadcast fence.
void visitor(const std::atomic<bool>& stop) {
  block& b = *the_block;
  for (unsigned k = 0; !stop.load(std::memory_order_relaxed); ++k) {
    std::vector<unsigned> cpus;
    if (k % 8 == 7) {
      for (unsigned c = 0; c < b.slots; ++c) cpus.push_back(c);
    } else {
      cpus.push_back(k % b.slots);
    }
    stop_cpus(cpus);
    visit(cpus);
    start_cpus(cpus);
  }
}

}  // namespace

void storm_stop_protocol() {
  block b;
  the_block = &b;
  reset_tallies();
  moved_away = 0;
  visits = 0;
  commits_while_stopped = 0;
  storm_result r = storm([](unsigned w, std::uint64_t i) { add_one_way(w, i, 1, added[w]); },
                         [](unsigned w) {
                           static thread_local std::uint64_t n = 0;
                           add_one_way(w, n++, 1000, added_by_handlers[w]);
                         },
                         visitor);
  std::int64_t found = b.slot_sum() + moved_away.load();
  std::printf(
      "stop protocol: %llu visits, %llu commits seen on a stopped CPU; slots + moved\n"
      "  = %lld, threads and handlers added %lld\n",
      static_cast<unsigned long long>(visits.load()),
      static_cast<unsigned long long>(commits_while_stopped.load()), static_cast<long long>(found),
      static_cast<long long>(tallies()));
  CHECK(commits_while_stopped.load() == 0);
  CHECK(found == tallies());
  CHECK(visits.load() > 0);
  report(r);
  the_block = nullptr;
}

}  // namespace archtest
