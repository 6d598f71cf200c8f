// examples/common/sentencepiece_tokenizer.hpp — SentencePiece BPE (tokenizer.model), as the Llama 2
// family (Llama 2, TinyLlama, Mistral v0.1, Code Llama) ships it. No libsentencepiece, no protobuf
// library: the model file is read from the protobuf wire format here.
//
// tokenizer.model is a serialized `sentencepiece.ModelProto`. The fields read (field numbers from
// sentencepiece_model.proto):
//   ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
//   SentencePiece   1 piece (string), 2 score (float), 3 type (NORMAL 1, UNKNOWN 2, CONTROL 3,
//                   USER_DEFINED 4, UNUSED 5, BYTE 6; default NORMAL)
//   TrainerSpec     3 model_type (UNIGRAM 1, BPE 2, ...), 24 treat_whitespace_as_suffix,
//                   35 byte_fallback, 40..43 unk/bos/eos/pad id, 44 unk_surface
//   NormalizerSpec  1 name, 2 precompiled_charsmap, 3 add_dummy_prefix, 4 remove_extra_whitespaces,
//                   5 escape_whitespaces
// Everything else is skipped by wire type. Proto2 defaults apply to absent fields (add_dummy_prefix,
// remove_extra_whitespaces and escape_whitespaces default to true, model_type to UNIGRAM).
//
// Encoding, as sentencepiece's normalizer and bpe_model.cc do it:
//   1. normalize: (remove_extra_whitespaces: drop leading/trailing spaces, squeeze runs), prepend
//      one space (add_dummy_prefix, only for non-empty text), turn every ' ' into "▁" U+2581
//      (escape_whitespaces). A byte that is not valid UTF-8 becomes U+FFFD, as sentencepiece does.
//      The Llama 2 model has normalizer "identity" with an empty precompiled_charsmap and
//      remove_extra_whitespaces = false, so nothing else happens. A model with a non-empty charsmap
//      (nmt_nfkc and friends: T5, ALBERT...) is refused at load time: that table is a compiled
//      double-array trie of NFKC rewrites, not implemented here.
//   2. split into characters (a USER_DEFINED piece is one symbol, longest match first);
//   3. repeatedly merge the adjacent pair whose concatenation is a piece (NORMAL, USER_DEFINED or
//      UNUSED) with the highest score, leftmost first on ties;
//   4. a final symbol that is no piece is UNKNOWN: with byte_fallback, it becomes one <0xNN> piece
//      per UTF-8 byte; an UNUSED piece is split back into the two symbols it was merged from.
// Decoding: control pieces give nothing, runs of byte pieces give their bytes (invalid UTF-8 ->
// U+FFFD per bad byte), "▁" gives ' ', and the dummy prefix (the leading "▁" of the first piece
// that is not a control piece) is dropped.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <queue>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/utf8.hpp"

#include "examples/common/byte_piece.hpp"

namespace kvcar::examples {

namespace spm_detail {

[[noreturn]] inline void fail(const std::string& what) { throw error("kvcar: " + what); }

inline constexpr std::string_view space_symbol = "\xE2\x96\x81";  // "▁" U+2581
inline constexpr std::string_view replacement_char = io::utf8_replacement_character;

/// `bytes` with every byte that is not part of well-formed UTF-8 replaced by U+FFFD: one U+FFFD
/// per byte, not per maximal subpart (io/utf8.hpp), because sentencepiece's decoder steps over an
/// ill-formed sequence one byte at a time, and decode() must give the text it gives.
inline std::string valid_utf8(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    for (std::size_t pos = 0; pos < bytes.size();) {
        const io::utf8_sequence seq = io::utf8_at(bytes, pos);
        if (seq.valid) {
            out.append(bytes.substr(pos, seq.length));
            pos += seq.length;
        } else {
            out += replacement_char;
            ++pos;
        }
    }
    return out;
}

/// A reader of the protobuf wire format over one message's bytes. Every length is checked
/// against what remains, so a truncated or hostile file is an error, never a read out of bounds.
class wire_reader {
public:
    wire_reader(std::string_view bytes, std::string context)
        : bytes_(bytes), context_(std::move(context)) {}

    bool done() const { return pos_ >= bytes_.size(); }

