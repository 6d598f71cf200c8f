// examples/common/hf_tokenizer.hpp — Hugging Face `tokenizer.json` (the `tokenizers` format) for the
// two BPE kinds that Llama-family and GPT-2 checkpoints ship:
//   - ByteLevel: no normalizer, pre_tokenizer ByteLevel (GPT-2's split pattern, then every byte
//     spelled as one printable code point), decoder ByteLevel. GPT-2, RoBERTa, and most BPE models
//     saved by `tokenizers`.
//   - Metaspace with byte fallback: normalizer Sequence[Prepend("▁"), Replace(" ", "▁")] (or a
//     Metaspace pre_tokenizer), no split, model.byte_fallback = true (an unknown character becomes
//     its <0xNN> byte pieces), decoder Sequence[Replace("▁", " "), ByteFallback, Fuse,
//     Strip(" ", 1, 0)]. Llama 2, TinyLlama, Mistral v0.1, Code Llama.
//   - Llama 3's ByteLevel: pre_tokenizer Sequence[Split(Llama 3's regex, Isolated),
//     ByteLevel(use_regex = false)] and model.ignore_merges. The regex is matched by hand
//     (llama3_pre_tokenize), so Split accepts only that pattern and GPT-2's.
// The pieces are read generically (each normalizer, pre-tokenizer and decoder step by its "type"),
// so other combinations of the supported steps also work; an unsupported step is an error naming
// it.
//
// The BPE model: a word starts as its characters (an unknown one: its byte pieces with
// byte_fallback, else unk_token, runs fused with fuse_unk, else dropped, as tokenizers does);
// then the adjacent pair with the lowest merge rank is merged, leftmost first on ties, until no
// pair has a rule (tokenizers' merge_word).
// With ignore_merges, a word that is itself in the vocabulary is that one token.
//
// Special tokens (added_tokens) are NOT recognised in the text: "<s>" in a prompt is encoded as
// the characters '<', 's', '>' (as tokenizers does with split_special_tokens). Add bos_id()
// yourself, or let the tokenizer's TemplateProcessing post-processor say whether it is added
// (add_bos()). decode() drops special tokens, as tokenizers' decode(skip_special_tokens=True).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/json.hpp"

#include "byte_piece.hpp"
#include "gpt2_tokenizer.hpp"

