#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite. This is the README's test
# command and exactly what .ci/run calls.
#   TOKENVAULT_BUILD_DIR  build directory (default: build)
#   TOKENVAULT_SANITIZE=1 build and test with AddressSanitizer + UndefinedBehaviorSanitizer
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

build_dir="${TOKENVAULT_BUILD_DIR:-build}"
sanitize=OFF
if [ "${TOKENVAULT_SANITIZE:-0}" = "1" ]; then
  sanitize=ON
  build_dir="${TOKENVAULT_BUILD_DIR:-build-asan}"
  # LeakSanitizer included: the suite has no leaks, SoftHSM2 included.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
fi

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOKENVAULT_SANITIZE="$sanitize"
cmake --build "$build_dir" -j "$(nproc)"
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" --timeout 600
