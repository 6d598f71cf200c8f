// Fuzzes kvcar::examples::parse_llama2c (examples/models/llama/llama2c.hpp, the checkpoint). The
// header fixes the file size, so an accepted file must produce arrays of exactly the sizes the
// header implies and use every byte.
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz_common.hpp"
#include "examples/models/llama/llama2c.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    namespace ex = kvcar::examples;
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const ex::llama2c_weights w = ex::parse_llama2c(bytes, "fuzz.bin");
        const ex::llama2c_config& c = w.config;
        using kvcar_fuzz::check;
        check(c.dim > 0 && c.hidden_dim > 0 && c.n_layers > 0 && c.n_heads > 0 &&
                  c.n_kv_heads > 0 && c.vocab_size > 0 && c.seq_len > 0,
              "llama2c: accepted a non-positive header field");
        check(c.dim % c.n_heads == 0 && c.n_heads % c.n_kv_heads == 0 && c.head_size() % 2 == 0,
              "llama2c: accepted inconsistent head sizes");
        const std::uint64_t D = std::uint64_t(c.dim), H = std::uint64_t(c.hidden_dim),
                            L = std::uint64_t(c.n_layers), V = std::uint64_t(c.vocab_size),
                            KV = std::uint64_t(c.kv_dim());
        check(w.token_embedding.size() == V * D, "llama2c: token_embedding size");
        check(w.rms_att.size() == L * D && w.rms_ffn.size() == L * D, "llama2c: rms sizes");
        check(w.wq.size() == L * D * D && w.wo.size() == L * D * D, "llama2c: wq/wo sizes");
        check(w.wk.size() == L * KV * D && w.wv.size() == L * KV * D, "llama2c: wk/wv sizes");
        check(w.w1.size() == L * H * D && w.w2.size() == L * D * H && w.w3.size() == L * H * D,
              "llama2c: ffn sizes");
        check(w.rms_final.size() == D, "llama2c: rms_final size");
        check(w.wcls.size() == (c.shared_classifier ? 0 : V * D), "llama2c: wcls size");
        check(ex::llama2c_header_bytes + 4 * ex::llama2c_float_count(c) == size,
              "llama2c: accepted a file whose size the header does not imply");
    });
}
