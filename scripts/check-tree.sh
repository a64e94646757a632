#!/usr/bin/env bash
# check-tree.sh - the rules the tree's shape must keep (README, "Layout").
#
#   1. Layers: a file includes only from its own layer or a lower one.
#        1 runtime     include/percpu/runtime/**, src/runtime/**
#        2 core        include/percpu/core/**, src/core/**
#        3 facilities  the rest of include/percpu/** and of src/**
#        4 command     tools/**, bench/**
#      tests/ and examples/ may include anything.  An include is followed
#      to the file it names: "percpu/..." (or <percpu/...>) from include/,
#      any other quoted name from the including file's folder, then from
#      src/ (the library names its own headers from there:
#      "runtime/runtime_internal.hpp").  Names that resolve to no file of
#      the tree (system headers) are not checked.
#   2. Length: no .cpp or .hpp in include/, src/, tools/, bench/ or tests/
#      is over 600 lines.
#   3. Assembly: no asm statement (asm(, asm volatile, asm goto, __asm__)
#      outside include/percpu/runtime/detail/arch/.  An asm statement
#      whose template is empty (asm volatile("" ...): a compiler barrier
#      with no instruction, the same on every architecture) is not counted.
#      The benchmarks' floors (bench/rseq_raw.hpp: the least a restartable
#      sequence can cost, x86-64 only) are peers, not the library: they
#      must not go through its arch interface, or the floor would carry
#      what it measures; every other file of bench/ is held to the rule.
#   4. Map: README.md's "Layout" section names each folder of include/percpu/
#      and src/, and each of those folders has a README.md.
#   5. Backend: only the runtime asks which backend runs.  No file outside
#      include/percpu/runtime/ and src/runtime/ names `runtime.backend` or
#      `backend_code` (tests/ may, white-box); the sequences report
#      backend-neutral outcomes instead (runtime/detail/sequences.hpp).
#
# Each violation is printed as FILE:LINE: MESSAGE; the exit status is 1 if
# there is any, 0 otherwise.  Needs only bash, find and awk; builds nothing.
# Usage: scripts/check-tree.sh (from anywhere; it checks the tree it is in)
set -euo pipefail
cd "$(dirname "$0")/.."

max_lines=600

# Known violations, each with the reason it stands; the check passes them
# and says so.  Empty these, do not grow them.
#   FILE            what it breaks, and what removes it
allowed_long=(
  # (none)
)
allowed_asm=(
  # (none)
)

in_list() {
  local item=$1
  shift
  local x
  for x in "$@"; do [ "$x" = "$item" ] && return 0; done
  return 1
}

failures=0
report() {
  echo "$1" >&2
  failures=$((failures + 1))
}

