# Include layering of include/kvcar: every #include "kvcar/..." points to the same layer or a lower
# one, so the core vocabulary never depends on what is built on it (docs/design.md, "Layers").
#   cmake -DINCLUDE_DIR=<repo>/include -P include_layers.cmake
# Each header gets the layer of its longest matching prefix below; a header that matches none is
# an error too (a new folder must be placed in the table first).
#  0 core        the vocabulary: geometry, errors, numbers, RoPE, concepts, page_view, params
#  1 components  codecs, layouts, storages (each implements a concept of concepts.hpp)
#  2 host        the cache, the reference, codec files, calibration, tensor-parallel shards
#  3 device      device functions user kernels call (cache_view, encode, decode, latent)
#  4 runtime     host wrappers over device memory (device_kv_cache, page_pool_view, launch)
#  5 kernels     kvcar's own kernels and their dispatch
#  6 umbrella    kvcar.hpp
set(layers
  "common.hpp=0" "numeric.hpp=0" "rope.hpp=0" "parallel.hpp=0" "concepts.hpp=0"
  "page_view.hpp=0" "attention_params.hpp=0"
  "codec/=1" "layout/=1" "storage/=1"
  "kv_cache.hpp=2" "reference/=2" "io/=2" "calib/=2" "shard.hpp=2"
  "device/=3"
  "cuda/=4"
  "kernels/=5"
  "kvcar.hpp=6")

function(layer_of header out)
  set(best -1)
  set(best_len 0)
  foreach(entry IN LISTS layers)
    string(REPLACE "=" ";" pair "${entry}")
    list(GET pair 0 prefix)
    list(GET pair 1 level)
    string(LENGTH "${prefix}" len)
    string(SUBSTRING "${header}" 0 ${len} head)
    if(head STREQUAL prefix AND len GREATER best_len)
      set(best ${level})
      set(best_len ${len})
    endif()
  endforeach()
  set(${out} ${best} PARENT_SCOPE)
endfunction()

if(NOT INCLUDE_DIR)
  message(FATAL_ERROR "include_layers.cmake: pass -DINCLUDE_DIR=<repo>/include")
endif()
file(GLOB_RECURSE headers RELATIVE ${INCLUDE_DIR}/kvcar ${INCLUDE_DIR}/kvcar/*.hpp
     ${INCLUDE_DIR}/kvcar/*.cuh)
list(LENGTH headers n_headers)
if(n_headers EQUAL 0)
  message(FATAL_ERROR "include_layers.cmake: no headers under ${INCLUDE_DIR}/kvcar")
endif()
set(n_errors 0)
set(n_edges 0)
foreach(h IN LISTS headers)
  layer_of("${h}" from)
  if(from EQUAL -1)
    message(SEND_ERROR "kvcar/${h}: in no layer of include_layers.cmake's table")
    math(EXPR n_errors "${n_errors} + 1")
    continue()
  endif()
  file(STRINGS ${INCLUDE_DIR}/kvcar/${h} lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"kvcar/")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE ".*\"kvcar/([^\"]+)\".*" "\\1" target "${line}")
    layer_of("${target}" to)
    math(EXPR n_edges "${n_edges} + 1")
    if(to GREATER from)
      message(SEND_ERROR "kvcar/${h} (layer ${from}) includes kvcar/${target} (layer ${to}): "
                         "an include may only point to the same layer or a lower one")
      math(EXPR n_errors "${n_errors} + 1")
    endif()
  endforeach()
endforeach()
if(n_errors GREATER 0)
  message(FATAL_ERROR "${n_errors} include(s) break the layering")
endif()
message(STATUS "${n_headers} headers, ${n_edges} kvcar includes, all pointing down or sideways")
