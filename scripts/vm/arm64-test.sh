#!/usr/bin/env bash
# Cross-builds the aarch64 sequences' standalone tests (tests/arch, in the
# aarch64 preset's build tree) and runs both programs (release, and debug
# with fault injection) in a 4-CPU arm64 guest: the initramfs and the boot
# of the vm stages (scripts/vm/initramfs.sh and boot.sh with --arch arm64).
# Needs g++-aarch64-linux-gnu, qemu-system-arm and the arm64 package lists
# (`scripts/install-deps.sh vm-arm64` provides them).
#   scripts/vm/arm64-test.sh [STORM_SECONDS]   (default 2: about 2 minutes)
# Console log: build/vm-arm64/logs/arch-tests.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-2}
cmake --preset aarch64 >/dev/null
cmake --build --preset aarch64 -j "$(nproc)" --target rseq_aarch64_test rseq_aarch64_test_debug
bin=build/aarch64/tests/arch
dir=build/vm-arm64
mkdir -p "$dir/logs"
scripts/vm/initramfs.sh --arch arm64 "$dir/arch-tests.cpio" "$bin/rseq_aarch64_test" "$bin/rseq_aarch64_test_debug"
for program in rseq_aarch64_test rseq_aarch64_test_debug; do
  echo "run $program /opt/percpu/$program --seconds $seconds"
done >"$dir/arch-tests.job"
scripts/vm/boot.sh --arch arm64 --kernel 6.1 --smp 4 --initramfs "$dir/arch-tests.cpio" \
  --job "$dir/arch-tests.job" --log "$dir/logs/arch-tests.log" --timeout 900
