#!/usr/bin/env bash
# Builds the emulated machines' initramfs: busybox, the guest init, and the
# release build's test programs with the shared libraries they load.
#
# Problem: a guest has no disk; everything it runs must be in one cpio
# archive the kernel unpacks into its root file system.  The programs are
# the release build's, exactly as the host tests them (dynamically linked
# against Debian's libstdc++ and glibc), so the archive also holds every
# shared library they need, at the path the dynamic loader looks for it,
# and the loader itself.  The archive is left uncompressed: the guest's
# emulated CPU would take longer to decompress it than the host takes to
# hand it over.
#
# The job a guest runs is not in this archive: scripts/vm/boot.sh appends a
# small second archive holding /job/run.sh (the kernel unpacks concatenated
# archives in turn), so one common archive serves every run.
#
# Usage: scripts/vm/initramfs.sh OUTPUT.cpio [BUILD_DIR]   (default build/release;
#        percpu_debug_tests from PERCPU_VM_DEBUG_BUILD, default build/debug)
# The programs land in /opt/percpu/ in the guest.
set -euo pipefail

out=${1:?usage: initramfs.sh OUTPUT.cpio [BUILD_DIR]}
root_dir=$(cd "$(dirname "$0")/../.." && pwd)
build=${2:-$root_dir/build/release}
# The debug checks and fault injection exist only in a library built with
# them (percpu/runtime/config.hpp.in): their program comes from the debug
# build.
debug_build=${PERCPU_VM_DEBUG_BUILD:-$root_dir/build/debug}
busybox=${PERCPU_VM_BUSYBOX:-/bin/busybox}

programs=(
  "$build/tests/percpu_tests"
  "$debug_build/tests/percpu_debug_tests"
  "$build/tests/percpu_static_init_tests"
  "$build/tools/percpu"
  "$build/tools/libpercpu_stress_plugin.so"
)
for program in "${programs[@]}"; do
  [ -r "$program" ] || { echo "initramfs.sh: $program is not built" >&2; exit 1; }
done
[ -x "$busybox" ] || { echo "initramfs.sh: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
  { echo "initramfs.sh: $busybox is not static (busybox-static)" >&2; exit 1; }

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging"/{bin,dev,proc,sys,tmp,opt/percpu,job}
cp "$busybox" "$staging/bin/busybox"
cp "$root_dir/scripts/vm/init" "$staging/init"
chmod 755 "$staging/init"

# The plugins the suite's plugin test loads by their build-tree path
# (tests/test_plugin.cpp): they go to that same path in the guest.
host_path_files=()
for plugin in "$build"/tests/libpercpu_dso*_plugin.so; do
  [ -r "$plugin" ] && host_path_files+=("$plugin")
done

# Each program and, at the same path as on the host, every shared object
# ldd resolves for it (the loader's line has no "=>") and the plugins.
for program in "${programs[@]}" "${host_path_files[@]}"; do
  case " ${host_path_files[*]} " in
    *" $program "*) echo "$program" ;;
    *) cp "$program" "$staging/opt/percpu/" ;;
  esac
  ldd "$program" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
  mkdir -p "$staging$(dirname "$lib")"
  cp -L "$lib" "$staging$lib"
done

mkdir -p "$(dirname "$out")"
(cd "$staging" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$out.tmp"
mv "$out.tmp" "$out"
echo "$out: $(du -h "$out" | cut -f1)" >&2
