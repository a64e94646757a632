// slab.cpp - pool_cache's memory: slabs of object slots, magazine memory,
// and the destruction of objects whose slots go back to their slabs.
//
// A slab is an aligned block of slab_bytes carved into slots on demand; an
// object finds its slab by masking its address.  Magazines are carved from
// mapped chunks, never from malloc, so that the slow paths stay
// async-signal-safe.  Empty slabs go back to the system only in reclaim()
// and when the cache is destroyed.
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "pool_core.hpp"

namespace percpu::detail {

// ---- magazine memory --------------------------------------------------------

magazine* pool_core::alloc_magazine(unsigned size) noexcept {
  unsigned c = magazine_class(size);
  return locked(magazine_lock, [&]() -> magazine* {
    if (magazine* m = free_magazines[c]) {
      free_magazines[c] = m->next;
      return m;
    }
    // Whole cache lines: magazines filled by different CPUs at once (each
    // overflowing put fills its own) must not share one.
    std::size_t step =
        round_up(sizeof(magazine) + std::size_t{class_capacity(c)} * sizeof(void*), 64);
    if (chunks == nullptr || chunk_used + step > magazine_chunk_bytes) {
      void* chunk = mmap(nullptr, magazine_chunk_bytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (chunk == MAP_FAILED) return nullptr;
      std::memcpy(chunk, &chunks, sizeof(void*));
      chunks = chunk;
      ++chunk_count;
      chunk_used = 64;  // after the next chunk's address, on a line of its own
    }
    auto* m = reinterpret_cast<magazine*>(static_cast<char*>(chunks) + chunk_used);
    chunk_used += step;
    m->capacity = class_capacity(c);
    return m;
  });
}

void pool_core::free_magazine(magazine* m) noexcept {
  unsigned c = magazine_class(m->capacity - 1);
  locked(magazine_lock, [&] {
    m->next = free_magazines[c];
    free_magazines[c] = m;
  });
}

// Unmaps every magazine chunk (the cache's destructor).
void pool_core::release_magazine_memory() noexcept {
  while (void* chunk = chunks) {
    std::memcpy(&chunks, chunk, sizeof(void*));
    munmap(chunk, magazine_chunk_bytes);
  }
  chunk_count = 0;
}

// ---- slabs (slab_lock held) ---------------------------------------------

void pool_core::unlink(slab* s) noexcept {
  (s->prev != nullptr ? s->prev->next : slabs[s->list]) = s->next;
  if (s->next != nullptr) s->next->prev = s->prev;
}

void pool_core::link(slab* s, int list) noexcept {
  s->list = list;
  s->prev = nullptr;
  s->next = slabs[list];
  if (s->next != nullptr) s->next->prev = s;
  slabs[list] = s;
}

void pool_core::move(slab* s, int list) noexcept {
  if (s->list == list) return;
  unlink(s);
  link(s, list);
}

// Maps a slab aligned to its size (an object finds its slab by masking its
// address).  First right below the cache's last slab, and only if nothing
// is mapped there (MAP_FIXED_NOREPLACE; a kernel before 4.17 takes the flag
// for a hint, and what it maps elsewhere is given back): the kernel merges
// the two into one mapping.  Else twice the size, trimmed.  History: every
// slab was mapped the second way, and the trimmed gaps kept each one a
// mapping of its own: 123 mappings for 10^5 objects of 64 B, so a cache of
// about 4 GB would reach the kernel's default limit of 65530 mappings
// (vm.max_map_count), after which every mmap of the process fails, its
// malloc's and thread stacks' too.
//
// No transparent huge pages, as for per-CPU chunks (core/allocator.cpp): a
// run of merged slabs can span an aligned 2 MiB, and under THP `always` the
// first touch of one slab there would make 2 MiB resident.  The advice also
// keeps the runs mergeable (the same flags on every slab).
slab* pool_core::new_slab() noexcept {
  const std::size_t bytes = slab_bytes;
  std::uintptr_t base = 0;
  if (next_slab_at != 0) {
    void* want = reinterpret_cast<void*>(next_slab_at);
    void* m = mmap(want, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (m == want) {
      base = next_slab_at;
    } else if (m != MAP_FAILED) {
      munmap(m, bytes);
    }
  }
  if (base == 0) {
    void* m = mmap(nullptr, 2 * bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    auto start = reinterpret_cast<std::uintptr_t>(m);
    base = (start + bytes - 1) & ~(bytes - 1);
    if (base > start) munmap(m, base - start);
    std::uintptr_t end = start + 2 * bytes;
    if (end > base + bytes) munmap(reinterpret_cast<void*>(base + bytes), end - base - bytes);
  }
  madvise(reinterpret_cast<void*>(base), bytes, MADV_NOHUGEPAGE);
  next_slab_at = base > bytes ? base - bytes : 0;
  auto* s = reinterpret_cast<slab*>(base);
  *s = slab{};
  link(s, partially_used);
  ++slab_count;
  return s;
}

void* pool_core::take_slot() noexcept {
  if (magazine* m = unconstructed) {
    void* object = m->items()[--m->count];
    if (m->count == 0) {
      unconstructed = m->next;
      free_magazine(m);
    }
    return object;
  }
  slab* s = slabs[partially_used];
  if (s == nullptr) {
    s = slabs[unused];
    if (s != nullptr) move(s, partially_used);
  }
  if (s == nullptr) s = new_slab();
  if (s == nullptr) return nullptr;
  void* object;
  if (s->free_objects != nullptr) {
    object = s->free_objects;
    std::memcpy(&s->free_objects, object, sizeof(void*));
  } else {
    object = reinterpret_cast<char*>(s) + slots_offset + s->carved * slot_size + object_offset;
    ++s->carved;
  }
  if (++s->in_use == slots_per_slab) move(s, fully_used);
  return object;
}

// Whether `object` lies in one of this cache's slabs; `at_object_start`:
// exactly where an object begins.  Debug checks only, which may run in a
// signal handler: the slab lock is only tried (`busy`: it was taken), for
// the reason debug_stats.cpp's check_owner() gives.
pool_core::lookup pool_core::holds(void* object, bool& at_object_start) noexcept {
  auto address = reinterpret_cast<std::uintptr_t>(object);
  std::unique_lock g(slab_lock, std::try_to_lock);
  if (!g.owns_lock()) return lookup::busy;
  for (slab* list : slabs) {
    for (slab* s = list; s != nullptr; s = s->next) {
      auto base = reinterpret_cast<std::uintptr_t>(s);
      if (address < base + slots_offset || address >= base + slab_bytes) continue;
      std::uintptr_t offset = address - base - slots_offset;
      at_object_start = offset % slot_size == object_offset;
      return lookup::present;
    }
  }
  return lookup::absent;
}

void pool_core::release_slot(void* object) noexcept {
  header(object)->state = pool_object_state::free;
  slab* s = slab_of(object);
  std::memcpy(object, &s->free_objects, sizeof(void*));
  s->free_objects = object;
  --s->in_use;
  move(s, s->in_use == 0 ? unused : partially_used);
}

// Unmaps every unused slab; returns the bytes given back.  Neighbouring
// slabs go in one munmap: a slab unmapped from the middle of a run of merged
// slabs splits its mapping in two, which the kernel refuses (ENOMEM) at the
// process's limit of mappings; such a slab gives its memory back with
// MADV_DONTNEED instead and stays, unused, for the next object.
std::size_t pool_core::release_unused_slabs() noexcept {
  std::vector<slab*> victims;
  magazine* emptied = nullptr;
  locked(slab_lock, [&] {
    emptied = unconstructed;
    unconstructed = nullptr;
    for (magazine* m = emptied; m != nullptr; m = m->next) {
      for (std::uint32_t i = 0; i < m->count; ++i) release_slot(m->items()[i]);
    }
    while (slab* s = slabs[unused]) {
      unlink(s);
      --slab_count;
      victims.push_back(s);
    }
  });
  while (magazine* m = emptied) {
    emptied = m->next;
    free_magazine(m);
  }
  std::sort(victims.begin(), victims.end());
  std::vector<slab*> kept;
  for (std::size_t run = 0; run < victims.size();) {
    std::size_t end = run + 1;
    auto* next = reinterpret_cast<char*>(victims[run]) + slab_bytes;
    for (; end < victims.size() && reinterpret_cast<char*>(victims[end]) == next; ++end) {
      next += slab_bytes;
    }
    if (munmap(victims[run], (end - run) * slab_bytes) != 0) {
      madvise(victims[run], (end - run) * slab_bytes, MADV_DONTNEED);
      kept.insert(kept.end(), victims.begin() + static_cast<std::ptrdiff_t>(run),
                  victims.begin() + static_cast<std::ptrdiff_t>(end));
    }
    run = end;
  }
  if (!kept.empty()) {
    locked(slab_lock, [&] {
      for (slab* s : kept) {
        *s = slab{};  // zero pages again after MADV_DONTNEED: the header anew
        link(s, unused);
        ++slab_count;
      }
    });
  }
  return (victims.size() - kept.size()) * slab_bytes;
}

// ---- destruction ----------------------------------------------------------

// Runs the destructor of n objects (all at once when the cache has a
// batch destructor); the caller counts them and marks the callback scope.
void pool_core::call_destructors(void* const* objects, std::size_t n) const noexcept {
  const pool_options& o = cache.options_;
  if (o.destroy_batch != nullptr) {
    o.destroy_batch(objects, n, o.arg);
  } else if (o.destroy != nullptr) {
    for (std::size_t i = 0; i < n; ++i) o.destroy(objects[i], o.arg);
  }
}

void pool_core::run_destructors(void* const* objects, std::size_t n) noexcept {
  if (n == 0) return;
  {
    in_callback scope(&cache);
    call_destructors(objects, n);
  }
  destructions.fetch_add(n, std::memory_order_relaxed);
}

// Destructs `objects` and gives their slots back to the slabs.
void pool_core::destroy(void* const* objects, std::size_t n) noexcept {
  if (n == 0) return;
  run_destructors(objects, n);
  locked(slab_lock, [&] {
    for (std::size_t i = 0; i < n; ++i) release_slot(objects[i]);
  });
}

// Destructs the objects of a list of magazines and keeps the magazines,
// slots and all, for construct_new: no per-object work beyond the
// destructor, which is what lets invalidate() stay near its floor.
void pool_core::retire(magazine* list) noexcept {
  if (list == nullptr) return;
  magazine* last = list;
  std::uint64_t destructed = 0;
  {
    // One callback scope and one count for the whole list: the magazines
    // were last written on other CPUs, and per-magazine bookkeeping adds
    // up over hundreds of them.
    in_callback scope(&cache);
    for (magazine* m = list; m != nullptr; m = m->next) {
      call_destructors(m->items(), m->count);
      destructed += m->count;
      last = m;
    }
  }
  destructions.fetch_add(destructed, std::memory_order_relaxed);
  locked(slab_lock, [&] {
    last->next = unconstructed;
    unconstructed = list;
  });
}

}  // namespace percpu::detail
