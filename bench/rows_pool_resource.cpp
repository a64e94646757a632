// Rows for pool-backed allocation.
//
//   pool_resource.list  one std::pmr::list<int> per thread, all on one
//                       resource: push_back, and every 64 elements clear()
//                       (one node allocated and one freed per operation, on
//                       average).  percpu::pool_resource vs
//                       std::pmr::new_delete_resource (malloc's per-thread
//                       caches) and std::pmr::synchronized_pool_resource
//                       (the standard library's thread-safe pools).
#include <cstdint>
#include <list>
#include <memory_resource>

#include "harness.hpp"
#include "peers.hpp"
#include "percpu/pool_resource.hpp"

namespace percpu_bench {

namespace {

// Resource: a memory_resource type default-constructible on its own, or
// void for new_delete_resource().
template <class Resource>
class list_churn final : public body {
 public:
  void run(unsigned, std::uint64_t n) override {
    std::pmr::list<int> list(resource());
    for (std::uint64_t i = 0; i < n; ++i) {
      list.push_back(static_cast<int>(i));
      if (list.size() == 64) list.clear();
    }
    std::size_t left = list.size();
    keep(left);
  }

 private:
  std::pmr::memory_resource* resource() {
    if constexpr (std::is_void_v<Resource>) {
      return std::pmr::new_delete_resource();
    } else {
      return &resource_;
    }
  }
  struct none {};
  std::conditional_t<std::is_void_v<Resource>, none, Resource> resource_;
};

}  // namespace

void add_pool_resource_rows(std::vector<row>& rows) {
  rows.push_back(
      make_row<list_churn<percpu::pool_resource>>("pool_resource.list", "percpu", {1, 2}));
  rows.push_back(make_row<list_churn<void>>("pool_resource.list", "new_delete", {1, 2}));
  rows.push_back(make_row<list_churn<std::pmr::synchronized_pool_resource>>(
      "pool_resource.list", "synchronized_pool", {1, 2}));
}

}  // namespace percpu_bench
