// examples/common/gpt2_tokenizer.hpp — GPT-2's byte-level BPE tokenizer (vocab.json, merges.txt).
//
// Encoding is three steps, exactly as OpenAI's encoder.py and Hugging Face's ByteLevel BPE do it:
//   1. pre-tokenize: split the text into words with GPT-2's pattern
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      (hand-written below on decoded code points; no regex library);
//   2. map every byte of a word to its single-byte token (GPT-2 spells byte b as the printable
//      code point bytes_to_unicode(b), so vocab.json keys are text);
//   3. merge adjacent tokens by merge rank (lowest rank first) until no rule applies.
// Decoding concatenates the tokens' bytes, so decode(encode(s)) == s for every byte string s,
// valid UTF-8 or not.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <queue>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/json.hpp"
#include "kvcar/io/utf8.hpp"
#include "unicode_tables.hpp"

namespace kvcar::examples {

namespace gpt2_detail {

/// GPT-2's bytes<->unicode table: the 188 printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand
/// for themselves and the other 68 bytes (controls, space, DEL, NBSP, soft hyphen) are moved,
/// in byte order, to U+0100 upwards. So a space is 'Ġ' (U+0120) and '\n' is 'Ċ' (U+010A).
struct byte_alphabet {
    char32_t byte_to_code_point[256] = {};

