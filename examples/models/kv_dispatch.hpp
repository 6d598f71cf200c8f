// examples/models/kv_dispatch.hpp — from a run-time `--kv` name to a compile-time cache type.
//
// A model's forward pass is a template on its cache, so every codec is its own instantiation.
// The tools pick one by name at run time here and hand the cache to a generic lambda:
//
//     with_kv_cache("identity-f16", model.cache_geometry(), {1, ctx}, [&](auto& cache) {
//         ... model.forward(cache, seq, tokens) ...
//     });
//
// Adding a codec: include its header, add its name to kv_codec_names, and add one `if` line
// below that builds it for the geometry.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvcar/codec/identity.hpp"
#include "kvcar/common.hpp"
#include "kvcar/kv_cache.hpp"
#include "kvcar/layout/dense.hpp"
#include "kvcar/numeric.hpp"
#include "kvcar/storage/contiguous.hpp"

namespace kvcar::examples {

/// Every name `with_kv_cache` accepts, for --help and error messages.
inline const std::vector<std::string>& kv_codec_names() {
    static const std::vector<std::string> names = {"identity-f32", "identity-f16",
                                                   "identity-bf16"};
    return names;
}

/// Builds a dense (one group per KV head) cache of `codec` and runs body(cache) on it.
template <class Codec, class Body>
decltype(auto) run_with_dense_cache(kv_geometry g, const Codec& codec,
                                    contiguous_storage::params storage, Body&& body) {
    kv_cache<Codec> cache(dense_layout(g), codec, storage);
    return std::forward<Body>(body)(cache);
}

/// Runs body(cache) with the cache `kv` names, shaped for `g`. Every branch must make `body`
/// return the same type (usually void or a result struct).
template <class Body>
decltype(auto) with_kv_cache(std::string_view kv, kv_geometry g, contiguous_storage::params storage,
                             Body&& body) {
    const int hd = g.head_dim;
    if (kv == "identity-f32") return run_with_dense_cache(g, identity_codec<float>{hd}, storage, body);
    if (kv == "identity-f16") return run_with_dense_cache(g, identity_codec<f16>{hd}, storage, body);
    if (kv == "identity-bf16") return run_with_dense_cache(g, identity_codec<bf16>{hd}, storage, body);

    std::string known;
    for (const std::string& n : kv_codec_names()) known += (known.empty() ? "" : ", ") + n;
    throw error("kvcar: --kv '" + std::string(kv) + "' is not a known cache (known: " + known + ")");
}

}  // namespace kvcar::examples
