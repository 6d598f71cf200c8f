// The models' CUDA backend (examples/models/cuda/backend.cu), compiled into test_serve_gpu for
// serve_cuda.cu's session (kvcar_models_cuda exists only with the examples).
#include "examples/models/cuda/backend.cu"