    constexpr byte_alphabet() {
        char32_t next_free = 0x100;
        for (int b = 0; b < 256; ++b) {
            const bool printable =
                (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            byte_to_code_point[b] = printable ? char32_t(b) : next_free++;
        }
    }

    /// The byte that code point `c` stands for, or -1 when `c` is outside the alphabet.
    constexpr int byte_of(char32_t c) const {
        if (c < 0x100) {
            const bool printable =
                (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
            return printable ? int(c) : -1;
        }
        for (int b = 0; b < 256; ++b)
            if (byte_to_code_point[b] == c) return b;
        return -1;
    }
};

inline constexpr byte_alphabet alphabet{};

/// One decoded unit of the input: a code point, or a single byte that is not part of valid UTF-8.
struct text_unit {
    char32_t code_point;  // invalid_code_point for an invalid byte
    std::uint32_t length; // bytes
};

inline constexpr char32_t invalid_code_point = 0xFFFFFFFF;

/// Decodes the UTF-8 sequence at `pos` (io/utf8.hpp: no overlong forms, no surrogates, at most
/// U+10FFFF). A byte that does not start a complete valid sequence becomes a unit of its own (one
/// byte, even where the maximal subpart that io::utf8_at reports is longer), so every byte string
/// splits into units deterministically.
inline text_unit decode_utf8_at(std::string_view s, std::size_t pos) {
    const io::utf8_sequence seq = io::utf8_at(s, pos);
    if (!seq.valid) return {invalid_code_point, 1};
    return {seq.code_point, std::uint32_t(seq.length)};
}

inline void append_utf8(std::string& out, char32_t c) {
    if (c < 0x80) {
        out += char(c);
    } else if (c < 0x800) {
        out += char(0xC0 | (c >> 6));
        out += char(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out += char(0xE0 | (c >> 12));
        out += char(0x80 | ((c >> 6) & 0x3F));
        out += char(0x80 | (c & 0x3F));
    } else {
        out += char(0xF0 | (c >> 18));
        out += char(0x80 | ((c >> 12) & 0x3F));
        out += char(0x80 | ((c >> 6) & 0x3F));
        out += char(0x80 | (c & 0x3F));
    }
}

/// The pattern's three classes plus "other" ([^\s\p{L}\p{N}]); invalid bytes are "other".
enum class char_class : std::uint8_t { letter, number, space, other };

inline char_class classify(char32_t c) {
    if (c == invalid_code_point) return char_class::other;
    if (unicode::is_letter(c)) return char_class::letter;
    if (unicode::is_number(c)) return char_class::number;
    if (unicode::is_space(c)) return char_class::space;
    return char_class::other;
}

/// Length of the contraction ('s 't 're 've 'm 'll 'd, case-sensitive as in GPT-2) that starts
/// with the apostrophe at `pos`, or 0.
inline std::size_t contraction_length(std::string_view s, std::size_t pos) {
    const std::string_view rest = s.substr(pos + 1);
    if (rest.empty()) return 0;
    const char c = rest[0];
    if (c == 's' || c == 't' || c == 'm' || c == 'd') return 2;
    if (rest.size() >= 2) {
        const std::string_view two = rest.substr(0, 2);
        if (two == "re" || two == "ve" || two == "ll") return 3;
    }
    return 0;
}

/// Heterogeneous string hashing, so the word cache is probed with a string_view.
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
        return std::hash<std::string_view>{}(s);
    }
};

/// Throws kvcar::error. Used as `if (!ok) fail(...)` where the message is costly to build, so
/// the happy path (50k vocab entries, every decoded id) never formats one.
[[noreturn]] inline void fail(const std::string& what) { throw error("kvcar: " + what); }

inline std::string read_text_file(const std::string& path, const char* what) {
    std::ifstream in(path, std::ios::binary);
    require(bool(in), std::string("gpt2_tokenizer: cannot open ") + what + " '" + path + "'");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    require(!in.bad(), std::string("gpt2_tokenizer: cannot read ") + what + " '" + path + "'");
    return std::move(buffer).str();
}

}  // namespace gpt2_detail

/// Calls `on_word(std::string_view)` for each word of GPT-2's pre-tokenizer pattern
///   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
/// in order; the words tile `text` exactly. The alternatives are tried in the pattern's order at
/// each position (leftmost-first, as a backtracking regex does):
///  - an apostrophe followed by s t m d re ve ll is a contraction (case-sensitive, so "'S" is
///    not one: it falls through to the punctuation run);
///  - otherwise one optional ' ' then a maximal run of letters, of numbers or of "other"
///    characters (anything not space, letter or number; invalid UTF-8 bytes count as other);
///  - otherwise a whitespace run. `\s+(?!\S)` backtracks by one: when the run is followed by a
///    non-space, its last character is left to start the next word (so "  x" is " ", " x"), and a
///    single whitespace character before a non-space is matched alone by the final `\s+`.
template <class OnWord>
void gpt2_pre_tokenize(std::string_view text, OnWord&& on_word) {
    using gpt2_detail::char_class;
    const std::size_t n = text.size();
    std::size_t pos = 0;
    while (pos < n) {
        const gpt2_detail::text_unit unit = gpt2_detail::decode_utf8_at(text, pos);
        if (unit.code_point == U'\'') {
            if (const std::size_t len = gpt2_detail::contraction_length(text, pos)) {
                on_word(text.substr(pos, len));
                pos += len;
                continue;
            }
        }
        // " ?X+" for X in letter, number, other: the optional space only when X follows it.
        std::size_t run_start = pos;
        gpt2_detail::text_unit first = unit;
        char_class run_class = gpt2_detail::classify(unit.code_point);
        if (unit.code_point == U' ' && pos + 1 < n) {
            const gpt2_detail::text_unit next = gpt2_detail::decode_utf8_at(text, pos + 1);
            const char_class next_class = gpt2_detail::classify(next.code_point);
            if (next_class != char_class::space) {
                run_start = pos + 1;
                first = next;
                run_class = next_class;
            }
        }
        std::size_t end = run_start + first.length;
        if (run_class != char_class::space) {
            while (end < n) {
                const gpt2_detail::text_unit u = gpt2_detail::decode_utf8_at(text, end);
                if (gpt2_detail::classify(u.code_point) != run_class) break;
                end += u.length;
            }
            on_word(text.substr(pos, end - pos));
            pos = end;
            continue;
        }
        // Whitespace run [pos, end); `last` is where its final character starts.
        std::size_t last = pos;
        while (end < n) {
            const gpt2_detail::text_unit u = gpt2_detail::decode_utf8_at(text, end);
            if (gpt2_detail::classify(u.code_point) != char_class::space) break;
            last = end;
            end += u.length;
        }
        if (end < n && last > pos) end = last;  // \s+(?!\S): give the last space to the next word
        on_word(text.substr(pos, end - pos));
        pos = end;
    }
}

/// The words of `text` under GPT-2's pre-tokenizer (see the callback overload).
inline std::vector<std::string_view> gpt2_pre_tokenize(std::string_view text) {
    std::vector<std::string_view> words;
    gpt2_pre_tokenize(text, [&](std::string_view w) { words.push_back(w); });
    return words;
}

/// GPT-2's byte-level BPE tokenizer. Immutable after loading; encode/decode are const and safe to
/// call from several threads (the word cache is behind a mutex and shared between copies).
class gpt2_tokenizer {
public:
    /// Reads a Hugging Face `vocab.json` (token -> id; ids exactly 0..N-1) and `merges.txt`
    /// (an optional "#version" line, then one "A B" merge per line in priority order).
    static gpt2_tokenizer load(const std::string& vocab_json, const std::string& merges_txt) {
        const std::string vocab_text = gpt2_detail::read_text_file(vocab_json, "vocab file");
        const std::string merges_text = gpt2_detail::read_text_file(merges_txt, "merges file");
        return parse(vocab_text, merges_text, vocab_json, merges_txt);
    }

