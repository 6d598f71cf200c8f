// examples/common/llama2c_tokenizer.hpp — the tokenizer of Karpathy's llama2.c (tokenizer.bin).
//
// File format (little endian; examples/models/llama/llama2c.hpp's parse_llama2c_vocab reads
// it): int32 max_token_length, then for each of the vocab_size tokens float32 score, int32 len,
// len bytes (no NUL). Ids 0 <unk>, 1 BOS, 2 EOS, 3..258 the byte
// pieces "<0x00>".."<0xFF>", then SentencePiece's pieces with "▁" already stored as ' '.
//
// Encoding follows llama2.c's run.c (not full SentencePiece): a dummy-prefix space token, then one
// token per UTF-8 character (a piece of the vocabulary, else its bytes as <0xXX> = byte + 3),
// then greedily merge the adjacent pair whose concatenation is a piece with the highest score,
// until none is. That is what the llama2.c models were run with, so ids match run.c exactly.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvcar/common.hpp"

#include "examples/common/byte_piece.hpp"
#include "examples/models/llama/llama2c.hpp"

namespace kvcar::examples {

namespace llama2c_detail {

[[noreturn]] inline void fail(const std::string& what) { throw error("kvcar: " + what); }

using ::kvcar::examples::byte_piece_value;

}  // namespace llama2c_detail

/// llama2.c's BPE tokenizer. Immutable after loading; const members are thread-safe.
class llama2c_tokenizer {
public:
    static constexpr int unk_id = 0;
    static constexpr int bos_id = 1;
    static constexpr int eos_id = 2;
    /// Byte b is token b + byte_offset (after <unk>, BOS and EOS).
    static constexpr int byte_offset = 3;

    /// Reads a tokenizer.bin holding exactly `vocab_size` tokens (the checkpoint's vocab_size).
    static llama2c_tokenizer load(const std::string& tokenizer_bin, int vocab_size) {
        check_vocab_size(vocab_size, tokenizer_bin);
        return from_vocab(load_llama2c_vocab(tokenizer_bin, vocab_size), tokenizer_bin);
    }

    /// As `load`, from the file's bytes; `source_name` is only used in error messages.
    /// parse_llama2c_vocab reads the file (every length checked against the bytes that
    /// remain, so a truncated or corrupt file is an error naming the token, never a read past
    /// the end); this adds what encoding needs on top: finite scores and the byte pieces.
    static llama2c_tokenizer parse(std::string_view bytes, int vocab_size,
                                   std::string_view source_name = "tokenizer.bin") {
        const std::string source(source_name);
        check_vocab_size(vocab_size, source);
        return from_vocab(
            parse_llama2c_vocab(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())),
                                vocab_size, source),
            source);
    }

private:
    /// Checked before reading: a vocabulary without the byte pieces cannot encode anything.
    static void check_vocab_size(int vocab_size, const std::string& source) {
        if (vocab_size < byte_offset + 256)
            llama2c_detail::fail("llama2c tokenizer: " + source + ": vocab_size " +
                                 std::to_string(vocab_size) +
                                 " is too small: llama2.c needs <unk>, BOS, EOS and 256 byte "
                                 "pieces (259)");
    }

    static llama2c_tokenizer from_vocab(llama2c_vocab vocab, const std::string& source) {
        using llama2c_detail::fail;
        const std::string who = "llama2c tokenizer: " + source + ": ";
        const int vocab_size = int(vocab.pieces.size());
        llama2c_tokenizer t;
        t.max_token_length_ = vocab.max_token_length;
        t.pieces_ = std::move(vocab.pieces);
        t.scores_ = std::move(vocab.scores);
        // Merging compares scores: a NaN would make the choice of pair depend on the order.
        for (int id = 0; id < vocab_size; ++id)
            if (!std::isfinite(t.scores_[std::size_t(id)]))
                fail(who + "token " + std::to_string(id) + " has a non-finite score");
        // encode() spells unknown characters with ids byte + 3, so those must be the byte pieces.
        for (int b = 0; b < 256; ++b) {
            const std::string& p = t.pieces_[std::size_t(b + byte_offset)];
            if (llama2c_detail::byte_piece_value(p) != b)
                fail(who + "token " + std::to_string(b + byte_offset) + " is '" + p +
                     "', but byte fallback needs the byte piece for " + std::to_string(b) +
                     " there");
        }
        // First id wins for a repeated piece (run.c's bsearch would pick any of them).
        t.id_of_piece_.reserve(std::size_t(vocab_size));
        for (int id = 0; id < vocab_size; ++id)
            t.id_of_piece_.emplace(t.pieces_[std::size_t(id)], id);
        const auto space = t.id_of_piece_.find(" ");
        t.space_id_ = space == t.id_of_piece_.end() ? ' ' + byte_offset : space->second;
        return t;
    }

