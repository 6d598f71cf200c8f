// kvcar/io/codec_file.hpp — everything a model needs to build its compressed KV cache, and the
// file that stores it (docs/codec_file.md describes the format).
//
// A codec_set is what calibration produces and a model loads: the geometry it was made for, the
// K and V reuse lists (which heads read an earlier layer's slot), and for every stored slot its
// codec (identity, linear, autoencoder, or any codec registered in a codec_list the functions
// are given, see codec/traits.hpp) and latent storage. It owns all parameter memory;
// `codecs()` hands out any_codec views into it, one per stored slot, in the layout's order, so
//   kv_cache<any_codec, reuse_map> cache(set.layout(), set.codecs(), storage_params);
// builds the cache a file describes. The file is safetensors (codec tensors, f32) with one JSON
// document in the `__metadata__` entry "kvcar"; loading validates every field and every tensor
// against each other and against the model's geometry, naming the file in every message. What a
// slot stores beyond its width, latent and storage is its codec registration's `members`: sizes
// and reals in the slot's JSON object, tensors named L<layer>.G<group>.<K|V>.<member>.
//
// Autoencoders are stored folded (BatchNorm merged into the FC before it, see
// codec/autoencoder.hpp): that is exactly what inference runs, and nothing is lost for it. The
// unfolded training form (BatchNorm γ, β and running statistics) is not stored; to fine-tune
// again, recreate it from the folded weights with γ = √(var + eps), β = mean measured on data.
//
// The pieces: io/codec_set.hpp (the set and its slots), io/codec_file_write.hpp
// (save_codec_set), io/codec_file_read.hpp (parse_codec_set, load_codec_set).
#pragma once

#include "kvcar/io/codec_file_read.hpp"
#include "kvcar/io/codec_file_write.hpp"
#include "kvcar/io/codec_set.hpp"