namespace kvcar::examples {

namespace hf_detail {

[[noreturn]] inline void fail(const std::string& what) { throw error("kvcar: hf_tokenizer: " + what); }

inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    if (from.empty()) return std::string(s);
    std::string out;
    out.reserve(s.size());
    for (std::size_t pos = 0;;) {
        const std::size_t hit = s.find(from, pos);
        if (hit == std::string_view::npos) {
            out.append(s.substr(pos));
            return out;
        }
        out.append(s.substr(pos, hit - pos));
        out.append(to);
        pos = hit + from.size();
    }
}


/// Whether `bytes` is valid UTF-8 throughout.
inline bool is_utf8(std::string_view bytes) {
    for (std::size_t pos = 0; pos < bytes.size();) {
        const gpt2_detail::text_unit u = gpt2_detail::decode_utf8_at(bytes, pos);
        if (u.code_point == gpt2_detail::invalid_code_point) return false;
        pos += u.length;
    }
    return true;
}

/// A Replace step's pattern: {"String": "..."} (a {"Regex": ...} pattern is not supported).
inline std::string string_pattern(const io::json_value& step, const char* where) {
    const io::json_value& p = step.at("pattern");
    if (!p.is_object() || !p.contains("String"))
        fail(std::string(where) + ": only Replace steps with a {\"String\": ...} pattern are supported");
    return p.at("String").as_string();
}

inline const std::string& type_of(const io::json_value& step) { return step.at("type").as_string(); }

/// Llama 3's (and tiktoken cl100k's) split pattern, as tokenizer.json stores it.
inline constexpr std::string_view llama3_pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/// GPT-2's split pattern, as tokenizer.json stores it.
inline constexpr std::string_view gpt2_pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/// Calls on_word for each match of llama3_pattern in `text` (the matches tile it). At each
/// position the alternatives are tried in order, as a backtracking regex does:
///   (?i:'s|'t|'re|'ve|'m|'ll|'d)   a contraction, any case
///   [^\r\n\p{L}\p{N}]?\p{L}+       letters, with one leading character that is not CR, LF,
///                                  letter or number (a space, an apostrophe, punctuation)
///   \p{N}{1,3}                     up to three digits
///    ?[^\s\p{L}\p{N}]+[\r\n]*      an optional space, a run of "other", then any CR/LF
///   \s*[\r\n]+                     whitespace up to and including its last CR/LF
///   \s+(?!\S) | \s+                whitespace, leaving the last one to a following word
template <class OnWord>
void llama3_pre_tokenize(std::string_view text, OnWord&& on_word) {
    using gpt2_detail::char_class;
    const auto unit_at = [&](std::size_t pos) { return gpt2_detail::decode_utf8_at(text, pos); };
    const auto class_at = [&](std::size_t pos) { return gpt2_detail::classify(unit_at(pos).code_point); };
    const auto is_crlf = [&](std::size_t pos) { return text[pos] == '\r' || text[pos] == '\n'; };
    const std::size_t n = text.size();
    const auto run_end = [&](std::size_t pos, char_class c) {  // end of the run of class c from pos
        while (pos < n && class_at(pos) == c) pos += unit_at(pos).length;
        return pos;
    };
    std::size_t pos = 0;
    while (pos < n) {
        const gpt2_detail::text_unit u = unit_at(pos);
        const char_class c = gpt2_detail::classify(u.code_point);
        std::size_t end = 0;
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if (text[pos] == '\'' && pos + 1 < n) {
            const auto lower = [&](std::size_t i) {
                return i < n ? char(text[i] >= 'A' && text[i] <= 'Z' ? text[i] + 32 : text[i]) : '\0';
            };
            const char a = lower(pos + 1), b = lower(pos + 2);
            if (a == 's' || a == 't' || a == 'm' || a == 'd') end = pos + 2;
            else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) end = pos + 3;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if (end == 0) {
            if (c == char_class::letter) {
                end = run_end(pos, char_class::letter);
            } else if (c != char_class::number && !is_crlf(pos) && pos + u.length < n &&
                       class_at(pos + u.length) == char_class::letter) {
                end = run_end(pos + u.length, char_class::letter);
            }
        }
        // \p{N}{1,3}
        if (end == 0 && c == char_class::number) {
            end = pos;
            for (int k = 0; k < 3 && end < n && class_at(end) == char_class::number; ++k)
                end += unit_at(end).length;
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        if (end == 0) {
            std::size_t start = pos;
            if (text[pos] == ' ' && pos + 1 < n && class_at(pos + 1) == char_class::other) start = pos + 1;
            if (class_at(start) == char_class::other) {
                end = run_end(start, char_class::other);
                while (end < n && is_crlf(end)) ++end;
            }
        }
        if (end == 0) {  // whitespace: \s*[\r\n]+, then \s+(?!\S), then \s+
            const std::size_t ws_end = run_end(pos, char_class::space);
            std::size_t last_crlf = std::string_view::npos, last_start = pos;
            for (std::size_t i = pos; i < ws_end; i += unit_at(i).length) {
                if (is_crlf(i)) last_crlf = i;
                last_start = i;
            }
            if (last_crlf != std::string_view::npos) end = last_crlf + 1;
            else if (ws_end < n && last_start > pos) end = last_start;  // give one back
            else end = ws_end;
        }
        on_word(text.substr(pos, end - pos));
        pos = end;
    }
}

}  // namespace hf_detail

/// A tokenizer.json BPE tokenizer. Immutable after loading; const members are thread-safe.
class hf_tokenizer {
public:
    static hf_tokenizer load(const std::string& path) {
        return from_json(io::load_json(path), path);
    }

    /// As `load`, from the file's text; `source_name` is only used in error messages.
    static hf_tokenizer parse(std::string_view json_text, std::string_view source_name = "tokenizer.json") {
        const std::string source(source_name);
        return from_json(io::parse_json(json_text, source), source);
    }

