#!/usr/bin/env bash
# The `vm` and `vm-arm64` stages of scripts/test-all.sh: the suite and
# `percpu stress` on emulated machines shaped like the ones users run.
#
# Problem: the host that runs the other stages has one kernel and 2 CPUs,
# all online.  Users run wide machines that announce far more possible CPUs
# than are online, CPUs that go offline and come back under a running
# program, sparse online sets, and older kernels.  QEMU's TCG runs Debian's
# real kernels with real rseq and membarrier on as many virtual CPUs as
# asked, so each of those shapes is booted here:
#   wide     64 possible CPUs, 8 online: the suite on the rseq and (6.1
#            only) the portable backend, `percpu info`; then, in the same guest,
#            `percpu stress` on each backend while CPUs go offline and
#            online every half second;
#   sparse   16 possible CPUs, only 0, 3, 5 and 6 online before the
#            programs start: the suite on each backend;
#   narrow   8 possible CPUs, all online: `percpu info` and the broadcast
#            row of the bench, which 6.12's wide machine runs too, so that
#            the stage prints what 56 absent CPUs add to a broadcast;
#   four     4 CPUs, all online, on two NUMA nodes (CPUs 0-1 and 2-3):
#            `percpu memory`, the figures the wide machine's program
#            confined to 4 CPUs is held against, and the test that each
#            CPU's copy of per-CPU memory is on its node;
# the wide machine on each of Debian 12's two kernels, 6.1 (no mm_cid, no
# AT_RSEQ_FEATURE_SIZE: `percpu info` must show the index mode fall back,
# and PERCPU_INDEX=mm_cid be refused) and 6.12 (both: the suite and stress
# run with slots indexed by mm_cid there), the sparse one on 6.1 and the
# narrow and four ones on 6.12 (beside the 6.12 wide machine, whose 56
# absent CPUs are present but offline).  The wide machine is made two ways, both common in
# clouds: under 6.1, CPUs that are possible but not present (QEMU's
# maxcpus: slots for vCPUs plugged in later); under 6.12, which counts only
# present CPUs as possible under QEMU 7.2, 64 present CPUs of which the
# kernel brings up 8 (its maxcpus=8).  The sparse machine boots CPUs 0-6 of
# 16 and takes 1, 2 and 4 offline.
#
# The other architecture: users run arm64 too, whose weaker memory model
# and own sequences the x86-64 host cannot show.  `scripts/vm/stage.sh
# arm64` (the vm-arm64 stage) boots the aarch64 preset's cross build on
# QEMU's virt board under Debian's arm64 cloud kernel 6.1:
#   plain    4 CPUs, all online: `percpu info` and the suite in each of
#            three configurations (the default: rseq on glibc's
#            registration; GLIBC_TUNABLES=glibc.pthread.rseq=0: rseq on the
#            library's own; PERCPU_BACKEND=portable), `percpu info` checked
#            against each (scripts/vm/init's expect_backend), the debug and
#            static-initialisation programs, then `percpu stress` with every
#            PERCPU_ARM64_FAULT_ABORT_RATE-th sequence of each thread
#            aborted by the library's fault injection (the preset compiles
#            it in) while CPUs 2 and 3 go offline and online.
# Any shape can be asked of the x86-64 guests too (PERCPU_VM_SHAPES=plain).
#
# Time: TCG runs 10-100x slower than the host, and the stage must fit the
# CI budget.  The tests whose length only buys confidence (iteration
# counts, storm durations) honour PERCPU_TEST_SCALE (tests/test_scale.hpp);
# the guests run them at PERCPU_VM_TEST_SCALE.  The stress runs are sized
# by PERCPU_VM_STRESS_SECONDS (PERCPU_ARM64_STRESS_SECONDS for arm64).
#
# Usage: scripts/vm/stage.sh [amd64|arm64]   (default amd64; arm64 needs
#        the aarch64 preset built)
# Environment (defaults in brackets):
#   PERCPU_VM_KERNELS        kernel series to boot ["6.1 6.12"; arm64: see
#                            PERCPU_ARM64_KERNELS]
#   PERCPU_VM_SHAPES         machine shapes, for every kernel [6.1: "wide
#                            sparse", 6.12: "wide narrow"; each guest
#                            costs minutes of the CI budget]
#   PERCPU_VM_TEST_SCALE     PERCPU_TEST_SCALE in the guests [0.1]
#   PERCPU_VM_STRESS_SECONDS length of each stress run [90 rseq, half portable]
#   PERCPU_ARM64_KERNELS     kernel series of the arm64 guests ["6.1"]
#   PERCPU_ARM64_STRESS_SECONDS  length of the arm64 stress run [90]
#   PERCPU_ARM64_FAULT_ABORT_RATE  PERCPU_FAULT_ABORT_RATE of that run [1000]
#   PERCPU_VM_JOBS           guests booted at once [1: one guest's vCPUs
#                            already use every host CPU; two guests of 8 vCPUs
#                            on 2 host CPUs starved each other's hand-offs]
#   PERCPU_VM_COMMAND_TIMEOUT  seconds a guest's command may run before it
#                            counts as hung: its threads are shown, it is
#                            killed, the guest goes on [600; a stress run:
#                            its length and 120]
#   PERCPU_VM_GTEST_FILTER   narrows the suite while diagnosing [the whole
#                            suite; CI never sets it]
# Logs: build/vm/logs/<kernel>-<shape>.log (each guest's serial console;
# build/vm-arm64/logs/ for arm64).
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root_dir"
arch=${1:-amd64}
case "$arch" in
  amd64)
    kernels=${PERCPU_VM_KERNELS:-6.1 6.12}
    stress_seconds=${PERCPU_VM_STRESS_SECONDS:-90}
    build=build/release
    vm_dir=build/vm
    stage=vm
    ;;
  arm64)
    kernels=${PERCPU_ARM64_KERNELS:-6.1}
    stress_seconds=${PERCPU_ARM64_STRESS_SECONDS:-90}
    build=build/aarch64
    vm_dir=build/vm-arm64
    stage=vm-arm64
    ;;
  *) echo "stage.sh: unknown architecture '$arch' (amd64, arm64)" >&2; exit 2 ;;
