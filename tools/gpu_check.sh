#!/usr/bin/env bash
# Builds kvcar with CUDA and runs every GPU test, the custom-kernel example, compute-sanitizer on
# two test binaries and the decode-attention bandwidth check. Meant for the GPU machine:
#   tools/gpu_check.sh     (logs in /tmp/kvcar-gpu-logs; packed into $OUT/gpu_logs.tgz if $OUT is set)
# Exits non-zero when a build, a test or a sanitizer run fails.
set -uo pipefail
cd "$(dirname "$0")/.."
out=/tmp/kvcar-gpu-logs
rm -rf "$out"
mkdir -p "$out"
status=0
step() { echo; echo "=== $*"; }

step "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
    | tee "$out/gpu.txt"
nvcc --version | tail -1

step "configure"
cmake -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DKVCAR_BUILD_EXAMPLES=ON \
    >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
grep "kvcar: CUDA" "$out/configure.log"

# Only kvcar's GPU targets: the rest of the tree (CPU examples, tools) is not this script's job.
targets=(kvcar-gpu-tests)  # every test_<area>_gpu (tests/<area>/*.cu) and the .cuh header check
have_example=0
if grep -q custom_kernel examples/CMakeLists.txt; then targets+=(kvcar-custom-kernel); have_example=1; fi
step "build ${targets[*]}"
if ! cmake --build build-dev -j16 --target "${targets[@]}" >"$out/build.log" 2>&1; then
    # Build what can be built, one target at a time, and say which failed.
    for t in "${targets[@]}"; do
        cmake --build build-dev -j16 --target "$t" >>"$out/build.log" 2>&1 || {
            echo "build of $t FAILED"; status=1; }
    done
    grep -E " error|Error [0-9]" "$out/build.log" | head -40
fi

step "ctest -L gpu"
KVCAR_REQUIRE_GPU=1 ctest --test-dir build-dev -L gpu -V --timeout 300 \
    >"$out/ctest.log" 2>&1 || status=1
grep -E "rel err|Test +#|tests passed|FAILED|failed|with expansion|REQUIRE|CHECK\(" "$out/ctest.log" \
    | head -150

step "custom_kernel example"
if [ "$have_example" = 1 ]; then
    example=build-dev/examples/custom_kernel/kvcar-custom-kernel
else  # examples/CMakeLists.txt does not add it yet: build it the way a user would
    example=build-dev/kvcar-custom-kernel
    nvcc -std=c++20 -O2 -arch=sm_90 -Iinclude examples/custom_kernel/custom_kernel.cu \
        -o "$example" >"$out/example_build.log" 2>&1 || { cat "$out/example_build.log"; status=1; }
fi
"$example" || status=1

step "compute-sanitizer"
san() {  # tool, binary, test-case filter
    local log="$out/sanitizer_$1_$(basename "$2").log"
    if timeout 100 compute-sanitizer --tool "$1" --error-exitcode 9 "$2" "$3" >"$log" 2>&1; then
        echo "compute-sanitizer $1 $(basename "$2") '$3': clean"
    else
        echo "compute-sanitizer $1 $(basename "$2") '$3': FAILED (see $log)"; tail -25 "$log"
        status=1
    fi
}
san memcheck build-dev/tests/test_kernels_gpu "decode_attention: a reuse map reads earlier layers' slots"
san memcheck build-dev/tests/test_kernels_gpu "append: identity records equal the host's across pages and a reuse map"
san racecheck build-dev/tests/test_kernels_gpu "decode_attention: quantized identity int8 and fp8 (plain KV quantization)"
san racecheck build-dev/tests/test_kernels_gpu "decode_attention: linear codec in latent space per head and whole layer"
san racecheck build-dev/tests/test_kernels_gpu "decode_attention: autoencoder decoded tile by tile in shared memory"
san racecheck build-dev/tests/test_device_gpu "decoders: autoencoder (hidden layer in shared memory)"

step "bandwidth"
timeout 150 build-dev/tests/test_kernels_gpu "[perf]" 2>&1 | grep PERF | tee "$out/perf.txt"

if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_logs.tgz" -C /tmp kvcar-gpu-logs; fi
step "result: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
