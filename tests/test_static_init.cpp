// Per-CPU objects at namespace scope, built before main() by this program's
// own static initialisers.  The library is linked after this object, so its
// initialisers (if it had any) would run after these constructors: the
// README's example once crashed that way in std::map, before main().  The
// library keeps no global that needs dynamic initialisation (the install
// stage also checks the archive's symbols); these objects prove the order
// does not matter, on every backend configuration the suite runs.
#include <gtest/gtest.h>

#include <cstdint>
#include <mutex>
#include <shared_mutex>

#include "percpu/core/storage.hpp"
#include "percpu/counter.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/rwlock.hpp"

namespace {

percpu::counter requests;
percpu::rwlock routes_lock;
percpu::storage<std::int64_t> hits;
percpu::pool_cache<std::uint64_t> values("static-init");

// Built before the objects below it: uses them from a static initialiser.
struct early_user {
  early_user() {
    requests.add(5);
    hits.add(2);
  }
} early;

}  // namespace

TEST(StaticInit, ObjectsBuiltBeforeMainWork) {
  EXPECT_EQ(requests.read(), 5);
  requests.inc();
  EXPECT_EQ(requests.reset(), 6);
  EXPECT_EQ(requests.read(), 0);
  { std::shared_lock reader(routes_lock); }
  { std::unique_lock writer(routes_lock); }
  std::int64_t total = 0;
  hits.for_each_cpu([&](unsigned, std::int64_t& v) { total += v; });
  EXPECT_EQ(total, 2);
  std::uint64_t* v = values.get();
  ASSERT_NE(v, nullptr);
  values.put(v);
}
