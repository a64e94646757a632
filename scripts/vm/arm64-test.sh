#!/usr/bin/env bash
# Cross-builds the aarch64 sequence tests (preset aarch64) and runs both
# programs (release, and debug with fault injection) in the arm64 guest of
# scripts/vm/arm64-run.sh.  Needs g++-aarch64-linux-gnu, qemu-system-arm and
# the arm64 package lists (scripts/vm/arm64-fetch.sh adds them).
#   scripts/vm/arm64-test.sh [STORM_SECONDS]   (default 2: about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-2}
cmake --preset aarch64 >/dev/null
cmake --build --preset aarch64 -j "$(nproc)"
scripts/vm/arm64-fetch.sh >/dev/null
bin=build/aarch64/tests/arch
scripts/vm/arm64-run.sh -t 900 -f $bin/rseq_aarch64_test -f $bin/rseq_aarch64_test_debug -- \
  sh -c "./rseq_aarch64_test --seconds $seconds; a=\$?; ./rseq_aarch64_test_debug --seconds $seconds; exit \$((a | \$?))"
