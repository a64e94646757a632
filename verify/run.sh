#!/usr/bin/env bash
# verify/run.sh - model-checks percpu's concurrency protocols with spin.
#
# Each model in verify/ is checked exhaustively in its correct form, which
# must show no violation, and in each deliberately broken variant, which
# must make spin report one: a check that cannot fail proves nothing.
# Models and what they state: docs/reliability.md, "Model checking".
#
# Usage: verify/run.sh [--trails]
#   --trails  also print the end of spin's replay of each violation found.
# Exits non-zero when spin or gcc is missing or any expectation fails.
# pan is built and run in a temporary directory; the tree is not written.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
trails=0
[ "${1:-}" = "--trails" ] && trails=1

if ! command -v spin >/dev/null 2>&1; then
  echo "verify/run.sh: spin is not installed (Debian: apt-get install spin)" >&2
  exit 2
fi
if ! command -v gcc >/dev/null 2>&1; then
  echo "verify/run.sh: gcc is needed to build spin's verifiers (apt-get install gcc)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/percpu-verify.XXXXXX")
trap 'rm -rf "$work"' EXIT

failures=0
runs=0

# check MODEL EXPECT [DEFINE...]: EXPECT is "pass" (no violation, search
# complete) or "fail" (spin reports an error).
check() {
  local model=$1 expect=$2
  shift 2
  local defines=("$@")
  local define="${defines[*]}"
  local name=${model%.pml}${define:+ $define}
  local dir="$work/$((runs++))"
  mkdir -p "$dir"
  cp "$here/$model" "$dir/"
  local out
  if ! out=$(cd "$dir" && spin "${defines[@]}" -a "$model" 2>&1 &&
    gcc -O2 -w -DSAFETY -DCOLLAPSE -DMEMLIM=2048 -o pan pan.c 2>&1 &&
    ./pan -m100000 2>&1); then
    echo "FAIL  $name: spin or pan did not run:"
    echo "$out" | tail -20
    failures=$((failures + 1))
    return
  fi
  local errors states depth seconds violation
  errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' <<<"$out" | head -1)
  states=$(sed -n 's/^ *\([0-9e.+]*\) states, stored.*/\1/p' <<<"$out" | head -1)
  depth=$(sed -n 's/.*depth reached \([0-9]*\),.*/\1/p' <<<"$out" | head -1)
  seconds=$(sed -n 's/^pan: elapsed time \([0-9.e+]*\) seconds.*/\1/p' <<<"$out" | head -1)
  violation=$(grep -m1 -E '^pan:[0-9]+: ' <<<"$out" | sed 's/^pan:[0-9]*: //' || true)
  local figures="$states states, depth $depth, ${seconds:-0} s"
  local incomplete=""
  grep -qE 'max search depth too small|out of memory|aborting' <<<"$out" && incomplete=yes
  if [ -z "$errors" ]; then
    echo "FAIL  $name: no result from pan:"
    echo "$out" | tail -20
    failures=$((failures + 1))
  elif [ "$expect" = pass ]; then
    if [ "$errors" = 0 ] && [ -z "$incomplete" ]; then
      echo "ok    $name: no violation, full search ($figures)"
    else
      echo "FAIL  $name: expected no violation, got ${violation:-an incomplete search} ($figures)"
      failures=$((failures + 1))
    fi
  else
    if [ "$errors" != 0 ]; then
      echo "ok    $name: violation found as expected: $violation ($figures)"
    else
      echo "FAIL  $name: this broken variant must fail, but spin found no violation ($figures)"
      failures=$((failures + 1))
    fi
  fi
  if [ "$trails" = 1 ] && [ "$errors" != 0 ] && [ -f "$dir/$model.trail" ]; then
    # The replay, less blank lines and the no-op steps of if/else and loops.
    (cd "$dir" && spin "${defines[@]}" -t -p "$model" 2>&1 |
      grep -vE '^\s*$|\[\(1\)\]$|\[else\]$' | tail -40 | sed 's/^/      /')
  fi
}

start=$(date +%s)
check stop_fence_visit.pml pass
check stop_fence_visit.pml fail -DBROKEN_READ_BEFORE_STOP
check stop_fence_visit.pml fail -DBROKEN_NO_FENCE
check pool_invalidate.pml pass
check pool_invalidate.pml fail -DBROKEN_BUMP_AFTER_FENCE
check pool_invalidate.pml fail -DBROKEN_REFILL_GUARD_CURRENT
check pool_invalidate.pml fail -DBROKEN_UNGUARDED_PUT
check pool_local.pml pass
check pool_local.pml fail -DBROKEN_REFILL_STALE_CPU
check pool_local.pml fail -DBROKEN_COUNT_READ_OUTSIDE
check pool_local.pml fail -DBROKEN_LOCAL_NO_FENCE
check rwlock_bias.pml pass
check rwlock_bias.pml pass -DNREADER=2 -DREADS=1
check rwlock_bias.pml fail -DBROKEN_NO_REVOKED_FENCE
check rwlock_bias.pml fail -DBROKEN_NO_MEMBARRIER
check rwlock_bias.pml fail -DBROKEN_STALE_BIAS_CHECK
check rwlock_bias.pml fail -DBROKEN_REARM_WITHOUT_EXCLUSION
elapsed=$(($(date +%s) - start))

if [ "$failures" -ne 0 ]; then
  echo "verify: $failures of $runs model checks did not meet their expectation (${elapsed} s)"
  exit 1
fi
echo "verify: all $runs model checks met their expectation (${elapsed} s)"
