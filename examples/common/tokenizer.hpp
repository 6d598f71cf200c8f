// examples/common/tokenizer.hpp — the tokenizer that goes with a checkpoint, whatever its kind, and
// how the tools find it.
//
// A model folder is searched in this order (what Hugging Face's AutoTokenizer prefers):
//   1. tokenizer.json            Hugging Face tokenizers (hf_tokenizer.hpp)
//   2. tokenizer.model           SentencePiece BPE (sentencepiece_tokenizer.hpp)
//   3. vocab.json + merges.txt   GPT-2 byte-level BPE (gpt2_tokenizer.hpp)
// A file given with --tokenizer is read by its name: *.json (a folder's vocab.json with its
// merges.txt beside it, else tokenizer.json), *.model, or a llama2.c tokenizer.bin (*.bin).
//
// BOS and EOS come from the folder's generation_config.json, then config.json (bos_token_id,
// eos_token_id: a number or a list of numbers), then the tokenizer's own (<s>/</s>, or GPT-2's
// <|endoftext|>). Whether BOS is put in front: tokenizer_config.json's add_bos_token when present,
// else the tokenizer's convention (SentencePiece: yes, as LlamaTokenizer; tokenizer.json: its
// post-processor; GPT-2: no; llama2.c: yes).
#pragma once

#include <algorithm>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/json.hpp"

#include "gpt2_tokenizer.hpp"
#include "hf_tokenizer.hpp"
#include "llama2c_tokenizer.hpp"
#include "sentencepiece_tokenizer.hpp"

namespace kvcar::examples {

/// One of the supported tokenizers behind one interface. Immutable; const members thread-safe.
class tokenizer {
public:
    using impl = std::variant<gpt2_tokenizer, sentencepiece_tokenizer, hf_tokenizer, llama2c_tokenizer>;

    tokenizer(impl t, std::string path) : impl_(std::move(t)), path_(std::move(path)) {
        std::visit([&](const auto& k) { set_defaults(k); }, impl_);
    }

    /// Reads the file at `path` by its name (see the file comment). A llama2.c tokenizer.bin needs
    /// the model's vocabulary size.
    static tokenizer load_file(const std::string& path, int llama2c_vocab_size = -1) {
        namespace fs = std::filesystem;
        require(fs::is_regular_file(path), "tokenizer: '" + path + "' is not a file");
        const fs::path p(path);
        const std::string name = p.filename().string();
        if (name == "vocab.json" || name == "merges.txt") {
            const fs::path dir = p.parent_path();
            return {gpt2_tokenizer::load((dir / "vocab.json").string(), (dir / "merges.txt").string()),
                    (dir / "vocab.json").string()};
        }
        if (p.extension() == ".json") return {hf_tokenizer::load(path), path};
        if (p.extension() == ".model") return {sentencepiece_tokenizer::load(path), path};
        if (p.extension() == ".bin") {
            require(llama2c_vocab_size > 0,
                    "tokenizer: '" + path + "' (llama2.c tokenizer.bin) needs the model's vocab size");
            return {llama2c_tokenizer::load(path, llama2c_vocab_size), path};
        }
        throw error("kvcar: tokenizer: cannot tell the kind of '" + path +
                    "' from its name (expected tokenizer.json, *.json, *.model, vocab.json, "
                    "merges.txt or a llama2.c *.bin)");
    }

    /// The files looked for in a folder, in order.
    static constexpr const char* searched = "tokenizer.json, tokenizer.model, vocab.json + merges.txt";

    /// The tokenizer in folder `dir`, or an error naming what was looked for there.
    static tokenizer load_dir(const std::string& dir) {
        namespace fs = std::filesystem;
        const fs::path d(dir);
        if (fs::is_regular_file(d / "tokenizer.json")) return load_file((d / "tokenizer.json").string());
        if (fs::is_regular_file(d / "tokenizer.model")) return load_file((d / "tokenizer.model").string());
        if (fs::is_regular_file(d / "vocab.json") && fs::is_regular_file(d / "merges.txt"))
            return load_file((d / "vocab.json").string());
        throw error("kvcar: no tokenizer in '" + dir + "': looked for " + searched +
                    " (give --tokenizer PATH)");
    }

