// plugin.cpp - a plugin that uses percpu, for tests/test_plugin.cpp.  The
// test loads it with dlopen(), which loads the shared libpercpu it depends
// on, and unloads both with dlclose() while the library's service threads
// live on.
#include <atomic>
#include <thread>

#include "percpu/counter.hpp"
#include "percpu/xcall.hpp"
#include "probes.hpp"

// Starts a service thread on every CPU (a broadcast) and uses a counter, on
// a thread of its own that has exited when this returns: nothing of the
// plugin's runs afterwards, and the thread's exit has run the library's
// thread-local destructors (while those are pending, glibc keeps the
// library loaded).  Stores the service threads' sleep words in `words` (up
// to `max`) and returns how many CPUs ran the broadcast, or 0 when the
// counter lost an add.
extern "C" __attribute__((visibility("default"))) unsigned percpu_plugin_run(const void** words,
                                                                             unsigned max,
                                                                             unsigned* count) {
  unsigned ran = 0;
  std::thread([&ran] {
    std::atomic<unsigned> calls{0};
    static_cast<void>(percpu::xcall::broadcast_sync([&calls] { calls.fetch_add(1); }));
    percpu::counter c;
    for (int i = 0; i < 1000; ++i) c.add(1);
    ran = c.read() == 1000 ? calls.load() : 0;
  }).join();
  *count = 0;
  for (unsigned cpu = 0; cpu < percpu::xcall::cpu_limit() && *count < max; ++cpu) {
    if (const void* w = percpu_test::service_sleep_word(cpu)) words[(*count)++] = w;
  }
  return ran;
}
