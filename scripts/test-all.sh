#!/usr/bin/env bash
# Builds and runs every test percpu has, the way CI does:
#   1. model: spin checks the models of the stop/fence/visit protocol and of
#      pool_cache's invalidate, and that their broken variants fail
#      (verify/run.sh; needs `apt-get install spin`);
#   2. release build: the whole suite once per backend configuration
#      (rseq with glibc's registration, rseq with the library's own,
#      portable, portable simulating 64 CPUs) and the header-alone check;
#   3. ASan + UBSan build: the same suite;
#   4. TSan build: the same suite (TSan builds always use the portable backend);
#   5. install: `cmake --install`, then a consumer built with
#      find_package(percpu CONFIG) and one built with pkg-config;
#   6. stress: `percpu stress` for PERCPU_STRESS_SECONDS (default 60) on each
#      backend, and on the portable backend simulating 64 CPUs.
# Usage: scripts/test-all.sh [model|release|asan|tsan|install|stress ...]  (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(model release asan tsan install stress)

run_preset() {
  local preset=$1
  echo "=== $preset: configure, build, test"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  ctest --preset "$preset" -j 1
}

for stage in "${stages[@]}"; do
  case "$stage" in
    model)
      echo "=== model: spin on verify/*.pml"
      verify/run.sh
      ;;
    release | asan | tsan) run_preset "$stage" ;;
    install)
      echo "=== install: find_package and pkg-config consumers"
      [ -d build/release ] || { cmake --preset release >/dev/null && cmake --build --preset release -j "$jobs"; }
      prefix=$PWD/build/install-test
      rm -rf "$prefix" build/consumer-cmake
      cmake --install build/release --prefix "$prefix" >/dev/null
      cmake -S tests/install -B build/consumer-cmake -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
      cmake --build build/consumer-cmake -j "$jobs" >/dev/null
      build/consumer-cmake/consumer
      PKG_CONFIG_PATH="$prefix/lib/pkgconfig:$prefix/lib/x86_64-linux-gnu/pkgconfig" \
        g++ -O2 tests/install/consumer.cpp -o build/consumer-pkgconfig \
        $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig:$prefix/lib/x86_64-linux-gnu/pkgconfig" pkg-config --cflags --libs percpu)
      LD_LIBRARY_PATH="$prefix/lib" build/consumer-pkgconfig
      ;;
    stress)
      [ -x build/release/tools/percpu ] || { cmake --preset release >/dev/null && cmake --build --preset release -j "$jobs"; }
      seconds=${PERCPU_STRESS_SECONDS:-60}
      for backend in "--backend rseq" "--backend portable" "--slots 64"; do
        echo "=== stress: $seconds s, $backend"
        # shellcheck disable=SC2086
        build/release/tools/percpu stress --seconds "$seconds" $backend 2>/dev/null
      done
      ;;
    *) echo "unknown stage '$stage' (model, release, asan, tsan, install, stress)" >&2; exit 2 ;;
  esac
done
echo "=== all tests passed"