esac
fault_rate=${PERCPU_ARM64_FAULT_ABORT_RATE:-1000}
shapes=${PERCPU_VM_SHAPES:-}
shapes_of() {
  if [ "$arch" = arm64 ]; then
    echo plain
  elif [ -n "$shapes" ]; then
    echo "$shapes"
  else
    case "$1" in
      6.1) echo wide sparse ;;
      6.12) echo wide narrow four ;;
      *) echo wide ;;
    esac
  fi
}
scale=${PERCPU_VM_TEST_SCALE:-0.1}
jobs=${PERCPU_VM_JOBS:-1}
command_timeout=${PERCPU_VM_COMMAND_TIMEOUT:-600}
# A stress run ends a few seconds after its time (its threads join, its
# last fork and plugin load finish); later than this, it hangs.
stress_slack=120
filter=${PERCPU_VM_GTEST_FILTER:+--gtest_filter=$PERCPU_VM_GTEST_FILTER}
logs=$vm_dir/logs
mkdir -p "$logs"

scripts/vm/initramfs.sh --arch "$arch" --build "$build" "$vm_dir/initramfs.cpio"
# Fetch the kernels before the guests start, one at a time.
for kernel in $kernels; do PERCPU_VM_ARCH=$arch scripts/vm/kernel.sh "$kernel" >/dev/null; done


