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

#include "kvcar/calib/pca.hpp"
#include "kvcar/calib/autoencoder_training.hpp"
#include "kvcar/calib/reuse_selection.hpp"

#include "kvcar/io/json.hpp"
#include "kvcar/io/safetensors.hpp"
#include "kvcar/io/hf_config.hpp"
#include "kvcar/io/llama2c.hpp"
#include "kvcar/io/codec_file.hpp"
