// fuzz_alloc.cpp - the fuzz program's raw per-CPU allocations: sizes and
// alignments of every kind, zeroed memory, overwrites, double and foreign
// frees.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "fuzz_program.hpp"

namespace percpu_fuzz {

void program::alloc_raw() {
  std::size_t size = 0;
  std::size_t alignment = alignof(std::max_align_t);
  int kind = in_.ConsumeIntegralInRange<int>(0, 7);
  switch (kind) {
    case 0:
      size = 0;
      break;
    case 1:
      size = percpu::max_allocation() + 1 + in_.ConsumeIntegral<std::uint32_t>();
      break;
    case 2:
      size = percpu::max_allocation();
      break;
    default:
      size = in_.ConsumeIntegralInRange<std::size_t>(1, kind == 3 ? 65536 : 512);
  }
  switch (in_.ConsumeIntegralInRange<int>(0, 5)) {
    case 0:
      alignment = 0;
      break;
    case 1:
      alignment = in_.ConsumeIntegralInRange<std::size_t>(2, 1 << 21) | 1;
      break;
    case 2:
      alignment = percpu::max_allocation() << in_.ConsumeIntegralInRange<int>(1, 4);
      break;
    default:
      alignment = std::size_t{1} << in_.ConsumeIntegralInRange<int>(0, 12);
  }
  if (size == 0 || alignment == 0 || (alignment & (alignment - 1)) != 0) {
    expect_error(
        percpu::errc::invalid_argument, [&] { (void)percpu::allocate_raw(size, alignment); },
        "allocate_raw(size 0 or bad alignment) must throw invalid_argument");
    return;
  }
  if (size > percpu::max_allocation() || alignment > percpu::max_allocation()) {
    expect_error(
        percpu::errc::too_large, [&] { (void)percpu::allocate_raw(size, alignment); },
        "allocate_raw(too large) must throw too_large");
    return;
  }
  if (allocations_.size() >= 16) return;
  raw_allocation a{
      static_cast<unsigned char*>(percpu::allocate_raw(size, alignment)), size,
      static_cast<unsigned char>(1 + allocations_.size() + std::size_t{17} * next_fill_++)};
  check(reinterpret_cast<std::uintptr_t>(a.p0) % alignment == 0, "allocate_raw misaligned");
  for_each_sampled_byte(
      a, [](unsigned char& b) { check(b == 0, "allocate_raw returned memory that is not zero"); });
  for_each_sampled_byte(a, [&](unsigned char& b) { b = a.fill; });
  allocations_.push_back(a);
}

void program::free_allocation(std::size_t i) {
  raw_allocation a = allocations_[i];
  for_each_sampled_byte(
      a, [&](unsigned char& b) { check(b == a.fill, "a per-CPU allocation was overwritten"); });
  percpu::free_raw(a.p0);
  allocations_.erase(allocations_.begin() + static_cast<std::ptrdiff_t>(i));
  if (!concurrent_ && in_.ConsumeBool()) {
    // Nothing allocates in between: the pointer is not live again.
    expect_error(
        percpu::errc::invalid_argument, [&] { percpu::free_raw(a.p0); },
        "double free_raw must throw invalid_argument");
  }
}

void program::free_foreign() {
  std::int64_t on_stack = 0;
  void* p = nullptr;
  switch (in_.ConsumeIntegralInRange<int>(0, 2)) {
    case 0:
      p = &on_stack;
      break;
    case 1:
      p = &census_;
      break;
    default: {
      // Strictly inside a live allocation, where no other one can start.
      if (allocations_.empty() || allocations_[0].size < 2) return;
      p = allocations_[0].p0 + in_.ConsumeIntegralInRange<std::size_t>(1, allocations_[0].size - 1);
    }
  }
  expect_error(
      percpu::errc::invalid_argument, [&] { percpu::free_raw(p); },
      "free_raw(foreign pointer) must throw invalid_argument");
}

}  // namespace percpu_fuzz
