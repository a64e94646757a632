// rwlock.cpp - the writer side and the slow paths of percpu::rwlock.
//
// Ordering (see rwlock.hpp for the protocol):
//  - reader: count in (+1 "in"), light barrier, read the writer flag;
//    writer: raise the flag, heavy barrier, read the counts.  After the heavy
//    barrier either the reader's count is visible to the writer, or the
//    reader's read of the flag sees it raised (it then backs out).
//  - reader leaving: +1 "out", light barrier, read the flag; if raised, bump
//    `drained_` and wake the writer.  The writer reads `drained_` before it
//    sums the counts and sleeps only while `drained_` still holds that value,
//    so a reader leaving after the sum always wakes it.
//  - writer leaving: drop the flag with release (pairs with the readers'
//    acquire read of it), then wake sleeping readers.
#include "percpu/rwlock.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/futex.hpp"
#include "percpu/runtime/detail/runtime.hpp"
#include "percpu/runtime/error.hpp"

namespace percpu {

namespace {

// Identity of the calling thread, for the owner checks.
const void* this_thread_id() noexcept {
  static thread_local char marker;
  return &marker;
}

// A read-side misuse, caught only in builds with PERCPU_RWLOCK_CHECKS: the
// read side is noexcept and async-signal-safe, so it stops the program.
[[noreturn]] void misuse(const char* what) noexcept {
  std::fprintf(stderr, "percpu::rwlock misuse: %s\n", what);
  std::abort();
}

// A write-side misuse: the call would wait for itself, or releases what
// this thread does not hold.
[[noreturn]] void refuse(errc code, const char* what) {
  throw error(code, std::string("percpu::rwlock::") + what);
}

// Read locks held by this thread, per lock (filled only by callers built
// with PERCPU_RWLOCK_CHECKS).  A small table: nesting more than 16 distinct
// locks stops the tracking of the extra ones, never reports falsely.
struct shared_hold {
  const rwlock* lock;
  int count;
};
constexpr int tracked_locks = 16;
thread_local shared_hold held[tracked_locks] = {};
thread_local int untracked_holds = 0;  // holds that found the table full

std::int64_t load_count(const std::int64_t* p) noexcept {
  // Acquire: pairs with the reader's release of its "out" count (portable
  // backend; with rseq, x86-64 loads are acquire), so a reader's section
  // happens before a writer that saw it leave.
  return std::atomic_ref<const std::int64_t>(*p).load(std::memory_order_acquire);
}

}  // namespace

rwlock::rwlock() : counts_(2, 64) {}

rwlock::~rwlock() = default;

bool rwlock::readers_inside() const noexcept {
  std::int64_t out = 0;
  std::int64_t in = 0;
  unsigned cpus = counts_.cpus();
  // All "out" counts, then all "in" counts (see rwlock.hpp).
  for (unsigned cpu = 0; cpu < cpus; ++cpu) out += load_count(counts_.on(cpu) + out_index);
  for (unsigned cpu = 0; cpu < cpus; ++cpu) in += load_count(counts_.on(cpu) + in_index);
  return in != out;
}

void rwlock::back_out() noexcept {
  detail::seq::add(counts_.data0() + out_index, counts_.stop_words(), 1);
  detail::light_barrier();
  wake_writer();  // the writer may be waiting for this very count
}

void rwlock::wait_for_writer() noexcept {
  // Announce the sleep before checking the flag (seq_cst on both sides,
  // paired with unlock(): it drops the flag, then looks for sleepers).
  sleeping_readers_.fetch_add(1, std::memory_order_seq_cst);
  while (writer_.load(std::memory_order_seq_cst) != 0) detail::futex_wait(writer_, 1);
  sleeping_readers_.fetch_sub(1, std::memory_order_relaxed);
}

void rwlock::wake_writer() noexcept {
  drained_.fetch_add(1, std::memory_order_release);
  detail::futex_wake_all(drained_);
}

void rwlock::lock() {
  if (owner_.load(std::memory_order_relaxed) == this_thread_id()) {
    refuse(errc::would_deadlock,
           "lock: the calling thread already holds the write lock (recursive write lock)");
  }
  if (holds_shared()) {
    refuse(errc::would_deadlock, "lock: the calling thread holds a read lock on the same rwlock");
  }
  writers_.lock();
  writer_.store(1, std::memory_order_seq_cst);
  detail::heavy_barrier();  // pairs with the readers' light barriers
  for (;;) {
    std::uint32_t seen = drained_.load(std::memory_order_acquire);
    if (!readers_inside()) break;
    detail::futex_wait(drained_, seen);
  }
  owner_.store(this_thread_id(), std::memory_order_relaxed);
}

bool rwlock::try_lock() {
  if (owner_.load(std::memory_order_relaxed) == this_thread_id()) {
    refuse(errc::would_deadlock, "try_lock: the calling thread already holds the write lock");
  }
  if (!writers_.try_lock()) return false;
  writer_.store(1, std::memory_order_seq_cst);
  detail::heavy_barrier();
  if (readers_inside()) {
    writer_.store(0, std::memory_order_seq_cst);
    if (sleeping_readers_.load(std::memory_order_seq_cst) != 0) detail::futex_wake_all(writer_);
    writers_.unlock();
    return false;
  }
  owner_.store(this_thread_id(), std::memory_order_relaxed);
  return true;
}

void rwlock::unlock() {
  if (owner_.load(std::memory_order_relaxed) != this_thread_id()) {
    refuse(errc::not_owner, "unlock: the calling thread does not hold the write lock");
  }
  owner_.store(nullptr, std::memory_order_relaxed);
  // Release: pairs with the readers' acquire read of the flag.
  writer_.store(0, std::memory_order_seq_cst);
  if (sleeping_readers_.load(std::memory_order_seq_cst) != 0) detail::futex_wake_all(writer_);
  writers_.unlock();
}

void rwlock::track_shared(int delta) noexcept {
  shared_hold* free_entry = nullptr;
  for (auto& h : held) {
    if (h.lock == this) {
      h.count += delta;
      if (h.count < 0) misuse("unlock_shared() by a thread that holds no read lock on this rwlock");
      if (h.count == 0) h.lock = nullptr;
      return;
    }
    if (h.lock == nullptr && free_entry == nullptr) free_entry = &h;
  }
  if (delta < 0) {
    if (untracked_holds > 0) {
      --untracked_holds;
      return;
    }
    misuse("unlock_shared() by a thread that holds no read lock on this rwlock");
  }
  if (free_entry != nullptr) {
    *free_entry = {this, delta};
  } else {
    ++untracked_holds;
  }
}

bool rwlock::holds_shared() const noexcept {
  for (const auto& h : held) {
    if (h.lock == this && h.count > 0) return true;
  }
  return false;
}

}  // namespace percpu
