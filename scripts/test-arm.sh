#!/usr/bin/env bash
# Cross-builds the kernels layer for aarch64 (Release, build-arm64/) and runs its tests under
# qemu (-cpu max, so the NEON + dotprod backend is the one selected), then once more with
# OCTET_KERNELS=scalar. Needs g++-aarch64-linux-gnu and qemu-user (Debian), plus doctest-dev.
# Only the kernels: the other layers would need arm64 builds of every library, and Debian's
# libsentencepiece cannot be installed for amd64 and arm64 at once.
# JOBS sets the build parallelism (default: all cores). Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "error: $tool missing (apt-get install g++-aarch64-linux-gnu qemu-user)" >&2; exit 1; }
done

jobs=${JOBS:-$(nproc)}
dir=build-arm64
start=$SECONDS
echo "==> arm64: configure + build in $dir/"
cmake -S . -B "$dir" --log-level=WARNING -Wno-dev -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DOCTET_KERNELS_ONLY=ON
cmake --build "$dir" -j "$jobs" -- --no-print-directory
echo "==> arm64: build $((SECONDS - start)) s"

# ctest runs each test through CMAKE_CROSSCOMPILING_EMULATOR (qemu-aarch64).
for kernels in "" scalar; do
  echo "==> arm64 tests under qemu (backend: ${kernels:-best available})"
  OCTET_KERNELS=$kernels ctest --test-dir "$dir" --output-on-failure -j2 --timeout 900
done
echo "==> arm64: done in $((SECONDS - start)) s"
