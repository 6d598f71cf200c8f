// What the docs write deduces the cache they mean: class template argument deduction of kv_cache
// from a storage's params (the guides in kv_cache.hpp). docs/getting_started.md builds a paged
// cache as `kv_cache cache(layout, codec, paged_storage::params{...})`, which once deduced the
// default contiguous_storage and failed to compile.
#include "catch.hpp"

#include <kvcar/kvcar.hpp>

#include <concepts>
#include <vector>

using namespace kvcar;

TEST_CASE("kv_cache deduces its storage from the params' type", "[docs][kv_cache]") {
    const kv_geometry g{.n_layers = 2, .n_kv_heads = 2, .head_dim = 8};
    const dense_layout layout(g);
    const identity_codec<f16> codec{8};

    kv_cache paged(layout, codec,
                   paged_storage::params{.max_sequences = 2, .max_tokens = 10, .page_size = 3,
                                         .n_pages = 8});
    STATIC_REQUIRE(std::same_as<decltype(paged), kv_cache<identity_codec<f16>, dense_layout,
                                                          paged_storage>>);
    kv_cache contiguous(layout, codec,
                        contiguous_storage::params{.max_sequences = 2, .max_tokens = 10});
    STATIC_REQUIRE(std::same_as<decltype(contiguous), kv_cache<identity_codec<f16>>>);
    // Untyped braces keep meaning the default storage.
    kv_cache braced(layout, codec, {.max_sequences = 2, .max_tokens = 10});
    STATIC_REQUIRE(std::same_as<decltype(braced), kv_cache<identity_codec<f16>>>);
    // One codec per slot.
    kv_cache per_slot(layout, std::vector<identity_codec<f16>>(std::size_t(layout.n_slots()), codec),
                      paged_storage::params{.max_sequences = 1, .max_tokens = 4, .page_size = 4,
                                            .n_pages = 1});
    STATIC_REQUIRE(std::same_as<decltype(per_slot), kv_cache<identity_codec<f16>, dense_layout,
                                                             paged_storage>>);
    REQUIRE(paged.storage().page_size() == 3);
    REQUIRE(per_slot.storage().n_pages() == 1);
}
