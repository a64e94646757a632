# Cross build for 64-bit Arm Linux with Debian's g++-aarch64-linux-gnu.
#
#   cmake --preset aarch64            (CMakePresets.json)
#   cmake -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake ...
#
# Libraries for the target come the Debian multiarch way: glibc and the
# compiler's runtime from libc6-dev-arm64-cross and its siblings (under
# /usr/aarch64-linux-gnu, dependencies of the compiler), anything else as
# PACKAGE:arm64 after `dpkg --add-architecture arm64`, installed under
# /usr/lib/aarch64-linux-gnu, which CMAKE_LIBRARY_ARCHITECTURE makes
# find_library and find_package search instead of the host's
# /usr/lib/x86_64-linux-gnu.  GoogleTest needs no arm64 package: with no
# target gtest installed, tests/CMakeLists.txt builds it from Debian's
# sources (/usr/src/googletest).  The programs are linked dynamically and
# run on an arm64 machine or in QEMU (scripts/vm/stage.sh arm64 copies the
# target's shared libraries from /usr/aarch64-linux-gnu/lib into its guest).
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
