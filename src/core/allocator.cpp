// allocator.cpp - the per-CPU chunk allocator behind storage.hpp.
//
// Problem: hand out per-CPU memory whose copies are found with one shift from
// the CPU number, never move, and cost nothing on CPUs that never touch them,
// while staying consistent when the system runs out of address space.
//
// Mechanism: a chunk is one mmap(MAP_NORESERVE) reservation of
// slots * unit_size bytes, aligned to unit_size; CPU c's unit starts at
// base + c * unit_size.  Allocations are offsets in the unit, handed out by
// first fit from a free list (coalesced on free), or from the never-used
// space above the chunk's high-water mark.  Never-used space is still the
// kernel's zero pages; reused space is zeroed in every slot that wrote it
// when handed out again.  Chunks are never backed by transparent huge pages,
// and on a machine of several NUMA nodes each CPU's unit prefers that CPU's
// node (add_chunk).
// Chunks are never unmapped, so no address ever becomes invalid
// behind a reader's back.  One mutex guards the bookkeeping: allocation is
// not a fast path.
#include <linux/mempolicy.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/process_wide.hpp"
#include "percpu/core/detail/alloc.hpp"
#include "percpu/runtime/cpu.hpp"
#include "percpu/runtime/detail/runtime.hpp"
#include "percpu/runtime/error.hpp"
#include "runtime/runtime_internal.hpp"

