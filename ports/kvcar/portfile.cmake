# kvcar as a vcpkg overlay port. The source is the kvcar tree this port lives in (ports/kvcar is
# two levels below the repository root), so
#     vcpkg install kvcar --overlay-ports=<kvcar checkout>/ports
# packages exactly the checkout you have. (A registry port would use vcpkg_from_github instead;
# everything after SOURCE_PATH stays the same.)
#
# tests/package/check_vcpkg_layout.cmake runs these configure options and checks the install
# layout that the CONFIG_PATH, REMOVE_RECURSE and copyright steps below assume: change them
# together.

# Header-only: nothing differs between Debug and Release, so configure once.
set(VCPKG_BUILD_TYPE release)

get_filename_component(SOURCE_PATH "${CURRENT_PORT_DIR}/../.." ABSOLUTE)

# Nothing is compiled, so CUDA is not looked for: the installed files are the same either way.
vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        -DKVCAR_BUILD_TESTS=OFF
        -DKVCAR_BUILD_EXAMPLES=OFF
        -DKVCAR_BUILD_BENCH=OFF
        -DKVCAR_BUILD_FUZZERS=OFF
        -DCMAKE_CUDA_COMPILER=NOTFOUND
        -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON
)
vcpkg_cmake_install()

# kvcar installs its package config to share/cmake/kvcar; vcpkg wants it in share/kvcar.
vcpkg_cmake_config_fixup(CONFIG_PATH share/cmake/kvcar)

# No debug tree for a header-only library; the LICENSE and README under share/doc are replaced
# by vcpkg's copyright file.
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/debug" "${CURRENT_PACKAGES_DIR}/share/doc")

file(INSTALL "${CURRENT_PORT_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