# The guest's job for a shape (see scripts/vm/init for `offline`, `run`
# and HOTPLUG).  Every program runs with PERCPU_TEST_SCALE set; the
# hotplug test of the suite (PERCPU_TEST_HOTPLUG) may take CPUs offline,
# which only a guest allows.
write_job() {
  local kernel=$1 shape=$2 job=$3
  local suite=/opt/percpu/percpu_tests tool=/opt/percpu/percpu
  local broadcast="run bench.broadcast $tool bench --quick --filter xcall.broadcast"
  {
    echo "export PERCPU_TEST_SCALE=$scale PERCPU_TEST_HOTPLUG=1"
    echo "RUN_TIMEOUT=$command_timeout"
    if [ "$shape" = plain ]; then
      plain_job
      return
    fi
    if [ "$shape" = four ]; then
      echo "run info $tool info"
      echo "run memory $tool memory"
      echo "run numa $suite --gtest_filter=Storage.CopiesLiveOnTheirCpusNode"
      return
    fi
    [ "$shape" != sparse ] || echo "offline 1 2 4"
    echo "run info $tool info"
    [ "$shape" != narrow ] || echo "$broadcast"
    # The index modes (docs/design.md, section 6): on 6.1 auto falls back
    # to CPU numbers and mm_cid is refused; on 6.12's wide machine (8 of
    # 64 possible CPUs usable) auto picks mm_cid, and the suite runs in
    # that mode, as does the stress run under hotplug below.
    local index=
    if [ "$shape" = wide ] && [ "$kernel" = 6.1 ]; then
      echo "run index.auto expect_index cpu $tool info"
      echo "run index.mm_cid expect_index refused env PERCPU_INDEX=mm_cid $tool info"
    elif [ "$shape" = wide ]; then
      echo "run index.auto expect_index mm_cid $tool info"
      index=.mm_cid
      # Memory (issue: bounded by the parallelism): a program confined to
      # 4 of the 64 possible CPUs, in each index mode, beside the `four`
      # guest's whole machine of 4; and huge pages (6.12's THP is `always`)
      # against none, which fails above 1.25x.
      echo "run memory.thp $tool memory --compare-thp"
      echo "run memory.mm_cid env PERCPU_INDEX=mm_cid taskset -c 0-3 $tool memory"
      echo "run memory.cpu env PERCPU_INDEX=cpu taskset -c 0-3 $tool memory"
    fi
    if [ "$shape" != narrow ]; then
      echo "run suite.rseq$index env PERCPU_BACKEND=rseq ${index:+PERCPU_INDEX=mm_cid }$suite $filter"
      # The portable backend's suite on 6.1's machines only (it reads
      # nothing of rseq; its stress run below covers 6.12): 80 s of CI time.
      [ "$kernel:$shape" = 6.12:wide ] || echo "run suite.portable env PERCPU_BACKEND=portable $suite $filter"
      echo "run debug_checks $(dirname $suite)/percpu_debug_tests"
      echo "run static_init $(dirname $suite)/percpu_static_init_tests"
    fi
    if [ "$shape" = wide ]; then
      # Beside the narrow machine of the same kernel only (6.12's).
      [ "$kernel" = 6.1 ] || echo "$broadcast"
      # Four of the online CPUs go offline and come back in turn while
      # stress runs (CPU 0 cannot go offline).
      echo 'HOTPLUG="2 3 5 6"'
      echo "RUN_TIMEOUT=$((stress_seconds + stress_slack))"
      echo "run stress.rseq$index.hotplug $tool stress --backend rseq --seconds $stress_seconds"
      echo "run stress.portable.hotplug $tool stress --backend portable --seconds $((stress_seconds / 2))"
    fi
  } >"$job"
}

# The plain machine's job (write_job's variables): the suite in three of
# ctest's configurations (tests/CMakeLists.txt: default, own_rseq,
# portable), each after `percpu info` has shown the backend it must get
# (expect_backend in scripts/vm/init), then stress with aborts injected
# while two of the four CPUs go offline and online in turn.  The stress
# run's name says "faults": the results below then want aborted sequences
# wherever it ran on the rseq backend.
plain_job() {
  local own=GLIBC_TUNABLES=glibc.pthread.rseq=0 portable=PERCPU_BACKEND=portable
  echo "run info.default expect_backend glibc $tool info"
  echo "run suite.default $suite $filter"
  echo "run info.own_rseq expect_backend own env $own $tool info"
  echo "run suite.own_rseq env $own $suite $filter"
  echo "run info.portable expect_backend portable env $portable $tool info"
  echo "run suite.portable env $portable $suite $filter"
  echo "run debug_checks $(dirname $suite)/percpu_debug_tests"
  echo "run static_init $(dirname $suite)/percpu_static_init_tests"
  echo 'HOTPLUG="2 3"'
  echo "RUN_TIMEOUT=$((stress_seconds + stress_slack))"
  echo "run stress.faults.hotplug env PERCPU_FAULT_ABORT_RATE=$fault_rate $tool stress --seconds $stress_seconds"
}

