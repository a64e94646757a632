#!/usr/bin/env bash
# Fetches one Debian package with `apt-get download` and unpacks it, or the
# named parts of it, into a directory; nothing is installed on the host.
#
# Problem: the emulated machines need files from Debian packages that must
# not be installed here: kernels, and for the arm64 guests the arm64 build
# of busybox-static.  Nothing but Debian packages may be downloaded, so
# those files come out of the packages themselves.  A package of another
# architecture (PACKAGE:arm64) needs that architecture in dpkg's list
# (`dpkg --add-architecture arm64 && apt-get update`, which
# scripts/install-deps.sh does for the vm-arm64 stage).
#
# Usage: scripts/vm/deb.sh PACKAGE[:ARCH] DIR [MEMBER...]
#   MEMBER   a path inside the package (./boot, ./bin/busybox); default all
# Exit status 1 when the package cannot be downloaded (apt's messages on
# stderr); DIR is then left as it was.
set -euo pipefail

package=${1:?usage: deb.sh PACKAGE[:ARCH] DIR [MEMBER...]}
dir=${2:?usage: deb.sh PACKAGE[:ARCH] DIR [MEMBER...]}
shift 2
mkdir -p "$dir"
work=$(mktemp -d "$dir/.download.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0777 "$work"  # apt-get download writes as the _apt user where it can
(cd "$work" && apt-get download -q "$package") >"$work/apt.log" 2>&1 ||
  { cat "$work/apt.log" >&2; exit 1; }
debs=("$work"/*.deb)
dpkg-deb --fsys-tarfile "${debs[0]}" | tar -x -C "$dir" "$@"