    std::uint64_t varint() {
        std::uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (done()) bad("truncated varint");
            const auto byte = static_cast<unsigned char>(bytes_[pos_++]);
            v |= std::uint64_t(byte & 0x7F) << shift;
            if ((byte & 0x80) == 0) return v;
        }
        bad("varint longer than 10 bytes");
    }

    /// The next field's (number, wire type).
    std::pair<std::uint32_t, int> tag() {
        const std::uint64_t t = varint();
        const auto field = std::uint32_t(t >> 3);
        if (field == 0 || t >> 3 > 0x1FFFFFFF) bad("invalid field number");
        return {field, int(t & 7)};
    }

    std::string_view length_delimited() {
        const std::uint64_t n = varint();
        if (n > bytes_.size() - pos_) bad("a length-delimited field runs past the end");
        const std::string_view s = bytes_.substr(pos_, std::size_t(n));
        pos_ += std::size_t(n);
        return s;
    }

    std::uint32_t fixed32() {
        if (bytes_.size() - pos_ < 4) bad("truncated fixed32");
        std::uint32_t v = 0;
        for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(bytes_[pos_ + std::size_t(i)]);
        pos_ += 4;
        return v;
    }

    float float32() {
        const std::uint32_t u = fixed32();
        float f;
        std::memcpy(&f, &u, sizeof f);
        return f;
    }

    /// Skips a field of `wire_type` that this reader does not use.
    void skip(int wire_type) {
        switch (wire_type) {
        case 0: varint(); return;
        case 1:
            if (bytes_.size() - pos_ < 8) bad("truncated fixed64");
            pos_ += 8;
            return;
        case 2: length_delimited(); return;
        case 5: fixed32(); return;
        default: bad("unsupported wire type " + std::to_string(wire_type) + " (groups are not used)");
        }
    }

    /// The value of a field read as `expected` wire type, else an error naming the field.
    void expect(int wire_type, int expected, const char* field) {
        if (wire_type != expected)
            bad(std::string("field '") + field + "' has wire type " + std::to_string(wire_type) +
                ", expected " + std::to_string(expected));
    }

    [[noreturn]] void bad(const std::string& what) const {
        fail(context_ + ": " + what + " (at byte " + std::to_string(pos_) + " of the message)");
    }

private:
    std::string_view bytes_;
    std::string context_;
    std::size_t pos_ = 0;
};

struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
        return std::hash<std::string_view>{}(s);
    }
};

}  // namespace spm_detail

/// A SentencePiece BPE tokenizer read from tokenizer.model. Immutable after loading; const
/// members are thread-safe.
class sentencepiece_tokenizer {
public:
    enum class piece_type : std::uint8_t {
        normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6
    };

    /// What the model file says, beyond the pieces.
    struct model_settings {
        int model_type = 1;  ///< TrainerSpec.ModelType: 1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR
        bool byte_fallback = false;
        bool treat_whitespace_as_suffix = false;
        int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
        std::string unk_surface = " \xE2\x81\x87 ";  // " ⁇ "
        std::string normalizer_name;
        std::size_t precompiled_charsmap_bytes = 0;
        bool add_dummy_prefix = true;
        bool remove_extra_whitespaces = true;
        bool escape_whitespaces = true;
    };

    static sentencepiece_tokenizer load(const std::string& path) {
        std::ifstream in(path, std::ios::binary);
        require(bool(in), "sentencepiece_tokenizer: cannot open '" + path + "'");
        std::ostringstream buffer;
        buffer << in.rdbuf();
        require(!in.bad(), "sentencepiece_tokenizer: cannot read '" + path + "'");
        return parse(buffer.str(), path);
    }

    /// As `load`, from the file's bytes; `source_name` is only used in error messages.
    static sentencepiece_tokenizer parse(std::string_view bytes,
                                         std::string_view source_name = "tokenizer.model") {
        sentencepiece_tokenizer t;
        t.read_model(bytes, std::string(source_name));
        return t;
    }

