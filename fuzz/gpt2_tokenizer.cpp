// Fuzzes examples/common/gpt2_tokenizer.hpp: gpt2_tokenizer::parse on arbitrary vocab.json and
// merges.txt, then a round trip with whatever it accepted. Input: vocab.json NUL merges.txt NUL
// text (a missing part is empty). Byte-level BPE only ever joins tokens whose bytes concatenate,
// so decode(encode(s)) == s holds for every vocabulary the parser accepts.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "examples/common/gpt2_tokenizer.hpp"
#include "fuzz_common.hpp"

namespace {

/// The next NUL-terminated part of `rest` (all of it when there is no NUL).
std::string_view take_part(std::string_view& rest) {
    const std::size_t nul = rest.find('\0');
    const std::string_view part = rest.substr(0, nul);
    rest = nul == std::string_view::npos ? std::string_view() : rest.substr(nul + 1);
    return part;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using kvcar::examples::gpt2_tokenizer;
    std::string_view rest = kvcar_fuzz::as_text(data, size);
    const std::string_view vocab = take_part(rest);
    const std::string_view merges = take_part(rest);
    const std::string_view text = rest;
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const gpt2_tokenizer t = gpt2_tokenizer::parse(vocab, merges);
        kvcar_fuzz::must_not_throw("gpt2_tokenizer round trip", [&] {
            const std::vector<int> ids = t.encode(text);
            for (int id : ids)
                kvcar_fuzz::check(id >= 0 && id < t.vocab_size(),
                                  "gpt2_tokenizer: id out of range");
            kvcar_fuzz::check(t.decode(ids) == text, "gpt2_tokenizer: decode(encode(s)) != s");
            // Every token's bytes re-encode to something that decodes back to them.
            for (int id = 0; id < t.vocab_size() && id < 64; ++id) {
                const std::string piece = t.piece(id);
                kvcar_fuzz::check(t.decode(t.encode(piece)) == piece,
                                  "gpt2_tokenizer: a token's own bytes do not round-trip");
            }
        });
    });
}
