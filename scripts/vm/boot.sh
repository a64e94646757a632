#!/usr/bin/env bash
# Boots one emulated machine (x86-64 or arm64), runs a job in it, and says
# how it went.
#
# Problem: the guest is a real kernel under QEMU's TCG emulation (no KVM
# here), so a run can end four ways that must not be confused: every
# command passed; a command failed (a bug of percpu, or of its tests); the
# guest kernel crashed (TCG guests occasionally do by themselves, so the
# machine is booted once more before that counts); the guest hung (the
# time-out).  The guest's init (scripts/vm/init) prints "@@vm" markers on
# the serial console; this script reads them from the console log.
#
# Usage: scripts/vm/boot.sh --kernel 6.1|6.12|PATH --smp SPEC --job FILE
#          --log FILE [--arch amd64|arm64] [--initramfs FILE]
#          [--timeout SECONDS] [--mem SIZE] [--append KERNEL_ARGS]
#          [--accel QEMU_ACCEL] [--numa CPUS,CPUS,...]
#   --arch     amd64 (default): qemu-system-x86_64; arm64:
#              qemu-system-aarch64's virt board with -cpu max (the kernel
#              named by series is then Debian's arm64 cloud kernel)
#   --smp      QEMU's -smp value, for example 8,maxcpus=64
#   --job      a shell fragment the guest's init sources (see scripts/vm/init)
#   --log      the serial console log; a failed try's log is kept as LOG.1
#   --numa     one NUMA node per CPU range (0-1,2-3: two nodes), the memory
#              shared out evenly
# Prints one line per command ("  NAME  rc=0  12 s  PASS") and the machine
# line.  Exit status: 0 all passed, 1 a command failed, 2 the kernel
# crashed twice, 3 time-out, 4 the guest ended without its final marker.
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/../.." && pwd)
kernel='' smp='' job='' log='' arch=amd64 initramfs=
timeout_s=1200 mem=2G append='' accel= numa=
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel=$2 ;;
    --smp) smp=$2 ;;
    --job) job=$2 ;;
    --log) log=$2 ;;
    --arch) arch=$2 ;;
    --initramfs) initramfs=$2 ;;
    --timeout) timeout_s=$2 ;;
    --mem) mem=$2 ;;
    --append) append=$2 ;;
    --accel) accel=$2 ;;
    --numa) numa=$2 ;;
    *) echo "boot.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
if [ -z "$kernel" ] || [ -z "$smp" ] || [ -z "$job" ] || [ -z "$log" ]; then
  echo "boot.sh: --kernel, --smp, --job and --log are required" >&2
  exit 2
fi
case "$arch" in
  amd64) initramfs=${initramfs:-$root_dir/build/vm/initramfs.cpio} ;;
  arm64) initramfs=${initramfs:-$root_dir/build/vm-arm64/initramfs.cpio} ;;
  *) echo "boot.sh: unknown architecture '$arch' (amd64, arm64)" >&2; exit 2 ;;
esac
[ -r "$initramfs" ] || { echo "boot.sh: no initramfs at $initramfs (scripts/vm/initramfs.sh)" >&2; exit 2; }

image=$kernel
[ -f "$image" ] || image=$(PERCPU_VM_ARCH=$arch "$root_dir/scripts/vm/kernel.sh" "$kernel")

# Multi-threaded TCG (one host thread per vCPU): with one host thread for
# all vCPUs (thread=single) QEMU switches between them only every 100 ms
# while a vCPU spins, so every hand-off between two CPUs (a call and its
# reply, a fence) costs up to that, and the suite takes hours.  The 6.12
# kernel was once seen to panic at boot under QEMU 7.2's multi-threaded TCG
# (an int3 while it patched its own text); a crashed boot is retried below,
# and PERCPU_VM_ACCEL=tcg,thread=single boots it the slow way.  With many
# vCPUs on few host CPUs, multi-threaded TCG boots slowly or not at all
# (64 vCPUs on 2 host CPUs did not boot in 3 minutes): boot few CPUs and
# leave the rest offline (the kernel's maxcpus=N) instead.
[ -n "$accel" ] || accel=${PERCPU_VM_ACCEL:-tcg}

# The job goes in a second archive appended to the common one.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/job"
cp "$job" "$work/root/job/run.sh"
(cd "$work/root" && find job | cpio --quiet -o -H newc -R 0:0) >"$work/job.cpio"
cat "$initramfs" "$work/job.cpio" >"$work/initrd.cpio"

# panic=-1 and -no-reboot: a kernel panic ends QEMU at once.  loglevel=5:
# the console shows warnings and worse (oopses, panics), not the boot chatter.
# The machine of each architecture, and its serial console.  arm64: QEMU's
# virt board with GICv3 (GICv2 stops at 8 CPUs), the emulator's every CPU
# feature (-cpu max) but with QEMU's own pointer-authentication cipher
# (pauth-impdef: the architected one costs TCG much time in every call and
# return of the pointer-authenticated kernel).
# shellcheck disable=SC2054  # commas inside QEMU's arguments
case "$arch" in
  amd64) machine=(qemu-system-x86_64 -cpu max) console=ttyS0 ;;
  arm64) machine=(qemu-system-aarch64 -machine virt,gic-version=3 -cpu max,pauth-impdef=on) console=ttyAMA0 ;;