    /// Ids of `text` (any bytes), with bos_id() in front when `add_bos` (as Hugging Face's
    /// LlamaTokenizer does by default) and eos_id() at the end when `add_eos`.
    std::vector<int> encode(std::string_view text, bool add_bos = false, bool add_eos = false) const {
        std::vector<int> ids;
        if (add_bos && settings_.bos_id >= 0) ids.push_back(settings_.bos_id);
        bpe(normalize(text), ids);
        if (add_eos && settings_.eos_id >= 0) ids.push_back(settings_.eos_id);
        return ids;
    }

    /// The text of `ids`, as sentencepiece's DecodeIds gives it. Throws on an id out of range.
    std::string decode(std::span<const int> ids) const {
        std::string out;
        std::string bytes;  // a pending run of byte pieces
        bool at_start = true;
        const auto flush_bytes = [&] {
            if (bytes.empty()) return;
            out += spm_detail::valid_utf8(bytes);
            bytes.clear();
            at_start = false;
        };
        for (int id : ids) {
            const piece_info& p = pieces_[checked(id)];
            if (p.type == piece_type::byte) {
                bytes += char(p.byte_value);
                continue;
            }
            flush_bytes();
            out += surface(id, at_start);
            if (p.type != piece_type::control) at_start = false;  // only the first piece's "▁" goes
        }
        flush_bytes();
        return out;
    }

    /// The bytes token `id` adds when it follows `prev` (-1 or a control piece at the start): for
    /// printing as tokens are generated. A byte piece gives its raw byte, so a character split over
    /// several byte pieces is printed whole once its last byte is out.
    std::string decode_piece(int prev, int id) const {
        const piece_info& p = pieces_[checked(id)];
        if (p.type == piece_type::byte) return std::string(1, char(p.byte_value));
        const bool at_start = prev < 0 || pieces_[checked(prev)].type == piece_type::control;
        return surface(id, at_start);
    }

    int vocab_size() const { return int(pieces_.size()); }
    int bos_id() const { return settings_.bos_id; }
    int eos_id() const { return settings_.eos_id; }
    int unk_id() const { return settings_.unk_id; }
    const model_settings& settings() const { return settings_; }

    /// The piece as stored in the model ("▁the", "<0x0A>", "<s>").
    const std::string& piece(int id) const { return pieces_[checked(id)].text; }
    float score(int id) const { return pieces_[checked(id)].score; }
    piece_type type(int id) const { return pieces_[checked(id)].type; }

    /// The id of `piece`, or -1.
    int piece_to_id(std::string_view piece) const {
        const auto it = id_of_.find(piece);
        return it == id_of_.end() ? -1 : it->second;
    }

private:
    sentencepiece_tokenizer() = default;

    struct piece_info {
        std::string text;
        float score = 0;
        piece_type type = piece_type::normal;
        int byte_value = -1;  // for byte pieces
    };

    std::vector<piece_info> pieces_;
    // Every piece by text; sentencepiece keeps the mergeable ones (normal, user-defined, unused)
    // and the reserved ones (control, unknown, byte) in two maps, but a text is in only one.
    std::unordered_map<std::string, int, spm_detail::string_hash, std::equal_to<>> id_of_;
    int byte_id_[256] = {};
    std::vector<std::string> user_defined_;  // longest first
    model_settings settings_;

    std::size_t checked(int id) const {
        if (id < 0 || id >= vocab_size())
            spm_detail::fail("sentencepiece_tokenizer: token id " + std::to_string(id) +
                             " is out of range (vocab size " + std::to_string(vocab_size()) + ")");
        return std::size_t(id);
    }

    bool mergeable(int id) const {
        const piece_type t = pieces_[std::size_t(id)].type;
        return t == piece_type::normal || t == piece_type::user_defined || t == piece_type::unused;
    }

    std::string surface(int id, bool at_start) const {
        const piece_info& p = pieces_[std::size_t(id)];
        if (p.type == piece_type::control) return "";
        if (p.type == piece_type::unknown) return settings_.unk_surface;
        std::string_view text = p.text;
        if (at_start && settings_.add_dummy_prefix && !settings_.treat_whitespace_as_suffix &&
            text.starts_with(spm_detail::space_symbol))
            text.remove_prefix(spm_detail::space_symbol.size());
        std::string out;
        out.reserve(text.size());
        for (std::size_t i = 0; i < text.size();) {
            if (text.substr(i).starts_with(spm_detail::space_symbol)) {
                out += ' ';
                i += spm_detail::space_symbol.size();
            } else {
                out += text[i++];
            }
        }
        return out;
    }

