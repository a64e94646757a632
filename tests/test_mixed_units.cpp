// One program, two kinds of translation unit: this one is compiled with
// NDEBUG, tests/mixed_units_other.cpp without it (tests/CMakeLists.txt).
//
// The misuse checks of pool_cache and rwlock and the sequences' fault
// injection were once chosen from each unit's NDEBUG.  Such a program had
// two definitions of the inline get/put and lock_shared/unlock_shared, and
// the checking half reported misuse that was not there: an object taken
// by an unchecked get and given back by a checked put read as a double put;
// a read lock taken unchecked and released checked read as "holds no read
// lock".  Now the library's build decides (percpu/runtime/config.hpp), and
// both halves must see the same choice and work together.
#include <gtest/gtest.h>

#include <cstdlib>

#include "mixed_units.hpp"

#ifndef NDEBUG
#error "this unit is compiled with NDEBUG (tests/CMakeLists.txt)"
#endif

namespace {

int checks_here() noexcept {
  return PERCPU_POOL_CHECKS * 4 + PERCPU_RWLOCK_CHECKS * 2 + PERCPU_FAULT_INJECTION;
}

// Objects and read locks handed from one kind of unit to the other, both
// ways; exits 0 if nothing reported misuse (which aborts).
[[noreturn]] void hand_over_between_units() {
  percpu::pool_options options;
  options.size = 48;
  options.name = "mixed-units";
  percpu::raw_pool_cache cache(options);
  percpu::rwlock lock;
  for (int i = 0; i < 1000; ++i) {
    void* a = cache.get();
    mixed_units::put_in_debug_unit(cache, a);
    void* b = mixed_units::get_in_debug_unit(cache);
    cache.put(b);
    lock.lock_shared();
    mixed_units::unlock_shared_in_debug_unit(lock);
    mixed_units::lock_shared_in_debug_unit(lock);
    lock.unlock_shared();
  }
  lock.lock();  // no read lock is left on this thread
  lock.unlock();
  std::_Exit(0);
}

}  // namespace

TEST(MixedUnits, DebugAndReleaseUnitsSeeTheLibrarysChoice) {
  EXPECT_EQ(checks_here(), mixed_units::checks_in_debug_unit());
  EXPECT_EQ(checks_here() != 0, PERCPU_DEBUG_CHECKS != 0);
}

TEST(MixedUnits, ObjectsAndReadLocksCrossBetweenDebugAndReleaseUnits) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(hand_over_between_units(), ::testing::ExitedWithCode(0), "");
}
