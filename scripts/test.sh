#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite twice. This is the README's test
# command and exactly what .ci/run calls.
#   1. The build that ships (GCC, RelWithDebInfo, in build/) and every test.
#   2. Every test again under AddressSanitizer + UndefinedBehaviorSanitizer + LeakSanitizer
#      (clang, in build-sanitize/), together with the libFuzzer targets of fuzz/: ctest replays
#      each one's seed corpus and past findings and fuzzes it briefly (fuzz/run.sh).
# Environment:
#   TOKENVAULT_QUICK=1     the first pass only (a quick check while developing; CI runs both)
#   TOKENVAULT_SANITIZE=1  the second pass only
#   TOKENVAULT_BUILD_DIR   build directory of the first pass (default: build)
#   TOKENVAULT_FUZZ_SECONDS  how long ctest fuzzes each target in the second pass (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

jobs="$(nproc)"
run_pass() {  # run_pass BUILD_DIR CMAKE_ARGS...
  local dir="$1"
  shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
  cmake --build "$dir" -j "$jobs"
  ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 600
}

if [ "${TOKENVAULT_SANITIZE:-0}" != "1" ]; then
  echo "== pass 1: the shipped build (GCC) =="
  run_pass "${TOKENVAULT_BUILD_DIR:-build}" -DTOKENVAULT_SANITIZE=OFF -DTOKENVAULT_FUZZ=OFF
fi

if [ "${TOKENVAULT_QUICK:-0}" != "1" ]; then
  echo "== pass 2: ASan + UBSan + LSan (clang), with the fuzz targets =="
  # LeakSanitizer included: the suite has no leaks, SoftHSM2 included.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  export TOKENVAULT_FUZZ_ARTIFACTS="$PWD/build-sanitize/fuzz-findings"
  CC=clang CXX=clang++ run_pass build-sanitize -DTOKENVAULT_FUZZ=ON \
    -DTOKENVAULT_FUZZ_SECONDS="${TOKENVAULT_FUZZ_SECONDS:-20}"
fi
