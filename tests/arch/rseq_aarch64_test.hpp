// What the standalone aarch64 sequence tests share (rseq_aarch64_test.cpp).
#pragma once

#include <sched.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "percpu/runtime/detail/arch.hpp"

namespace archtest {

namespace rs = percpu::detail::arch;
using percpu::detail::unit_shift;
using percpu::detail::unit_size;
using rs::status;
using clock_type = std::chrono::steady_clock;

extern std::atomic<int> failures;
extern double storm_seconds;  // minimum length of each storm
// Counted by run(): aborts (kernel or injected), stopped exits, injections.
extern std::atomic<std::uint64_t> aborts_seen;
extern std::atomic<std::uint64_t> stops_seen;
extern std::atomic<std::uint64_t> injected;
// Aborts by the kernel (preemption, migration, signals) over all storms.
extern std::uint64_t kernel_aborts_in_storms;
// Fault injection (debug builds): each thread's every n-th sequence aborts
// (0: none).  Read when a thread rearms its countdown.
extern std::int32_t inject_every;

void check_failed(const char* file, int line, const char* what);
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) ::archtest::check_failed(__FILE__, __LINE__, #cond); \
  } while (0)

// The library's layouts (detail/sequences.hpp), which the sequences
// hard-code.
struct cpu_array {
  void** items;
  std::uint32_t count;
  std::uint32_t capacity;
};
static_assert(offsetof(cpu_array, count) == 8 && offsetof(cpu_array, capacity) == 12);
struct record_array {
  std::uint64_t* records;
  std::uint32_t count;
  std::uint32_t capacity;
  std::uint64_t scoreboard[8];
};
static_assert(offsetof(record_array, count) == 8 && offsetof(record_array, scoreboard) == 16);

// What each CPU's unit holds in these tests.
inline constexpr std::uint32_t max_items = 4096;
inline constexpr std::size_t record_words = 2;
inline constexpr std::uint32_t max_records = 32768;
struct cpu_unit {
  std::uint32_t stop;
  std::int64_t slot;
  cpu_array array;
  record_array records;
  void* items[max_items];
  std::uint64_t record_buffer[max_records * record_words];
};
static_assert(sizeof(cpu_unit) <= unit_size);

template <class T>
T* copy_on(T* p0, unsigned cpu) {
  return reinterpret_cast<T*>(reinterpret_cast<std::uintptr_t>(p0) +
                              (static_cast<std::uintptr_t>(cpu) << unit_shift));
}

// Per-CPU memory: one zeroed unit per possible CPU, each CPU's arrays
// pointing into its own unit.
struct block {
  block();
  ~block();
  block(const block&) = delete;
  block& operator=(const block&) = delete;
  cpu_unit* on(unsigned cpu) const { return copy_on(reinterpret_cast<cpu_unit*>(base), cpu); }
  std::uint32_t* stop0() const { return &on(0)->stop; }
  std::int64_t* slot0() const { return &on(0)->slot; }
  void* arr0() const { return &on(0)->array; }
  void* rec0() const { return &on(0)->records; }
  std::int64_t slot_sum() const;
  unsigned slots;
  char* base;
};

// The CPUs the program was allowed at start; pin to one, or back to all.
std::vector<unsigned> allowed_cpus();
bool pin(unsigned cpu);
void unpin();

void wait_while_stopped(const std::uint32_t* stop0);
void note_abort();
const char* name(status st);
double seconds_since(clock_type::time_point start);

// Runs attempt() until it neither aborts nor finds the CPU stopped; what the
// retry paths of the library's sequences.hpp do.  Async-signal-safe.
template <class F>
status run(const std::uint32_t* stop0, F&& attempt) {
  for (;;) {
    status st = attempt();
    if (st == status::aborted) {
      note_abort();
    } else if (st == status::stopped) {
      stops_seen.fetch_add(1, std::memory_order_relaxed);
      wait_while_stopped(stop0);
    } else {
      return st;
    }
  }
}

// Runs attempt() again while the kernel aborts it; returns the first other
// status (for checks of the exits themselves, which run() would wait out).
template <class F>
status retry_aborts(F&& attempt) {
  status st;
  do {
    st = attempt();
  } while (st == status::aborted);
  return st;
}

// rseq_aarch64_checks.cpp
bool check_environment();
void check_descriptors();
void check_cpu_id();
void check_operations();
void check_stopped_exits();
void check_unregistered();
void check_fault_injection();
// rseq_aarch64_storms.cpp
void storm_adds();
void storm_items();
void storm_records();
void storm_stop_protocol();

}  // namespace archtest
