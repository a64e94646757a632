#!/usr/bin/env bash
# Turns the stack words of a hung guest command into function names.
#
# Problem: when a guest's command outlives RUN_TIMEOUT, the guest's init
# (scripts/vm/init, hung) prints each thread's system call, its kernel
# stack's top, and the words of its user stack that point into mapped code
# ("@@vm hang stack TID FILE+OFFSET..."), then sends SIGQUIT, on which
# `percpu stress` writes each thread's call stack ("stack TID: ADDRESS...");
# the guest has no debugger, and the host has the programs with their
# symbols.  This script looks each word up with addr2line in the host's
# copy of the file: the build tree's programs, the target's libraries for
# arm64 guests (/usr/aarch64-linux-gnu/lib), the host's own for x86-64
# guests.  The words
# of the init's scan are not an unwinding: the frames of calls that already
# returned show up too, so read each list from the top (the innermost
# frame) and trust a caller only where it calls the frame above it; a
# program's own call stack is exact.
#
# Usage: scripts/vm/symbolize.sh LOG [BUILD_DIR...]
#        (default build/aarch64 for an arm64 guest's log, else build/release
#        and build/debug)
set -euo pipefail

log=${1:?usage: symbolize.sh LOG [BUILD_DIR...]}
shift
root_dir=$(cd "$(dirname "$0")/../.." && pwd)
if grep -q '/lib/aarch64-linux-gnu/' "$log"; then
  addr2line=aarch64-linux-gnu-addr2line target_libs=/usr/aarch64-linux-gnu/lib back=4
  [ $# -gt 0 ] || set -- "$root_dir/build/aarch64"
else
  addr2line=addr2line target_libs='' back=1
  [ $# -gt 0 ] || set -- "$root_dir/build/release" "$root_dir/build/debug"
fi
builds=("$@")

# The host's copy of a file the guest mapped.
host_file() {
  local name=${1##*/} dir found
  case "$1" in
    /opt/percpu/*)
      for dir in "${builds[@]}"; do
        found=$(find "$dir" -name "$name" -type f 2>/dev/null | sed -n 1p)
        [ -z "$found" ] || { echo "$found"; return; }
      done
      ;;
    /lib/*aarch64*) [ -z "$target_libs" ] || echo "$target_libs/$name" ;;
    *) [ ! -e "$1" ] || echo "$1" ;;
  esac
}

# The log's threads as "thread TID: ..." headers and FILE+OFFSET words:
# the init's scan of each stack, then the call stacks a program wrote
# itself on SIGQUIT ("stack TID: ADDRESS..."), whose addresses the map lines
# turn into FILE+OFFSET.
threads() {
  tr -d '\r' <"$log" | awk '
    function hex(s,   i, n) {
      s = tolower(s); sub(/^0x/, "", s); n = 0
      for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
      return n
    }
    $1 == "@@vm" && $2 == "hang" && $3 == "map" && $6 ~ /x/ && $NF ~ /^[\/[]/ {
      split($5, r, "-"); n++; lo[n] = hex(r[1]); hi[n] = hex(r[2]); off[n] = hex($7); file[n] = $NF
      next
    }
    $1 == "@@vm" && $2 == "hang" && $3 == "task" {
      line = $0; sub(/^@@vm hang task [^ ]*\//, "", line); sub(/ allowed=.*/, "", line)
      sub(/ /, ": ", line)
      print "thread " line; next
    }
    $1 == "@@vm" && $2 == "hang" && $3 == "stack" {
      out = ""; for (i = 5; i <= NF; i++) out = out " " $i
      print "words" out; next
    }
    $1 == "stack" && $2 ~ /^[0-9]+:$/ {
      print "thread " substr($2, 1, length($2) - 1) ": its own call stack (SIGQUIT)"
      out = ""
      for (i = 3; i <= NF; i++) {
        a = hex($i)
        for (k = 1; k <= n; k++) {
          if (a >= lo[k] && a < hi[k]) { out = out " " file[k] "+" sprintf("0x%x", a - lo[k] + off[k]); break }
        }
      }
      print "words" out
    }'
}

threads | while read -r kind rest; do
  if [ "$kind" = thread ]; then
    echo "thread $rest"
    continue
  fi
  for word in $rest; do
    file=${word%+0x*}
    offset=${word##*+}
    host=$(host_file "$file")
    [ -n "$host" ] || { echo "    $word"; continue; }
    function=$($addr2line -f -C -e "$host" "$(printf '0x%x' $((offset - back)))" | sed -n 1p)
    echo "    ${file##*/}+$offset  $function"
  done
done
