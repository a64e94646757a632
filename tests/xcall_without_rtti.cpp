// Compiled with -fno-rtti (tests/CMakeLists.txt): the public xcall header,
// its calls and its error messages need no RTTI.  Built, never run.
#include "percpu/xcall.hpp"

namespace percpu_test {

int call_everywhere() {
  int ran = 0;
  percpu::xcall::unicast_sync(0, [&ran] { ++ran; });
  percpu::xcall::broadcast_ticket t = percpu::xcall::broadcast_sync([](unsigned) {});
  return ran + static_cast<int>(t.targets.count());
}

}  // namespace percpu_test
