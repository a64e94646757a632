// percpu/pool_stat.hpp - pool_cache statistics as a table (`vmstat -m`,
// /proc/slabinfo).
//
// Problem: a pool_stats snapshot has two dozen fields and per-CPU figures;
// a person checking where memory sits, or which cache's depot is contended,
// wants one line per cache with the same columns every time.
#pragma once

#include <ostream>
#include <vector>

#include "percpu/pool_cache.hpp"

namespace percpu {

// Writes one header line, one line per cache in `caches` (in order) and a
// totals line.  Columns: name; objsize (bytes); mag (objects per magazine);
// inuse and cached (objects); slabs; reserved (KiB of slab memory); cpus
// (CPUs whose array is or was in use); misses and overflows (summed over
// CPUs: gets that found the CPU's array empty, puts that found it full);
// full and empty (magazines in the depot); visits and contended (depot
// lock acquisitions, and those that found the lock held); inval
// (invalidations); trims.  Typical use: format_pool_stats(std::cout,
// all_pool_stats()).
void format_pool_stats(std::ostream& out, const std::vector<pool_stats>& caches);

}  // namespace percpu
