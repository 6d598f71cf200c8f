// examples/models/kv_dispatch.hpp — from a run-time `--kv` name to a compile-time cache type.
//
// A model's forward pass is a template on its cache, so every codec is its own instantiation.
// The tools pick one by name at run time here and hand the cache to a generic lambda:
//
//     with_kv_cache("identity-f16", model.cache_geometry(), {1, ctx}, [&](auto& cache) {
//         ... model.forward(cache, seq, tokens) ...
//     });
//
// Names: the fixed caches below (identity in three float formats; int8 and fp8 e4m3 per KV head,
// i.e. quantized<identity<float>> with one scale and offset per head and token), and
// `file:PATH`, a codec file written by kvcar-calibrate (io/codec_file.hpp): per-slot codecs of
// any kind and K/V reuse, loaded as kv_cache<any_codec, reuse_map> after checking that the file
// was made for this geometry. A file fitted to pre-RoPE Llama keys must be used with --keys pre
// (its calibration notes say which).
//
// Adding a codec: include its header, add its name to kv_codec_names, and add one `if` line
// below that builds it for the geometry.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvcar/codec/any.hpp"
#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/common.hpp"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/kv_cache.hpp"
#include "kvcar/layout/dense.hpp"
#include "kvcar/layout/reuse_map.hpp"
#include "kvcar/numeric.hpp"
#include "kvcar/storage/contiguous.hpp"

namespace kvcar::examples {

/// Every name `with_kv_cache` accepts, for --help and error messages.
inline const std::vector<std::string>& kv_codec_names() {
    static const std::vector<std::string> names = {"identity-f32", "identity-f16",
                                                   "identity-bf16", "int8",
                                                   "fp8",          "file:PATH"};
    return names;
}

/// The prefix of a codec-file cache name: `--kv file:codec.kvc`.
inline constexpr std::string_view kv_file_prefix = "file:";

/// Builds a dense (one group per KV head) cache of `codec` and runs body(cache) on it.
template <class Storage, class Codec, class Body>
decltype(auto) run_with_dense_cache(kv_geometry g, const Codec& codec,
                                    typename Storage::params storage, Body&& body) {
    kv_cache<Codec, dense_layout, Storage> cache(dense_layout(g), codec, storage);
    return std::forward<Body>(body)(cache);
}

/// Runs body(cache) with the cache `kv` names, shaped for `g`, its records in a `Storage`
/// (contiguous_storage by default; paged_storage for a page pool, as kvcar-serve uses). Every
/// branch must make `body` return the same type (usually void or a result struct).
template <class Storage = contiguous_storage, class Body>
decltype(auto) with_kv_cache(std::string_view kv, kv_geometry g, typename Storage::params storage,
                             Body&& body) {
    const int hd = g.head_dim;
    const auto dense = [&](const auto& codec) -> decltype(auto) {
        return run_with_dense_cache<Storage>(g, codec, storage, body);
    };
    if (kv == "identity-f32") return dense(identity_codec<float>{hd});
    if (kv == "identity-f16") return dense(identity_codec<f16>{hd});
    if (kv == "identity-bf16") return dense(identity_codec<bf16>{hd});
    if (kv == "int8") return dense(make_quantized<std::int8_t>(identity_codec<float>{hd}));
    if (kv == "fp8") return dense(make_quantized<fp8_e4m3>(identity_codec<float>{hd}));
    if (kv.starts_with(kv_file_prefix)) {
        const std::string path(kv.substr(kv_file_prefix.size()));
        require(!path.empty(), "--kv file: needs a codec file path (--kv file:PATH)");
        // The set owns every codec parameter the any_codec views point to: it outlives the cache.
        const io::codec_set set = io::load_codec_set(path, g);
        kv_cache<any_codec, reuse_map, Storage> cache(set.layout(), set.codecs(), storage);
        return std::forward<Body>(body)(cache);
    }

    std::string known;
    for (const std::string& n : kv_codec_names()) known += (known.empty() ? "" : ", ") + n;
    throw error("kvcar: --kv '" + std::string(kv) + "' is not a known cache (known: " + known + ")");
}

}  // namespace kvcar::examples
