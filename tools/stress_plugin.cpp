// stress_plugin.cpp - a plugin that uses percpu, for the plugin fault of
// `percpu stress`: the command loads it with dlopen(), runs it and unloads
// it with dlclose() again and again while every facility runs.
//
// It carries its own copy of the library (libpercpu.a), whose service
// threads outlive every dlclose(): they sleep in the plugin's code between
// calls.  The plugin must therefore stay mapped, which percpu's usage
// requirements see to: a shared object that links the static library is
// linked -z nodelete (CMakeLists.txt), as the shared library itself is.
// (Built by GCC, the library also defines GNU unique symbols, which keep
// glibc from unmapping the plugin by themselves; tests/test_plugin.cpp
// builds a copy without them to show what -z nodelete prevents.  What this
// fault adds is a second copy of the runtime in the process, its threads
// and its loads and unloads, under every other fault.)
#include <atomic>
#include <thread>

#include "percpu/counter.hpp"
#include "percpu/pool_cache.hpp"
#include "percpu/xcall.hpp"

// Uses a broadcast, a counter and a pool cache once, on a thread of its own
// that has exited when this returns.  0: every check held; otherwise the
// number of the one that failed.
extern "C" __attribute__((visibility("default"))) int percpu_stress_plugin_run() noexcept {
  int failed = 0;
  std::thread([&failed] {
    try {
      std::atomic<unsigned> calls{0};
      static_cast<void>(percpu::xcall::broadcast_sync([&calls] { calls.fetch_add(1); }));
      if (calls.load() == 0) failed = 1;
      percpu::counter c;
      for (int i = 0; i < 1000; ++i) c.add(1);
      if (c.read() != 1000) failed = 2;
      percpu::pool_cache<long> pool("stress.plugin");
      long* object = pool.get();
      *object = 7;
      pool.put(object);
      pool.invalidate();
    } catch (...) {
      failed = 3;
    }
  }).join();
  return failed;
}
