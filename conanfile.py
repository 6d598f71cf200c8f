"""Conan 2 recipe for kvcar, a header-only library.

    conan create . --build=missing          # package + run test_package (g++, and nvcc if present)

The package is the project's own `cmake --install` with tests, examples, benchmarks and fuzzers
off: include/kvcar/** plus share/cmake/kvcar (kvcar's config, for non-Conan consumers of the
package folder). Conan consumers use CMakeDeps, which generates its own kvcar-config.cmake; the
properties below make that `find_package(kvcar)` -> `kvcar::kvcar`, exactly as with the project's
config, and a small build module adds what CMakeDeps cannot express (C++20, kvcar::cuda).
"""
import os
import re

from conan import ConanFile
from conan.tools.cmake import CMake, CMakeToolchain, cmake_layout
from conan.tools.files import copy, load, save

# What kvcar's own kvcarConfig.cmake (cmake/kvcarConfig.cmake.in) and CMakeLists.txt give
# kvcar::kvcar, for the target CMakeDeps generates.
_BUILD_MODULE = """\
# Added by kvcar's Conan recipe: what kvcar's own kvcarConfig.cmake gives and CMakeDeps cannot
# express (keep the two in step). kvcar::kvcar: C++20 and threads, no CUDA flags. kvcar::cuda,
# defined when the CUDA toolkit is found: kvcar::kvcar plus the toolkit, CCCL and C++20 for .cu
# files (the -std flag itself where this CMake does not know nvcc's cuda_std_20).
if(TARGET kvcar::kvcar)
  target_compile_features(kvcar::kvcar INTERFACE cxx_std_20)
  find_package(Threads REQUIRED)
  target_link_libraries(kvcar::kvcar INTERFACE Threads::Threads)
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND AND NOT TARGET kvcar::cuda)
    find_package(CCCL CONFIG QUIET HINTS ${CUDAToolkit_LIBRARY_DIR}/cmake)
    add_library(kvcar::cuda INTERFACE IMPORTED)
    target_link_libraries(kvcar::cuda INTERFACE kvcar::kvcar CUDA::toolkit
                          $<TARGET_NAME_IF_EXISTS:CCCL::CCCL>)
    if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
      target_compile_features(kvcar::cuda INTERFACE cuda_std_20)
    else()
      target_compile_options(kvcar::cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
    endif()
  endif()
endif()
"""
_BUILD_MODULE_PATH = os.path.join("share", "conan", "kvcar", "kvcar-conan-target.cmake")


class KvcarConan(ConanFile):
    name = "kvcar"
    package_type = "header-library"
    license = "Apache-2.0"
    description = "Compressed KV caches any attention kernel can read (header-only C++20/CUDA)"
    homepage = "https://github.com/kvcar/kvcar"
    url = "https://github.com/kvcar/kvcar"
    topics = ("llm", "kv-cache", "compression", "cuda", "header-only")
    # Settings only so that CMake can be configured to run the install; package_id() clears
    # them, so there is one package for every configuration.
    settings = "os", "arch", "compiler", "build_type"
    exports_sources = ("CMakeLists.txt", "cmake/*", "include/*", "LICENSE", "README.md")
    no_copy_source = True

    def set_version(self):
        # The version lives in one place: project(kvcar VERSION x.y.z) in CMakeLists.txt.
        text = load(self, os.path.join(self.recipe_folder, "CMakeLists.txt"))
        match = re.search(r"project\(\s*kvcar\s+VERSION\s+([0-9]+(?:\.[0-9]+)*)", text)
        if not match:
            raise ValueError("CMakeLists.txt: no 'project(kvcar VERSION x.y.z' found")
        self.version = match.group(1)

    def layout(self):
        cmake_layout(self)

    def package_id(self):
        self.info.clear()

    def generate(self):
        tc = CMakeToolchain(self)
        for option in ("TESTS", "EXAMPLES", "BENCH", "FUZZERS"):
            tc.cache_variables[f"KVCAR_BUILD_{option}"] = False
        # Nothing is compiled, so CUDA is not looked for (the install is the same either way).
        tc.cache_variables["CMAKE_CUDA_COMPILER"] = "NOTFOUND"
        tc.cache_variables["CMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit"] = True
        tc.generate()

    def build(self):
        cmake = CMake(self)
        cmake.configure()

    def package(self):
        copy(self, "LICENSE", src=self.source_folder,
             dst=os.path.join(self.package_folder, "licenses"))
        cmake = CMake(self)
        cmake.install()
        save(self, os.path.join(self.package_folder, _BUILD_MODULE_PATH), _BUILD_MODULE)

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.includedirs = ["include"]
        self.cpp_info.set_property("cmake_file_name", "kvcar")
        self.cpp_info.set_property("cmake_target_name", "kvcar::kvcar")
        self.cpp_info.set_property("cmake_build_modules", [_BUILD_MODULE_PATH])
