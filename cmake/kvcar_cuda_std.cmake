# kvcar_cuda_std(target): C++20 for the CUDA sources of every target that links `target`.
# Used on kvcar::cuda in the build tree, and pasted into the installed kvcarConfig.cmake, so the
# consumer's own CMake decides. A CMake that knows nvcc's C++20 gets the compile feature
# cuda_std_20 and picks one -std flag itself (also against the consumer's CUDA_STANDARD). CMake
# 3.25 does not know it for nvcc 13 (the feature is an error there, and cxx_std_20 does not reach
# .cu files), and a consumer may enable CUDA only after find_package: then the flag is added
# directly (nvcc accepts a repeated identical -std).
function(kvcar_cuda_std target)
  if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
    set_property(TARGET ${target} APPEND PROPERTY INTERFACE_COMPILE_FEATURES cuda_std_20)
  else()
    set_property(TARGET ${target} APPEND PROPERTY INTERFACE_COMPILE_OPTIONS
                 "$<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>")
  endif()
endfunction()
