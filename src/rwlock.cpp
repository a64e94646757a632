// rwlock.cpp - the writer side and the slow paths of percpu::rwlock.
//
// The protocol (see rwlock.hpp for the mechanism), each barrier with its pair:
//
//  1. Biased, reader fast path against a revoking writer.  Reader: the add to
//     "in" tests its CPU's gate inside the restartable sequence.  Writer: sets
//     the writer bit, closes every gate, one broadcast membarrier fence
//     (gates_.stop_all()), then reads the counts.  The fence aborts every
//     sequence running and fences every CPU: a reader's add either committed
//     before it (the writer counts the reader) or runs after it and sees the
//     gate closed (the reader takes the slow path).  This is the stop/fence
//     protocol of stop.hpp, modelled in verify/stop_fence_visit.pml.  The
//     same holds for unlock_shared()'s add to "out": a reader that leaves
//     after the fence takes the slow path, which looks for a sleeping writer.
//  2. Revoked, reader slow path against a writer.  Reader: adds 1 to
//     slow_in, full_barrier(), reads state_.  Writer: sets the writer bit
//     with a seq_cst read-modify-write, full_barrier_after_rmw(), reads the
//     counts.  A fence on each side (store, fence, load against store,
//     fence, load): the writer counts the reader, or the reader sees the bit
//     and backs out.
//  3. A writer's bias check and the re-arm.  Both change state_ by
//     read-modify-writes only, and a re-arm requires the writer bit clear and
//     the write count unchanged since the quiet period began.  So a writer
//     that finds the revoked bit set knows that no gate has opened since that
//     bit was set by a writer whose fence covered every reader up to then;
//     a writer that finds it clear revokes, with the fence of 1.  The
//     re-arming reader holds the re-arming bit while it opens the gates, and
//     writers wait for it: a writer never closes gates that a re-arm is
//     still opening.  Readers do not wait for it (a reader in a signal
//     handler may have interrupted the re-arm of its own thread): they take
//     the slow path of 2, which is correct in either mode.
//  4. Reader leaving on the slow path against a sleeping writer.  Reader:
//     adds 1 to slow_out, light_barrier(), reads writer_sleeping_, and if
//     set bumps drained_ and wakes the writer.  Writer, before it sleeps:
//     sets writer_sleeping_, heavy_barrier(), then reads drained_ and the
//     counts, and sleeps only while drained_ still holds what it read.  The
//     heavy barrier (a membarrier with the rseq backend, where the reader's
//     light barrier is a compiler barrier) makes either the reader's count
//     visible to the writer or writer_sleeping_ visible to the reader.  A
//     writer that has not slept yet spins on the counts and needs no wake-up.
//  5. Sleepers on state_ (readers waiting for a writer to leave, writers
//     waiting for the writer bit): they count themselves in sleepers_
//     (seq_cst), re-read state_ and sleep while it holds what they read;
//     whoever changes state_ so that they may proceed does it with a seq_cst
//     read-modify-write and then reads sleepers_.
//  6. Writer leaving: clears the writer bit and counts the write with a
//     release read-modify-write, pairing with the readers' acquire of the
//     gate (through the re-arm, whose read-modify-write acquires it) or of
//     state_ (slow path).
#include "percpu/rwlock.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "percpu/runtime/detail/fence.hpp"
#include "percpu/runtime/detail/futex.hpp"
#include "percpu/runtime/detail/runtime.hpp"
#include "percpu/runtime/error.hpp"
#include "runtime/runtime_internal.hpp"

namespace percpu {

namespace {

// The bias is re-armed once no write has come for this long.  A revocation
// costs one membarrier (a few microseconds, tens when other CPUs run the
// process's threads); a reader on the slow path pays a full fence.  A
// millisecond keeps a writer that writes more rarely than that at a few
// percent of its time in revocations, and readers after a burst on the slow
// path for about that long.
constexpr std::int64_t quiet_ns = 1'000'000;

// Slow-path read sections per thread between two looks at the clock.
constexpr unsigned rearm_check_every = 64;

// Steps of relax() (pause, then yield) a writer or a reader spins before it
// sleeps: read and write sections are usually far shorter than a sleep.
constexpr unsigned spin_steps = 100;

// This thread's slow-path read sections, for the clock sampling.  Initial-exec
// TLS without a constructor: async-signal-safe, nothing to register.
thread_local unsigned slow_reads __attribute__((tls_model("initial-exec"))) = 0;

// Identity of the calling thread, for the owner checks.
const void* this_thread_id() noexcept {
  static thread_local char marker;
  return &marker;
}

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
  // Acquire: pairs with the release of a reader's "out" add
  // (seq::add_release: stlr on aarch64, any store on x86-64, a release
  // store in the portable backend), so a reader's section happens before a
  // writer that saw it leave.
  return std::atomic_ref<const std::int64_t>(*p).load(std::memory_order_acquire);
}

}  // namespace

