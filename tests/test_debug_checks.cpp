// Misuse that only builds without NDEBUG detect (this file is always built
// that way, see CMakeLists.txt).
#undef NDEBUG
#include <gtest/gtest.h>

#include "percpu/rwlock.hpp"

namespace {

static_assert(PERCPU_RWLOCK_CHECKS, "this test needs the debug checks");

TEST(RwlockDebugDeathTest, UnlockSharedWithoutLockSharedIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  percpu::rwlock lock;
  EXPECT_DEATH(lock.unlock_shared(), "holds no read lock");
  lock.lock_shared();
  lock.unlock_shared();
  EXPECT_DEATH(lock.unlock_shared(), "holds no read lock");
}

TEST(RwlockDebugDeathTest, WriteLockWhileHoldingReadLockIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  percpu::rwlock lock;
  EXPECT_DEATH(
      {
        lock.lock_shared();
        lock.lock();
      },
      "holds a read lock");
}

TEST(RwlockDebug, CorrectUseIsQuiet) {
  percpu::rwlock lock;
  lock.lock_shared();
  lock.lock_shared();
  lock.unlock_shared();
  lock.unlock_shared();
  lock.lock();
  lock.unlock();
}

}  // namespace
