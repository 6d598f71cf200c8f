# Included by tests/CMakeLists.txt for tests/serve/. The CUDA session multiplies through cuBLAS
# and may be built with NCCL.
if(kvcar_gpu_target)
  target_link_libraries(${kvcar_gpu_target} PRIVATE CUDA::cublas)
  include(${PROJECT_SOURCE_DIR}/examples/nccl.cmake)
  kvcar_use_nccl(${kvcar_gpu_target})
endif()
