// Fuzzes kvcar::examples::parse_llama2c_vocab. Input: int32 vocab_size (little endian), then the
// tokenizer.bin bytes. vocab_size comes from an untrusted checkpoint header too, so it is fuzzed.
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz_common.hpp"
#include "examples/models/llama/llama2c.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 4) return 0;
    const std::int32_t vocab_size = kvcar_fuzz::leading_int32(data);
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data + 4), size - 4);
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const kvcar::examples::llama2c_vocab v =
            kvcar::examples::parse_llama2c_vocab(bytes, vocab_size, "tokenizer.bin");
        kvcar_fuzz::check(v.pieces.size() == std::size_t(vocab_size) &&
                              v.scores.size() == std::size_t(vocab_size),
                          "llama2c_vocab: token count != vocab_size");
        std::size_t total = 4;
        for (const std::string& p : v.pieces) {
            kvcar_fuzz::check(p.size() <= std::size_t(v.max_token_length),
                              "llama2c_vocab: piece longer than max_token_length");
            total += 8 + p.size();
        }
        kvcar_fuzz::check(total == bytes.size(), "llama2c_vocab: accepted with bytes left over");
    });
}