    static hf_tokenizer from_json(const io::json_value& root, const std::string& source) {
        hf_tokenizer t;
        try {
            t.read(root);
        } catch (const io::json_error&) {
            throw;
        } catch (const error& e) {
            throw error(std::string(e.what()) + " (in " + source + ")");
        }
        return t;
    }

    /// Ids of `text` (no special tokens recognised; see the file comment), with bos_id() in front
    /// when `add_bos`.
    std::vector<int> encode(std::string_view text, bool add_bos = false) const {
        std::vector<int> ids;
        if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
        const std::string normalized = normalize(text);
        pre_tokenize(normalized, [&](std::string_view word) { bpe(word, ids); });
        return ids;
    }

    /// The text of `ids` through the decoder steps; special tokens are dropped.
    std::string decode(std::span<const int> ids) const {
        std::vector<std::string> tokens;
        tokens.reserve(ids.size());
        for (int id : ids) {
            const std::size_t i = checked(id);
            if (special_[i]) continue;
            tokens.push_back(token_[i]);
        }
        for (const io::json_value* step : decoder_steps_) decode_step(*step, tokens);
        std::string out;
        for (const std::string& s : tokens) out += s;
        return out;
    }

    /// The text `id` adds after `prev` (-1 at the start), for printing tokens as they come: the
    /// decode of [prev, id] minus the decode of [prev]. Byte tokens give their raw byte, so a
    /// character split over byte tokens prints whole once its last byte is out.
    std::string decode_piece(int prev, int id) const {
        const std::size_t i = checked(id);
        if (special_[i]) return "";
        const int b = byte_value_[i];
        if (b >= 0 && byte_fallback_) return std::string(1, char(b));
        if (byte_level_) return decode(std::span<const int>(&id, 1));
        if (prev < 0 || special_[checked(prev)]) return decode(std::span<const int>(&id, 1));
        // Decode with a stand-in first token, so a Strip/Metaspace step that acts on the first
        // token does not act on this one.
        const int pair[2] = {prev, id};
        const std::string both = decode(pair), first = decode(std::span<const int>(pair, 1));
        return both.starts_with(first) ? both.substr(first.size()) : decode(std::span<const int>(&id, 1));
    }

    int vocab_size() const { return int(token_.size()); }
    /// The token's string as stored in the vocabulary ("Ġthe", "▁the", "<0x0A>").
    const std::string& token(int id) const { return token_[checked(id)]; }
    /// The id of `token` in the vocabulary or added tokens, or -1.
    int token_to_id(std::string_view token) const {
        const auto it = id_of_.find(std::string(token));
        return it == id_of_.end() ? -1 : it->second;
    }
    bool is_special(int id) const { return special_[checked(id)]; }
    /// The first special token of the post-processor's single-sequence template (Llama's "<s>"),
    /// or -1 when it adds none.
    int bos_id() const { return bos_id_; }
    /// Whether the post-processor puts bos_id() in front of every sequence.
    bool add_bos() const { return bos_id_ >= 0; }
    bool byte_level() const { return byte_level_; }
    bool byte_fallback() const { return byte_fallback_; }

private:
    hf_tokenizer() = default;

    struct merge_rule {
        int rank;
        int result;
    };
    static std::uint64_t pair_key(int l, int r) {
        return std::uint64_t(std::uint32_t(l)) << 32 | std::uint32_t(r);
    }

    std::shared_ptr<const io::json_value> root_;  // kept (shared by copies): the steps point into it
    std::vector<const io::json_value*> normalizer_steps_;   // applied in order
    std::vector<const io::json_value*> pre_tokenizer_steps_;
    std::vector<const io::json_value*> decoder_steps_;
    std::vector<std::string> token_;  // by id
    std::vector<char> special_;       // by id
    std::vector<int> byte_value_;     // by id: HH of a "<0xHH>" token, else -1
    std::unordered_map<std::string, int> id_of_;
    std::unordered_map<std::uint64_t, merge_rule> merges_;
    int byte_token_[256] = {};  // byte_fallback: the id of <0xHH>
    int unk_id_ = -1;
    bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false, byte_level_ = false;
    int bos_id_ = -1;