rwlock::rwlock() : counts_(4, 64) {}

rwlock::~rwlock() = default;

bool rwlock::readers_inside() const noexcept {
  std::int64_t out = 0;
  std::int64_t in = 0;
  unsigned cpus = gates_.size();
  // All "out" counts, then all "in" counts (see rwlock.hpp).
  for (unsigned cpu = 0; cpu < cpus; ++cpu) {
    out += load_count(counts_.on(cpu) + out_index);
    out += load_count(counts_.on(cpu) + slow_out_index);
  }
  for (unsigned cpu = 0; cpu < cpus; ++cpu) {
    in += load_count(counts_.on(cpu) + in_index);
    in += load_count(counts_.on(cpu) + slow_in_index);
  }
  return in != out;
}

// ---- Readers ----

void rwlock::lock_shared_slow() noexcept {
  enter_slow(true);
}

bool rwlock::try_lock_shared_slow() noexcept {
  return enter_slow(false);
}

// The reader's path while its CPU's gate is closed: protocol step 2.
bool rwlock::enter_slow(bool wait) noexcept {
  for (;;) {
    std::uint32_t s = state_.load(std::memory_order_acquire);
    if ((s & writer_bit) == 0) {
      detail::seq::add(counts_.data0() + slow_in_index, counts_.stop_words(), 1);
      detail::full_barrier();  // pairs with lock()'s full_barrier_after_rmw()
      // Acquire: pairs with unlock()'s release (step 6).
      s = state_.load(std::memory_order_acquire);
      if ((s & writer_bit) == 0) [[likely]] {
        if (++slow_reads % rearm_check_every == 0) consider_rearm(s);
        return true;
      }
      unlock_shared_slow();  // back out: the writer may wait for this very count
    }
    if (!wait) return false;
    wait_for_writer();
    // The gate may have opened meanwhile.
    if (detail::seq::try_add(counts_.data0() + in_index, gates_.words(), 1)) return true;
  }
}

// Step 4, the reader's side.
void rwlock::unlock_shared_slow() noexcept {
  // Release, as unlock_shared()'s fast add: pairs with load_count().
  detail::seq::add_release(counts_.data0() + slow_out_index, counts_.stop_words(), 1);
  detail::light_barrier();  // pairs with wait_for_readers()'s heavy barrier
  if (writer_sleeping_.load(std::memory_order_relaxed) != 0) {
    drained_.fetch_add(1, std::memory_order_release);
    detail::futex_wake_all(drained_);
  }
}

// Waits until the writer bit is clear: spins, then sleeps (step 5).
void rwlock::wait_for_writer() noexcept {
  for (unsigned spins = 0;; ++spins) {
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    if ((s & writer_bit) == 0) return;
    if (spins < spin_steps) {
      detail::relax(spins);
    } else {
      sleep_on_state(s);
    }
  }
}

