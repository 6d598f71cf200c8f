// Fuzzes gpt2_tokenizer::encode/decode (and the pre-tokenizer under it) on arbitrary bytes with a
// fixed tokenizer (fuzz/data/gpt2_small: 256 byte tokens, a few hundred merges). Invariants:
// every id is in range, decode(encode(s)) == s for any bytes, and encoding is deterministic
// (the second encode of the same text goes through the word cache).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "examples/common/gpt2_tokenizer.hpp"
#include "fuzz_common.hpp"

namespace {

using kvcar::examples::gpt2_tokenizer;

const gpt2_tokenizer& tokenizer() {
    static const gpt2_tokenizer t =
        gpt2_tokenizer::parse(kvcar_fuzz::read_data_file("gpt2_small/vocab.json"),
                              kvcar_fuzz::read_data_file("gpt2_small/merges.txt"),
                              "gpt2_small/vocab.json", "gpt2_small/merges.txt");
    return t;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)tokenizer();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text = kvcar_fuzz::as_text(data, size);
    const gpt2_tokenizer& t = tokenizer();
    kvcar_fuzz::must_not_throw("gpt2_tokenizer encode/decode", [&] {
        const std::vector<int> ids = t.encode(text);
        for (int id : ids)
            kvcar_fuzz::check(id >= 0 && id < t.vocab_size(), "gpt2_encode: id out of range");
        kvcar_fuzz::check(t.decode(ids) == text, "gpt2_encode: decode(encode(s)) != s");
        kvcar_fuzz::check(t.encode(text) == ids, "gpt2_encode: encode is not deterministic");
        std::string words;
        for (std::string_view w : kvcar::examples::gpt2_pre_tokenize(text)) {
            kvcar_fuzz::check(!w.empty(), "gpt2_encode: pre-tokenizer gave an empty word");
            words += w;
        }
        kvcar_fuzz::check(words == text, "gpt2_encode: pre-tokenizer words do not tile the text");
    });
    return 0;
}