    /// Whether `dir` holds one of the files load_dir reads.
    static bool dir_has_tokenizer(const std::string& dir) {
        namespace fs = std::filesystem;
        const fs::path d(dir);
        return fs::is_regular_file(d / "tokenizer.json") || fs::is_regular_file(d / "tokenizer.model") ||
               (fs::is_regular_file(d / "vocab.json") && fs::is_regular_file(d / "merges.txt"));
    }

    /// BOS, EOS and add_bos from the model folder's generation_config.json, config.json and
    /// tokenizer_config.json, where they say so (see the file comment).
    void read_model_config(const std::string& dir) {
        namespace fs = std::filesystem;
        const auto ids_of = [](const io::json_value& v) {
            std::vector<int> out;
            if (v.is_integer()) out.push_back(int(v.as_int()));
            else if (v.is_array())
                for (const io::json_value& e : v.as_array())
                    if (e.is_integer()) out.push_back(int(e.as_int()));
            return out;
        };
        bool bos_set = false, eos_set = false;
        for (const char* file : {"generation_config.json", "config.json"}) {
            const fs::path p = fs::path(dir) / file;
            if (!fs::is_regular_file(p)) continue;
            const io::json_value j = io::load_json(p.string());
            if (!j.is_object()) continue;
            if (const auto* b = j.find("bos_token_id"); b && !bos_set) {
                const std::vector<int> ids = ids_of(*b);
                if (!ids.empty()) {
                    bos_id_ = ids[0];
                    bos_set = true;
                }
            }
            if (const auto* e = j.find("eos_token_id"); e && !eos_set) {
                std::vector<int> ids = ids_of(*e);
                if (!ids.empty()) {
                    eos_ids_ = std::move(ids);
                    eos_set = true;
                }
            }
        }
        const fs::path tc = fs::path(dir) / "tokenizer_config.json";
        if (fs::is_regular_file(tc)) {
            const io::json_value j = io::load_json(tc.string());
            if (const auto* a = j.is_object() ? j.find("add_bos_token") : nullptr; a && a->is_bool())
                add_bos_ = a->as_bool();
        }
        for (int id : eos_ids_) check_id(id, "eos_token_id");
        if (bos_id_ >= 0) check_id(bos_id_, "bos_token_id");
    }

    /// Ids of `text`, BOS in front when add_bos().
    std::vector<int> encode(std::string_view text) const { return encode(text, add_bos_); }

    /// Ids of `text`, BOS in front when `bos` (and the tokenizer has one).
    std::vector<int> encode(std::string_view text, bool bos) const {
        std::vector<int> ids;
        if (bos && bos_id_ >= 0) ids.push_back(bos_id_);
        std::vector<int> body = std::visit(
            [&](const auto& t) -> std::vector<int> {
                using T = std::decay_t<decltype(t)>;
                if constexpr (std::is_same_v<T, llama2c_tokenizer>) return t.encode(text, false, false);
                else if constexpr (std::is_same_v<T, sentencepiece_tokenizer>) return t.encode(text);
                else if constexpr (std::is_same_v<T, hf_tokenizer>) return t.encode(text, false);
                else return t.encode(text);
            },
            impl_);
        ids.insert(ids.end(), body.begin(), body.end());
        return ids;
    }

    /// The text of `ids`; BOS and EOS give nothing.
    std::string decode(std::span<const int> ids) const {
        std::vector<int> kept;
        for (int id : ids) {
            check_id(id, "token id");
            if (id != bos_id_ && !is_eos(id)) kept.push_back(id);
        }
        return std::visit(
            [&](const auto& t) -> std::string {
                using T = std::decay_t<decltype(t)>;
                if constexpr (std::is_same_v<T, llama2c_tokenizer>) {
                    std::string out;
                    int prev = llama2c_tokenizer::bos_id;
                    for (int id : kept) {
                        out += t.decode_piece(prev, id);
                        prev = id;
                    }
                    return out;
                } else {
                    return t.decode(kept);
                }
            },
            impl_);
    }