namespace percpu::detail {

namespace {

struct chunk {
  std::uintptr_t base = 0;                         // CPU 0's unit
  std::size_t high_water = 0;                      // above: never handed out, still zero
  std::map<std::size_t, std::size_t> free_ranges;  // offset -> size, below high_water
};

struct live_allocation {
  chunk* owner;
  std::size_t offset;
  std::size_t size;
};

// The allocator's bookkeeping, under its lock: process-wide, built on first
// use and never destroyed (a user's object at namespace scope allocates
// from its static initialiser, which may run before this file's, and frees
// from a destructor that may run after it), and its lock held across fork()
// (see core/process_wide.hpp).
struct allocator_state : held_across_fork {
  std::vector<std::unique_ptr<chunk>> chunks;
  std::map<std::uintptr_t, live_allocation> live;  // CPU-0 address -> allocation
  bool placed = false;                             // unit_nodes found (on the first chunk)
  std::vector<int> unit_nodes;                     // per slot: its CPU's node; empty: no placement
};

// Where each slot's unit should live: its CPU's NUMA node, when slots are
// CPUs (rseq backend, CPU mode) and the machine has more than one node.  An
// mm_cid slot has no node (its id moves with its threads), nor has a slot
// of the portable backend; one node needs nothing.
std::vector<int> find_unit_nodes() {
  std::vector<int> nodes;
  if (!slots_are_cpus()) return nodes;
  if (numa_nodes().size() < 2) return nodes;
  nodes.resize(runtime.slots, -1);
  for (unsigned cpu = 0; cpu < runtime.slots; ++cpu) nodes[cpu] = numa_node_of(cpu);
  return nodes;
}

// Asks the kernel to back each slot's unit of the chunk at `base` from its
// CPU's node (MPOL_PREFERRED: another node when that one is full), so that
// a copy lands there whichever thread touches it first - a constructor
// that builds every CPU's copy, a reuse that zeroes them.  Advice: a kernel
// without NUMA support, or a sandbox that refuses mbind, leaves the
// default (first touch), which is where the CPU's own sequences put it.
void place_units(std::uintptr_t base, const std::vector<int>& nodes) noexcept {
  constexpr unsigned long max_node = 1024;
  for (std::size_t slot = 0; slot < nodes.size(); ++slot) {
    int node = nodes[slot];
    if (node < 0 || static_cast<unsigned long>(node) >= max_node) continue;
    unsigned long mask[max_node / (8 * sizeof(unsigned long))] = {};
    mask[node / (8 * sizeof(unsigned long))] = 1UL << (node % (8 * sizeof(unsigned long)));
    syscall(SYS_mbind, base + (slot << unit_shift), unit_size, MPOL_PREFERRED, mask, max_node, 0);
  }
}

std::size_t align_up(std::size_t value, std::size_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

// Reserves a new chunk; throws percpu::error (errc::no_memory) when mmap
// fails.
chunk* add_chunk() {
  // Everything that can throw besides mmap happens first, so a failure
  // leaves no mapping behind.
  auto c = std::make_unique<chunk>();
  allocator_state& st = process_wide<allocator_state>();
  auto& chunks = st.chunks;
  chunks.reserve(chunks.size() + 1);
  if (!st.placed) {
    st.unit_nodes = find_unit_nodes();
    st.placed = true;
  }
  std::size_t bytes = static_cast<std::size_t>(runtime.slots) * unit_size;
  // Over-reserve by one unit so the chunk can start on a unit boundary
  // (allocations may ask for alignments up to unit_size).
  void* raw = mmap(nullptr, bytes + unit_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    int err = errno;
    char reason[128];
    throw error(errc::no_memory, "percpu: cannot reserve " +
                                     std::to_string((bytes + unit_size) >> 20) +
                                     " MiB of address space for a new per-CPU chunk (" +
                                     error_text(err, reason, sizeof reason) + ")");
  }
  auto start = reinterpret_cast<std::uintptr_t>(raw);
  std::uintptr_t base = align_up(start, unit_size);
  if (base != start) munmap(raw, base - start);
  std::uintptr_t end = start + bytes + unit_size;
  if (end != base + bytes) munmap(reinterpret_cast<void*>(base + bytes), end - (base + bytes));
  // No transparent huge pages: a chunk's units are unit_size (1 MiB) apart
  // and each CPU touches its own, so under THP `always` (RHEL's default,
  // and Debian's 6.12 cloud kernel's) every first touch of a unit was
  // backed by a 2 MiB page: 1 MiB of memory per CPU per chunk, most of it
  // for data no CPU uses (measured in a 64-CPU guest: 1000 counters, 64 MB
  // resident, against 968 KB with THP off).  Advice only: a kernel without
  // THP refuses it (EINVAL), and that is the behaviour asked for anyway.
  madvise(reinterpret_cast<void*>(base), bytes, MADV_NOHUGEPAGE);
  place_units(base, st.unit_nodes);
  c->base = base;
  chunks.push_back(std::move(c));
  return chunks.back().get();
}

// Finds room for (size, alignment) in `c`; returns the offset or unit_size.
std::size_t carve(chunk& c, std::size_t size, std::size_t alignment, bool& reused) {
  for (auto it = c.free_ranges.begin(); it != c.free_ranges.end(); ++it) {
    std::size_t start = align_up(it->first, alignment);
    std::size_t end = it->first + it->second;
    if (start + size > end) continue;
    std::size_t range_start = it->first;
    c.free_ranges.erase(it);
    if (start > range_start) c.free_ranges.emplace(range_start, start - range_start);
    if (start + size < end) c.free_ranges.emplace(start + size, end - (start + size));
    reused = true;
    return start;
  }
  std::size_t start = align_up(c.high_water, alignment);
  if (start + size > unit_size) return unit_size;
  if (start > c.high_water) c.free_ranges.emplace(c.high_water, start - c.high_water);
  c.high_water = start + size;
  reused = false;
  return start;
}

// Zeroes a reused range of one slot, unless it is zero already.  Most
// slots of a wide machine's chunk are never touched - the CPUs the process
// may not use, the ids beyond its parallelism in mm_cid mode - and reading
// such a range maps the kernel's shared zero page, which costs no memory,
// where writing it would allocate a page per slot (64 possible CPUs, 64
// pages per reuse).  The check reads the range once with memcmp against
// itself shifted by one byte: all bytes equal, and the first is zero.
void clear_unless_zero(unsigned char* p, std::size_t size) noexcept {
  if (p[0] == 0 && (size == 1 || std::memcmp(p, p + 1, size - 1) == 0)) return;
  std::memset(p, 0, size);
}

void release_range(chunk& c, std::size_t offset, std::size_t size) {
  auto next = c.free_ranges.lower_bound(offset);
  if (next != c.free_ranges.end() && offset + size == next->first) {
    size += next->second;
    next = c.free_ranges.erase(next);
  }
  if (next != c.free_ranges.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += size;
      return;
    }
  }
  c.free_ranges.emplace(offset, size);
}

}  // namespace

void* allocate_percpu(std::size_t size, std::size_t alignment) {
  if (size == 0) throw error(errc::invalid_argument, "percpu: allocation of size 0");
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    throw error(errc::invalid_argument,
                "percpu: alignment " + std::to_string(alignment) + " is not a power of two");
  }
  if (size > unit_size || alignment > unit_size) {
    throw error(errc::too_large, "percpu: allocation of " + std::to_string(size) +
                                     " bytes aligned to " + std::to_string(alignment) +
                                     " exceeds the per-CPU unit of " + std::to_string(unit_size) +
                                     " bytes");
  }
  ensure_started();
  allocator_state& st = process_wide<allocator_state>();
  std::lock_guard<std::mutex> lock(st.lock);
  chunk* owner = nullptr;
  std::size_t offset = unit_size;
  bool reused = false;
  for (auto& c : st.chunks) {
    offset = carve(*c, size, alignment, reused);
    if (offset != unit_size) {
      owner = c.get();
      break;
    }
  }
  if (owner == nullptr) {
    owner = add_chunk();  // may throw; nothing was changed yet
    offset = carve(*owner, size, alignment, reused);
  }
  std::uintptr_t p0 = owner->base + offset;
  if (reused) {
    for (unsigned cpu = 0; cpu < runtime.slots; ++cpu) {
      clear_unless_zero(
          reinterpret_cast<unsigned char*>(p0 + (static_cast<std::uintptr_t>(cpu) << unit_shift)),
          size);
    }
  }
  try {
    st.live.emplace(p0, live_allocation{owner, offset, size});
  } catch (...) {
    release_range(*owner, offset, size);  // give the range back, then report
    throw;
  }
  return reinterpret_cast<void*>(p0);
}

void free_percpu(void* p0) {
  if (p0 == nullptr) return;
  allocator_state& st = process_wide<allocator_state>();
  std::lock_guard<std::mutex> lock(st.lock);
  auto it = st.live.find(reinterpret_cast<std::uintptr_t>(p0));
  if (it == st.live.end()) {
    throw error(errc::invalid_argument,
                "percpu: free of a pointer that is not a live per-CPU allocation");
  }
  release_range(*it->second.owner, it->second.offset, it->second.size);
  st.live.erase(it);
}

}  // namespace percpu::detail
