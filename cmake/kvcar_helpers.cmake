# Helpers for kvcar's own targets (tests, examples, benchmarks); not installed.

# nvcc 13 with CMake 3.25 ignores CUDA_STANDARD 20, so C++20 is asked for explicitly.
function(kvcar_cuda_target target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --expt-relaxed-constexpr -lineinfo>)
  set_target_properties(${target} PROPERTIES CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
endfunction()

# Warnings for everything kvcar compiles itself.
function(kvcar_warnings target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>)
endfunction()