    std::size_t checked(int id) const {
        if (id < 0 || id >= vocab_size())
            hf_detail::fail("token id " + std::to_string(id) + " is out of range (vocab size " +
                            std::to_string(vocab_size()) + ")");
        return std::size_t(id);
    }

    static void flatten(const io::json_value& step, const char* list_key,
                        std::vector<const io::json_value*>& out) {
        if (step.is_null()) return;
        if (hf_detail::type_of(step) == "Sequence") {
            const io::json_value& list = step.at(list_key);
            for (std::size_t i = 0; i < list.size(); ++i) flatten(list.at(i), list_key, out);
            return;
        }
        out.push_back(&step);
    }

    void read(const io::json_value& json) {
        root_ = std::make_shared<const io::json_value>(json);
        const io::json_value& root = *root_;
        const io::json_value& model = root.at("model");
        if (!model.contains("type") || model.at("type").as_string() != "BPE")
            hf_detail::fail("model.type is not \"BPE\"; only BPE tokenizers are supported");
        for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
            const io::json_value* v = model.find(key);
            if (v && !v->is_null() && !v->as_string().empty())
                hf_detail::fail(std::string("model.") + key + " is not supported");
        }
        if (const auto* d = model.find("dropout"); d && !d->is_null())
            hf_detail::fail("model.dropout (BPE dropout) is not supported");
        const auto flag = [&](const char* key) {
            const io::json_value* v = model.find(key);
            return v && v->is_bool() && v->as_bool();
        };
        byte_fallback_ = flag("byte_fallback");
        fuse_unk_ = flag("fuse_unk");
        ignore_merges_ = flag("ignore_merges");

        // Vocabulary: token -> id, ids 0..N-1; added tokens may extend it.
        const io::json_value& vocab = model.at("vocab");
        std::size_t n = vocab.size();
        const io::json_value* added = root.find("added_tokens");
        if (added)
            for (std::size_t i = 0; i < added->size(); ++i)
                n = std::max(n, std::size_t(added->at(i).at("id").as_int()) + 1);
        if (n == 0 || n > std::size_t(1) << 24) hf_detail::fail("vocabulary size " + std::to_string(n));
        token_.assign(n, std::string());
        std::vector<char> seen(n, 0);
        special_.assign(n, 0);
        const auto set_token = [&](const std::string& text, std::int64_t id, bool special) {
            if (id < 0 || std::size_t(id) >= n)
                hf_detail::fail("token '" + text + "' has id " + std::to_string(id) + " outside [0, " +
                                std::to_string(n) + ")");
            const auto i = std::size_t(id);
            if (seen[i] && token_[i] != text)
                hf_detail::fail("id " + std::to_string(id) + " is given to both '" + token_[i] +
                                "' and '" + text + "'");
            seen[i] = 1;
            token_[i] = text;
            special_[i] = special_[i] || special;
            id_of_.emplace(text, int(id));
        };
        for (const auto& [text, id] : vocab.items()) set_token(text, id.as_int(), false);
        if (added)
            for (std::size_t i = 0; i < added->size(); ++i) {
                const io::json_value& a = added->at(i);
                const io::json_value* sp = a.find("special");
                set_token(a.at("content").as_string(), a.at("id").as_int(), sp && sp->as_bool());
            }
        for (std::size_t i = 0; i < n; ++i)
            if (!seen[i]) hf_detail::fail("no token has id " + std::to_string(i));
        byte_value_.resize(n);
        for (std::size_t i = 0; i < n; ++i) byte_value_[i] = byte_piece_value(token_[i]);
        if (const auto* unk = model.find("unk_token"); unk && !unk->is_null()) {
            unk_id_ = token_to_id(unk->as_string());
            if (unk_id_ < 0) hf_detail::fail("unk_token '" + unk->as_string() + "' is not in the vocabulary");
        }
        if (byte_fallback_)
            for (int b = 0; b < 256; ++b) {
                char name[8];
                std::snprintf(name, sizeof name, "<0x%02X>", b);
                byte_token_[b] = token_to_id(name);
                if (byte_token_[b] < 0)
                    hf_detail::fail(std::string("byte_fallback is on but ") + name + " is not in the vocabulary");
            }