// Step 3: re-arms the bias if no write came for quiet_ns.  `seen` is the
// state_ this slow-path reader read after its fence (revoked, no writer).
// quiet_ holds the write count a reader last saw in its upper half and, in
// the lower, when it first saw it (microseconds, modulo 2^32: a difference
// of less than 71 minutes is exact, a larger one errs towards re-arming,
// which is always safe, only costly for the next writer).
void rwlock::consider_rearm(std::uint32_t seen) noexcept {
  if ((seen & (revoked_bit | rearming_bit)) != revoked_bit) return;
  auto now_us = static_cast<std::uint32_t>(detail::now_ns() / 1000);
  std::uint64_t writes = seen / write_one;
  std::uint64_t watched = quiet_.load(std::memory_order_relaxed);
  if (watched >> 32 != writes) {
    quiet_.store(writes << 32 | now_us, std::memory_order_relaxed);
    return;
  }
  if (now_us - static_cast<std::uint32_t>(watched) < quiet_ns / 1000) return;
  // Fails if a writer or another re-arm came, or a write section ended, since
  // `seen`: writes kept coming, or someone else is at it.
  std::uint32_t expected = seen;
  if (!state_.compare_exchange_strong(expected, seen | rearming_bit, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
    return;
  }
  gates_.start_all();  // release: the gates open after everything before
  state_.fetch_and(~(revoked_bit | rearming_bit), std::memory_order_seq_cst);
  wake_sleepers();
}

// ---- Writers ----

void rwlock::wake_sleepers() noexcept {
  // After a seq_cst read-modify-write of state_ (step 5).
  if (sleepers_.load(std::memory_order_seq_cst) != 0) detail::futex_wake_all(state_);
}

void rwlock::sleep_on_state(std::uint32_t seen) noexcept {
  sleepers_.fetch_add(1, std::memory_order_seq_cst);
  if (state_.load(std::memory_order_seq_cst) == seen) detail::futex_wait(state_, seen);
  sleepers_.fetch_sub(1, std::memory_order_relaxed);
}

// Sets the writer and revoked bits once neither a writer nor a re-arm holds
// state_; returns state_ as it was just before.
std::uint32_t rwlock::take_writer_bit() noexcept {
  for (unsigned spins = 0;; ++spins) {
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    if ((s & (writer_bit | rearming_bit)) == 0) {
      if (state_.compare_exchange_weak(s, s | writer_bit | revoked_bit, std::memory_order_seq_cst,
                                       std::memory_order_relaxed)) {
        return s;
      }
    } else if (spins < spin_steps) {
      detail::relax(spins);
    } else {
      sleep_on_state(s);
    }
  }
}

// Waits until no reader is inside: spins on the counts, then sleeps (step 4).
void rwlock::wait_for_readers() noexcept {
  for (unsigned spins = 0; spins < spin_steps; ++spins) {
    if (!readers_inside()) return;
    detail::relax(spins);
  }
  writer_sleeping_.store(1, std::memory_order_seq_cst);
  detail::heavy_barrier();  // pairs with unlock_shared_slow()'s light barrier
  for (;;) {
    std::uint32_t seen = drained_.load(std::memory_order_acquire);
    if (!readers_inside()) break;
    detail::futex_wait(drained_, seen);
  }
  writer_sleeping_.store(0, std::memory_order_relaxed);
}

void rwlock::lock() {
  if (owner_.load(std::memory_order_relaxed) == this_thread_id()) {
    refuse(errc::would_deadlock,
           "lock: the calling thread already holds the write lock (recursive write lock)");
  }
  if (holds_shared()) {
    refuse(errc::would_deadlock, "lock: the calling thread holds a read lock on the same rwlock");
  }
  std::uint32_t before = take_writer_bit();
  detail::full_barrier_after_rmw();  // step 2: pairs with enter_slow()'s full_barrier()
  if ((before & revoked_bit) == 0) gates_.stop_all();  // step 1: revoke the bias
  wait_for_readers();
  owner_.store(this_thread_id(), std::memory_order_relaxed);
}

bool rwlock::try_lock() {
  if (owner_.load(std::memory_order_relaxed) == this_thread_id()) {
    refuse(errc::would_deadlock, "try_lock: the calling thread already holds the write lock");
  }
  std::uint32_t before = state_.load(std::memory_order_relaxed);
  if ((before & (writer_bit | rearming_bit)) != 0) return false;
  if (!state_.compare_exchange_strong(before, before | writer_bit | revoked_bit,
                                      std::memory_order_seq_cst, std::memory_order_relaxed)) {
    return false;
  }
  detail::full_barrier_after_rmw();
  if ((before & revoked_bit) == 0) gates_.stop_all();
  if (readers_inside()) {
    // The bias stays revoked (the gates are closed); only the bit goes.
    state_.fetch_sub(writer_bit, std::memory_order_seq_cst);
    wake_sleepers();
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
  // Clears the writer bit (set: the sum carries out of it) and counts the
  // write.  Release: step 6.
  state_.fetch_add(write_one - writer_bit, std::memory_order_seq_cst);
  wake_sleepers();
}

// ---- Debug tracking ----

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
