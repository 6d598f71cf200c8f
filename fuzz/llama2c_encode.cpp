// Fuzzes llama2c_tokenizer::encode/decode on arbitrary bytes with a fixed tokenizer
// (fuzz/data/llama2c_small: <unk>, BOS, EOS, 256 byte pieces, then letter pieces). No piece of
// that vocabulary contains '<' or spells a byte piece, so decoding is exactly the inverse of
// encoding: decode(encode(s, bos=true)) == s, and without BOS the dummy-prefix space stays.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "examples/common/llama2c_tokenizer.hpp"
#include "fuzz_common.hpp"

namespace {

using kvcar::examples::llama2c_tokenizer;

const llama2c_tokenizer& tokenizer() {
    static const llama2c_tokenizer t = [] {
        const int vocab_size =
            std::stoi(kvcar_fuzz::read_data_file("llama2c_small/vocab_size.txt"));
        return llama2c_tokenizer::parse(kvcar_fuzz::read_data_file("llama2c_small/tokenizer.bin"),
                                        vocab_size, "llama2c_small/tokenizer.bin");
    }();
    return t;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)tokenizer();  // a broken data file fails at start-up, not as a "finding"
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text = kvcar_fuzz::as_text(data, size);
    const llama2c_tokenizer& t = tokenizer();
    kvcar_fuzz::must_not_throw("llama2c_tokenizer encode/decode", [&] {
        const std::vector<int> with_bos = t.encode(text, true, true);
        for (int id : with_bos)
            kvcar_fuzz::check(id >= 0 && id < t.vocab_size(),
                              "llama2c_encode: id out of range");
        kvcar_fuzz::check(with_bos.front() == llama2c_tokenizer::bos_id &&
                              with_bos.back() == llama2c_tokenizer::eos_id,
                          "llama2c_encode: BOS/EOS missing");
        kvcar_fuzz::check(t.decode(with_bos) == text, "llama2c_encode: decode(encode(s)) != s");
        const std::vector<int> plain = t.encode(text, false, false);
        const std::string expected = text.empty() ? std::string() : " " + std::string(text);
        kvcar_fuzz::check(t.decode(plain) == expected,
                          "llama2c_encode: without BOS, decode(encode(s)) != ' ' + s");
    });
    return 0;
}
