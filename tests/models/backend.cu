// The models' CUDA backend (examples/models/cuda/backend.cu), compiled once into test_models_gpu:
// model_cuda.cu and model_tensor_parallel.cu both call its session API through backend.hpp.
// Compiled here rather than linked from kvcar_models_cuda, which exists only with the examples.
#include "examples/models/cuda/backend.cu"