    /// As `load`, from the files' contents; the names are only used in error messages.
    static gpt2_tokenizer parse(std::string_view vocab_json_text, std::string_view merges_text,
                                std::string_view vocab_name = "vocab.json",
                                std::string_view merges_name = "merges.txt") {
        gpt2_tokenizer t;
        const std::string vocab_file(vocab_name);
        const std::string merges_file(merges_name);
        const auto key_to_id = t.read_vocab(vocab_json_text, vocab_file);
        t.read_merges(merges_text, merges_file, key_to_id);
        return t;
    }

    /// Token ids of `utf8` (any bytes; see the file comment). Special tokens are not recognised
    /// in the text: "<|endoftext|>" is encoded as ordinary characters, as Hugging Face's
    /// ByteLevelBPETokenizer does; append eos_id() yourself.
    std::vector<int> encode(std::string_view utf8) const {
        std::vector<int> ids;
        ids.reserve(utf8.size() / 3 + 1);
        gpt2_pre_tokenize(utf8, [&](std::string_view word) { encode_word(word, ids); });
        return ids;
    }

    /// The bytes of the tokens, concatenated. Any id sequence decodes (a cut through a multi-byte
    /// character gives invalid UTF-8, as it should); an id outside [0, vocab_size) throws.
    std::string decode(std::span<const int> ids) const {
        std::size_t bytes = 0;
        for (int id : ids) bytes += token_bytes_[checked(id)].size();
        std::string out;
        out.reserve(bytes);
        for (int id : ids) out += token_bytes_[std::size_t(id)];
        return out;
    }

    /// The bytes token `id` stands for (what decode({id}) gives), e.g. " the" for 262.
    std::string piece(int id) const { return token_bytes_[checked(id)]; }

    int vocab_size() const { return int(token_bytes_.size()); }
    int merge_count() const { return int(merge_rules_.size()); }

    /// Id of "<|endoftext|>" (GPT-2's BOS and EOS, 50256), or -1 when the vocabulary has none.
    int eos_id() const { return eos_id_; }

private:
    gpt2_tokenizer() = default;  // only load/parse make one: there is no empty tokenizer

    /// What merging the adjacent pair (left, right) gives, and how early BPE applies it.
    struct merge_rule {
        int rank;
        int result;
    };

    static std::uint64_t pair_key(int left, int right) {
        return std::uint64_t(std::uint32_t(left)) << 32 | std::uint32_t(right);
    }

    /// Encoded words, by their bytes. Most text reuses a small set of words, so after the first
    /// few pages nearly every word is a hash probe instead of a BPE run. Bounded: cleared when
    /// full, and very long words are not kept.
    struct word_cache {
        static constexpr std::size_t max_entries = std::size_t(1) << 18;
        static constexpr std::size_t max_word_bytes = 256;
        std::mutex mutex;
        std::unordered_map<std::string, std::vector<int>, gpt2_detail::string_hash,
                           std::equal_to<>>
            words;
    };

    std::vector<std::string> token_bytes_;  // by id
    int byte_token_[256] = {};              // id of the single-byte token of each byte
    std::unordered_map<std::uint64_t, merge_rule> merge_rules_;
    int eos_id_ = -1;
    std::shared_ptr<word_cache> cache_ = std::make_shared<word_cache>();

    std::size_t checked(int id) const {
        if (id < 0 || id >= vocab_size())
            gpt2_detail::fail("gpt2_tokenizer: token id " + std::to_string(id) +
                              " is out of range (vocab size " +
                    std::to_string(vocab_size()) + ")");
        return std::size_t(id);
    }

