// Fuzzes examples/common/llama2c_tokenizer.hpp: llama2c_tokenizer::parse on arbitrary bytes
// (input: int32 vocab_size, then tokenizer.bin), then encode/decode with whatever it accepted.
// Round trips are not an invariant of an arbitrary vocabulary (a piece may spell "<0x41>"), but
// every id must be in range and everything must decode without an error.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "examples/common/llama2c_tokenizer.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using kvcar::examples::llama2c_tokenizer;
    if (size < 4) return 0;
    const std::int32_t vocab_size = kvcar_fuzz::leading_int32(data);
    const std::string_view bytes = kvcar_fuzz::as_text(data + 4, size - 4);
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const llama2c_tokenizer t = llama2c_tokenizer::parse(bytes, vocab_size, "tokenizer.bin");
        kvcar_fuzz::check(t.vocab_size() == vocab_size, "llama2c_tokenizer: vocab_size differs");
        kvcar_fuzz::must_not_throw("llama2c_tokenizer on its own pieces", [&] {
            // Text made of the vocabulary's own pieces exercises the merges it can actually do.
            std::string text = "Hello, world! \xff\xc3 caf\xc3\xa9";
            for (int id = 0; id < t.vocab_size() && text.size() < 4096; id += 7)
                text += t.piece(id);
            for (const bool bos : {false, true}) {
                const std::vector<int> ids = t.encode(text, bos, !bos);
                for (int id : ids)
                    kvcar_fuzz::check(id >= 0 && id < t.vocab_size(),
                                      "llama2c_tokenizer: encode gave an id out of range");
                (void)t.decode(ids);
            }
            for (int id = 0; id < t.vocab_size(); ++id) {
                (void)t.decode_piece(llama2c_tokenizer::bos_id, id);
                kvcar_fuzz::check(t.find(t.piece(id)) >= 0, "llama2c_tokenizer: piece not found");
            }
        });
    });
}
