// Fuzzes examples/common/sentencepiece_tokenizer.hpp: sentencepiece_tokenizer::parse on arbitrary
// bytes as a tokenizer.model (the protobuf wire format read by hand), then encode/decode with
// whatever it accepted. Input: model bytes NUL text (a missing text is empty). Every id must be in
// range, and decoding any ids it produced must not throw. With byte fallback and a dummy prefix,
// text without spaces, "▁" or invalid UTF-8 decodes back to itself.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "examples/common/sentencepiece_tokenizer.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using kvcar::examples::sentencepiece_tokenizer;
    const std::string_view all = kvcar_fuzz::as_text(data, size);
    const std::size_t nul = all.find('\0');
    const std::string_view model = all.substr(0, nul);
    const std::string_view text = nul == std::string_view::npos ? std::string_view() : all.substr(nul + 1);
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const sentencepiece_tokenizer t = sentencepiece_tokenizer::parse(model);
        kvcar_fuzz::must_not_throw("sentencepiece_tokenizer encode/decode", [&] {
            const std::vector<int> ids = t.encode(text, true, true);
            for (int id : ids)
                kvcar_fuzz::check(id >= 0 && id < t.vocab_size(), "sentencepiece_tokenizer: id out of range");
            const std::string decoded = t.decode(ids);
            int prev = -1;
            for (int id : ids) {
                (void)t.decode_piece(prev, id);
                prev = id;
            }
            const auto& s = t.settings();
            const bool plain = text.find(' ') == std::string_view::npos &&
                               kvcar::examples::spm_detail::valid_utf8(text) == text &&
                               text.find("\xE2\x96\x81") == std::string_view::npos;
            if (plain && s.byte_fallback && s.add_dummy_prefix && s.escape_whitespaces &&
                !s.remove_extra_whitespaces && !text.empty() && ids.size() >= 2) {
                // Only checked when every id is a normal or byte piece (BOS and EOS aside) and
                // the first is normal: a "▁" spelled in bytes is not a dummy prefix to drop.
                bool simple = t.type(ids[1]) == sentencepiece_tokenizer::piece_type::normal;
                for (std::size_t i = 1; i + 1 < ids.size(); ++i) {
                    const auto type = t.type(ids[i]);
                    simple = simple && (type == sentencepiece_tokenizer::piece_type::normal ||
                                        type == sentencepiece_tokenizer::piece_type::byte);
                }
                if (simple && ids.front() == s.bos_id && ids.back() == s.eos_id &&
                    t.type(ids.front()) == sentencepiece_tokenizer::piece_type::control &&
                    t.type(ids.back()) == sentencepiece_tokenizer::piece_type::control)
                    kvcar_fuzz::check(decoded == text, "sentencepiece_tokenizer: decode(encode(s)) != s");
            }
        });
    });
}
