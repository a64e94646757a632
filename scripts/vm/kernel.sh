#!/usr/bin/env bash
# Prints the path of a Debian 12 kernel image for the emulated machines,
# fetching its package on first use.
#
# Problem: the guests must run the kernels users run, and nothing may be
# downloaded but Debian packages.  Debian 12 packages two x86-64 cloud
# kernels: 6.1 (linux-image-cloud-amd64: no mm_cid, no AT_RSEQ_FEATURE_SIZE)
# and 6.12 (linux-image-6.12-cloud-amd64: mm_cid, feature size 28).  Neither
# needs to be installed on the host: the package is fetched with
# `apt-get download` and only its /boot is unpacked (scripts/vm/deb.sh),
# into a cache under build/ that later runs reuse.  A kernel already
# installed in /boot is used as it is.
#
# Usage: scripts/vm/kernel.sh 6.1|6.12 [CACHE_DIR]   (default build/vm/kernels)
# Environment: PERCPU_VM_ARCH=amd64 (the package architecture; arm64 for the
# arm64 guests, which need `dpkg --add-architecture arm64` first: the same
# series, linux-image-cloud-arm64 and linux-image-6.12-cloud-arm64).
set -euo pipefail

series=${1:?usage: kernel.sh 6.1|6.12 [CACHE_DIR]}
cache=${2:-$(cd "$(dirname "$0")/../.." && pwd)/build/vm/kernels}
arch=${PERCPU_VM_ARCH:-amd64}

# The meta-package of each series names the current image package in its
# Depends line (for example linux-image-6.1.0-57-cloud-amd64).
case "$series" in
  6.1) meta=linux-image-cloud-$arch ;;
  6.12) meta=linux-image-6.12-cloud-$arch ;;
  *) echo "kernel.sh: unknown kernel series '$series' (6.1 or 6.12)" >&2; exit 2 ;;
esac

image_package() {
  apt-cache depends "$meta:$arch" 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { sub(/:.*/, "", $2); print $2; exit }'
}

package=$(image_package)
if [ -z "$package" ]; then
  # A fresh machine may not have read the package lists yet.
  apt-get update >&2
  package=$(image_package)
fi
[ -n "$package" ] || { echo "kernel.sh: no package found for $meta" >&2; exit 1; }
release=${package#linux-image-}

# An installed kernel of that release needs no download.
if [ -r "/boot/vmlinuz-$release" ]; then
  echo "/boot/vmlinuz-$release"
  exit 0
fi

dir=$cache/$release
image=$dir/boot/vmlinuz-$release
if [ ! -s "$image" ]; then
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/download.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # The signed image of the 6.12 series boots as the unsigned one does (no
  # Secure Boot in these guests); the unsigned package is smaller to unpack.
  candidates=("$package-unsigned:$arch" "$package:$arch")
  fetched=
  for candidate in "${candidates[@]}"; do
    if "$(dirname "$0")/deb.sh" "$candidate" "$work" ./boot; then
      fetched=$candidate
      break
    fi
  done
  [ -n "$fetched" ] || { echo "kernel.sh: apt-get download $package:$arch failed" >&2; exit 1; }
  mkdir -p "$dir/boot"
  cp "$work/boot/vmlinuz-$release" "$work/boot/config-$release" "$dir/boot/"
fi
echo "$image"