esac
cmdline="console=$console panic=-1 loglevel=5 rdinit=/init $append"
# --numa A-B,C-D,...: one NUMA node per CPU range, the memory shared out
# evenly (in MiB: -m must then be given in G or M).
numa_args=()
if [ -n "$numa" ]; then
  IFS=, read -r -a ranges <<<"$numa"
  case $mem in
    *G) total_mb=$((${mem%G} * 1024)) ;;
    *M) total_mb=${mem%M} ;;
    *) echo "boot.sh: --numa wants --mem in G or M, not $mem" >&2; exit 2 ;;
  esac
  for i in "${!ranges[@]}"; do
    numa_args+=(-object "memory-backend-ram,id=m$i,size=$((total_mb / ${#ranges[@]}))M"
      -numa "node,nodeid=$i,cpus=${ranges[$i]},memdev=m$i")
  done
fi

# Kernel lines carry a timestamp; these mean the kernel itself failed.
# (arm64 says "Unable to handle kernel ..." and "Internal error: Oops".)
# Not a register dump alone: a WARNING prints one too ("RIP: 0010:..."),
# and the kernel goes on.  This pattern once held "RIP: 0010" and counted
# 6.12's boot-time warning of a last-level cache split across NUMA nodes
# (the `four` machine, before its -smp named two sockets) as a crash, twice,
# which failed a guest whose every command had passed.
crash_pattern='^\[ *[0-9]+\.[0-9]+\] (Kernel panic|Oops|BUG:|general protection fault|kernel BUG|Unable to handle kernel|Internal error)'
# Warnings are shown with the summary, not counted.
warning_pattern='^\[ *[0-9]+\.[0-9]+\] WARNING:'

boot_once() {
  local rc=0
  timeout -k 10 "$timeout_s" "${machine[@]}" "${numa_args[@]}" -accel "$accel" -m "$mem" -smp "$smp" \
    -nodefaults -display none -monitor none -serial stdio -no-reboot \
    -kernel "$image" -initrd "$work/initrd.cpio" -append "$cmdline" </dev/null >"$log" 2>&1 || rc=$?
  return $rc
}

# Classifies the log: prints the verdict word.
verdict() {
  local qemu_rc=$1
  tr -d '\r' <"$log" >"$log.clean" && mv "$log.clean" "$log"
  if grep -Eq "$crash_pattern" "$log"; then
    echo crash
  elif [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
    echo timeout
  elif ! grep -q '^@@vm done' "$log"; then
    echo incomplete
  elif grep -E '^@@vm end ' "$log" | grep -vq ' rc=0 '; then
    echo failed
  else
    echo passed
  fi
}

summarise() {
  sed -n 's/^@@vm machine/  machine:/p' "$log" | tail -n 1
  grep -E "$warning_pattern" "$log" | head -n 3 | sed 's/^/  kernel warning (not a failure): /' || true
  awk '/^@@vm end / {
         name = $3; rc = $4; secs = $5; sub(/^seconds=/, "", secs)
         extra = ""; for (i = 6; i <= NF; i++) extra = extra " " $i
         printf "  %-28s %-6s %5s s%s  %s\n", name, rc, secs, extra, rc == "rc=0" ? "PASS" : "FAIL"
       }' "$log"
  # A command begun but never ended: the machine died or hung inside it.
  awk '/^@@vm begin / { open[$3] = 1 } /^@@vm end / { delete open[$3] }
       END { for (n in open) printf "  %-28s never finished\n", n }' "$log"
  # What a failed command printed: each failed check of a gtest program
  # (the "Failure" line and the 8 after it, at most 80 lines: a CI log
  # that kept only the last lines named the failed test but not why), then
  # its last lines, with the kernel's word on a fatal signal (a hung
  # command's thread dump stays in the log: scripts/vm/symbolize.sh reads
  # it).
  awk -v console="$log" '/^@@vm hang / {
         if (/still running after/) print "  " substr($0, 6) " (the threads: scripts/vm/symbolize.sh " console ")"
         next
       }
       /^@@vm begin / { n = 0; f = 0; after = 0; next }
       /^@@vm end / && $4 != "rc=0" {
         if (f > 0) {
           printf "  --- %s, failed checks:\n", $3
           for (i = 0; i < f; i++) print "    " failures[i]
         }
         printf "  --- %s, last lines:\n", $3
         for (i = (n > 30 ? n - 30 : 0); i < n; i++) print "    " lines[i % 30]
         next
       }
       {
         if (/(^|: )Failure$/) after = 9
         if (after > 0 && f < 80) { failures[f++] = $0; after-- }
         lines[n % 30] = $0; n++
       }' "$log"
}

started=$(date +%s)
qemu_rc=0
boot_once || qemu_rc=$?
result=$(verdict "$qemu_rc")
if [ "$result" = crash ]; then
  echo "  the guest kernel crashed; booting once more (first console log kept as $log.1):"
  grep -E "$crash_pattern" "$log" | head -n 3 | sed 's/^/    /'
  mv "$log" "$log.1"
  qemu_rc=0
  boot_once || qemu_rc=$?
  result=$(verdict "$qemu_rc")
fi
summarise
echo "  guest: $result in $(($(date +%s) - started)) s (console log: $log)"
case "$result" in
  passed) exit 0 ;;
  failed) exit 1 ;;
  crash)
    grep -E "$crash_pattern" "$log" | head -n 5 | sed 's/^/    /'
    exit 2
    ;;
  timeout) exit 3 ;;
  *) tail -n 20 "$log" | sed 's/^/    /'; exit 4 ;;
esac
