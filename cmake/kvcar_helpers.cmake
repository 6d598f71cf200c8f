# Helpers for kvcar's own targets (tests, examples, benchmarks); not installed.

option(KVCAR_WERROR "Warnings are errors in kvcar's own targets (CI sets it)" OFF)

# A target of kvcar's own with .cu sources: kvcar::cuda (device API, C++20 for nvcc), the
# architectures, the warnings.
function(kvcar_cuda_target target)
  target_link_libraries(${target} PRIVATE kvcar::cuda)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
  set_target_properties(${target} PROPERTIES CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
  kvcar_warnings(${target})
endfunction()

# Warnings for everything kvcar compiles itself: -Wall -Wextra for C++ and for the host code of
# CUDA sources (nvcc passes them to g++), -Werror with KVCAR_WERROR.
function(kvcar_warnings target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(KVCAR_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>
      $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
  endif()
endfunction()
