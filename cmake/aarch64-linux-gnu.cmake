# Cross build for 64-bit Arm Linux with Debian's g++-aarch64-linux-gnu.
#
#   cmake --preset aarch64            (CMakePresets.json)
#   cmake -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake ...
#
# Libraries for the target come the Debian multiarch way: glibc from
# libc6-dev-arm64-cross (a dependency of the compiler), anything else as
# PACKAGE:arm64 after `dpkg --add-architecture arm64`, installed under
# /usr/lib/aarch64-linux-gnu, which CMAKE_LIBRARY_ARCHITECTURE makes
# find_library and find_package search before the host's directories.  The
# programs run on an arm64 machine or in QEMU (scripts/vm/arm64-run.sh); the
# aarch64 preset links them statically so that a bare initramfs can run them.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# Programs found at configure time (pkg-config, spin) run on the build machine.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
# pkg-config runs on the build machine but must describe the target: only
# the target's .pc files (arm64 packages), never the host's, whose include
# and library paths would mix x86-64 headers into the build.
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
