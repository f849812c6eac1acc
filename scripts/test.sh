#!/usr/bin/env bash
# Installs the build dependencies if missing (apt-get: root or sudo), then configures, builds
# and runs every test twice: Release in build/, AddressSanitizer + UBSan in build-asan/.
# JOBS sets the build parallelism (default: all cores). Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
octet_install_deps

jobs=${JOBS:-$(nproc)}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()

suite() {  # suite NAME BUILD_DIR CMAKE_ARGS...
  local name=$1 dir=$2
  shift 2
  local start=$SECONDS
  echo "==> $name: configure + build in $dir/"
  if ! cmake -S . -B "$dir" --log-level=WARNING -Wno-dev "$@" ||
     ! cmake --build "$dir" -j "$jobs" -- --no-print-directory; then
    echo "!!! $name: build failed" >&2
    failed+=("$name build")
    return 0
  fi
  echo "==> $name: tests"
  if ! ctest --test-dir "$dir" --output-on-failure -j2 --timeout 600; then
    failed+=("$name tests")
  fi
  echo "==> $name: $((SECONDS - start)) s"
}

suite "Release" build -DCMAKE_BUILD_TYPE=Release
suite "ASan+UBSan" build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOCTET_SANITIZE=ON

if [ ${#failed[@]} -gt 0 ]; then
  printf '!!! FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "==> all tests passed (Release and ASan+UBSan)"
