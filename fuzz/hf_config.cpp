// Fuzzes kvcar::examples::parse_hf_config (examples/models/hf_config.hpp). An accepted config
// must describe a model a forward pass can run: every size positive, heads dividing as attention needs, a valid KV geometry.
#include <cstddef>
#include <cstdint>

#include "fuzz_common.hpp"
#include "examples/models/hf_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const kvcar::examples::model_config c =
            kvcar::examples::parse_hf_config(kvcar_fuzz::as_text(data, size), "config.json");
        using kvcar_fuzz::check;
        check(c.vocab_size > 0 && c.n_layers > 0 && c.n_heads > 0 && c.n_kv_heads > 0 &&
                  c.d_model > 0 && c.head_dim > 0 && c.d_ff > 0 && c.max_positions > 0,
              "hf_config: accepted a config with a non-positive size");
        check(c.n_heads % c.n_kv_heads == 0, "hf_config: n_kv_heads does not divide n_heads");
        check(c.norm_eps > 0, "hf_config: accepted a non-positive norm eps");
        if (c.architecture == kvcar::examples::model_config::arch::llama)
            check(c.head_dim % 2 == 0 && c.rope_theta > 0, "hf_config: bad RoPE parameters");
        kvcar_fuzz::must_not_throw("kv_geometry of an accepted config",
                                   [&] { kvcar::validate(c.kv()); });
    });
}