public:
    /// Token ids of `text` as run.c's encode() gives them: optional BOS, a dummy-prefix " " when
    /// the text is not empty, the text's characters, merges, optional EOS.
    /// Differences from run.c, where run.c cannot behave sensibly: a NUL byte is encoded as
    /// <0x00> (run.c stops at it), and without a " " piece the dummy prefix is <0x20> (run.c
    /// would emit id -1).
    std::vector<int> encode(std::string_view text, bool bos, bool eos) const {
        std::vector<int> ids;
        ids.reserve(text.size() + 3);
        if (bos) ids.push_back(bos_id);
        if (!text.empty()) ids.push_back(space_id_);
        // One UTF-8 character per token: a lead (or stray continuation) byte plus the
        // continuation bytes after it, at most 4 bytes. Not validated, as in run.c: anything
        // that is not a piece falls back to its bytes.
        for (std::size_t pos = 0; pos < text.size();) {
            std::size_t end = pos + 1;
            while (end < text.size() && end - pos < 4 &&
                   (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
                ++end;
            const auto it = id_of_piece_.find(std::string(text.substr(pos, end - pos)));
            if (it != id_of_piece_.end()) {
                ids.push_back(it->second);
            } else {
                for (std::size_t k = pos; k < end; ++k)
                    ids.push_back(static_cast<unsigned char>(text[k]) + byte_offset);
            }
            pos = end;
        }
        merge(ids);
        if (eos) ids.push_back(eos_id);
        return ids;
    }

    /// The text token `id` adds after token `prev_id`, as run.c prints it: the piece after BOS
    /// loses a leading space (SentencePiece's dummy prefix), and a byte piece <0xHH> is the raw
    /// byte HH. BOS and EOS come out as their pieces; decode() leaves them out.
    std::string decode_piece(int prev_id, int id) const {
        std::string_view p = pieces_[checked(id)];
        if (prev_id == bos_id && p.starts_with(' ')) p.remove_prefix(1);
        const int byte = llama2c_detail::byte_piece_value(p);
        if (byte >= 0) return std::string(1, char(byte));
        return std::string(p);
    }

    /// The text of a generated sequence: decode_piece over consecutive pairs, with BOS and EOS
    /// themselves producing nothing (run.c never prints them).
    std::string decode(std::span<const int> ids) const {
        std::string out;
        int prev = -1;
        for (int id : ids) {
            if (id != bos_id && id != eos_id) out += decode_piece(prev, id);
            else checked(id);
            prev = id;
        }
        return out;
    }

    /// The piece exactly as stored (' ' for SentencePiece's "▁", "<0x0A>" for a byte piece).
    const std::string& piece(int id) const { return pieces_[checked(id)]; }
    float score(int id) const { return scores_[checked(id)]; }
    /// The id of a piece, or -1.
    int find(std::string_view piece) const {
        const auto it = id_of_piece_.find(std::string(piece));
        return it == id_of_piece_.end() ? -1 : it->second;
    }
    int vocab_size() const { return int(pieces_.size()); }
    int max_token_length() const { return max_token_length_; }

private:
    llama2c_tokenizer() = default;  // only load/parse make one: there is no empty tokenizer

    std::vector<std::string> pieces_;
    std::vector<float> scores_;
    std::unordered_map<std::string, int> id_of_piece_;
    int max_token_length_ = 0;
    int space_id_ = ' ' + byte_offset;

    std::size_t checked(int id) const {
        if (id < 0 || id >= vocab_size())
            llama2c_detail::fail("llama2c_tokenizer: token id " + std::to_string(id) +
                                 " is out of range (vocab size " + std::to_string(vocab_size()) +
                                 ")");
        return std::size_t(id);
    }

    /// run.c's merge loop: while some adjacent pair concatenates to a piece, replace the pair
    /// whose piece has the highest score (the leftmost of equal scores) by that piece. run.c
    /// rescans every pair after each merge, O(n^2); here candidates wait in a max-heap ordered by
    /// (score, -position) and entries made stale by a merge are skipped, O(n log n) with the same
    /// result: every adjacent pair is in the heap from the moment it exists, an entry is used only
    /// if its two ids still sit at its position (its score depends on nothing else), and
    /// positions keep their left-to-right order. Unlike GPT-2's ranks, a merge can create a pair
    /// that scores higher than the one just applied; the heap handles that like any other pair.
    /// BOS takes part, as in run.c (no piece starts with "\n<s>\n", so it never merges in
    /// practice).
    void merge(std::vector<int>& ids) const {
        const std::size_t n = ids.size();
        if (n < 2) return;
        std::vector<int> next(n), prev(n);
        for (std::size_t i = 0; i < n; ++i) {
            next[i] = i + 1 < n ? int(i + 1) : -1;
            prev[i] = int(i) - 1;
        }
        struct candidate {
            float score;
            int left, left_id, right_id, merged_id;
            bool operator<(const candidate& o) const {  // "lower priority than"
                return score != o.score ? score < o.score : left > o.left;
            }
        };
        std::priority_queue<candidate> heap;
        std::string both;
        const auto offer = [&](int left) {
            if (left < 0 || next[std::size_t(left)] < 0) return;
            const int l = ids[std::size_t(left)], r = ids[std::size_t(next[std::size_t(left)])];
            both.assign(pieces_[std::size_t(l)]);
            both.append(pieces_[std::size_t(r)]);
            const auto it = id_of_piece_.find(both);
            if (it != id_of_piece_.end())
                heap.push({scores_[std::size_t(it->second)], left, l, r, it->second});
        };
        for (std::size_t i = 0; i + 1 < n; ++i) offer(int(i));
        std::vector<bool> alive(n, true);
        while (!heap.empty()) {
            const candidate c = heap.top();
            heap.pop();
            const auto left = std::size_t(c.left);
            if (!alive[left] || ids[left] != c.left_id || next[left] < 0) continue;
            const auto right = std::size_t(next[left]);
            if (ids[right] != c.right_id) continue;
            ids[left] = c.merged_id;
            alive[right] = false;
            next[left] = next[right];
            if (next[left] >= 0) prev[std::size_t(next[left])] = int(left);
            offer(prev[left]);
            offer(int(left));
        }
        std::size_t out = 0;
        for (int i = 0; i >= 0; i = next[std::size_t(i)]) ids[out++] = ids[std::size_t(i)];
        ids.resize(out);
    }
};

}  // namespace kvcar::examples
