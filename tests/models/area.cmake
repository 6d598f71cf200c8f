# Included by tests/CMakeLists.txt for tests/models/. The CUDA models multiply through cuBLAS;
# the tensor-parallel cases use NCCL when there is one (else its NCCL cases skip).
if(kvcar_gpu_target)
  target_link_libraries(${kvcar_gpu_target} PRIVATE CUDA::cublas)
  include(${PROJECT_SOURCE_DIR}/examples/nccl.cmake)
  kvcar_use_nccl(${kvcar_gpu_target})
endif()
