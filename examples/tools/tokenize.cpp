// kvcar-tokenize — text to token ids and back, with the tokenizer the other tools would use for a
// model (in the manner of llama.cpp's llama-tokenize), so scripts can compare ids with other tools.
//
//   kvcar-tokenize --model ~/models/TinyLlama-1.1B --prompt "Hello world"        -> [1, 15043, 3186]
//   kvcar-tokenize --tokenizer ../shared/data/tokenizers/llama2/tokenizer.model --file in.txt --no-bos
//   kvcar-tokenize --model ~/models/TinyLlama-1.1B --decode "[1, 15043, 3186]"   -> Hello world
//   kvcar-tokenize --model M --prompt "Hi" --show-pieces                          -> one "id<TAB>piece" per line
//
// The tokenizer is found as by kvcar-generate: --tokenizer PATH (a file or folder), else the model
// folder's tokenizer.json, tokenizer.model, vocab.json + merges.txt; BOS/EOS from its config files.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "examples/common/tokenizer.hpp"
#include "examples/models/tool_common.hpp"

namespace ex = kvcar::examples;

namespace {

std::string read_input(const ex::command_line& cl, const char* text_option) {
    if (cl.has("file")) return ex::read_text_file(cl.tool(), "file", cl.get("file"));
    kvcar::require(cl.has(text_option), cl.tool() + ": give --" + text_option + " or --file");
    return cl.get(text_option);
}

int run(int argc, char** argv) {
    std::vector<char*> args(argv, argv + argc);
    for (char*& a : args)
        if (std::string_view(a) == "-h") a = const_cast<char*>("--help");  // as llama-tokenize
    argv = args.data();
    ex::command_line cl(
        "kvcar-tokenize",
        "Turn text into token ids (a JSON array on stdout), or ids into text with --decode.",
        {
            {"model", "PATH", "HF model folder (its tokenizer and config.json BOS/EOS are used)"},
            {"tokenizer", "PATH", "tokenizer.json, tokenizer.model, vocab.json, or a folder "
                                  "(default: the model folder's)"},
            {"prompt", "TEXT", "the text to tokenize"},
            {"file", "FILE", "read the text (or, with --decode, the ids) from FILE"},
            {"decode", "IDS", "decode these ids (\"1 450 4996\" or \"[1, 450]\") instead; "
                              "give an empty value with --file"},
            {"no-bos", "", "do not put BOS in front (default: as the tokenizer does)"},
            {"bos", "", "put BOS in front even where the tokenizer does not"},
            {"show-pieces", "", "one line per token: id, tab, its text (JSON-quoted)"},
            {"count", "", "print only the number of tokens"},
        });
    if (!cl.parse(argc, argv)) return 0;
    kvcar::require(cl.has("model") || cl.has("tokenizer"),
                   "kvcar-tokenize: give --model or --tokenizer (see --help)");
    kvcar::require(!(cl.has("bos") && cl.has("no-bos")), "kvcar-tokenize: --bos or --no-bos, not both");

    const std::string model_path = cl.get("model", cl.get("tokenizer"));
    ex::tokenizer tokenizer = ex::find_tokenizer({
        .model_path = model_path,
        .llama2c_model = false,
        .tokenizer_path = cl.get("tokenizer"),
        .tokenizer_dir = "",
        .model_vocab_size = -1,
        .gpt2_fallback_dir = "",
    });
    if (cl.has("bos")) tokenizer.set_add_bos(true);
    if (cl.has("no-bos")) tokenizer.set_add_bos(false);
    std::fprintf(stderr, "tokenizer: %s\n", tokenizer.describe().c_str());

    if (cl.has("decode")) {
        const std::string ids_text = cl.get("decode").empty() && cl.has("file")
                                         ? ex::read_text_file(cl.tool(), "file", cl.get("file"))
                                         : cl.get("decode");
        const std::vector<int> ids = ex::parse_token_ids(ids_text, tokenizer.vocab_size(), "--decode");
        std::printf("%s\n", tokenizer.decode(ids).c_str());
        return 0;
    }
    const std::vector<int> ids = tokenizer.encode(read_input(cl, "prompt"));
    if (cl.has("count")) {
        std::printf("%zu\n", ids.size());
    } else if (cl.has("show-pieces")) {
        int prev = -1;
        for (int id : ids) {
            std::string piece = tokenizer.decode_piece(prev, id);
            std::string shown;
            // JSON quoting shows spaces, newlines and control bytes; a lone byte of a character
            // split over byte tokens is shown as \xNN.
            if (ex::hf_detail::is_utf8(piece)) {
                shown = kvcar::io::to_json(kvcar::io::json_value(piece));
            } else {
                char buf[8];
                for (unsigned char c : piece) {
                    std::snprintf(buf, sizeof buf, "\\x%02X", c);
                    shown += buf;
                }
            }
            std::printf("%d\t%s\n", id, shown.c_str());
            prev = id;
        }
    } else {
        std::printf("%s\n", ex::format_token_ids(ids).c_str());
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return ex::tool_main(argc, argv, run); }
