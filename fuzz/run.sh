#!/usr/bin/env bash
# fuzz/run.sh BINARY SECONDS [libFuzzer flags...]
# Replays every past finding of the target (fuzz/regressions/<target>/, each must pass now), then
# fuzzes for SECONDS starting from its seed corpus (fuzz/corpus/<target>/, never written to: new
# inputs go to a temp dir). A finding is saved under $TOKENVAULT_FUZZ_ARTIFACTS (default: the
# current directory) and fails the run; copy it into fuzz/regressions/<target>/ once fixed.
set -euo pipefail
bin="$1"; seconds="$2"; shift 2
name="$(basename "$bin")"
here="$(cd "$(dirname "$0")" && pwd)"
artifacts="${TOKENVAULT_FUZZ_ARTIFACTS:-$PWD}"
mkdir -p "$artifacts"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dict=()
if [ -f "$here/dict/$name.dict" ]; then dict=("-dict=$here/dict/$name.dict"); fi
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

regressions=("$here/regressions/$name"/*)
if [ -e "${regressions[0]}" ]; then
  echo "fuzz: replaying ${#regressions[@]} past finding(s) of $name"
  "$bin" "${dict[@]}" "$@" "${regressions[@]}"
fi
echo "fuzz: $name for ${seconds}s from $here/corpus/$name"
# Not exec: the EXIT trap removes the work dir afterwards. set -e passes a finding's exit on.
"$bin" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$artifacts/$name-" \
  "${dict[@]}" "$@" "$work" "$here/corpus/$name"
