#!/usr/bin/env bash
# Builds the emulated machines' initramfs: busybox, the guest init, and the
# test programs with the shared libraries they load.
#
# Problem: a guest has no disk; everything it runs must be in one cpio
# archive the kernel unpacks into its root file system.  The programs are
# the ones the host builds (dynamically linked against Debian's libstdc++
# and glibc), so the archive also holds every shared library they need, at
# the path the dynamic loader looks for it, and the loader itself.  For the
# x86-64 guests those are the host's own (ldd finds them); for the arm64
# guests they come from the cross toolchain's target libraries
# (/usr/aarch64-linux-gnu/lib, read with aarch64-linux-gnu-readelf: the
# loader at the programs' interpreter path, the rest in
# /lib/aarch64-linux-gnu, where the loader looks first), and busybox is
# Debian's busybox-static for arm64 (scripts/vm/deb.sh).  The archive is
# left uncompressed: the guest's emulated CPU would take longer to
# decompress it than the host takes to hand it over.
#
# The job a guest runs is not in this archive: scripts/vm/boot.sh appends a
# small second archive holding /job/run.sh (the kernel unpacks concatenated
# archives in turn), so one common archive serves every run.
#
# Usage: scripts/vm/initramfs.sh [--arch amd64|arm64] [--build DIR] OUTPUT.cpio [PROGRAM...]
#   --arch   the guest's architecture (Debian's name; default amd64)
#   --build  the build tree (default build/release for amd64, build/aarch64,
#            the aarch64 preset's, for arm64)
#   PROGRAM  the programs to carry (default: the suite, percpu_debug_tests,
#            percpu_static_init_tests, the percpu command and its stress
#            plugin; percpu_debug_tests from PERCPU_VM_DEBUG_BUILD, default
#            build/debug for amd64 and the build tree itself for arm64, whose
#            preset compiles the debug checks in)
# The programs land in /opt/percpu/ in the guest.  PERCPU_VM_BUSYBOX names
# another static busybox of the guest's architecture.
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/../.." && pwd)
arch=amd64 build=
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) break ;;
  esac
done
out=${1:?usage: initramfs.sh [--arch amd64|arm64] [--build DIR] OUTPUT.cpio [PROGRAM...]}
shift
case "$arch" in
  amd64) build=${build:-$root_dir/build/release} debug_default=$root_dir/build/debug ;;
  arm64) build=${build:-$root_dir/build/aarch64} debug_default=$build ;;
  *) echo "initramfs.sh: unknown architecture '$arch' (amd64, arm64)" >&2; exit 2 ;;
esac
# Absolute: the plugins go to their build-tree path in the guest.
build=$(cd "$build" && pwd)
# The debug checks and fault injection exist only in a library built with
# them (percpu/runtime/config.hpp.in).
debug_build=${PERCPU_VM_DEBUG_BUILD:-$debug_default}

programs=("$@")
# The plugins the suite's plugin test loads by their build-tree path
# (tests/test_plugin.cpp): they go to that same path in the guest.
host_path_files=()
if [ ${#programs[@]} -eq 0 ]; then
  programs=(
    "$build/tests/percpu_tests"
    "$debug_build/tests/percpu_debug_tests"
    "$build/tests/percpu_static_init_tests"
    "$build/tools/percpu"
    "$build/tools/libpercpu_stress_plugin.so"
  )
  for plugin in "$build"/tests/libpercpu_dso*_plugin.so; do
    [ -r "$plugin" ] && host_path_files+=("$plugin")
  done
fi
for program in "${programs[@]}"; do
  [ -r "$program" ] || { echo "initramfs.sh: $program is not built" >&2; exit 1; }
done

if [ "$arch" = amd64 ]; then
  busybox=${PERCPU_VM_BUSYBOX:-/bin/busybox}
  [ -x "$busybox" ] || { echo "initramfs.sh: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
else
  # Fetched once into the cache beside the kernels.
  cache=$root_dir/build/vm/packages/busybox-static-$arch
  busybox=${PERCPU_VM_BUSYBOX:-$cache/bin/busybox}
  [ -x "$busybox" ] || "$root_dir/scripts/vm/deb.sh" "busybox-static:$arch" "$cache" ./bin/busybox
fi
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
  { echo "initramfs.sh: $busybox is not static (busybox-static)" >&2; exit 1; }

# "HOST_PATH GUEST_PATH" of the loader and every shared object FILE loads.
# x86-64: ldd's answer, at the same paths in the guest.
libraries_native() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3, $3 } $1 ~ /^\// { print $1, $1 }'
}
# Another architecture: its NEEDED entries, transitively, each from the
# object's RUNPATH (the build tree: same path in the guest) or else from the
# cross toolchain's target libraries.
triplet=aarch64-linux-gnu
target_libs=/usr/$triplet/lib
loader=/lib/ld-linux-aarch64.so.1  # the ABI's interpreter path
readelf_target=$triplet-readelf
libraries_cross() {
  # (grep reads all of readelf's output: with pipefail, a readelf killed by
  # SIGPIPE after an early match would fail the test.)
  if $readelf_target -l "$1" | grep 'program interpreter' >/dev/null; then
    echo "$target_libs/${loader##*/} $loader"
  fi
  local queue=("$1") seen=" ${loader##*/} " file name dir found runpath
  while [ ${#queue[@]} -gt 0 ]; do
    file=${queue[0]}
    queue=("${queue[@]:1}")
    runpath=$($readelf_target -d "$file" | sed -n 's/.*(R[UN]*PATH).*\[\(.*\)\]$/\1/p')
    runpath=${runpath//\$ORIGIN/$(dirname "$file")}
    for name in $($readelf_target -d "$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
      case "$seen" in *" $name "*) continue ;; esac
      seen+="$name "
      found=
      for dir in ${runpath//:/ }; do
        if [ -e "$dir/$name" ]; then
          found=$dir/$name
          echo "$found $found"
          break
        fi
      done
      if [ -z "$found" ]; then
        found=$target_libs/$name
        [ -e "$found" ] || { echo "initramfs.sh: $name (needed by $file) not found" >&2; return 1; }
        echo "$found /lib/$triplet/$name"
      fi
      queue+=("$found")
    done
  done
}

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging"/{bin,dev,proc,sys,tmp,opt/percpu,job}
cp "$busybox" "$staging/bin/busybox"
cp "$root_dir/scripts/vm/init" "$staging/init"
chmod 755 "$staging/init"

# Each program, the plugins at their host path, and what they load.
copies=$staging/.copies
for program in "${programs[@]}" "${host_path_files[@]}"; do
  case " ${host_path_files[*]} " in
    *" $program "*) echo "$program $program" ;;
    *) cp "$program" "$staging/opt/percpu/" ;;
  esac
  if [ "$arch" = amd64 ]; then libraries_native "$program"; else libraries_cross "$program"; fi
done >"$copies"
sort -u "$copies" | while read -r from to; do
  mkdir -p "$staging$(dirname "$to")"
  cp -L "$from" "$staging$to"
done
rm "$copies"

mkdir -p "$(dirname "$out")"
(cd "$staging" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$out.tmp"
mv "$out.tmp" "$out"
echo "$out: $(du -h "$out" | cut -f1)" >&2
