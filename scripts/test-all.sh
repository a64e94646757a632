#!/usr/bin/env bash
# Builds and runs every test percpu has, the way CI does:
#   0. tree: scripts/check-tree.sh - no include from a lower layer to a
#      higher one, no file over 600 lines, no assembly outside the arch
#      folders, every library folder on README's Layout map (builds nothing);
#   1. model: spin checks the models of the stop/fence/visit protocol, of
#      pool_cache's invalidate, and of its per-CPU arrays under migration,
#      two threads per CPU and invalidate_local, and that their broken
#      variants fail
#      (verify/run.sh; needs `apt-get install spin`);
#   2. release build: the whole suite once per backend configuration
#      (rseq with glibc's registration, rseq with the library's own,
#      portable, portable simulating 64 CPUs, as without rseq and
#      membarrier's rseq fence, and with that fence failing at run time:
#      PERCPU_PRETEND_MISSING) and the header-alone check;
#   3. debug build (no NDEBUG: assertions; PERCPU_DEBUG_CHECKS: the misuse
#      checks of pool_cache and rwlock, fault injection in every sequence):
#      the same suite, and the debug-check program (percpu_debug_tests),
#      which exists only in builds with those checks;
#   4. ASan + UBSan build: the same suite;
#   5. TSan build: the same suite (TSan builds always use the portable backend);
#   6. install: `cmake --install`, then a consumer built with
#      find_package(percpu CONFIG) and one built with pkg-config;
#   7. stress: `percpu stress` for PERCPU_STRESS_SECONDS (default 45) on each
#      backend, and on the portable backend simulating 64 CPUs;
#   8. fuzz: the libFuzzer target (preset `fuzz`, clang 14, ASan + UBSan)
#      over the committed corpus and the committed crash reproducers, half
#      of PERCPU_FUZZ_SECONDS (default 60) with the portable backend, half
#      with the default one; any crash or broken invariant fails the stage;
#   9. valgrind: memcheck (errors and leaks) on a subset of the suite from
#      the release build; under valgrind the library picks the portable
#      backend, which the stage checks first;
#  10. vm: emulated x86-64 machines (QEMU TCG, Debian's 6.1 and 6.12
#      kernels) with 64 possible CPUs and 8 online, with a sparse online
#      set, and with CPUs going offline and online under `percpu stress`:
#      the suite on both backends and stress (scripts/vm/stage.sh);
#  11. vm-arm64: the aarch64 preset's cross build (g++-aarch64-linux-gnu;
#      the suite, its debug-check and static-initialisation programs, the
#      percpu command), run in an emulated 4-CPU arm64 machine (QEMU TCG,
#      Debian's arm64 6.1 kernel): `percpu info`, the suite with glibc's
#      rseq registration, with the library's own and on the portable
#      backend, and `percpu stress` with aborts injected
#      (scripts/vm/stage.sh arm64).
# First it installs the Debian packages these stages need that are missing
# (scripts/install-deps.sh; PERCPU_NO_INSTALL=1 skips that).
# Usage: scripts/test-all.sh [tree|model|release|debug|asan|tsan|install|stress|fuzz|valgrind|vm|vm-arm64 ...]
#        (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(tree model release debug asan tsan install stress fuzz valgrind vm vm-arm64)
scripts/install-deps.sh "${stages[@]}"

run_preset() {
  local preset=$1
  echo "=== $preset: configure, build, test"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  ctest --preset "$preset" -j 1
}

# The release build without running its tests (for stages that use it).
ensure_release_build() {
  [ -x build/release/tests/percpu_tests ] && [ -x build/release/tools/percpu ] && return
  cmake --preset release >/dev/null
  cmake --build --preset release -j "$jobs"
}

# The valgrind subset: everything but the stress tests (storms, tortures,
# contention under migration: memcheck checks memory, not races, and its
# one-thread-at-a-time scheduler makes their targets take minutes or miss
# their deadlines), what runs the test program again as a child (valgrind
# would run the child natively or not at all) or limits its address space
# (which valgrind's own mappings share), and the fork-during-calls test,
# whose forked child reports a call run off its CPU under valgrind only.
valgrind_filter='Storage.*:Sequences.*:Stop.*:Counter.*:CounterArray.*:Rwlock.*:PoolCache.*'\
':Xcall.*:CpuList.*:Topology.*:Backend.CurrentCpuIsBelowCount'\
'-PoolCache.Torture*:Counter.ExactUnder*:Counter.ApproximateReadStaysInsideItsBound'\
':Sequences.AddsAreExactUnderContentionAndSignals:Rwlock.ReadersNeverSeeAWriterHalfway*'\
':Rwlock.WriterIsNotStarved*:Rwlock.ExclusionHoldsWhileTheBias*'\
':Xcall.VisitAllStopsEveryListedStructure'\
':Storage.ExhaustedAddressSpace*:Xcall.ProgramExit*:Xcall.ForkDuring*'\
':PoolCache.SignalHandlersGetAndPutOnTheirOwnThread'\
':Storage.ReuseTouchesOnlyTheSlotsThatWrote:PoolCache.SlotsNoThreadUsedCostNoMemory'

