# NCCL for the models' tensor-parallel path (examples/models/cuda/nccl_communicator.cuh).
# Included from examples/CMakeLists.txt when CUDA is there. NCCL is not a dependency of kvcar
# itself, only of this example: when it is missing the CUDA backend builds without
# --tensor-parallel over NCCL (the in-process sharded path still works).
#
# Looked for, in order: -DNCCL_ROOT=... or $NCCL_ROOT (include/nccl.h, lib/libnccl.so[.2]);
# the CUDA Toolkit's root; the `nvidia-nccl-cu13` wheel of the Python that PyTorch uses
# (nvidia/nccl/{include,lib}); /usr and /usr/local (a system package). tools/fetch_nccl.sh
# unpacks that wheel's header and library into a folder for NCCL_ROOT where none is installed.
# The header and the library must come from the same NCCL: the first root that has both wins.
if(NOT KVCAR_NCCL_INCLUDE_DIR OR NOT KVCAR_NCCL_LIBRARY)
  set(kvcar_nccl_roots "")
  foreach(root IN ITEMS "${NCCL_ROOT}" "$ENV{NCCL_ROOT}")
    if(root)
      list(APPEND kvcar_nccl_roots "${root}")
    endif()
  endforeach()
  if(CUDAToolkit_INCLUDE_DIRS)
    list(GET CUDAToolkit_INCLUDE_DIRS 0 kvcar_cuda_include)
    get_filename_component(kvcar_cuda_root "${kvcar_cuda_include}" DIRECTORY)
    list(APPEND kvcar_nccl_roots "${kvcar_cuda_root}")
  endif()
  if(CUDAToolkit_LIBRARY_ROOT)
    list(APPEND kvcar_nccl_roots "${CUDAToolkit_LIBRARY_ROOT}")
  endif()
  find_program(KVCAR_PYTHON3 python3)
  if(KVCAR_PYTHON3)
    execute_process(
      COMMAND ${KVCAR_PYTHON3} -c "import nvidia.nccl as m; print(list(m.__path__)[0])"
      OUTPUT_VARIABLE kvcar_nccl_wheel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(kvcar_nccl_wheel)
      list(APPEND kvcar_nccl_roots "${kvcar_nccl_wheel}")
    endif()
  endif()
  list(APPEND kvcar_nccl_roots /usr /usr/local)
  foreach(root IN LISTS kvcar_nccl_roots)
    if(NOT EXISTS "${root}/include/nccl.h")
      continue()
    endif()
    foreach(lib IN ITEMS lib/libnccl.so lib/libnccl.so.2 lib64/libnccl.so lib64/libnccl.so.2
                         lib/x86_64-linux-gnu/libnccl.so lib/x86_64-linux-gnu/libnccl.so.2)
      if(EXISTS "${root}/${lib}")
        set(KVCAR_NCCL_INCLUDE_DIR "${root}/include" CACHE PATH "nccl.h's folder" FORCE)
        set(KVCAR_NCCL_LIBRARY "${root}/${lib}" CACHE FILEPATH "libnccl" FORCE)
        break()
      endif()
    endforeach()
    if(KVCAR_NCCL_LIBRARY)
      break()
    endif()
  endforeach()
endif()
if(KVCAR_NCCL_INCLUDE_DIR AND KVCAR_NCCL_LIBRARY)
  set(KVCAR_HAS_NCCL ON)
  message(STATUS "kvcar examples: NCCL ${KVCAR_NCCL_LIBRARY} (tensor parallel on)")
else()
  set(KVCAR_HAS_NCCL OFF)
  message(STATUS "kvcar examples: no NCCL found (set NCCL_ROOT; tensor parallel over NCCL off)")
endif()

# kvcar_use_nccl(target): compiles `target` with KVCAR_WITH_NCCL and links NCCL, when found.
function(kvcar_use_nccl target)
  if(KVCAR_HAS_NCCL)
    target_include_directories(${target} PRIVATE ${KVCAR_NCCL_INCLUDE_DIR})
    target_link_libraries(${target} PUBLIC ${KVCAR_NCCL_LIBRARY})
    target_compile_definitions(${target} PRIVATE KVCAR_WITH_NCCL)
  endif()
endfunction()
