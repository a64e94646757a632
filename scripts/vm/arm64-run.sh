#!/usr/bin/env bash
# Runs commands in an emulated arm64 machine: Debian's arm64 cloud kernel in
# qemu-system-aarch64 (virt board, TCG, 4 CPUs, 1 GiB), booted straight into
# an initramfs that holds busybox, the given files and an init that runs the
# command, prints its exit status and powers the machine off.  Exits with
# the command's status (124: the time-out struck, 125: no status seen).
#
#   scripts/vm/arm64-run.sh [-t SECONDS] [-f FILE]... -- COMMAND [ARG]...
#
# -f FILE  copies FILE into the guest's /work (static binaries: the guest
#          has no shared libraries), repeatable;
# -t N     time-out for the whole run, boot included (default 600).
# COMMAND runs under busybox sh in /work, with /proc, /sys and /dev mounted.
# The console goes to stdout and to build/vm-arm64/console.log; the last
# lines give the boot time (kernel start to init) and the run's wall time.
# The kernel and busybox come from scripts/vm/arm64-fetch.sh (run first).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=build/vm-arm64
timeout=600
files=()
while [ $# -gt 0 ]; do
  case $1 in
    -t) timeout=$2; shift 2 ;;
    -f) files+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
if [ ! -e "$dir/vmlinuz" ] || [ ! -e "$dir/busybox" ]; then scripts/vm/arm64-fetch.sh >/dev/null; fi

root=$(mktemp -d "$dir/initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,work}
cp "$dir/busybox" "$root/bin/busybox"
for f in "${files[@]}"; do cp "$f" "$root/work/"; done
printf '%q ' "$@" >"$root/work/command"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "guest: init at $(cut -d ' ' -f 1 /proc/uptime) s of uptime, $(nproc) CPUs"
cd /work
start=$(cut -d ' ' -f 1 /proc/uptime)
sh /work/command
rc=$?
echo "guest: command took $(awk -v s="$start" '{ printf "%.1f", $1 - s }' /proc/uptime) s"
echo "guest: exit status $rc"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$dir/initramfs.cpio.gz"

log=$dir/console.log
begin=$(date +%s.%N)
rc=0
timeout "$timeout" qemu-system-aarch64 -machine virt -cpu max,pauth-impdef=on -accel tcg \
  -smp 4 -m 1024 -nographic -no-reboot \
  -kernel "$dir/vmlinuz" -initrd "$dir/initramfs.cpio.gz" \
  -append "console=ttyAMA0 rdinit=/init panic=-1 quiet" </dev/null | tee "$log" || rc=$?
end=$(date +%s.%N)
echo "host: qemu ran $(awk -v b="$begin" -v e="$end" 'BEGIN { printf "%.1f", e - b }') s"
[ "$rc" -ne 124 ] || { echo "host: time-out after $timeout s" >&2; exit 124; }
status=$(sed -n 's/^guest: exit status \([0-9]*\).*/\1/p' "$log" | tail -n 1)
[ -n "$status" ] || { echo "host: the guest gave no exit status" >&2; exit 125; }
exit "$status"
