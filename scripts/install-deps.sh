#!/usr/bin/env bash
# Installs the Debian packages that the given test stages need and that are
# missing; installs nothing when all are there.
#
# Problem: the README promises two commands of set-up on a fresh Debian 12
# machine, but the test command needs more than the build does (spin for
# the models, clang 14 for fuzzing, valgrind, QEMU and busybox for the
# emulated machines).  scripts/test-all.sh calls this script first with the
# stages it is about to run, and CI runs scripts/test-all.sh, so a new user
# and CI set up the same way.  Only Debian packages: nothing else is
# downloaded (the guests' kernels are Debian packages too, fetched by
# scripts/vm/kernel.sh when a vm stage first needs them, and so is the
# arm64 guests' busybox; for those arm64 packages this script adds arm64 to
# dpkg's architectures, which installs nothing by itself).
#
# Usage: scripts/install-deps.sh [STAGE...]   (default: every stage)
# Environment: PERCPU_NO_INSTALL=1 only reports what is missing.
set -euo pipefail

stages=("$@")
[ ${#stages[@]} -gt 0 ] ||
  stages=(model release asan tsan install stress fuzz valgrind vm vm-arm64)

need=()
add_arm64=0
have_cmd() { command -v "$1" >/dev/null; }
# PATH-independent check for a file the build finds by itself.
have_file() { [ -e "$1" ]; }
lib=/usr/lib/x86_64-linux-gnu

# Every stage builds the library with CMake and g++.
have_cmd cmake || need+=(cmake)
have_cmd g++ || need+=(g++)
have_cmd pkg-config || need+=(pkg-config)
have_file /usr/include/gtest/gtest.h || need+=(libgtest-dev)

for stage in "${stages[@]}"; do
  case "$stage" in
    model)
      # verify/run.sh: the model checker and the compiler of its verifiers.
      have_cmd spin || need+=(spin)
      have_cmd gcc || need+=(gcc)
      ;;
    release)
      # Optional peers the benchmarks compare against (the build finds
      # them), and the allocators the pool.* rows preload into children.
      have_file /usr/include/tbb/combinable.h || need+=(libtbb-dev)
      have_file /usr/include/x86_64-linux-gnu/urcu/urcu-memb.h ||
        have_file /usr/include/urcu/urcu-memb.h || need+=(liburcu-dev)
      have_file $lib/libjemalloc.so.2 || need+=(libjemalloc2)
      have_file $lib/libmimalloc.so.2 || need+=(libmimalloc2.0)
      have_file $lib/libtcmalloc_minimal.so.4 || need+=(libtcmalloc-minimal4)
      have_file $lib/libtbbmalloc_proxy.so.2 || need+=(libtbbmalloc2)
      ;;
    fuzz)
      # clang 14 and its runtime libraries (libFuzzer, sanitizers).
      have_cmd clang++-14 || need+=(clang-14)
      compgen -G '/usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a' >/dev/null ||
        need+=(libclang-rt-14-dev)
      ;;
    valgrind) have_cmd valgrind || need+=(valgrind) ;;
    vm)
      # The emulated machines: QEMU's x86-64 system emulator, a static
      # busybox for the guest's shell and tools, cpio for its initramfs.
      have_cmd qemu-system-x86_64 || need+=(qemu-system-x86)
      have_file /bin/busybox && ! readelf -l /bin/busybox 2>/dev/null | grep -q 'program interpreter' ||
        need+=(busybox-static)
      have_cmd cpio || need+=(cpio)
      have_cmd file || need+=(file)
      ;;
    vm-arm64)
      # The cross compiler (its target's glibc and libstdc++ come along),
      # QEMU's arm64 system emulator, cpio, GoogleTest's sources (the cross
      # build compiles gtest from them), and the arm64 package lists for the
      # guest's kernel and busybox (fetched later, not installed).
      have_cmd aarch64-linux-gnu-g++ || need+=(g++-aarch64-linux-gnu)
      have_cmd qemu-system-aarch64 || need+=(qemu-system-arm)
      have_cmd cpio || need+=(cpio)
      have_cmd file || need+=(file)
      have_file /usr/src/googletest/googletest/CMakeLists.txt || need+=(googletest)
      dpkg --print-foreign-architectures | grep -x arm64 >/dev/null || add_arm64=1
      ;;
    debug | asan | tsan | install | stress) ;;
    *) ;;  # scripts/test-all.sh reports unknown stages
  esac
done

[ ${#need[@]} -gt 0 ] || [ $add_arm64 = 1 ] || exit 0
# One package may be wanted by several stages.
[ ${#need[@]} -eq 0 ] || mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
[ ${#need[@]} -eq 0 ] || echo "=== packages missing for these stages: ${need[*]}"
[ $add_arm64 = 0 ] || echo "=== dpkg lacks the arm64 architecture (the arm64 guests' kernel and busybox)"
if [ "${PERCPU_NO_INSTALL:-0}" = 1 ]; then
  echo "PERCPU_NO_INSTALL=1: not installing them" >&2
  exit 0
fi
if ! have_cmd apt-get; then
  echo "install-deps.sh: no apt-get here; install the packages above by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  have_cmd sudo || { echo "install-deps.sh: not root and no sudo; install the packages above" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
[ $add_arm64 = 0 ] || "${sudo[@]}" dpkg --add-architecture arm64
"${sudo[@]}" apt-get update
[ ${#need[@]} -eq 0 ] || "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"