    /// vocab.json's key for a token is its bytes spelled in the byte alphabet; keys may also hold
    /// code points outside it (added tokens), which stand for their own UTF-8.
    static std::string key_to_bytes(std::string_view key) {
        std::string bytes;
        bytes.reserve(key.size());
        for (std::size_t pos = 0; pos < key.size();) {
            const gpt2_detail::text_unit u = gpt2_detail::decode_utf8_at(key, pos);
            const int b = u.code_point == gpt2_detail::invalid_code_point
                              ? -1
                              : gpt2_detail::alphabet.byte_of(u.code_point);
            if (b >= 0) bytes += char(b);
            else bytes.append(key.substr(pos, u.length));
            pos += u.length;
        }
        return bytes;
    }

    static std::string quoted(std::string_view s) {
        constexpr std::size_t limit = 40;
        std::string q = "'";
        q.append(s.substr(0, limit));
        if (s.size() > limit) q += "...";
        return q + "'";
    }

    std::unordered_map<std::string, int> read_vocab(std::string_view text,
                                                    const std::string& file) {
        using gpt2_detail::fail;
        const std::string who = "gpt2_tokenizer: " + file + ": ";
        const io::json_value root = io::parse_json(text, file);
        if (!root.is_object()) fail(who + "expected a JSON object of token -> id");
        std::unordered_map<std::string, int> key_to_id;
        key_to_id.reserve(root.size());
        std::vector<const std::string*> key_of_id;  // points into key_to_id's stable nodes
        for (const auto& [key, value] : root.items()) {
            if (!value.is_integer())
                fail(who + "the id of token " + quoted(key) + " is not an integer");
            const std::int64_t id = value.as_int();
            if (id < 0 || id > std::int64_t(std::numeric_limits<int>::max()))
                fail(who + "token " + quoted(key) + " has id " + std::to_string(id) +
                     ", outside [0, 2^31)");
            // Ids run 0..N-1, so an id >= N is wrong; checking it here also keeps a hostile id
            // from sizing key_of_id (found by fuzz/gpt2_tokenizer).
            if (id >= std::int64_t(root.size()))
                fail(who + "token " + quoted(key) + " has id " + std::to_string(id) +
                     ", but the vocabulary has only " + std::to_string(root.size()) +
                     " tokens (ids must be 0.." + std::to_string(root.size() - 1) + ")");
            const auto [it, inserted] = key_to_id.emplace(key, int(id));
            if (!inserted) fail(who + "token " + quoted(key) + " appears twice");
            const auto slot = std::size_t(id);
            if (slot >= key_of_id.size()) key_of_id.resize(slot + 1);
            if (key_of_id[slot] != nullptr)
                fail(who + "id " + std::to_string(id) + " is given to both " +
                     quoted(*key_of_id[slot]) + " and " + quoted(key));
            key_of_id[slot] = &it->first;
        }
        if (key_of_id.empty()) fail(who + "the vocabulary is empty");
        for (std::size_t id = 0; id < key_of_id.size(); ++id)
            if (key_of_id[id] == nullptr)
                fail(who + "no token has id " + std::to_string(id) + " (ids must be 0.." +
                     std::to_string(key_of_id.size() - 1) + " without gaps)");

        std::vector<std::string> token_bytes(key_of_id.size());
        for (std::size_t id = 0; id < key_of_id.size(); ++id)
            token_bytes[id] = key_to_bytes(*key_of_id[id]);
        for (int b = 0; b < 256; ++b) {
            std::string key;
            gpt2_detail::append_utf8(key, gpt2_detail::alphabet.byte_to_code_point[b]);
            const auto it = key_to_id.find(key);
            if (it == key_to_id.end())
                fail(who + "no token for byte " + std::to_string(b) + " (key " + quoted(key) +
                     "): byte-level BPE needs all 256 single-byte tokens");
            byte_token_[b] = it->second;
        }
        token_bytes_ = std::move(token_bytes);
        const auto eos = key_to_id.find("<|endoftext|>");
        eos_id_ = eos == key_to_id.end() ? -1 : eos->second;
        return key_to_id;
    }

