// main() of every GPU test: without a GPU the test is skipped (exit 77, ctest SKIP_RETURN_CODE),
// unless KVCAR_REQUIRE_GPU=1, where a missing GPU is a failure.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <cuda_runtime.h>

#if __has_include(<catch2/catch_session.hpp>)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

int main(int argc, char** argv) {
    int n = 0;
    const cudaError_t status = cudaGetDeviceCount(&n);
    if (status != cudaSuccess || n == 0) {
        const char* require = std::getenv("KVCAR_REQUIRE_GPU");
        if (require && std::strcmp(require, "1") == 0) {
            std::fprintf(stderr, "KVCAR_REQUIRE_GPU=1 but no usable GPU: %s\n", cudaGetErrorString(status));
            return 1;
        }
        std::fprintf(stderr, "no GPU: skipping\n");
        return 77;
    }
    return Catch::Session().run(argc, argv);
}
