// kvcar/kvcar.hpp — everything host code needs, in one include.
#pragma once

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"

#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/linear.hpp"
#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/codec/any.hpp"

#include "kvcar/layout/dense.hpp"
#include "kvcar/layout/reuse_map.hpp"

#include "kvcar/storage/contiguous.hpp"
#include "kvcar/storage/paged.hpp"
#include "kvcar/kv_cache.hpp"

#include "kvcar/rope.hpp"
#include "kvcar/reference/attention.hpp"

#include "kvcar/parallel.hpp"

#include "kvcar/calib/adam.hpp"
#include "kvcar/calib/pca.hpp"
#include "kvcar/calib/autoencoder_training.hpp"
#include "kvcar/calib/reuse_selection.hpp"

#include "kvcar/io/json.hpp"
#include "kvcar/io/safetensors.hpp"
#include "kvcar/io/safetensors_model.hpp"
#include "kvcar/io/safetensors_write.hpp"
#include "kvcar/io/codec_file.hpp"

/// @namespace kvcar
/// @brief Compressed KV caches: codecs (identity, linear, autoencoder, quantized), layouts
/// (dense, reuse_map), storage (contiguous, paged), the host-side kv_cache that ties them
/// together, and a reference attention that reads any of them.

/// @namespace kvcar::calib
/// @brief Host-side calibration: fitting linear codecs (PCA), training autoencoders (Adam),
/// and choosing which heads reuse an earlier layer's slot.

/// @namespace kvcar::io
/// @brief Readers and writers of the files kvcar meets: JSON, safetensors and kvcar's own codec
/// files. Every reader validates its input and throws kvcar::error naming the file and the
/// problem. (Model formats, config.json and llama2.c checkpoints, are read by the examples.)

/// @namespace kvcar::gpu
/// @brief Host code that moves a cache to a CUDA device: device buffers, codec parameters in
/// device memory, and device_kv_cache (nvcc only, `.cuh`).

/// @namespace kvcar::device
/// @brief What an attention kernel calls to read a compressed cache: thread-, warp- and
/// block-level decode of one token or a tile of tokens, and latent-space products for affine
/// codecs (nvcc only, `.cuh`).

/// @namespace kvcar::kernels
/// @brief Ready CUDA kernels over a compressed cache: encode + append, decode attention and
/// prefill attention (nvcc only, `.cuh`).