    /// What `id` adds to the text after `prev` (-1 at the start), for printing as tokens come.
    std::string decode_piece(int prev, int id) const {
        check_id(id, "token id");
        if (id == bos_id_ || is_eos(id)) return "";
        if (prev == bos_id_) prev = -1;
        return std::visit(
            [&](const auto& t) -> std::string {
                using T = std::decay_t<decltype(t)>;
                if constexpr (std::is_same_v<T, gpt2_tokenizer>) return t.piece(id);
                else if constexpr (std::is_same_v<T, llama2c_tokenizer>)
                    return t.decode_piece(prev < 0 ? llama2c_tokenizer::bos_id : prev, id);
                else return t.decode_piece(prev, id);
            },
            impl_);
    }

    int vocab_size() const {
        return std::visit([](const auto& t) { return t.vocab_size(); }, impl_);
    }
    int bos_id() const { return bos_id_; }
    const std::vector<int>& eos_ids() const { return eos_ids_; }
    bool is_eos(int id) const { return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end(); }
    bool add_bos() const { return add_bos_; }
    void set_add_bos(bool on) { add_bos_ = on; }
    bool is_llama2c() const { return std::holds_alternative<llama2c_tokenizer>(impl_); }
    const std::string& path() const { return path_; }

    /// "sentencepiece tokenizer.model, 32000 tokens, bos 1, eos 2".
    std::string describe() const {
        static constexpr const char* kinds[] = {"GPT-2 BPE", "SentencePiece BPE", "tokenizer.json BPE",
                                                "llama2.c"};
        std::string s = std::string(kinds[impl_.index()]) + " '" + path_ + "', " +
                        std::to_string(vocab_size()) + " tokens, bos " + std::to_string(bos_id_) +
                        (add_bos_ ? " (added)" : " (not added)") + ", eos";
        // Appended piece by piece: GCC 12's -Wrestrict misfires on "literal" + std::string&&.
        for (int id : eos_ids_) {
            s += ' ';
            s += std::to_string(id);
        }
        if (eos_ids_.empty()) s += " none";
        return s;
    }

private:
    impl impl_;
    std::string path_;
    int bos_id_ = -1;
    std::vector<int> eos_ids_;
    bool add_bos_ = false;

    void check_id(int id, const char* what) const {
        if (id < 0 || id >= vocab_size())
            throw error("kvcar: tokenizer: " + std::string(what) + " " + std::to_string(id) +
                        " is out of range (vocab size " + std::to_string(vocab_size()) + ")");
    }

