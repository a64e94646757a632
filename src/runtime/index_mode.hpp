// index_mode.hpp - what indexes the slots: CPU numbers or concurrency ids.
//
// Problem: slots indexed by CPU number are sized and, over time, touched
// for every CPU the host has, however few the program can use: a
// container allowed 4 CPUs of a 256-CPU host pays for 256.  Since Linux
// 6.3 the rseq area also carries mm_cid, an id the kernel gives each
// running thread of the process, unique among those running at once and
// kept compact (below the number of threads and of CPUs the process may
// use).  Slots indexed by it are used, and so touched, only as far as the
// program's parallelism reaches.  What it costs: a fence can no longer aim
// at one CPU (src/runtime/fence.cpp), and it needs a kernel that has it.
//
// Mechanism: start-up chooses the mode once, for every structure, from
// PERCPU_INDEX (cpu, mm_cid or auto, the default) and what it found, with
// choose_index() below; the sequences then read the word that
// runtime.rseq_offset names (runtime.hpp: the area's offset in CPU mode, 20
// more in mm_cid mode, so that the word 4 bytes past it is cpu_id or
// mm_cid).  A pure function, so that
// the suite checks every decision, kernels without mm_cid included, on any
// machine.
#pragma once

#include <cstddef>
#include <string>

namespace percpu::detail {

// What start-up knows when it chooses.
struct index_inputs {
  const char* requested = nullptr;  // PERCPU_INDEX, or nullptr when unset
  bool rseq_backend = false;        // the rseq backend was chosen
  bool kernel_has_mm_cid = false;   // the registered area carries mm_cid
  unsigned allowed_cpus = 0;        // CPUs the starting thread may run on
  unsigned possible_cpus = 0;       // possible CPUs (the slot count)
};

struct index_choice {
  bool mm_cid = false;
  std::string why;    // for `percpu info`: "auto: 4 of 64 CPUs allowed", ...
  std::string error;  // non-empty: the request cannot be met (start-up fails)
};

// PERCPU_INDEX=auto (or unset) picks mm_cid where the kernel provides it
// and the process may use fewer CPUs than are possible, and CPU numbers
// otherwise; `cpu` always gives CPU numbers; `mm_cid` gives concurrency ids
// or the error that says why it cannot (the portable backend, a kernel
// before 6.3).  Anything else is an error.
index_choice choose_index(const index_inputs& in);

// CPUs the process may run on (the main thread's affinity mask: a
// container's cpuset shows there, a CPU quota does not); 0 when the kernel
// will not say.  What start-up passes as allowed_cpus.
unsigned allowed_cpu_count() noexcept;

// The error for a PERCPU_INDEX that names no mode ("" when it names one or
// is unset), for start-up to refuse it before it registers anything.
std::string index_request_error(const char* requested);

}  // namespace percpu::detail