        // Merges: "a b" strings (older files) or ["a", "b"] pairs; rank = position.
        const io::json_value& merges = model.at("merges");
        merges_.reserve(merges.size());
        for (std::size_t rank = 0; rank < merges.size(); ++rank) {
            const io::json_value& m = merges.at(rank);
            std::string a, b;
            if (m.is_string()) {
                const std::string& s = m.as_string();
                const std::size_t space = s.find(' ');
                if (space == std::string::npos) hf_detail::fail("merge " + std::to_string(rank) + " '" + s + "' has no space");
                a = s.substr(0, space);
                b = s.substr(space + 1);
            } else {
                if (m.size() != 2) hf_detail::fail("merge " + std::to_string(rank) + " is not a pair");
                a = m.at(0).as_string();
                b = m.at(1).as_string();
            }
            const int ia = token_to_id(a), ib = token_to_id(b), im = token_to_id(a + b);
            if (ia < 0 || ib < 0 || im < 0)
                hf_detail::fail("merge " + std::to_string(rank) + " ('" + a + "', '" + b +
                                "') uses a token that is not in the vocabulary");
            merges_.emplace(pair_key(ia, ib), merge_rule{int(rank), im});  // first rule wins
        }

        if (const auto* s = root.find("normalizer")) flatten(*s, "normalizers", normalizer_steps_);
        if (const auto* s = root.find("pre_tokenizer")) flatten(*s, "pretokenizers", pre_tokenizer_steps_);
        if (const auto* s = root.find("decoder")) flatten(*s, "decoders", decoder_steps_);
        // Every field a step uses is checked here, so encode and decode never meet a bad one.
        const auto need = [](const io::json_value& step, const char* key, io::json_value::kind kind,
                             bool optional = false) {
            const io::json_value* v = step.find(key);
            if (!v && optional) return;
            if (!v || v->type() != kind || (kind == io::json_value::kind::number && !v->is_integer()))
                hf_detail::fail("step '" + hf_detail::type_of(step) + "' needs " +
                                (optional ? "an optional " : "a ") + "'" + key + "' of the right type");
        };
        using K = io::json_value::kind;
        for (const auto* list : {&normalizer_steps_, &pre_tokenizer_steps_, &decoder_steps_})
            for (const io::json_value* s : *list) {
                if (!s->is_object() || !s->contains("type") || !s->at("type").is_string())
                    hf_detail::fail("a normalizer, pre_tokenizer or decoder step has no \"type\"");
                const std::string& t = hf_detail::type_of(*s);
                if (t == "Prepend") need(*s, "prepend", K::string);
                if (t == "Replace") need(*s, "content", K::string);
                if (t == "Strip") {
                    need(*s, "content", K::string);
                    need(*s, "start", K::number);
                    need(*s, "stop", K::number);
                }
                if (t == "Metaspace") {
                    need(*s, "replacement", K::string);
                    if (s->at("replacement").as_string().empty())
                        hf_detail::fail("step 'Metaspace' has an empty replacement");
                    need(*s, "prepend_scheme", K::string, true);
                    need(*s, "add_prefix_space", K::boolean, true);
                    need(*s, "split", K::boolean, true);
                }
                if (t == "ByteLevel")
                    for (const char* key : {"add_prefix_space", "use_regex"}) need(*s, key, K::boolean, true);
            }
        for (const io::json_value* s : normalizer_steps_) {
            const std::string& t = hf_detail::type_of(*s);
            if (t == "Replace") hf_detail::string_pattern(*s, "normalizer");
            else if (t != "Prepend" && t != "NFC")
                hf_detail::fail("normalizer '" + t + "' is not supported (Prepend, Replace with a string "
                                "pattern, and NFC on text already in NFC are)");
        }
        for (const io::json_value* s : pre_tokenizer_steps_) {
            const std::string& t = hf_detail::type_of(*s);
            if (t == "ByteLevel") {
                byte_level_ = true;
            } else if (t == "Split") {
                const io::json_value& p = s->at("pattern");
                const io::json_value* regex = p.is_object() ? p.find("Regex") : nullptr;
                const io::json_value* behavior = s->find("behavior");
                const io::json_value* invert = s->find("invert");
                if (!regex || (regex->as_string() != hf_detail::llama3_pattern &&
                               regex->as_string() != hf_detail::gpt2_pattern) ||
                    !behavior || behavior->as_string() != "Isolated" || (invert && invert->as_bool()))
                    hf_detail::fail("pre_tokenizer 'Split' is supported only with Llama 3's or GPT-2's "
                                    "regex, behavior Isolated, not inverted");
            } else if (t != "Metaspace") {
                hf_detail::fail("pre_tokenizer '" + t + "' is not supported (ByteLevel, Metaspace and "
                                "Split with Llama 3's or GPT-2's pattern are)");
            }
        }
        for (const io::json_value* s : decoder_steps_) {
            const std::string& t = hf_detail::type_of(*s);
            if (t == "Replace") hf_detail::string_pattern(*s, "decoder");
            else if (t != "ByteLevel" && t != "ByteFallback" && t != "Fuse" && t != "Strip" && t != "Metaspace")
                hf_detail::fail("decoder '" + t + "' is not supported");
        }
        if (!byte_level_)
            for (std::size_t i = 0; i < n; ++i)
                if (!hf_detail::is_utf8(token_[i])) hf_detail::fail("token " + std::to_string(i) + " is not UTF-8");