run_fuzz() {
  local seconds=${PERCPU_FUZZ_SECONDS:-60}
  echo "=== fuzz: libFuzzer target, ${seconds} s over tests/fuzz/corpus (portable, then default backend)"
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz -j "$jobs"
  local fuzzer=build/fuzz/tests/fuzz/percpu_fuzz_api
  # New inputs go to a scratch directory, never into the tree.
  local work=build/fuzz/corpus-work artifacts=build/fuzz/artifacts/
  rm -rf "$work" "$artifacts"
  mkdir -p "$work" "$artifacts"
  local backend
  for backend in portable default; do
    local env=()
    [ "$backend" = default ] || env=(PERCPU_BACKEND="$backend")
    echo "--- $backend backend: crash reproducers, then $((seconds / 2)) s of fuzzing"
    local log=build/fuzz/fuzz-$backend.log rc=0
    env "${env[@]}" "$fuzzer" tests/fuzz/crashes/* >"$log" 2>&1 || rc=$?
    [ $rc -ne 0 ] || env "${env[@]}" "$fuzzer" -max_total_time=$((seconds / 2)) -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts" \
      "$work" tests/fuzz/corpus >>"$log" 2>&1 || rc=$?
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
    if [ $rc -ne 0 ]; then
      tail -n 60 "$log"
      echo "fuzz: failed with the $backend backend (log: $log; a new input is kept in $artifacts)" >&2
      return 1
    fi
  done
}

run_valgrind() {
  echo "=== valgrind: memcheck on a subset of the suite (release build)"
  command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; return 1; }
  ensure_release_build
  # The library must notice valgrind (no rseq there) and use the portable backend.
  valgrind -q build/release/tools/percpu info | grep -E '^backend +portable$' >/dev/null ||
    { echo "valgrind: the library did not choose the portable backend" >&2; return 1; }
  # --child-silent-after-fork: forked children (fork tests) end without the
  #   parent's other threads, whose thread-local memory then looks lost;
  # --soname-synonyms=somalloc=nouserintercepts: the test program replaces
  #   operator new/delete (tests/test_xcall.cpp counts allocations); memcheck
  #   must not intercept the replacements, or inlined calls of them pair its
  #   new with a plain free;
  # suppressions: process-lifetime memory, each entry explained in the file.
  # PERCPU_TEST_SCALE 0.1: memcheck looks for memory errors, which do not
  # need the repetitions that make a rare interleaving likely; and under
  # its one-thread-at-a-time scheduling a call to a service thread costs
  # 1-15 ms, so Xcall.NoHeapAllocationAfterWarmUp's 10,300 calls took from
  # 8 s to 146 s (stop 26, the development VM).
  PERCPU_TEST_SCALE=${PERCPU_TEST_SCALE:-0.1} valgrind --tool=memcheck --error-exitcode=1 --leak-check=full \
    --errors-for-leak-kinds=definite,possible --child-silent-after-fork=yes \
    --soname-synonyms=somalloc=nouserintercepts --suppressions=tests/valgrind.supp \
    build/release/tests/percpu_tests --gtest_filter="$valgrind_filter" --gtest_brief=1
}

# Installs the library, static and shared, and builds against each install
# what a user would: the consumer and the README's example exactly as the
# README shows it, with find_package and with pkg-config.  A user's object at
# namespace scope (the README's `percpu::counter requests;`) is constructed
# before the library's own initialisers when the static archive is linked
# after the program's objects, so the archive must have none.
run_install() {
  echo "=== install: find_package and pkg-config consumers, static and shared, README example"
  ensure_release_build
  if nm -A build/release/libpercpu.a 2>/dev/null | grep -F _GLOBAL__sub_I; then
    echo "install: the library has static initialisers (above); a user's global object can run before them" >&2
    return 1
  fi
  local example=$PWD/build/readme_example.cpp
  # The first C++ block of the README.
  awk '/^```cpp$/ { inside = 1; next } inside && /^```$/ { exit } inside' README.md >"$example"
  grep -q 'int main' "$example" || { echo "install: no README example found" >&2; return 1; }
  cmake -S . -B build/shared -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DPERCPU_BUILD_TESTS=OFF -DPERCPU_BUILD_BENCH=OFF -DPERCPU_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build build/shared -j "$jobs" >/dev/null
  local kind
  for kind in static shared; do
    local build=build/release prefix=$PWD/build/install-$kind
    [ "$kind" = static ] || build=build/shared
    rm -rf "$prefix" "build/consumer-$kind"
    cmake --install "$build" --prefix "$prefix" >/dev/null
    local pc="$prefix/lib/pkgconfig:$prefix/lib/x86_64-linux-gnu/pkgconfig"
    cmake -S tests/install -B "build/consumer-$kind" -DCMAKE_PREFIX_PATH="$prefix" \
      -DREADME_EXAMPLE="$example" >/dev/null
    cmake --build "build/consumer-$kind" -j "$jobs" >/dev/null
    # shellcheck disable=SC2046
    g++ -O2 tests/install/consumer.cpp -o "build/consumer-$kind/consumer-pkgconfig" \
      $(PKG_CONFIG_PATH="$pc" pkg-config --cflags --libs percpu)
    # shellcheck disable=SC2046
    g++ -O2 "$example" -o "build/consumer-$kind/readme_example-pkgconfig" \
      $(PKG_CONFIG_PATH="$pc" pkg-config --cflags --libs percpu)
    local program
    for program in consumer consumer-pkgconfig readme_example readme_example-pkgconfig; do
      echo "--- $kind: $program"
      LD_LIBRARY_PATH="$prefix/lib" "build/consumer-$kind/$program"
    done
    if [ "$kind" = shared ] && ! readelf -d "$prefix"/lib*/libpercpu.so | grep 'Flags:.*NODELETE' >/dev/null; then
      echo "install: libpercpu.so is not linked -z nodelete" >&2
      return 1
    fi
    if [ "$kind" = shared ]; then
      # grep reads all of ldd's output (no -q): with pipefail, ldd killed by
      # SIGPIPE after an early match would fail the stage.
      LD_LIBRARY_PATH="$prefix/lib" ldd "build/consumer-$kind/readme_example" |
        grep "$prefix/lib/libpercpu.so" >/dev/null ||
        { echo "install: the shared README example is not linked to the installed libpercpu.so" >&2; return 1; }
    fi
  done
}

