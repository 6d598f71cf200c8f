#!/usr/bin/env bash
# CI stages after the README's test command (.ci/run calls this): the CPU tests under
# AddressSanitizer + UBSan, every libFuzzer target for a bounded time, the Conan package with its
# test_package, and the Doxygen reference with warnings as errors.
#
#   bash tools/ci_hardening.sh                 # all stages: asan fuzz conan docs
#   bash tools/ci_hardening.sh fuzz docs       # some of them
#
# Needs: g++ (asan), clang + libclang-rt-14-dev (fuzz), python3 with venv + network to PyPI
# (conan), doxygen (docs); .ci/run installs them. Knobs (environment):
#   KVCAR_CI_JOBS        parallel jobs (default: nproc)
#   KVCAR_FUZZ_SECONDS   seconds per fuzzer (default 60)
# Build trees: build-asan, build-fuzz, build-pkg (Conan home, venv, test_package), build-docs.
# Every stage runs even if an earlier one failed; the exit status is nonzero if any failed, and a
# table of stage wall times is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${KVCAR_CI_JOBS:-$(nproc)}
FUZZ_SECONDS=${KVCAR_FUZZ_SECONDS:-60}
export PATH="/usr/local/cuda/bin:$PATH"
# Stack traces for UBSan reports too (ASan prints them anyway).
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

# --- ASan + UBSan: the CPU tests (package tests excluded: they test installing, not code) ---
stage_asan() {
    local san="-fsanitize=address,undefined -fno-sanitize-recover=all"
    # CUDA off: only host code is sanitized, and nvcc would not take these flags anyway.
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=g++ \
        -DCMAKE_CXX_FLAGS="-O1 -fno-omit-frame-pointer $san" \
        -DCMAKE_EXE_LINKER_FLAGS="$san" \
        -DKVCAR_BUILD_TESTS=ON -DKVCAR_BUILD_EXAMPLES=OFF -DKVCAR_BUILD_BENCH=OFF \
        -DCMAKE_CUDA_COMPILER=NOTFOUND -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON &&
    cmake --build build-asan -j"$JOBS" &&
    ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1 \
        ctest --test-dir build-asan -L cpu -LE package --output-on-failure -j"$JOBS"
}

# --- Fuzzers: replay the committed seeds (regression inputs included), then fuzz each target ---
stage_fuzz() {
    CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE= \
        -DKVCAR_BUILD_FUZZERS=ON -DKVCAR_BUILD_TESTS=OFF -DKVCAR_BUILD_EXAMPLES=OFF \
        -DKVCAR_BUILD_BENCH=OFF \
        -DCMAKE_CUDA_COMPILER=NOTFOUND -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON &&
    cmake --build build-fuzz -j"$JOBS" || return 1
    local rc=0
    ctest --test-dir build-fuzz/fuzz -L fuzz --output-on-failure -j"$JOBS" || rc=1
    # New inputs go to build-fuzz/corpus/<name> (scratch), never into the committed seeds;
    # findings to build-fuzz/findings/<name>/. Up to $JOBS fuzzers run at once.
    local names=() name
    for src in fuzz/*.cpp; do
        name=$(basename "$src" .cpp)
        # fuzz/CMakeLists.txt skips a fuzzer whose header is not in the tree (yet).
        if [ -x "build-fuzz/fuzz/fuzz_$name" ]; then
            names+=("$name")
        else
            echo "fuzz_$name: skipped"
        fi
    done
    rm -rf build-fuzz/findings
    printf '%s\n' "${names[@]}" | xargs -P "$JOBS" -I{} bash -c '
        name={}
        mkdir -p build-fuzz/corpus/$name build-fuzz/findings/$name
        if build-fuzz/fuzz/fuzz_$name -max_total_time='"$FUZZ_SECONDS"' -timeout=25 \
               -rss_limit_mb=2048 -print_final_stats=1 \
               -artifact_prefix=build-fuzz/findings/$name/ \
               build-fuzz/corpus/$name fuzz/corpus/$name > build-fuzz/findings/$name.log 2>&1; then
            echo "fuzz_$name: ok ($(grep -m1 -o "stat::number_of_executed_units: *[0-9]*" \
                build-fuzz/findings/$name.log | grep -o "[0-9]*$") runs)"
        else
            echo "fuzz_$name: FINDING (log: build-fuzz/findings/$name.log)"
            grep -E "kvcar fuzz finding|ERROR|SUMMARY|Test unit written" \
                build-fuzz/findings/$name.log | head -n 8
            exit 1
        fi' || rc=1
    if [ $rc -ne 0 ]; then
        echo "Reproduce a finding: build-fuzz/fuzz/fuzz_<name> build-fuzz/findings/<name>/crash-*;"
        echo "once fixed, add the input as fuzz/corpus/<name>/crash-<what> (a regression seed)."
    fi
    return $rc
}

# --- Conan: package and run test_package (g++ consumer, and nvcc consumer when nvcc exists) ---
stage_conan() {
    # A private venv and Conan home: no system pip (PEP 668), nothing left in ~/.conan2.
    [ -x build-pkg/venv/bin/conan ] || {
        python3 -m venv build-pkg/venv &&
        build-pkg/venv/bin/pip install -q --disable-pip-version-check 'conan>=2,<3'
    } || return 1
    export CONAN_HOME=$ROOT/build-pkg/conan-home
    local conan=build-pkg/venv/bin/conan
    $conan --version &&
    { [ -f "$CONAN_HOME/profiles/default" ] || $conan profile detect; } &&
    # The recipe has no requirements: nothing is fetched, so no remote is needed or wanted.
    { $conan remote disable conancenter >/dev/null 2>&1 || true; } &&
    $conan create . --build=missing
}

# --- Doxygen: the public headers' reference (+ docs/*.md); warnings are errors, and an
# undocumented public class, function, member, enum or typedef is one (docs/Doxyfile) ---
stage_docs() {
    rm -rf build-docs && doxygen docs/Doxyfile
}

# CPU seconds (user + sys) used so far by finished child processes, into $CPU_NOW. bash's `times`
# must run in this shell (in a pipe or $(...) it would describe a fresh subshell with no
# children), so it writes to a file and the function sets a variable instead of printing.
CPU_TIMES=$(mktemp)
trap 'rm -f "$CPU_TIMES"' EXIT
child_cpu_seconds() {
    times > "$CPU_TIMES"
    CPU_NOW=$(tail -n 1 "$CPU_TIMES" | awk '{ t = 0; for (i = 1; i <= 2; i++) {
        split($i, p, "m"); t += p[1] * 60 + p[2] } printf "%d", t }')
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(asan fuzz conan docs)
declare -A took cpu status
failed=0
for s in "${stages[@]}"; do
    declare -F "stage_$s" >/dev/null || { echo "ci_hardening: unknown stage '$s'"; exit 2; }
    echo "=== ci_hardening: $s"
    start=$SECONDS
    child_cpu_seconds
    cpu_start=$CPU_NOW
    if "stage_$s"; then status[$s]=ok; else status[$s]=FAILED; failed=1; fi
    took[$s]=$((SECONDS - start))
    child_cpu_seconds
    cpu[$s]=$((CPU_NOW - cpu_start))
    echo "=== ci_hardening: $s ${status[$s]} in ${took[$s]} s (${cpu[$s]} CPU s)"
done
echo "=== ci_hardening summary (jobs $JOBS, $FUZZ_SECONDS s per fuzzer)"
for s in "${stages[@]}"; do
    printf '  %-6s %-6s %5d s wall %6d s CPU\n' "$s" "${status[$s]}" "${took[$s]}" "${cpu[$s]}"
done
exit $failed
