// examples/models/cuda/file_caches.cu — a codec file's cache: typed when every slot holds one of
// the kinds calibration makes, else any_codec (one forward-pass instantiation each).
#include "examples/models/cuda/erased_cache.cuh"

#include <cstdint>
#include <optional>
#include <type_traits>

#include "kvcar/codec/any.hpp"
#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/layout/reuse_map.hpp"
#include "kvcar/numeric.hpp"

namespace kvcar::examples::cuda_backend {

namespace {

/// The slots of `codecs` as concrete codecs of type C, or nothing when any slot is another kind.
template <class C>
std::optional<std::vector<C>> all_as(const std::vector<any_codec>& codecs) {
    if constexpr (std::is_same_v<C, any_codec>) return codecs;
    std::vector<C> out;
    for (const any_codec& a : codecs) {
        a.visit([&](const auto& c) {
            if constexpr (std::is_same_v<std::decay_t<decltype(c)>, C>) out.push_back(c);
        });
        if (out.size() != std::size_t(&a - codecs.data()) + 1) return std::nullopt;
    }
    return out;
}

/// A codec file's cache. When every slot holds the same concrete codec, and it is one of the
/// kinds calibration makes (linear, int8 linear, fp16 identity, fp16 autoencoder), the cache
/// is of that type: the decode dispatcher then
/// picks its fast paths (tensor cores for whole-layer latents, int8 read in place). Any other
/// mix runs as any_codec, whose records are the same bytes, decoded per record.
}  // namespace

std::unique_ptr<any_cache> make_file_cache(std::shared_ptr<const io::codec_set> set,
                                           const cache_shape& p) {
    const std::vector<any_codec> codecs = set->codecs();
    std::unique_ptr<any_cache> out;
    auto try_as = [&]<class C>() {
        if (out) return;
        if (std::optional<std::vector<C>> typed = all_as<C>(codecs))
            out = std::make_unique<typed_cache<C, reuse_map>>(
                set, std::move(*typed),
                typename gpu::device_kv_cache<C, reuse_map>::params{
                    p.max_sequences, p.max_tokens, p.page_size, p.n_pages});
    };
    try_as.template operator()<linear_codec<f16>>();
    try_as.template operator()<quantized_codec<linear_codec<float>, std::int8_t>>();
    try_as.template operator()<identity_codec<f16>>();
    // The autoencoder too: as any_codec its decode steps decoded every cached record through the
    // MLP per query (decoded path), about 2 s a step at 18 TinyLlama sequences on one H100
    // (docs/results/serving.md); typed, the dispatcher takes its tensor-core path.
    try_as.template operator()<autoencoder_codec<f16>>();
    try_as.template operator()<any_codec>();
    return out;
}

}  // namespace kvcar::examples::cuda_backend