    // --- reading the model -------------------------------------------------------------------

    void read_model(std::string_view bytes, const std::string& source) {
        const std::string who = "sentencepiece_tokenizer: " + source;
        spm_detail::wire_reader r(bytes, who);
        bool has_trainer = false;
        while (!r.done()) {
            const auto [field, wire] = r.tag();
            if (field == 1) {
                r.expect(wire, 2, "pieces");
                read_piece(r.length_delimited(), who);
            } else if (field == 2) {
                r.expect(wire, 2, "trainer_spec");
                read_trainer_spec(r.length_delimited(), who);
                has_trainer = true;
            } else if (field == 3) {
                r.expect(wire, 2, "normalizer_spec");
                read_normalizer_spec(r.length_delimited(), who);
            } else {
                r.skip(wire);
            }
        }
        if (pieces_.empty()) spm_detail::fail(who + ": no pieces (is this a SentencePiece model?)");
        if (!has_trainer) spm_detail::fail(who + ": no trainer_spec (is this a SentencePiece model?)");
        if (settings_.model_type != 2)
            spm_detail::fail(who + ": model_type is " + std::to_string(settings_.model_type) +
                             " (1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR); only BPE models are supported");
        if (settings_.precompiled_charsmap_bytes != 0)
            spm_detail::fail(who + ": the normalizer '" + settings_.normalizer_name + "' has a " +
                             std::to_string(settings_.precompiled_charsmap_bytes) +
                             "-byte precompiled charsmap; only models without one (normalizer "
                             "'identity', as Llama 2's) are supported");
        if (settings_.treat_whitespace_as_suffix)
            spm_detail::fail(who + ": treat_whitespace_as_suffix models are not supported");

        int unknowns = 0;
        for (int b = 0; b < 256; ++b) byte_id_[b] = -1;
        for (std::size_t id = 0; id < pieces_.size(); ++id) {
            piece_info& p = pieces_[id];
            if (p.text.empty()) spm_detail::fail(who + ": piece " + std::to_string(id) + " is empty");
            if (!id_of_.emplace(p.text, int(id)).second)
                spm_detail::fail(who + ": piece '" + p.text + "' appears twice");
            if (p.type == piece_type::unknown) {
                ++unknowns;
                settings_.unk_id = int(id);
            }
            if (p.type == piece_type::user_defined) user_defined_.push_back(p.text);
            if (p.type == piece_type::byte) {
                p.byte_value = byte_piece_value(p.text);
                if (p.byte_value < 0)
                    spm_detail::fail(who + ": byte piece " + std::to_string(id) + " is '" + p.text +
                                     "', not <0xNN>");
                byte_id_[p.byte_value] = int(id);
            }
        }
        if (unknowns != 1)
            spm_detail::fail(who + ": " + std::to_string(unknowns) +
                             " UNKNOWN pieces (a model has exactly one)");
        if (settings_.byte_fallback)
            for (int b = 0; b < 256; ++b)
                if (byte_id_[b] < 0)
                    spm_detail::fail(who + ": byte_fallback is on but byte piece <0x" +
                                     hex_byte(b) + "> is missing");
        const auto in_range = [&](int id) { return id >= -1 && id < vocab_size(); };
        if (!in_range(settings_.bos_id) || !in_range(settings_.eos_id))
            spm_detail::fail(who + ": bos_id/eos_id out of range");
        std::sort(user_defined_.begin(), user_defined_.end(),
                  [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    }

    static std::string hex_byte(int b) {
        const char* digits = "0123456789ABCDEF";
        return {digits[b >> 4], digits[b & 15]};
    }

    void read_piece(std::string_view bytes, const std::string& who) {
        const std::string context = who + ": piece " + std::to_string(pieces_.size());
        spm_detail::wire_reader r(bytes, context);
        piece_info p;
        while (!r.done()) {
            const auto [field, wire] = r.tag();
            if (field == 1) {
                r.expect(wire, 2, "piece");
                p.text = std::string(r.length_delimited());
            } else if (field == 2) {
                r.expect(wire, 5, "score");
                p.score = r.float32();
            } else if (field == 3) {
                r.expect(wire, 0, "type");
                const std::uint64_t t = r.varint();
                if (t < 1 || t > 6) r.bad("unknown piece type " + std::to_string(t));
                p.type = piece_type(t);
            } else {
                r.skip(wire);
            }
        }
        if (pieces_.size() >= std::size_t(std::numeric_limits<int>::max()))
            r.bad("too many pieces");
        pieces_.push_back(std::move(p));
    }

    static int as_int32(std::uint64_t v) { return int(std::int32_t(std::uint32_t(v))); }

    void read_trainer_spec(std::string_view bytes, const std::string& who) {
        spm_detail::wire_reader r(bytes, who + ": trainer_spec");
        while (!r.done()) {
            const auto [field, wire] = r.tag();
            const auto int_field = [&, w = wire](const char* name) {
                r.expect(w, 0, name);
                return as_int32(r.varint());
            };
            switch (field) {
            case 3: settings_.model_type = int_field("model_type"); break;
            case 24: settings_.treat_whitespace_as_suffix = int_field("treat_whitespace_as_suffix") != 0; break;
            case 35: settings_.byte_fallback = int_field("byte_fallback") != 0; break;
            case 40: settings_.unk_id = int_field("unk_id"); break;
            case 41: settings_.bos_id = int_field("bos_id"); break;
            case 42: settings_.eos_id = int_field("eos_id"); break;
            case 43: settings_.pad_id = int_field("pad_id"); break;
            case 44:
                r.expect(wire, 2, "unk_surface");
                settings_.unk_surface = std::string(r.length_delimited());
                break;
            default: r.skip(wire);
            }
        }
    }

    void read_normalizer_spec(std::string_view bytes, const std::string& who) {
        spm_detail::wire_reader r(bytes, who + ": normalizer_spec");
        while (!r.done()) {
            const auto [field, wire] = r.tag();
            const auto flag = [&, w = wire](const char* name) {
                r.expect(w, 0, name);
                return r.varint() != 0;
            };
            switch (field) {
            case 1:
                r.expect(wire, 2, "name");
                settings_.normalizer_name = std::string(r.length_delimited());
                break;
            case 2:
                r.expect(wire, 2, "precompiled_charsmap");
                settings_.precompiled_charsmap_bytes = r.length_delimited().size();
                break;
            case 3: settings_.add_dummy_prefix = flag("add_dummy_prefix"); break;
            case 4: settings_.remove_extra_whitespaces = flag("remove_extra_whitespaces"); break;
            case 5: settings_.escape_whitespaces = flag("escape_whitespaces"); break;
            default: r.skip(wire);
            }
        }
    }

    // --- encoding ----------------------------------------------------------------------------

    /// Length of the user-defined piece at text[pos], or 0.
    std::size_t user_defined_at(std::string_view text, std::size_t pos) const {
        for (const std::string& u : user_defined_)
            if (text.substr(pos).starts_with(u)) return u.size();
        return 0;
    }

    /// Step 1 of the file comment: the normalized text, with "▁" for spaces.
    std::string normalize(std::string_view text) const {
        const bool squeeze = settings_.remove_extra_whitespaces;
        if (squeeze) {
            while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
        }
        std::string out;
        if (text.empty()) return out;
        out.reserve(text.size() + text.size() / 2 + 3);
        const auto add_space = [&] {
            if (settings_.escape_whitespaces) out += spm_detail::space_symbol;
            else out += ' ';
        };
        if (settings_.add_dummy_prefix) add_space();
        bool prev_space = squeeze;
        for (std::size_t pos = 0; pos < text.size();) {
            if (const std::size_t u = user_defined_at(text, pos)) {  // copied as they are
                out.append(text.substr(pos, u));
                pos += u;
                prev_space = false;
                continue;
            }
            const io::utf8_sequence seq = io::utf8_at(text, pos);
            if (!seq.valid) {  // one U+FFFD per byte, as sentencepiece's normalizer does
                out += spm_detail::replacement_char;
                ++pos;
                prev_space = false;
                continue;
            }
            const std::size_t n = seq.length;
            if (n == 1 && text[pos] == ' ') {
                if (!(squeeze && prev_space)) add_space();
                prev_space = true;
            } else {
                out.append(text.substr(pos, n));
                prev_space = false;
            }
            pos += n;
        }
        if (squeeze) {  // drop the trailing space the loop kept
            const std::string_view sp = settings_.escape_whitespaces ? spm_detail::space_symbol : " ";
            while (std::string_view(out).ends_with(sp)) out.resize(out.size() - sp.size());
        }
        return out;
    }

    /// Steps 2-4 of the file comment on normalized text; ids appended to `out`.
    void bpe(const std::string& text, std::vector<int>& out) const {
        if (text.empty()) return;
        // Symbols are byte ranges of `text` in a doubly linked list; a merged-away one has len 0.
        struct symbol {
            std::size_t start, len;
            int prev, next;
        };
        std::vector<symbol> sym;
        for (std::size_t pos = 0; pos < text.size();) {
            std::size_t n = user_defined_at(text, pos);
            if (n == 0) {  // after normalize() every sequence is valid; 1 byte is kept for safety
                const io::utf8_sequence seq = io::utf8_at(text, pos);
                n = seq.valid ? seq.length : 1;
            }
            sym.push_back({pos, n, int(sym.size()) - 1, int(sym.size()) + 1});
            pos += n;
        }
        sym.back().next = -1;

        struct candidate {
            float score;
            int left, right;
            std::size_t len;  // bytes of the merged piece, to spot stale entries
        };
        // Highest score first; on a tie, the leftmost pair (sentencepiece's comparator).
        const auto lower = [](const candidate& a, const candidate& b) {
            return a.score < b.score || (a.score == b.score && a.left > b.left);
        };
        std::priority_queue<candidate, std::vector<candidate>, decltype(lower)> agenda(lower);
        // An UNUSED piece may be merged through but is not output: it is split back into the
        // pair it was made of (sentencepiece's rev_merge).
        std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
        const auto view = [&](int i) {
            return std::string_view(text).substr(sym[std::size_t(i)].start, sym[std::size_t(i)].len);
        };
        const auto offer = [&](int left, int right) {
            if (left < 0 || right < 0) return;
            const symbol& l = sym[std::size_t(left)];
            const std::string_view merged =
                std::string_view(text).substr(l.start, l.len + sym[std::size_t(right)].len);
            const auto it = id_of_.find(merged);
            if (it == id_of_.end() || !mergeable(it->second)) return;
            agenda.push({pieces_[std::size_t(it->second)].score, left, right, merged.size()});
            if (pieces_[std::size_t(it->second)].type == piece_type::unused)
                rev_merge[merged] = {view(left), view(right)};
        };
        for (std::size_t i = 1; i < sym.size(); ++i) offer(int(i) - 1, int(i));
        while (!agenda.empty()) {
            const candidate c = agenda.top();
            agenda.pop();
            symbol& l = sym[std::size_t(c.left)];
            symbol& r = sym[std::size_t(c.right)];
            if (l.len == 0 || r.len == 0 || l.len + r.len != c.len) continue;
            l.len += r.len;
            r.len = 0;
            l.next = r.next;
            if (r.next >= 0) sym[std::size_t(r.next)].prev = c.left;
            offer(l.prev, c.left);
            offer(c.left, l.next);
        }
        // Output, resegmenting unused pieces and spelling unknown ones as bytes.
        const auto emit = [&](auto&& self, std::string_view w) -> void {
            const auto it = id_of_.find(w);
            if (it != id_of_.end() && pieces_[std::size_t(it->second)].type == piece_type::unused) {
                const auto m = rev_merge.find(w);
                if (m != rev_merge.end()) {
                    self(self, m->second.first);
                    self(self, m->second.second);
                    return;
                }
            }
            if (it != id_of_.end()) {
                out.push_back(it->second);
            } else if (settings_.byte_fallback) {
                for (char b : w) out.push_back(byte_id_[static_cast<unsigned char>(b)]);
            } else {
                out.push_back(settings_.unk_id);
            }
        };
        for (int i = 0; i >= 0; i = sym[std::size_t(i)].next) emit(emit, view(i));
    }
};

}  // namespace kvcar::examples