    void read_merges(std::string_view text, const std::string& file,
                     const std::unordered_map<std::string, int>& key_to_id) {
        using gpt2_detail::fail;
        std::unordered_map<std::uint64_t, int> line_of_pair;
        int rank = 0;
        std::size_t line_no = 0;
        std::string merged;
        for (std::size_t pos = 0; pos < text.size();) {
            std::size_t eol = text.find('\n', pos);
            if (eol == std::string_view::npos) eol = text.size();
            std::string_view line = text.substr(pos, eol - pos);
            pos = eol + 1;
            ++line_no;
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
            if (line_no == 1 && line.starts_with("#version")) continue;
            const auto at = [&] {
                return "gpt2_tokenizer: " + file + " line " + std::to_string(line_no) + ": ";
            };
            if (line.empty()) fail(at() + "empty line (expected a merge 'A B')");
            const std::size_t space = line.find(' ');
            if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
                line.find(' ', space + 1) != std::string_view::npos)
                fail(at() + "expected two tokens separated by one space, got " + quoted(line));
            const std::string_view left = line.substr(0, space);
            const std::string_view right = line.substr(space + 1);
            const auto l = key_to_id.find(std::string(left));
            if (l == key_to_id.end())
                fail(at() + "token " + quoted(left) + " is not in the vocab");
            const auto r = key_to_id.find(std::string(right));
            if (r == key_to_id.end())
                fail(at() + "token " + quoted(right) + " is not in the vocab");
            merged.assign(left);
            merged.append(right);
            const auto m = key_to_id.find(merged);
            if (m == key_to_id.end())
                fail(at() + "merged token " + quoted(merged) + " is not in the vocab");
            const std::uint64_t key = pair_key(l->second, r->second);
            const auto [seen, fresh] = line_of_pair.emplace(key, int(line_no));
            if (!fresh)
                fail(at() + "merge " + quoted(line) + " repeats line " +
                     std::to_string(seen->second));
            merge_rules_.emplace(key, merge_rule{rank++, m->second});
        }
    }

    /// BPE of one word, appended to `out`. Byte tokens in a linked list; a min-heap of candidate
    /// merges ordered by (rank, position) so each step applies the lowest-ranked pair, leftmost
    /// first. That equals OpenAI's "merge every occurrence of the best pair, left to right":
    /// a merge only creates pairs with a later rank (merge rules are learned in order), so all
    /// occurrences of one rank are applied before any later rank. Stale heap entries are skipped
    /// (a symbol's id changes when it absorbs its right neighbour; an absorbed one is dead).
    /// O(n log n) in the word's length, so a megabyte without spaces is still fine.
    void bpe(std::string_view word, std::vector<int>& out) const {
        const std::size_t n = word.size();
        if (n == 1) {
            out.push_back(byte_token_[static_cast<unsigned char>(word[0])]);
            return;
        }
        std::vector<int> id(n), next(n), prev(n);
        for (std::size_t i = 0; i < n; ++i) {
            id[i] = byte_token_[static_cast<unsigned char>(word[i])];
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
            const int left_id = id[std::size_t(left)], right_id = id[std::size_t(right)];
            const auto it = merge_rules_.find(pair_key(left_id, right_id));
            if (it != merge_rules_.end()) heap.push({it->second.rank, left, left_id, right_id});
        };
        for (std::size_t i = 0; i + 1 < n; ++i) offer(int(i));
        while (!heap.empty()) {
            const candidate c = heap.top();
            heap.pop();
            const auto left = std::size_t(c.left);
            if (id[left] != c.left_id || next[left] < 0) continue;
            const auto right = std::size_t(next[left]);
            if (id[right] != c.right_id) continue;
            id[left] = merge_rules_.find(pair_key(c.left_id, c.right_id))->second.result;
            id[right] = -1;
            next[left] = next[right];
            if (next[left] >= 0) prev[std::size_t(next[left])] = int(left);
            offer(prev[left]);
            offer(int(left));
        }
        for (int i = 0; i >= 0; i = next[std::size_t(i)]) out.push_back(id[std::size_t(i)]);
    }

    void encode_word(std::string_view word, std::vector<int>& out) const {
        const bool cacheable = word.size() <= word_cache::max_word_bytes;
        if (cacheable) {
            const std::lock_guard lock(cache_->mutex);
            const auto it = cache_->words.find(word);
            if (it != cache_->words.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        const std::size_t first = out.size();
        bpe(word, out);
        if (cacheable) {
            std::vector<int> ids(out.begin() + std::ptrdiff_t(first), out.end());
            const std::lock_guard lock(cache_->mutex);
            if (cache_->words.size() >= word_cache::max_entries) cache_->words.clear();
            cache_->words.emplace(std::string(word), std::move(ids));
        }
    }
};

}  // namespace kvcar::examples