        // BOS: the first special token of the post-processor's single-sequence template.
        if (const auto* pp = root.find("post_processor"); pp && !pp->is_null()) {
            std::vector<const io::json_value*> steps;
            flatten(*pp, "processors", steps);
            for (const io::json_value* s : steps) {
                if (hf_detail::type_of(*s) != "TemplateProcessing") continue;
                const io::json_value& single = s->at("single");
                if (single.size() > 0 && single.at(0).contains("SpecialToken"))
                    bos_id_ = token_to_id(single.at(0).at("SpecialToken").at("id").as_string());
            }
        }
    }

    // --- encoding ----------------------------------------------------------------------------

    std::string normalize(std::string_view text) const {
        std::string s(text);
        for (const io::json_value* step : normalizer_steps_) {
            const std::string& t = hf_detail::type_of(*step);
            if (t == "Prepend") {
                if (!s.empty()) s = step->at("prepend").as_string() + s;  // only non-empty text
            } else if (t == "Replace") {
                s = hf_detail::replace_all(s, hf_detail::string_pattern(*step, "normalizer"),
                                           step->at("content").as_string());
            }
            // NFC: accepted, text is assumed to be in NFC already (composing is not implemented)
        }
        return s;
    }

    /// Calls on_word for each pre-token (already in the vocabulary's alphabet).
    template <class OnWord>
    void pre_tokenize(const std::string& text, OnWord&& on_word) const {
        if (pre_tokenizer_steps_.empty()) {
            if (!text.empty()) on_word(std::string_view(text));
            return;
        }
        std::vector<std::string> words{text};
        for (const io::json_value* step : pre_tokenizer_steps_) {
            std::vector<std::string> next;
            const std::string& t = hf_detail::type_of(*step);
            for (const std::string& w : words) {
                if (t == "ByteLevel") byte_level_split(*step, w, next);
                else if (t == "Split") regex_split(*step, w, next);
                else metaspace_split(*step, w, next, &w == &words.front());
            }
            words = std::move(next);
        }
        for (const std::string& w : words)
            if (!w.empty()) on_word(std::string_view(w));
    }

