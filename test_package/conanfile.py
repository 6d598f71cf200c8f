import os

from conan import ConanFile
from conan.tools.build import can_run
from conan.tools.cmake import CMake, CMakeToolchain, cmake_layout


class KvcarTestPackage(ConanFile):
    settings = "os", "arch", "compiler", "build_type"
    generators = "CMakeDeps"
    test_type = "explicit"

    def requirements(self):
        self.requires(self.tested_reference_str)

    def layout(self):
        # Build beside the repository's other build trees (ignored by git), not inside
        # test_package/, so `conan create` leaves the source tree clean.
        cmake_layout(self, build_folder=os.path.join("..", "build-pkg", "test_package"))

    def generate(self):
        tc = CMakeToolchain(self)
        tc.user_presets_path = False  # no CMakeUserPresets.json written into test_package/
        tc.generate()

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def test(self):
        if not can_run(self):
            return
        self.run(os.path.join(self.cpp.build.bindir, "consumer_host"), env="conanrun")
        cuda = os.path.join(self.cpp.build.bindir, "consumer_cuda")
        if os.path.exists(cuda):
            # Prints "no GPU here, kernel not launched" on a machine without one.
            self.run(cuda, env="conanrun")
        else:
            self.output.info("no nvcc: the CUDA consumer was not built")
