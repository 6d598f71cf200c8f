// The CUDA backend's file caches (examples/models/cuda/file_caches.cu), beside backend.cu in this
// test executable.
#include "examples/models/cuda/file_caches.cu"