    static void byte_level_split(const io::json_value& step, const std::string& text,
                                 std::vector<std::string>& out) {
        const auto flag = [&](const char* key, bool fallback) {
            const io::json_value* v = step.find(key);
            return v && v->is_bool() ? v->as_bool() : fallback;
        };
        std::string s = text;
        if (flag("add_prefix_space", true) && !s.empty() && s[0] != ' ') s = " " + s;
        const auto spell = [&](std::string_view word) {
            std::string w;
            for (char c : word)
                gpt2_detail::append_utf8(w, gpt2_detail::alphabet.byte_to_code_point[static_cast<unsigned char>(c)]);
            out.push_back(std::move(w));
        };
        if (flag("use_regex", true)) gpt2_pre_tokenize(s, spell);
        else spell(s);
    }

    static void regex_split(const io::json_value& step, const std::string& text,
                            std::vector<std::string>& out) {
        const auto add = [&](std::string_view w) { out.emplace_back(w); };
        if (step.at("pattern").at("Regex").as_string() == hf_detail::llama3_pattern)
            hf_detail::llama3_pre_tokenize(text, add);
        else
            gpt2_pre_tokenize(text, add);
    }

    static void metaspace_split(const io::json_value& step, const std::string& text,
                                std::vector<std::string>& out, bool first) {
        const std::string replacement = step.at("replacement").as_string();
        std::string scheme = "always";
        if (const auto* p = step.find("prepend_scheme")) scheme = p->as_string();
        else if (const auto* a = step.find("add_prefix_space"); a && !a->as_bool()) scheme = "never";
        std::string s = hf_detail::replace_all(text, " ", replacement);
        if ((scheme == "always" || (scheme == "first" && first)) && !s.empty() &&
            !s.starts_with(replacement))
            s = replacement + s;
        const io::json_value* split = step.find("split");
        if (split && split->is_bool() && !split->as_bool()) {
            out.push_back(std::move(s));
            return;
        }
        // Split before each replacement character (it starts the next word).
        std::size_t start = 0;
        for (std::size_t pos = s.find(replacement, 1); pos != std::string::npos;
             pos = s.find(replacement, pos + replacement.size())) {
            if (pos > start) out.push_back(s.substr(start, pos - start));
            start = pos;
        }
        out.push_back(s.substr(start));
    }

    /// BPE of one pre-token (see the file comment); ids appended to `out`.
    void bpe(std::string_view word, std::vector<int>& out) const {
        if (ignore_merges_) {
            if (const int id = token_to_id(word); id >= 0) {
                out.push_back(id);
                return;
            }
        }
        std::vector<int> id;
        bool prev_unknown = false;  // fuse_unk: consecutive unknown characters become one unk
        for (std::size_t pos = 0; pos < word.size();) {
            const gpt2_detail::text_unit u = gpt2_detail::decode_utf8_at(word, pos);
            const std::string_view ch = word.substr(pos, u.length);
            pos += u.length;
            const int known = token_to_id(ch);
            const bool unknown = known < 0 && !byte_fallback_ && unk_id_ >= 0;
            if (known >= 0) {
                id.push_back(known);
            } else if (byte_fallback_) {
                for (char c : ch) id.push_back(byte_token_[static_cast<unsigned char>(c)]);
            } else if (unk_id_ >= 0) {
                if (!(fuse_unk_ && prev_unknown)) id.push_back(unk_id_);
            }
            // else: no unk_token and no byte fallback: tokenizers drops the character
            prev_unknown = unknown;
        }
        const std::size_t n = id.size();
        std::vector<int> next(n), prev(n);
        for (std::size_t i = 0; i < n; ++i) {
            next[i] = i + 1 < n ? int(i + 1) : -1;
            prev[i] = int(i) - 1;
        }
        struct candidate {
            int rank, left, left_id, right_id;
            bool operator>(const candidate& o) const {
                return rank != o.rank ? rank > o.rank : left > o.left;
            }
        };
        std::priority_queue<candidate, std::vector<candidate>, std::greater<>> heap;
        const auto offer = [&](int left) {
            if (left < 0 || next[std::size_t(left)] < 0) return;
            const int right = next[std::size_t(left)];
            const auto it = merges_.find(pair_key(id[std::size_t(left)], id[std::size_t(right)]));
            if (it != merges_.end())
                heap.push({it->second.rank, left, id[std::size_t(left)], id[std::size_t(right)]});
        };
        for (std::size_t i = 0; i + 1 < n; ++i) offer(int(i));
        while (!heap.empty()) {
            const candidate c = heap.top();
            heap.pop();
            const auto left = std::size_t(c.left);
            if (id[left] != c.left_id || next[left] < 0) continue;
            const auto right = std::size_t(next[left]);
            if (id[right] != c.right_id) continue;
            id[left] = merges_.find(pair_key(c.left_id, c.right_id))->second.result;
            id[right] = -1;
            next[left] = next[right];
            if (next[left] >= 0) prev[std::size_t(next[left])] = int(left);
            offer(prev[left]);
            offer(int(left));
        }
        if (n > 0)
            for (int i = 0; i >= 0; i = next[std::size_t(i)]) out.push_back(id[std::size_t(i)]);
    }