mapfile -t sources < <(find include src tools bench tests examples -type f \
  \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' \) | LC_ALL=C sort)
mapfile -t all_files < <(find include src tools bench tests examples -type f | LC_ALL=C sort)

# ---- 1. layers --------------------------------------------------------------

layer_violations=$(
  printf '%s\n' "${all_files[@]}" | awk -v list_only=1 '
    # A path of the tree (no "./"), its layer: 1-4, 0 for tests/examples.
    function layer(p) {
      if (p ~ /^include\/percpu\/runtime\// || p ~ /^src\/runtime\//) return 1
      if (p ~ /^include\/percpu\/core\// || p ~ /^src\/core\//) return 2
      if (p ~ /^include\/percpu\// || p ~ /^src\//) return 3
      if (p ~ /^tools\// || p ~ /^bench\//) return 4
      return 0
    }
    function layer_name(n) {
      return n == 1 ? "runtime" : n == 2 ? "core" : n == 3 ? "facilities" : "command"
    }
    # Removes "." and "name/.." steps.
    function normalise(p,    parts, n, i, out, k) {
      n = split(p, parts, "/")
      k = 0
      for (i = 1; i <= n; i++) {
        if (parts[i] == "." || parts[i] == "") continue
        if (parts[i] == ".." && k > 0 && out[k] != "..") { k--; continue }
        out[++k] = parts[i]
      }
      p = ""
      for (i = 1; i <= k; i++) p = p (i > 1 ? "/" : "") out[i]
      return p
    }
    FNR == NR { exists[$0] = 1; next }
    FNR == 1 { own = layer(FILENAME); dir = FILENAME; sub(/\/[^\/]*$/, "", dir) }
    own == 0 { nextfile }
    /^[ \t]*#[ \t]*include[ \t]*[<"]/ {
      line = $0
      sub(/^[ \t]*#[ \t]*include[ \t]*/, "", line)
      quoted = substr(line, 1, 1) == "\""
      name = substr(line, 2)
      sub(/[">].*$/, "", name)
      target = ""
      if (name ~ /^percpu\//) {
        target = normalise("include/" name)
        # A header CMake generates from NAME.in (percpu/runtime/config.hpp).
        if (!(target in exists) && !((target ".in") in exists)) {
          printf "%s:%d: includes %s, which is not a file of include/\n", FILENAME, FNR, name
          next
        }
      } else if (quoted) {
        if (normalise(dir "/" name) in exists) target = normalise(dir "/" name)
        else if (FILENAME ~ /^src\// && (normalise("src/" name) in exists)) target = normalise("src/" name)
      }
      if (target == "") next
      theirs = layer(target)
      if (theirs > own) {
        printf "%s:%d: %s (%s, layer %d) includes %s (%s, layer %d): a lower layer may not include a higher one\n",
          FILENAME, FNR, FILENAME, layer_name(own), own, target, layer_name(theirs), theirs
      }
    }
  ' - "${sources[@]}"
)
if [ -n "$layer_violations" ]; then
  while IFS= read -r v; do report "$v"; done <<<"$layer_violations"
fi

# ---- 2. length --------------------------------------------------------------

for f in "${sources[@]}"; do
  case "$f" in
    include/* | src/* | tools/* | bench/* | tests/*) ;;
    *) continue ;;
  esac
  case "$f" in *.cpp | *.hpp) ;; *) continue ;; esac
  n=$(awk 'END { print NR }' "$f")
  [ "$n" -le "$max_lines" ] && continue
  if in_list "$f" "${allowed_long[@]}"; then
    echo "check-tree: allowed for now: $f has $n lines (over $max_lines)"
  else
    report "$f:$((max_lines + 1)): $n lines, over the limit of $max_lines (split it along its concerns)"
  fi
done

# ---- 3. assembly ------------------------------------------------------------

for f in "${sources[@]}"; do
  case "$f" in include/percpu/runtime/detail/arch/* | bench/rseq_raw.hpp) continue ;; esac
  # Comments dropped (a line's "//" onwards); empty-template asm skipped.
  hits=$(awk '
    { code = $0; sub(/\/\/.*$/, "", code) }
    code ~ /(^|[^A-Za-z0-9_])(asm[ \t]*(\(|volatile|goto|__volatile__)|__asm__)/ {
      if (code ~ /(asm|__asm__)[ \t]*(volatile|__volatile__)?[ \t]*\([ \t]*""[ \t]*[:)]/) next
      printf "%s:%d\n", FILENAME, FNR
    }' "$f")
  [ -n "$hits" ] || continue
  while IFS= read -r where; do
    if in_list "$f" "${allowed_asm[@]}"; then
      echo "check-tree: allowed for now: asm statement at $where"
    else
      report "$where: asm statement outside include/percpu/runtime/detail/arch/ (move it there behind an inline function)"
    fi
  done <<<"$hits"
done

# ---- 4. the map -------------------------------------------------------------

layout=$(awk '/^## Layout$/ { inside = 1; next } inside && /^## / { exit } inside' README.md)
[ -n "$layout" ] || report "README.md:1: no \"## Layout\" section"
for d in include/percpu/*/ src/*/; do
  d=${d%/}
  grep -qF "$d/" <<<"$layout" ||
    report "README.md:$(grep -n '^## Layout$' README.md | cut -d: -f1): the Layout section does not name $d/"
  [ -f "$d/README.md" ] || report "$d/README.md:1: missing (say what lives in $d/ and what it may include)"
done

# ---- 5. backend tests --------------------------------------------------------

for f in "${sources[@]}"; do
  case "$f" in include/percpu/runtime/* | src/runtime/* | tests/* | examples/*) continue ;; esac
  hits=$(awk '
    { code = $0; sub(/\/\/.*$/, "", code) }
    code ~ /runtime\.backend|backend_code/ { printf "%s:%d\n", FILENAME, FNR }' "$f")
  [ -n "$hits" ] || continue
  while IFS= read -r where; do
    report "$where: asks which backend runs (only the runtime may: use the neutral outcomes of runtime/detail/sequences.hpp, or a runtime call)"
  done <<<"$hits"
done

if [ "$failures" -ne 0 ]; then
  echo "check-tree: $failures violation(s)" >&2
  exit 1
fi
echo "check-tree: layers, file lengths, assembly, backend tests and the Layout map are in order"
