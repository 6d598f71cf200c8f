// kvcar/codec/limits.hpp — bounds shared by the codecs.
#pragma once

#include <cstddef>

#include "kvcar/common.hpp"

namespace kvcar {

/// The widest latent a codec may have. encode and decode keep one token's float latent in a
/// fixed local array of this many floats: no allocation, usable inside a kernel thread (4 KiB of
/// local memory at most; kernels that care decode tiles their own way). Every codec's host-side
/// params reject larger latents. Group widths themselves are not bounded by this.
inline constexpr int max_latent_width = 1024;

/// Records are padded so that each starts 4-byte aligned (see kv_codec).
KVCAR_HD constexpr std::size_t pad_record_bytes(std::size_t bytes) {
    return (bytes + 3u) & ~std::size_t(3);
}

}  // namespace kvcar