    // --- decoding ----------------------------------------------------------------------------

    static void decode_step(const io::json_value& step, std::vector<std::string>& tokens) {
        const std::string& t = hf_detail::type_of(step);
        if (t == "Replace") {
            const std::string from = hf_detail::string_pattern(step, "decoder");
            const std::string& to = step.at("content").as_string();
            for (std::string& s : tokens) s = hf_detail::replace_all(s, from, to);
        } else if (t == "Fuse") {
            std::string all;
            for (const std::string& s : tokens) all += s;
            tokens.assign(1, std::move(all));
        } else if (t == "Strip") {
            const std::string& content = step.at("content").as_string();
            const auto start = step.at("start").as_int(), stop = step.at("stop").as_int();
            if (content.empty()) return;  // nothing to strip (and no endless loop)
            for (std::string& s : tokens) {
                for (std::int64_t k = 0; k < start && s.starts_with(content); ++k) s.erase(0, content.size());
                for (std::int64_t k = 0; k < stop && s.ends_with(content); ++k) s.resize(s.size() - content.size());
            }
        } else if (t == "ByteFallback") {
            // Runs of <0xHH> tokens become their bytes when those are valid UTF-8, else one
            // U+FFFD per byte (tokenizers' ByteFallback decoder).
            std::vector<std::string> out;
            std::string run;
            std::size_t run_tokens = 0;
            const auto flush = [&] {
                if (run_tokens == 0) return;
                if (hf_detail::is_utf8(run)) {
                    out.push_back(run);
                } else {
                    for (std::size_t k = 0; k < run_tokens; ++k) out.push_back("\xEF\xBF\xBD");
                }
                run.clear();
                run_tokens = 0;
            };
            for (std::string& s : tokens) {
                const int b = byte_piece_value(s);
                if (b >= 0) {
                    run += char(b);
                    ++run_tokens;
                } else {
                    flush();
                    out.push_back(std::move(s));
                }
            }
            flush();
            tokens = std::move(out);
        } else if (t == "ByteLevel") {
            std::string all;
            for (const std::string& s : tokens) {
                for (std::size_t pos = 0; pos < s.size();) {
                    const gpt2_detail::text_unit u = gpt2_detail::decode_utf8_at(s, pos);
                    const int b = u.code_point == gpt2_detail::invalid_code_point
                                      ? -1 : gpt2_detail::alphabet.byte_of(u.code_point);
                    if (b >= 0) all += char(b);
                    else all.append(s.substr(pos, u.length));  // added tokens stand for themselves
                    pos += u.length;
                }
            }
            tokens.assign(1, std::move(all));
        } else if (t == "Metaspace") {
            const std::string& replacement = step.at("replacement").as_string();
            std::string scheme = "always";
            if (const auto* p = step.find("prepend_scheme")) scheme = p->as_string();
            else if (const auto* a = step.find("add_prefix_space"); a && !a->as_bool()) scheme = "never";
            for (std::size_t i = 0; i < tokens.size(); ++i) {
                std::string s = hf_detail::replace_all(tokens[i], replacement, " ");
                if (i == 0 && scheme != "never" && s.starts_with(' ')) s.erase(0, 1);
                tokens[i] = std::move(s);
            }
        }
    }
};

}  // namespace kvcar::examples
