// percpu/core/detail/block.hpp - a per-CPU block and its stop words, owned
// together: what every per-CPU structure of the library is built on.
//
// Problem: each structure (storage, a counter table, a big-reader lock's
// counts, a queue's buffers, a pool cache's arrays) needs the same two
// things - per-CPU memory whose copies the sequences change, and the stop
// words those sequences read before they commit, covering the same CPUs -
// created together, destroyed in the right order, and handed to the
// sequences as a pair.  Written out in each structure, the pair drifts
// apart: a count of slots kept twice, a free forgotten on one error path.
//
// Mechanism: cpu_block<T> owns a stop_state and a cpu_memory<T> (`count` T
// per CPU slot, zero on every CPU).  The stop words are built first and
// freed last.  data0() and stop_words() are what a sequence takes; stops()
// is the way into another CPU's part (stop.hpp).  The layout, stop words
// then the count then CPU 0's copy, is part of the fast paths' code: a
// counter's add loads both pointers from the structure at fixed offsets.
// The stop words in front of the data, in the same allocation (one member
// load instead of two), made counter.add and pool.get_put 5-10 % faster
// and slot.add 14-47 % slower: not adopted (docs/benchmarks.md, *Floors*).
#pragma once

#include <cstddef>
#include <cstdint>

#include "percpu/core/detail/alloc.hpp"
#include "percpu/core/stop.hpp"

namespace percpu::detail {

template <class T>
class cpu_block {
 public:
  // `count` T per CPU slot, aligned to `alignment`.  Starts the library if
  // needed.  Throws percpu::error: errc::configuration (start-up) and what
  // allocate_percpu throws.
  explicit cpu_block(std::size_t count = 1, std::size_t alignment = alignof(T))
      : memory_(count, alignment) {}
  cpu_block(const cpu_block&) = delete;
  cpu_block& operator=(const cpu_block&) = delete;

  // CPU 0's copy, and the stop words: what a sequence takes.
  T* data0() const noexcept { return memory_.data0(); }
  std::uint32_t* stop_words() const noexcept { return stops_.words(); }
  // CPU `cpu`'s copy; no range check.
  T* on(unsigned cpu) const noexcept { return memory_.on(cpu); }
  // T per CPU, and CPU slots (== cpu_count()).
  std::size_t count() const noexcept { return memory_.count(); }
  unsigned cpus() const noexcept { return stops_.size(); }

  stop_state& stops() noexcept { return stops_; }

 private:
  stop_state stops_;  // first: built before, freed after the memory
  cpu_memory<T> memory_;
};

}  // namespace percpu::detail