    void set_defaults(const gpt2_tokenizer& t) {
        if (t.eos_id() >= 0) eos_ids_ = {t.eos_id()};
    }
    void set_defaults(const sentencepiece_tokenizer& t) {
        bos_id_ = t.bos_id();
        if (t.eos_id() >= 0) eos_ids_ = {t.eos_id()};
        add_bos_ = bos_id_ >= 0;
    }
    void set_defaults(const hf_tokenizer& t) {
        bos_id_ = t.bos_id();
        add_bos_ = t.add_bos();
        for (const char* eos : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>"})
            if (const int id = t.token_to_id(eos); id >= 0) eos_ids_.push_back(id);
        if (bos_id_ < 0)
            if (const int id = t.token_to_id("<s>"); id >= 0) bos_id_ = id;
    }
    void set_defaults(const llama2c_tokenizer&) {
        bos_id_ = llama2c_tokenizer::bos_id;
        eos_ids_ = {llama2c_tokenizer::eos_id, llama2c_tokenizer::bos_id};  // run.c stops on BOS
        add_bos_ = true;
    }
};

/// Where the tools look for a model's tokenizer.
struct tokenizer_request {
    std::string model_path;      ///< HF folder (or a file in it), or a llama2.c .bin
    bool llama2c_model = false;  ///< a llama2.c checkpoint: tokenizer.bin beside it
    std::string tokenizer_path;  ///< --tokenizer: a file or a folder (empty: search)
    std::string tokenizer_dir;   ///< --tokenizer-dir: a folder (empty: search)
    int model_vocab_size = -1;
    /// GPT-2's vocab.json + merges.txt, used for a 50257-token HF model whose folder has no
    /// tokenizer (the shared tiny models); empty for none.
    std::string gpt2_fallback_dir;
};

/// The tokenizer for a model (see the file comment for the order); an error names every place
/// looked at. For HF models, BOS/EOS are then read from the model folder's config files.
inline tokenizer find_tokenizer(const tokenizer_request& r) {
    namespace fs = std::filesystem;
    const fs::path folder = fs::is_directory(r.model_path) ? fs::path(r.model_path)
                                                           : fs::path(r.model_path).parent_path();
    const auto with_config = [&](tokenizer t) {
        if (!r.llama2c_model) t.read_model_config(folder.string());
        return t;
    };
    if (!r.tokenizer_path.empty()) {
        if (fs::is_directory(r.tokenizer_path)) return with_config(tokenizer::load_dir(r.tokenizer_path));
        require(fs::exists(r.tokenizer_path), "kvcar: tokenizer '" + r.tokenizer_path + "' not found");
        return with_config(tokenizer::load_file(r.tokenizer_path, r.model_vocab_size));
    }
    if (!r.tokenizer_dir.empty()) return with_config(tokenizer::load_dir(r.tokenizer_dir));
    if (r.llama2c_model) {
        const std::string bin = (folder / "tokenizer.bin").string();
        require(fs::exists(bin), "kvcar: llama2.c tokenizer '" + bin + "' not found (give --tokenizer PATH)");
        return tokenizer::load_file(bin, r.model_vocab_size);
    }
    if (tokenizer::dir_has_tokenizer(folder.string())) return with_config(tokenizer::load_dir(folder.string()));
    const bool gpt2_fallback = r.model_vocab_size == 50257 && !r.gpt2_fallback_dir.empty() &&
                               tokenizer::dir_has_tokenizer(r.gpt2_fallback_dir);
    if (gpt2_fallback) return with_config(tokenizer::load_dir(r.gpt2_fallback_dir));
    throw error("kvcar: no tokenizer for model '" + r.model_path + "': looked in '" + folder.string() +
                "' for " + tokenizer::searched +
                (r.gpt2_fallback_dir.empty() ? std::string()
                                             : "; the GPT-2 tokenizer in '" + r.gpt2_fallback_dir +
                                                   "' is used only for 50257-token models") +
                " (give --tokenizer PATH)");
}

/// Token ids written by a person or a script: "1 450 4996", "1,450,4996" or a JSON array
/// "[1, 450, 4996]" (whitespace, commas and one pair of brackets are separators). Each must be an
/// integer in [0, vocab_size); `what` names the source in errors.
inline std::vector<int> parse_token_ids(std::string_view text, int vocab_size, const std::string& what) {
    std::vector<int> ids;
    std::size_t pos = 0;
    const auto separator = [](char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == '[' || c == ']';
    };
    while (pos < text.size()) {
        if (separator(text[pos])) {
            ++pos;
            continue;
        }
        std::size_t end = pos;
        while (end < text.size() && !separator(text[end])) ++end;
        const std::string_view word = text.substr(pos, end - pos);
        long long v = -1;
        bool ok = !word.empty() && word.size() <= 10;
        for (char c : word) ok = ok && c >= '0' && c <= '9';
        if (ok) v = std::stoll(std::string(word));
        if (!ok || v >= vocab_size)
            throw error("kvcar: " + what + ": '" + std::string(word.substr(0, 20)) +
                        "' is not a token id in [0, " + std::to_string(vocab_size) + ")");
        ids.push_back(int(v));
        pos = end;
    }
    return ids;
}

/// "[1, 450, 4996]": ids as a JSON array, the form parse_token_ids reads back.
inline std::string format_token_ids(std::span<const int> ids) {
    std::string s = "[";
    for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
    return s + "]";
}

}  // namespace kvcar::examples
