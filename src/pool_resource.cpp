// pool_resource.cpp - size classes and lazy cache creation of pool_resource.
//
// Every get and put on the resource's caches happens in this file, so the
// caches see one PERCPU_POOL_CHECKS setting (the library's) whatever the
// setting of the programs that use the resource.
#include "percpu/pool_resource.hpp"

#include <atomic>
#include <cstdint>
#include <string>

#include "percpu/runtime/error.hpp"
#include "runtime/runtime_internal.hpp"

namespace percpu {

namespace {

constexpr std::size_t granule = 16;  // class sizes are multiples of it
constexpr std::size_t base_alignment = 16;

// For each request size in granules (0 .. largest_class / granule), the
// index of the smallest class that holds it: one table look-up per request.
constexpr auto make_class_of_granules() {
  std::array<std::uint8_t, pool_resource::largest_class / granule + 1> table{};
  std::size_t cls = 0;
  for (std::size_t g = 0; g < table.size(); ++g) {
    while (pool_resource::class_sizes[cls] < g * granule) ++cls;
    table[g] = static_cast<std::uint8_t>(cls);
  }
  return table;
}
constexpr auto class_of_granules = make_class_of_granules();

static_assert(pool_resource::largest_class % granule == 0);
static_assert(class_of_granules[0] == 0 && class_of_granules[1] == 0 && class_of_granules[2] == 1);
static_assert(class_of_granules.back() == pool_resource::class_sizes.size() - 1);

// Whether a request goes to a class rather than upstream.
bool served_by_a_class(std::size_t bytes, std::size_t alignment) noexcept {
  return bytes <= pool_resource::largest_class && alignment <= pool_resource::max_class_alignment;
}

// The index into caches_ of a request served_by_a_class.
std::size_t class_index(std::size_t bytes, std::size_t alignment) noexcept {
  std::size_t index = class_of_granules[(bytes + granule - 1) / granule];
  return alignment <= base_alignment ? index : index + pool_resource::class_sizes.size();
}

}  // namespace

pool_resource::pool_resource(std::pmr::memory_resource* upstream, std::string name)
    : upstream_(upstream), name_(std::move(name)) {}

pool_resource::~pool_resource() {
  for (auto& slot : caches_) delete slot.load(std::memory_order_acquire);
}

raw_pool_cache& pool_resource::cache_for(std::size_t index) {
  // Acquire pairs with the release store below: a thread that sees the
  // pointer sees the constructed cache.
  raw_pool_cache* cache = caches_[index].load(std::memory_order_acquire);
  if (cache != nullptr) [[likely]] {
    return *cache;
  }
  std::lock_guard creating(creation_);
  cache = caches_[index].load(std::memory_order_relaxed);  // written only under creation_
  if (cache == nullptr) {
    bool aligned = index >= class_count;
    std::size_t size = class_sizes[aligned ? index - class_count : index];
    pool_options options;
    options.size = size;
    options.alignment = aligned ? max_class_alignment : base_alignment;
    options.name = name_ + "." + std::to_string(size) + (aligned ? "a64" : "");
    try {
      cache = new raw_pool_cache(std::move(options));
    } catch (const error& e) {
      // No address space for per-CPU memory: a memory resource's error.
      if (e.code() == errc::no_memory) throw std::bad_alloc();
      throw;
    }
    caches_[index].store(cache, std::memory_order_release);
  }
  return *cache;
}

void* pool_resource::do_allocate(std::size_t bytes, std::size_t alignment) {
  if (!served_by_a_class(bytes, alignment)) return upstream_->allocate(bytes, alignment);
  void* block = cache_for(class_index(bytes, alignment)).get();
  if (block == nullptr) throw std::bad_alloc();
  return block;
}

void pool_resource::do_deallocate(void* p, std::size_t bytes, std::size_t alignment) {
  if (!served_by_a_class(bytes, alignment)) {
    upstream_->deallocate(p, bytes, alignment);
    return;
  }
  // The class exists: allocate created it for this block.  Acquire, as in
  // cache_for (the block may have come from another thread).
  caches_[class_index(bytes, alignment)].load(std::memory_order_acquire)->put(p);
}

bool pool_resource::do_is_equal(const std::pmr::memory_resource& other) const noexcept {
  return this == &other;
}

std::vector<pool_stats> pool_resource::stats() const {
  std::vector<pool_stats> out;
  for (const auto& slot : caches_) {
    if (const raw_pool_cache* cache = slot.load(std::memory_order_acquire))
      out.push_back(cache->stats());
  }
  return out;
}

std::size_t pool_resource::release() {
  std::size_t given_back = 0;
  for (auto& slot : caches_) {
    if (raw_pool_cache* cache = slot.load(std::memory_order_acquire)) {
      cache->invalidate();
      given_back += cache->reclaim();
    }
  }
  return given_back;
}

pool_resource* default_pool_resource() noexcept {
  // Built in static storage and never destroyed (see the header).  Its
  // constructor allocates nothing: the name fits the string's own buffer.
  // Built under once_claim, not as a function-local static, whose guard a
  // fork() could copy half done (core/process_wide.hpp's history).
  alignas(pool_resource) static unsigned char storage[sizeof(pool_resource)];
  static std::atomic<std::uintptr_t> word{detail::once_idle};
  std::uintptr_t seen = detail::once_claim(word);
  if ((seen & 1) == 0) return reinterpret_cast<pool_resource*>(seen);
  auto* resource = ::new (storage) pool_resource(std::pmr::new_delete_resource(), "default_pool");
  // Release: pairs with once_claim's acquire; the resource is whole first.
  word.store(reinterpret_cast<std::uintptr_t>(resource), std::memory_order_release);
  return resource;
}

}  // namespace percpu
