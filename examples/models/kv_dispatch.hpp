// examples/models/kv_dispatch.hpp — from a run-time `--kv` name to a compile-time cache type.
//
// A model's forward pass is a template on its cache, so every codec is its own instantiation.
// The tools pick one by name at run time here and hand the cache to a generic lambda:
//
//     with_kv_cache("identity-f16", model.cache_geometry(), {1, ctx}, [&](auto& cache) {
//         ... model.forward(cache, seq, tokens) ...
//     });
//
// Names: the fixed caches (dense_kv_names: the identity codec in every latent storage,
// "identity-f32", "identity-f16", "identity-bf16", and the quantized ones "int8" and "fp8", i.e.
// quantized<identity<float>> with one scale and offset per head and token), and `file:PATH`, a
// codec file written by kvcar-calibrate (io/codec_file.hpp): per-slot codecs of any registered
// kind and K/V reuse, loaded as kv_cache<any_codec, reuse_map> after checking that the file was
// made for this geometry. A file fitted to pre-RoPE Llama keys must be used with --keys pre (its
// calibration notes say which). The CUDA backend (cuda/backend.cu) takes the same names.
//
// Adding a codec: register it (codec/traits.hpp) and codec files carry it; a new fixed cache needs
// no edit either when it is a latent storage of the identity codec.
#pragma once

#include <cstdint>
#include <optional>
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

/// The codecs of the fixed caches: the identity codec, its storage picked at run time. Visiting
/// one instantiates a body for each of the five storages only, not for every registered codec.
using dense_kv_codec = basic_any_codec<identity_codec<>>;

/// The fixed cache name of the identity codec in `s`: "identity-" and the storage's name, or for
/// the quantized storages their name up to the first '_' ("int8", "fp8").
inline std::string dense_kv_name(latent_storage s) {
    const std::string name = to_string(s);
    return is_quantized(s) ? name.substr(0, name.find('_')) : "identity-" + name;
}

/// The codec of the fixed cache `kv` for heads of `head_dim`, or nothing when `kv` names none.
inline std::optional<dense_kv_codec> dense_kv_codec_named(std::string_view kv, int head_dim) {
    for (latent_storage s : all_latent_storages) {
        if (kv != dense_kv_name(s)) continue;
        dense_kv_codec c = dense_kv_codec::of(identity_codec<float>{head_dim});
        c.storage = s;
        c.validate();  // a quantized identity's latent must fit max_latent_width
        return c;
    }
    return std::nullopt;
}

/// Every name `with_kv_cache` accepts, for --help and error messages.
inline const std::vector<std::string>& kv_codec_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> v;
        for (latent_storage s : all_latent_storages) v.push_back(dense_kv_name(s));
        v.push_back("file:PATH");
        return v;
    }();
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
    if (const std::optional<dense_kv_codec> codec = dense_kv_codec_named(kv, hd))
        return codec->visit(dense);  // the concrete codec: identity_codec<T> or quantized
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