# QEMU's -smp and the kernel's arguments of a shape: KERNEL SHAPE.
smp_of() {
  case "$2:$1" in
    wide:6.1) echo 8,maxcpus=64 ;;
    wide:*) echo 64 ;;
    sparse:6.1) echo 7,maxcpus=16 ;;
    sparse:*) echo 16 ;;
    narrow:*) echo 8 ;;
    plain:*) echo 4 ;;
    # Two sockets of two cores, one NUMA node each (numa_of): QEMU's
    # default for -smp 4 is one socket of four cores sharing a last-level
    # cache, which 6.12 finds split across nodes and warns of at boot.
    four:*) echo 4,sockets=2,cores=2,threads=1 ;;
  esac
}
append_of() {
  case "$2:$1" in
    wide:6.1 | sparse:6.1 | narrow:* | plain:* | four:*) echo "" ;;
    wide:*) echo maxcpus=8 ;;
    sparse:*) echo maxcpus=7 ;;
  esac
}

# The NUMA nodes of a shape, as boot.sh's --numa ("": one).
numa_of() {
  case "$1" in
    four) echo 0-1,2-3 ;;
    *) echo "" ;;
  esac
}

# Each guest in the background, at most $jobs at once; its report goes to
# a file printed when it ends, so that reports of parallel guests do not mix.
declare -A pid_of=()
results=()
start_guest() {
  local kernel=$1 shape=$2 name=$1-$2
  local job=$vm_dir/$name.job
  write_job "$kernel" "$shape" "$job"
  (
    started=$(date +%s)
    rc=0
    scripts/vm/boot.sh --arch "$arch" --kernel "$kernel" --smp "$(smp_of "$kernel" "$shape")" \
      --append "$(append_of "$kernel" "$shape")" --numa "$(numa_of "$shape")" --job "$job" \
      --log "$logs/$name.log" --timeout "${PERCPU_VM_TIMEOUT:-1500}" >"$logs/$name.report" 2>&1 || rc=$?
    echo "$rc $(($(date +%s) - started))" >"$logs/$name.rc"
  ) &
  pid_of[$name]=$!
}

finish_guest() {
  local name=$1
  wait "${pid_of[$name]}" || true
  unset "pid_of[$name]"
  local rc seconds
  read -r rc seconds <"$logs/$name.rc"
  echo "--- guest $name ($seconds s)"
  cat "$logs/$name.report"
  results+=("$name $rc $seconds")
}

stage_start=$(date +%s)
shape_list=${shapes:-6.1: $(shapes_of 6.1), 6.12: $(shapes_of 6.12)}
[ "$arch" = amd64 ] || shape_list=$(shapes_of "")
echo "=== $stage: kernels $kernels; shapes $shape_list; PERCPU_TEST_SCALE=$scale;" \
  "stress ${stress_seconds} s; $jobs guest(s) at a time${filter:+; suite $filter}"
queue=()
for kernel in $kernels; do
  for shape in $(shapes_of "$kernel"); do queue+=("$kernel $shape"); done
