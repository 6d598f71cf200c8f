// Fuzzes examples/common/hf_tokenizer.hpp: hf_tokenizer::parse on arbitrary tokenizer.json text,
// then encode/decode with whatever it accepted. Input: tokenizer.json NUL text (a missing text is
// empty). Every id must be in range; decoding them, whole or one piece at a time, must not throw.
// For a ByteLevel tokenizer (every byte has a token), decode(encode(s)) == s.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "examples/common/hf_tokenizer.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using kvcar::examples::hf_tokenizer;
    const std::string_view all = kvcar_fuzz::as_text(data, size);
    const std::size_t nul = all.find('\0');
    const std::string_view json = all.substr(0, nul);
    const std::string_view text = nul == std::string_view::npos ? std::string_view() : all.substr(nul + 1);
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const hf_tokenizer t = hf_tokenizer::parse(json);
        kvcar_fuzz::must_not_throw("hf_tokenizer encode/decode", [&] {
            const std::vector<int> ids = t.encode(text, true);
            for (int id : ids) kvcar_fuzz::check(id >= 0 && id < t.vocab_size(), "hf_tokenizer: id out of range");
            (void)t.decode(ids);
            int prev = -1;
            for (int id : ids) {
                (void)t.decode_piece(prev, id);
                prev = id;
            }
        });
    });
}
