// pool_stat.cpp - the pool_cache statistics table.
#include "percpu/pool_stat.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

namespace percpu {

void format_pool_stats(std::ostream& out, const std::vector<pool_stats>& caches) {
  int width = 4;
  for (const pool_stats& s : caches) width = std::max(width, static_cast<int>(s.name.size()));
  auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
  char row[512];
  std::snprintf(row, sizeof row,
                "%-*s %7s %4s %9s %9s %6s %10s %4s %10s %10s %5s %5s %9s %9s %5s %5s\n", width,
                "name", "objsize", "mag", "inuse", "cached", "slabs", "reserved_k", "cpus",
                "misses", "overflows", "full", "empty", "visits", "contended", "inval", "trims");
  out << row;
  std::uint64_t reserved = 0;
  std::uint64_t in_use = 0;
  std::uint64_t cached = 0;
  for (const pool_stats& s : caches) {
    std::uint64_t misses = 0;
    std::uint64_t overflows = 0;
    for (const pool_cpu_stats& c : s.cpus) {
      misses += c.misses;
      overflows += c.overflows;
    }
    std::snprintf(row, sizeof row,
                  "%-*s %7llu %4u %9llu %9llu %6llu %10llu %4zu %10llu %10llu %5llu %5llu %9llu "
                  "%9llu %5llu %5llu\n",
                  width, s.name.c_str(), u(s.object_size), s.magazine_size, u(s.objects_in_use),
                  u(s.objects_cached), u(s.slabs), u(s.bytes_reserved / 1024), s.cpus.size(),
                  u(misses), u(overflows), u(s.depot_full), u(s.depot_empty), u(s.depot_visits),
                  u(s.depot_contended), u(s.invalidations), u(s.trims));
    out << row;
    reserved += s.bytes_reserved;
    in_use += s.bytes_in_use;
    cached += s.bytes_cached;
  }
  std::snprintf(row, sizeof row,
                "%zu caches: %llu KiB reserved, %llu KiB in use, %llu KiB cached\n", caches.size(),
                u(reserved / 1024), u(in_use / 1024), u(cached / 1024));
  out << row;
}

}  // namespace percpu
