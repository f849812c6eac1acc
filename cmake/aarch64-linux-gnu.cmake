# Cross build for 64-bit ARM Linux with Debian's cross toolchain; tests run under qemu.
#
#   apt-get install g++-aarch64-linux-gnu qemu-user
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#   cmake --build build-arm64 && ctest --test-dir build-arm64
#
# -DOCTET_KERNELS_ONLY=ON builds just the kernels and their tests, which need no other library.
# The whole project needs the arm64 builds of its libraries. Debian 12's libsentencepiece is not
# multiarch (its arm64 package would replace the host's), so they are not installed: their arm64
# packages are unpacked into a folder of their own, named by -DOCTET_ARM64_SYSROOT=DIR
# (scripts/test-arm.sh makes one with apt-get download and dpkg -x).
#
# Android (phones) does not use this file: pass the NDK's own toolchain file instead,
#   cmake -S . -B build-android -DCMAKE_TOOLCHAIN_FILE=$NDK/build/cmake/android.toolchain.cmake \
#     -DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-28 -DOCTET_KERNELS_ONLY=ON
# then push the binaries with adb to run them. The NEON backend is chosen at run time on
# devices with dotprod (ARMv8.2: Cortex-A55/A75 and later); older cores use the scalar one.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

set(OCTET_ARM64_SYSROOT "" CACHE PATH "unpacked arm64 packages of the libraries (whole-project builds)")
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES OCTET_ARM64_SYSROOT)
# The libraries' folders; the linker resolves their own dependencies (curl's ssl, ...) there too.
set(unpacked ${OCTET_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu ${OCTET_ARM64_SYSROOT}/lib/aarch64-linux-gnu)
list(TRANSFORM unpacked PREPEND "-Wl,-rpath-link," OUTPUT_VARIABLE rpath_links)
string(JOIN " " rpath_links ${rpath_links})
set(CMAKE_EXE_LINKER_FLAGS_INIT "${rpath_links}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "${rpath_links}")
string(JOIN ":" library_path /usr/aarch64-linux-gnu/lib ${unpacked})

# "-cpu max" has every feature qemu emulates (dotprod included), so the NEON backend is tested.
# -L runs the cross toolchain's dynamic loader; LD_LIBRARY_PATH makes it load the libc of its own
# version even where multiarch libc6:arm64 is installed too (a mismatched pair hangs in
# pthread_create), and the unpacked libraries.
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64;-L;/usr/aarch64-linux-gnu;-E;LD_LIBRARY_PATH=${library_path};-cpu;max")

# Headers and libraries come from the target: the cross sysroot and the unpacked packages.
# Programs (pkg-config, ...) come from the host.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu ${OCTET_ARM64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# pkg-config must see only the arm64 .pc files, and give their paths inside the unpacked folder.
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${OCTET_ARM64_SYSROOT}")
set(ENV{PKG_CONFIG_LIBDIR} "${OCTET_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
