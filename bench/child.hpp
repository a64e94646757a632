// child.hpp - measuring a peer in a process of its own.
//
// Problem: a malloc replacement (jemalloc, mimalloc, tcmalloc, TBB's proxy)
// is used by preloading it, and a process can have only one malloc.  Its
// rows must run in a child process started with LD_PRELOAD, yet still be
// measured interleaved with percpu's rows, repetition by repetition.
//
// Mechanism: the parent starts `percpu bench-child ROW SIZE THREADS` with
// the library preloaded and keeps it for the body's lifetime.  Each run()
// writes the iteration count to the child's stdin; the child measures its
// own body on its own pinned workers and answers with the nanoseconds, which
// the parent reports as the body's timed_ns() (the pipe's round trip is not
// part of the figure).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "harness.hpp"

namespace percpu_bench {

// A body that runs in a child process.  Only thread 0 talks to the child;
// the other parent workers return at once, leaving the CPUs to the child.
class child_body final : public body {
 public:
  // Starts the child; `preload` is the library to preload ("" for none),
  // `env` more NAME=VALUE entries for it.  Throws std::runtime_error when
  // the child cannot be started.
  child_body(const std::string& row_name, std::size_t size, unsigned threads,
             const std::string& preload, const std::vector<std::string>& env = {});
  ~child_body() override;
  child_body(const child_body&) = delete;
  child_body& operator=(const child_body&) = delete;

  void run(unsigned thread, std::uint64_t iterations) override;
  double timed_ns() const override { return last_ns_; }

 private:
  pid_t pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  double last_ns_ = 0;
};

// The body a child runs for ROW at SIZE (malloc and free, through whatever
// malloc the process has); nullptr for a row no child can run.
std::unique_ptr<body> make_malloc_body(const std::string& row_name, std::size_t size);

// The index modes' rows: percpu's own body in a child process for each
// index mode (PERCPU_INDEX is read once per process), "percpu_cpu" and
// "percpu_mm_cid", so that the two compare in like processes, beside the
// parent's "percpu" row.  None where the machine has one mode only (the
// portable backend, a kernel without mm_cid).
struct index_peer {
  std::string index;  // PERCPU_INDEX for the child
  std::string impl;
};
std::vector<index_peer> index_peers();
// A row's maker for the child of `peer`.
std::function<std::unique_ptr<body>(unsigned)> index_maker(const index_peer& peer,
                                                           const std::string& row_name,
                                                           std::size_t size);
// percpu's body for ROW at SIZE in such a child (slot.add: rows_foundation.cpp;
// pool.get_put: rows_pool.cpp); nullptr for another row.
std::unique_ptr<body> make_slot_percpu_body();
std::unique_ptr<body> make_pool_percpu_body(const std::string& row_name, std::size_t size);

// The `percpu bench-child ROW SIZE THREADS` command: serves measurement
// requests on stdin until it closes.  Returns the exit status.
int child_main(const std::vector<std::string>& args);

// Where a preloadable malloc lives on this machine, or "" when absent.
std::string find_library(const char* file_name);

}  // namespace percpu_bench