timings=()
for stage in "${stages[@]}"; do
  stage_start=$SECONDS
  case "$stage" in
    tree)
      echo "=== tree: layers, file lengths, assembly, the Layout map"
      scripts/check-tree.sh
      ;;
    model)
      echo "=== model: spin on verify/*.pml"
      verify/run.sh
      ;;
    release | asan | tsan) run_preset "$stage" ;;
    debug) run_preset debug ;;
    install) run_install ;;
    stress)
      ensure_release_build
      seconds=${PERCPU_STRESS_SECONDS:-45}
      for backend in "--backend rseq" "--backend portable" "--slots 64"; do
        echo "=== stress: $seconds s, $backend"
        # stderr without the once-a-second progress lines: what is left
        # describes a violation (a fork child's failed step, a call run
        # off its CPU, a plugin that failed to load).
        # shellcheck disable=SC2086
        build/release/tools/percpu stress --seconds "$seconds" $backend \
          2> >(grep -v -E '^ +[0-9]+ s +[0-9]+ operations' >&2)
      done
      ;;
    fuzz) run_fuzz ;;
    valgrind) run_valgrind ;;
    vm)
      ensure_release_build
      # The guests' debug-check program comes from the debug build.
      [ -x build/debug/tests/percpu_debug_tests ] || {
        cmake --preset debug >/dev/null
        cmake --build --preset debug -j "$jobs" --target percpu_debug_tests
      }
      scripts/vm/stage.sh
      ;;
    vm-arm64)
      echo "=== vm-arm64: cross build (preset aarch64)"
      cmake --preset aarch64 >/dev/null
      cmake --build --preset aarch64 -j "$jobs"
      echo "=== vm-arm64: cross build took $((SECONDS - stage_start)) s"
      scripts/vm/stage.sh arm64
      ;;
    *) echo "unknown stage '$stage' (tree, model, release, debug, asan, tsan, install, stress, fuzz, valgrind, vm, vm-arm64)" >&2; exit 2 ;;
  esac
  timings+=("$stage $((SECONDS - stage_start)) s")
  echo "=== $stage took $((SECONDS - stage_start)) s"
done
echo "=== stage times: $(IFS=,; echo "${timings[*]}"), all $SECONDS s"
echo "=== all tests passed"
