#!/usr/bin/env bash
# Fetches what an arm64 guest needs into build/vm-arm64/ (once): Debian's
# arm64 cloud kernel and busybox-static:arm64, unpacked from their packages.
# Needs the arm64 package lists: `dpkg --add-architecture arm64 && apt-get
# update` (done here when missing; that part needs root).  Nothing is
# installed on the host.
#
# Prints the kernel's path.  PERCPU_ARM64_KERNEL_PACKAGE picks another
# kernel package (default: what linux-image-cloud-arm64 depends on).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=build/vm-arm64
mkdir -p "$dir/debs"

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update >/dev/null
elif ! apt-cache show linux-image-cloud-arm64:arm64 >/dev/null 2>&1; then
  apt-get update >/dev/null
fi

# The versioned image the meta package points at now.
package=${PERCPU_ARM64_KERNEL_PACKAGE:-$(apt-cache depends linux-image-cloud-arm64:arm64 |
  sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n 1)}
package=${package%:arm64}
[ -n "$package" ] || { echo "arm64-fetch: no linux-image-cloud-arm64 in the package lists" >&2; exit 1; }

fetch() {  # package -> unpacked into $dir/root-<package>
  local name=$1 root=$dir/root-$1
  if [ ! -d "$root" ]; then
    # (apt warns that root downloads unsandboxed into a directory _apt
    # cannot write: expected here, so its messages show only on failure.)
    if ! (cd "$dir/debs" && apt-get download -q "$name:arm64") >"$dir/apt.log" 2>&1; then
      cat "$dir/apt.log" >&2
      exit 1
    fi
    local deb
    deb=$(ls -t "$dir"/debs/"${name}"_*_arm64.deb | head -n 1)
    rm -rf "$root.tmp"
    dpkg-deb -x "$deb" "$root.tmp"
    mv "$root.tmp" "$root"
  fi
}
fetch "$package"
fetch busybox-static

kernel=$(ls "$dir/root-$package"/boot/vmlinuz-* | head -n 1)
ln -sfr "$kernel" "$dir/vmlinuz"
ln -sfr "$dir/root-busybox-static/bin/busybox" "$dir/busybox"
echo "$dir/vmlinuz -> $kernel"
