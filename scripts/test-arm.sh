#!/usr/bin/env bash
# Cross-builds the whole project for aarch64 (Release, build-arm64/) and runs every test under
# qemu (-cpu max, so the NEON + dotprod backend is the one selected), then the kernel tests once
# more with OCTET_KERNELS=scalar. Needs g++-aarch64-linux-gnu, qemu-user and doctest-dev, and the
# arm64 package lists (dpkg --add-architecture arm64 && apt-get update, as root: .ci/run does it).
# The arm64 libraries are not installed: Debian 12's libsentencepiece is not multiarch, so its
# arm64 package would replace the host's. Their packages (and what they depend on, less what the
# cross toolchain brings) are downloaded and unpacked into build-arm64-sysroot/ instead.
# JOBS sets the build parallelism (default: all cores). Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "error: $tool missing (apt-get install g++-aarch64-linux-gnu qemu-user)" >&2; exit 1; }
done
dpkg --print-foreign-architectures | grep -qx arm64 ||
  { echo "error: no arm64 package lists (dpkg --add-architecture arm64 && apt-get update)" >&2; exit 1; }

jobs=${JOBS:-$(nproc)}
dir=build-arm64
sysroot=$PWD/build-arm64-sysroot
start=$SECONDS

if [ ! -f "$sysroot/.complete" ]; then
  echo "==> arm64: libraries into $sysroot/"
  libraries="libsentencepiece-dev libpcre2-dev libutf8proc-dev libxxhash-dev libcurl4-openssl-dev"
  toolchain='^(libc6|libc6-dev|libc-dev-bin|libgcc-s1|libstdc\+\+6|gcc-[0-9]+-base|linux-libc-dev|libcrypt-dev|libnsl-dev|libtirpc-dev|rpcsvc-proto)$'
  packages=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
               --no-enhances $(printf '%s:arm64 ' $libraries) | grep -E '^[a-z0-9].*:arm64$' | sed 's/:arm64$//' |
             sort -u | grep -Ev "$toolchain")
  rm -rf "$sysroot" && mkdir -p "$sysroot/debs"
  (cd "$sysroot/debs" && apt-get download -q $(printf '%s:arm64 ' $packages) 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  for deb in "$sysroot"/debs/*.deb; do dpkg -x "$deb" "$sysroot"; done
  rm -rf "$sysroot/debs"
  touch "$sysroot/.complete"
fi

echo "==> arm64: configure + build in $dir/"
cmake -S . -B "$dir" --log-level=WARNING -Wno-dev -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DOCTET_ARM64_SYSROOT="$sysroot"
cmake --build "$dir" -j "$jobs" -- --no-print-directory
echo "==> arm64: build $((SECONDS - start)) s"

# ctest runs each test through CMAKE_CROSSCOMPILING_EMULATOR (qemu-aarch64); the tests that run
# the apps run them through it too.
echo "==> arm64 tests under qemu (backend: best available)"
ctest --test-dir "$dir" --output-on-failure -j2 --timeout 900
echo "==> arm64 kernel tests under qemu (backend: scalar)"
OCTET_KERNELS=scalar ctest --test-dir "$dir" --output-on-failure -j2 --timeout 900 -R '^test_kernels'
echo "==> arm64: done in $((SECONDS - start)) s"
