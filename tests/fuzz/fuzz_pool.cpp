// fuzz_pool.cpp - the fuzz program's operations on a pool_cache of tracked
// objects and on raw_pool_caches of any size and alignment.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "fuzz_program.hpp"

namespace percpu_fuzz {

void stamp(void* object, std::size_t size, std::uintptr_t value) {
  std::memcpy(object, &value, std::min(size, sizeof value));
  if (size >= 2 * sizeof value)
    std::memcpy(static_cast<char*>(object) + size - sizeof value, &value, sizeof value);
}

bool stamped(const void* object, std::size_t size, std::uintptr_t value) {
  std::uintptr_t first = 0;
  std::memcpy(&first, object, std::min(size, sizeof first));
  if (size < sizeof first) {
    std::uintptr_t expected = 0;
    std::memcpy(&expected, &value, size);
    return first == expected;
  }
  std::uintptr_t last = value;
  if (size >= 2 * sizeof value)
    std::memcpy(&last, static_cast<const char*>(object) + size - sizeof last, sizeof last);
  return first == value && last == value;
}

bool raw_construct(void* object, void* arg) {
  auto* census = static_cast<raw_census*>(arg);
  if (census->refuse_next) {
    census->refuse_next = false;
    return false;
  }
  stamp(object, census->size, reinterpret_cast<std::uintptr_t>(object));
  census->constructed.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void raw_destroy(void* object, void* arg) noexcept {
  auto* census = static_cast<raw_census*>(arg);
  if (!stamped(object, census->size, reinterpret_cast<std::uintptr_t>(object))) {
    fail("raw_pool_cache destroyed an object its constructor did not stamp");
  }
  stamp(object, census->size, 0);
  census->destroyed.fetch_add(1, std::memory_order_relaxed);
}

void program::pool_get() {
  if (held_.size() >= max_held) return;
  bool refused = fail_next_construction;
  std::uint64_t constructed_before = census_.constructed.load();
  tracked* t = nullptr;
  try {
    t = in_.ConsumeBool() ? objects_.get() : objects_.try_get();
  } catch (const construction_refused&) {
    check(refused, "pool_cache::get threw the constructor's exception without a refusal");
    return;
  }
  if (t == nullptr) {
    check(refused, "pool_cache::try_get returned nullptr without a refusal");
    return;
  }
  // A refusal is consumed only by a construction: a cached object skips it.
  if (!concurrent_ && refused && census_.constructed.load() != constructed_before) {
    fail("a refused construction produced an object");
  }
  check(t->magic == alive_magic, "pool_cache handed out an object that is not constructed");
  check(t->serial >= first_valid_serial_,
        "pool_cache handed out an object constructed before the last invalidate");
  check(reinterpret_cast<std::uintptr_t>(t) % alignof(tracked) == 0,
        "pool_cache object misaligned");
  for (const held_object& h : held_)
    check(h.object != t, "pool_cache handed out an object already in use");
  held_.push_back({t, false});
}

void program::pool_put() {
  if (held_.empty()) return;
  std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, held_.size() - 1);
  held_object h = held_[i];
  held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
  std::uint64_t destroyed_before = census_.destroyed.load();
  objects_.put(h.object);
  if (h.across_invalidate) {
    check(census_.destroyed.load() > destroyed_before,
          "an object held across invalidate() was cached instead of destructed when put back");
  }
}

void program::pool_invalidate() {
  std::uint64_t next = census_.next_serial.load();
  objects_.invalidate();
  first_valid_serial_ = next;
  for (held_object& h : held_) h.across_invalidate = true;
  if (!concurrent_)
    check(objects_.stats().objects_cached == 0, "objects cached after invalidate()");
}

void program::raw_cache_new() {
  release_raw_cache();
  percpu::pool_options o;
  switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
    case 0:
      o.size = 0;
      break;
    case 1:
      o.size = (std::size_t{1} << 30) + 1 + in_.ConsumeIntegral<std::uint16_t>();
      break;
    default:
      o.size = in_.ConsumeIntegralInRange<std::size_t>(1, in_.ConsumeBool() ? 64 : 70000);
  }
  switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
    case 0:
      o.alignment = 0;
      break;
    case 1:
      o.alignment = in_.ConsumeIntegralInRange<std::size_t>(2, 5000) | 1;
      break;  // odd
    case 2:
      o.alignment = std::size_t{8192} << in_.ConsumeIntegralInRange<int>(0, 8);
      break;
    default:
      o.alignment = std::size_t{1} << in_.ConsumeIntegralInRange<int>(0, 12);
  }
  o.magazine_size = in_.ConsumeIntegralInRange<unsigned>(0, 300);
  bool bad = o.size == 0 || o.size > (std::size_t{1} << 30) || o.alignment == 0 ||
             (o.alignment & (o.alignment - 1)) != 0 || o.alignment > 4096;
  auto census = std::make_unique<raw_census>();
  census->size = o.size;
  o.construct = raw_construct;
  o.destroy = raw_destroy;
  o.arg = census.get();
  o.name = "fuzz-raw";
  if (bad) {
    // Checked in this order: size 0, size too large, alignment not a power
    // of two, alignment too large.
    bool too_large = o.size != 0 && (o.size > (std::size_t{1} << 30) ||
                                     (o.alignment != 0 && (o.alignment & (o.alignment - 1)) == 0));
    expect_error(
        too_large ? percpu::errc::too_large : percpu::errc::invalid_argument,
        [&] { percpu::raw_pool_cache c(o); },
        "raw_pool_cache with a bad size or alignment must throw invalid_argument or "
        "too_large");
    return;
  }
  std::size_t alignment = o.alignment;
  raw_.cache = std::make_unique<percpu::raw_pool_cache>(std::move(o));
  raw_.census = std::move(census);
  raw_alignment_ = alignment;
  check(raw_.cache->magazine_size() >= 4 && raw_.cache->magazine_size() <= 128,
        "magazine size outside 4..128");
}

void program::raw_cache_get() {
  if (!raw_.cache || raw_.held.size() >= max_held) return;
  bool refuse = in_.ConsumeIntegralInRange<int>(0, 7) == 0;
  raw_.census->refuse_next = refuse;
  void* p = raw_.cache->get();
  raw_.census->refuse_next = false;
  if (p == nullptr) {
    check(refuse, "raw_pool_cache::get returned nullptr without a refusal");
    return;
  }
  check(reinterpret_cast<std::uintptr_t>(p) % raw_alignment_ == 0,
        "raw_pool_cache object misaligned");
  check(stamped(p, raw_.census->size, reinterpret_cast<std::uintptr_t>(p)),
        "raw_pool_cache handed out an unconstructed object");
  for (void* q : raw_.held) check(q != p, "raw_pool_cache handed out an object already in use");
  raw_.held.push_back(p);
}

void program::release_raw_cache() {
  if (!raw_.cache) return;
  for (void* p : raw_.held) raw_.cache->put(p);
  raw_.held.clear();
  percpu::pool_stats s = raw_.cache->stats();
  check(s.constructions == raw_.census->constructed.load() &&
            s.destructions == raw_.census->destroyed.load(),
        "raw_pool_cache statistics disagree with its callbacks");
  check(s.constructions - s.destructions == s.objects_cached && s.objects_in_use == 0,
        "raw_pool_cache: constructions - destructions != cached with nothing in use");
  raw_.cache.reset();
  check(raw_.census->constructed.load() == raw_.census->destroyed.load(),
        "destroying a raw_pool_cache left objects constructed");
  raw_.census.reset();
}

}  // namespace percpu_fuzz
