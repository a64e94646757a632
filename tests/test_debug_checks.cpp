// Misuse that only builds without NDEBUG detect (this file is always built
// that way, see CMakeLists.txt).
#undef NDEBUG
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "expect_error.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/rwlock.hpp"

namespace {

static_assert(PERCPU_RWLOCK_CHECKS, "this test needs the debug checks");
static_assert(PERCPU_POOL_CHECKS, "this test needs the debug checks");

TEST(RwlockDebugDeathTest, UnlockSharedWithoutLockSharedIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  percpu::rwlock lock;
  EXPECT_DEATH(lock.unlock_shared(), "holds no read lock");
  lock.lock_shared();
  lock.unlock_shared();
  EXPECT_DEATH(lock.unlock_shared(), "holds no read lock");
}

// lock() can throw, so it reports the self-deadlock as an error; only the
// noexcept read side stops the program (above).
TEST(RwlockDebug, WriteLockWhileHoldingReadLockIsRefused) {
  percpu::rwlock lock;
  lock.lock_shared();
  EXPECT_TRUE(percpu_test::fails_with(percpu::errc::would_deadlock, [&] { lock.lock(); }));
  lock.unlock_shared();
  lock.lock();  // the refused call left nothing behind
  lock.unlock();
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

// ---- pool_cache ----------------------------------------------------------------
//
// Each misuse aborts with `percpu::pool_cache "NAME": WHAT (object ADDRESS)`.

percpu::pool_options raw_options(const char* name) {
  percpu::pool_options o;
  o.size = 64;
  o.name = name;
  return o;
}

// A pointer the compiler cannot see through (a put of null or of a small
// foreign block would draw an array-bounds warning for the header access
// after the check).
void* opaque(void* p) {
  void* volatile hidden = p;
  return hidden;
}

TEST(PoolCacheDebugDeathTest, ForeignPointersAreReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  percpu::raw_pool_cache cache(raw_options("checked"));
  void* from_malloc = std::malloc(64);
  EXPECT_DEATH(cache.put(opaque(from_malloc)),
               "pool_cache \"checked\": put of a pointer no pool_cache "
               "handed out \\(foreign pointer\\)");
  std::free(from_malloc);
  alignas(16) unsigned char on_stack[64] = {};
  EXPECT_DEATH(cache.put(opaque(on_stack + 16)), "pool_cache \"checked\": .*\\(foreign pointer\\)");
  // Inside an object the cache handed out: what precedes the pointer is
  // object data, not a header of this cache.
  void* object = cache.get();
  ASSERT_NE(object, nullptr);
  std::memset(object, 0xff, 64);
  EXPECT_DEATH(cache.put(static_cast<char*>(object) + 32),
               "pool_cache \"checked\": put of a pointer into the middle of a slab");
  cache.put(object);
}

TEST(PoolCacheDebugDeathTest, NullPointerIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  percpu::raw_pool_cache cache(raw_options("checked"));
  EXPECT_DEATH(cache.put(opaque(nullptr)), "pool_cache \"checked\": put of a null pointer");
}

TEST(PoolCacheDebugDeathTest, DoublePutIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  percpu::pool_cache<std::uint64_t> cache("typed");
  std::uint64_t* object = cache.get();
  cache.put(object);
  EXPECT_DEATH(cache.put(object), "pool_cache \"typed\": double put");
}

TEST(PoolCacheDebugDeathTest, DoublePutAfterTheObjectWasDestructedIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  percpu::raw_pool_cache cache(raw_options("checked"));
  void* object = cache.get();
  cache.put(object);
  cache.invalidate();  // destructs it: its slot is free
  EXPECT_DEATH(cache.put(object), "pool_cache \"checked\": put of an object that is not in use");
}

TEST(PoolCacheDebugDeathTest, PutToTheWrongCacheIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  percpu::raw_pool_cache first(raw_options("first"));
  percpu::raw_pool_cache second(raw_options("second"));
  void* object = first.get();
  EXPECT_DEATH(second.put(object),
               "pool_cache \"second\": put to the wrong cache \\(the object belongs to cache "
               "\"first\"\\)");
  first.put(object);
}

TEST(PoolCacheDebugDeathTest, OverwrittenHeaderIsReportedByGet) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  percpu::raw_pool_cache cache(raw_options("checked"));
  void* object = cache.get();
  cache.put(object);
  // A write just before the object (an underflow of the one before it)
  // reaches the header's state word.
  std::memset(static_cast<char*>(object) - 4, 0, 4);
  EXPECT_DEATH((void)cache.get(),
               "pool_cache \"checked\": get found a cached object whose header "
               "was overwritten");
}

TEST(PoolCacheDebug, CorrectUseIsQuiet) {
  percpu::raw_pool_cache cache(raw_options("checked"));
  std::vector<void*> held;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 1000; ++i) held.push_back(cache.get());  // through the depot and slabs
    for (void* p : held) cache.put(p);
    held.clear();
    cache.invalidate();
  }
  EXPECT_EQ(cache.stats().objects_in_use, 0u);
}

}  // namespace