done
order=()
for entry in "${queue[@]}"; do
  read -r kernel shape <<<"$entry"
  while [ ${#pid_of[@]} -ge "$jobs" ]; do
    # The oldest guest still running: reports print in start order.
    finish_guest "${order[0]}"
    order=("${order[@]:1}")
  done
  start_guest "$kernel" "$shape"
  order+=("$kernel-$shape")
done
for name in "${order[@]}"; do finish_guest "$name"; done

# The table: one line per command of every guest.
echo "=== $stage: results"
printf '%-14s %-8s %-9s %-8s %-26s %-9s %6s  %s\n' kernel shape possible online command backend seconds result
failed=0
for entry in "${results[@]}"; do
  read -r name rc _ <<<"$entry"
  log=$logs/$name.log
  [ "$rc" -eq 0 ] || failed=1
  # A hotplug run must have had CPUs going away and back all along: an
  # event every four seconds at the least.  The guest's loop makes up to two
  # a second; taking a CPU down under emulation is slow, the more so on a
  # loaded host (78 in 60 s on a quiet one, 38 in 122 s with the host's
  # load at 14).
  # The backend column: what the command reported (stress's banner), or
  # what `percpu info` reported in the command's configuration (info.X for
  # NAME.X; info or info.default for a name without one), or else what the
  # name asks for.  A stress run says how many violations it found and, in
  # a library with fault injection, how many sequences it aborted; a run
  # named "faults" (PERCPU_FAULT_ABORT_RATE set) that had the rseq backend
  # must have aborted some.
  awk -v name="$name" '
    { sub(/\r$/, "") }  # a console log boot.sh could not clean up
    /^@@vm machine / {
      for (i = 3; i <= NF; i++) { split($i, kv, "="); m[kv[1]] = kv[2] }
    }
    /^@@vm begin / {
      cmd = $3; possible[cmd] = m["possible"]; online[cmd] = m["online"]; kernel = m["kernel"]
      stress_backend = ""; aborts = ""; violations = ""
      next
    }
    cmd ~ /^info/ && $1 == "backend" { conf = cmd; sub(/^info\.?/, "", conf); reported[conf == "" ? "default" : conf] = $2 }
    cmd != "" && /^percpu stress: .*, backend / { stress_backend = $0; sub(/.*, backend /, "", stress_backend); sub(/ .*/, "", stress_backend) }
    cmd != "" && /^faults injected: .* aborted sequences$/ { aborts = $(NF - 2) + 0 }
    cmd != "" && / s, seed [0-9]+: (PASS|FAIL) \([0-9]+ violations\)$/ { violations = $(NF - 1); sub(/^\(/, "", violations) }
    /^@@vm end / {
      rc = $4; secs = $5; sub(/^seconds=/, "", secs)
      conf = cmd; if (!sub(/^[^.]*\./, "", conf)) conf = "default"
      backend = stress_backend != "" ? stress_backend : (conf in reported) ? reported[conf] \
        : cmd ~ /portable/ ? "portable" : cmd ~ /rseq/ ? "rseq" \
        : ("default" in reported) ? reported["default"] : "default"
      split(name, parts, "-")
      result = rc == "rc=0" ? "pass" : "FAIL (" rc ")"
      if (violations != "") result = result ", " violations " violations"
      if (aborts != "") {
        result = result ", " aborts " aborted sequences"
        if (cmd ~ /faults/ && backend == "rseq" && aborts == 0) { result = result " (none injected)"; bad = 1 }
      }
      if ($NF == "hung") result = result ", hung: killed (the @@vm hang lines say where it was)"
      if ($6 ~ /^hotplug=/) {
        events = substr($6, 9) + 0
        result = result ", " events " hotplug events"
        if (events < secs / 4) { result = result " (too few)"; bad = 1 }
      }
      printf "%-14s %-8s %-9s %-8s %-26s %-9s %6s  %s\n", kernel, parts[2], possible[cmd], online[cmd], cmd, backend, secs, result
      cmd = ""
    }
    END {
      if (cmd != "") {
        split(name, parts, "-")
        printf "%-14s %-8s %-9s %-8s %-26s %-9s %6s  %s\n", kernel, parts[2], possible[cmd], online[cmd], cmd, "", "", "NEVER FINISHED"
        bad = 1
      }
      exit bad
    }' "$log" || failed=1
  case "$rc" in
    0) ;;
    2) echo "  $name: the guest kernel crashed twice" ;;
    3) echo "  $name: time-out" ;;
    4) echo "  $name: the guest ended without its final marker" ;;
  esac
done
# What the absent CPUs add to a broadcast: the wide machine's median
# against the narrow one's (printed, not judged: emulated timings vary with
# the host's load far more than the 1.5x that would be a bug).
broadcast_median() {
  [ -r "$1" ] || return 0
  awk '/^@@vm begin bench.broadcast/ { on = 1 } /^@@vm end bench.broadcast/ { on = 0 }
       on && $1 == "xcall.broadcast" && $3 == "percpu" { print $4; exit }' "$1"
}
for kernel in $kernels; do
  wide=$(broadcast_median "$logs/$kernel-wide.log")
  narrow=$(broadcast_median "$logs/$kernel-narrow.log")
  [ -n "$wide" ] && [ -n "$narrow" ] || continue
  echo "=== $stage: xcall.broadcast on $kernel: 64 possible / 8 online $wide ns," \
    "8 possible / 8 online $narrow ns: $(awk -v w="$wide" -v n="$narrow" 'BEGIN { printf "%.2fx", w / n }')"
done
echo "=== $stage: stage took $(($(date +%s) - stage_start)) s"
exit $failed
