// pool_cache.cpp - raw_pool_cache itself: its geometry, construction and
// destruction, and the entry points of its slow paths (pool_core, see
// pool_core.hpp for the files that implement them).
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "percpu/runtime/error.hpp"
#include "pool_core.hpp"

namespace percpu {

using detail::pool_core;

raw_pool_cache::raw_pool_cache(pool_options options)
    : parts_(1, 64), size_(options.size), options_(std::move(options)), magazine_size_(0) {
  const std::string where = "percpu::pool_cache \"" + options_.name + "\": ";
  if (size_ == 0) throw error(errc::invalid_argument, where + "object size 0");
  if (size_ > detail::max_object_size) {
    throw error(errc::too_large,
                where + "object size " + std::to_string(size_) + " is above 1 GiB");
  }
  std::size_t align = options_.alignment;
  if (align == 0 || !std::has_single_bit(align)) {
    throw error(errc::invalid_argument,
                where + "alignment " + std::to_string(align) + " is not a power of two");
  }
  if (align > 4096) {
    throw error(errc::too_large, where + "alignment " + std::to_string(align) + " is above 4096");
  }
  unsigned magazine =
      options_.magazine_size != 0 ? options_.magazine_size : detail::default_magazine;
  magazine = std::clamp(magazine, detail::min_magazine, detail::max_magazine);
  magazine_size_.store(magazine, std::memory_order_relaxed);

  core_ = std::make_unique<pool_core>(*this);
  pool_core& c = *core_;
  std::size_t slot_align = std::max<std::size_t>(align, alignof(detail::pool_header));
  c.object_offset = detail::round_up(sizeof(detail::pool_header), slot_align);
  c.slot_size = detail::round_up(c.object_offset + std::max(size_, sizeof(void*)), slot_align);
  c.slots_offset = detail::round_up(sizeof(detail::slab), slot_align);
  c.slab_bytes = std::bit_ceil(std::max(detail::min_slab_bytes, c.slots_offset + 8 * c.slot_size));
  c.slots_per_slab = static_cast<std::uint32_t>((c.slab_bytes - c.slots_offset) / c.slot_size);

  // Each slot's array is armed on its first use (pool_core::arm_array).
  detail::pool_registry& r = detail::process_wide<detail::pool_registry>();
  // The registry lock is one a handler's put may take (pool_check_put):
  // held only inside a no-wait section, like every pool lock.
  detail::no_wait_section quiet;
  std::lock_guard g(r.lock);
  c.id = r.next_id++;
  r.caches.push_back(this);
}

raw_pool_cache::~raw_pool_cache() {
  pool_core& c = *core_;
  {
    detail::pool_registry& r = detail::process_wide<detail::pool_registry>();
    detail::no_wait_section quiet;
    std::lock_guard g(r.lock);
    std::erase(r.caches, this);
  }
  std::vector<void*> victims;
  for (unsigned cpu = 0; cpu < parts_.cpus(); ++cpu) c.drain_cpu(cpu, victims);
  c.retire(c.detach_full());
  c.destroy(victims.data(), victims.size());
#if PERCPU_POOL_CHECKS
  std::uint64_t live = c.constructions.load() - c.destructions.load();
  if (live != 0) {
    std::fprintf(stderr, "percpu::pool_cache \"%s\": destroyed with %llu objects still in use\n",
                 options_.name.c_str(), static_cast<unsigned long long>(live));
  }
#endif
  // Slabs with objects still in use are left mapped: their users may still
  // touch them.  Unused ones go back to the system.
  c.release_unused_slabs();
  c.release_magazine_memory();
}

void* raw_pool_cache::get_slow() noexcept {
  return core_->get_slow();
}
void raw_pool_cache::put_slow(void* object) noexcept {
  core_->put_slow(object);
}
void raw_pool_cache::invalidate() {
  core_->invalidate();
}
void raw_pool_cache::invalidate_local() {
  core_->invalidate_local();
}
std::size_t raw_pool_cache::reclaim() {
  return core_->reclaim();
}
std::uint32_t raw_pool_cache::id() const noexcept {
  return core_->id;
}

}  // namespace percpu
