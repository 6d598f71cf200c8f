// examples/models/tool_common.hpp — what the command-line tools share: a small option parser,
// the tokenizer that goes with a checkpoint, a progress line, and the KV cache report. The
// checks made before any work are in tool_checks.hpp, the --json report in tool_json.hpp.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "kvcar/common.hpp"

#include "examples/common/data_path.hpp"
#include "examples/common/tokenizer.hpp"
#include "examples/models/kv_dispatch.hpp"
#include "examples/models/model.hpp"
#include "examples/models/tool_checks.hpp"
#include "examples/models/tool_json.hpp"


namespace kvcar::examples {

/// The shared data folder the tools default to (compiled in; see examples/CMakeLists.txt).
/// The value of --data when the command line had it (command_line::parse records it), else "".
inline std::string& data_option() {
    static std::string value;
    return value;
}

/// The data folder the tools default to: --data, else $KVCAR_DATA, else share/kvcar/data or
/// shared/data above the executable (examples/common/data_path.hpp). When there is none, a
/// placeholder that names the rule, so a default path built on it says why it is missing.
inline std::string shared_data_dir() {
    const std::filesystem::path dir = data_dir(data_option());
    return dir.empty() ? "<no data folder: " + data_dir_help() + ">" : dir.string();
}

// ---------------------------------------------------------------------------------------------
// Command line: `--name value` options and `--flag`s, declared up front so a typo is an error.

struct option_spec {
    std::string name;   ///< without the leading "--"
    std::string value;  ///< placeholder shown in the usage ("N", "PATH"); empty for a flag
    std::string help;
};

class command_line {
public:
    command_line(std::string tool, std::string summary, std::vector<option_spec> specs)
        : tool_(std::move(tool)), summary_(std::move(summary)), specs_(std::move(specs)) {
        specs_.push_back({"help", "", "print this help"});
    }

    /// Returns false after printing the usage when --help (or -h) was given; throws on a bad
    /// command line.
    bool parse(int argc, char** argv) {
        for (int i = 1; i < argc; ++i) {
            std::string_view arg = argv[i];
            if (arg == "-h") arg = "--help";
            require(arg.starts_with("--"), tool_ + ": unexpected argument '" + std::string(arg) +
                                               "' (options start with --; see --help)");
            std::string name(arg.substr(2));
            std::string value;
            bool has_inline_value = false;
            if (const auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name = name.substr(0, eq);
                has_inline_value = true;
            }
            const option_spec* spec = find(name);
            require(spec != nullptr, tool_ + ": unknown option '--" + name + "' (see --help)");
            if (spec->value.empty()) {
                require(!has_inline_value, tool_ + ": --" + name + " takes no value");
                values_[name] = "1";
                continue;
            }
            if (!has_inline_value) {
                require(i + 1 < argc, tool_ + ": --" + name + " needs a value (" + spec->value +
                                          "), and it is the last argument");
                value = argv[++i];
            }
            values_[name] = value;
        }
        if (has("help")) {
            std::printf("%s", usage().c_str());
            return false;
        }
        if (has("data")) data_option() = get("data");
        return true;
    }

    std::string usage() const {
        std::string u = "usage: " + tool_ + " [options]\n" + summary_ + "\n\noptions (-h = --help):\n";
        for (const option_spec& s : specs_) {
            std::string left = "  --" + s.name + (s.value.empty() ? "" : " " + s.value);
            if (left.size() < 28) left.resize(28, ' ');
            u += left + " " + s.help + "\n";
        }
        return u;
    }

    bool has(const std::string& name) const { return values_.count(name) != 0; }
    std::string get(const std::string& name, const std::string& fallback = "") const {
        const auto it = values_.find(name);
        return it == values_.end() ? fallback : it->second;
    }
    std::string required(const std::string& name) const {
        require(has(name), tool_ + ": --" + name + " is required (see --help)");
        return get(name);
    }
    long long get_int(const std::string& name, long long fallback) const {
        if (!has(name)) return fallback;
        const std::string v = get(name);
        std::size_t used = 0;
        long long x = 0;
        try {
            x = std::stoll(v, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        require(used == v.size() && !v.empty(),
                tool_ + ": --" + name + " needs an integer, got '" + v + "'");
        return x;
    }
    double get_double(const std::string& name, double fallback) const {
        if (!has(name)) return fallback;
        const std::string v = get(name);
        std::size_t used = 0;
        double x = 0;
        try {
            x = std::stod(v, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        require(used == v.size() && !v.empty(),
                tool_ + ": --" + name + " needs a number, got '" + v + "'");
        return x;
    }
    /// --name as an integer that must be >= `min`: "tool: --steps '-3' must be an integer ≥ 0".
    long long get_int_at_least(const std::string& name, long long fallback, long long min) const {
        const long long x = get_int(name, fallback);
        require(!has(name) || x >= min, tool_ + ": --" + name + " '" + get(name) +
                                            "' must be an integer ≥ " + std::to_string(min));
        return x;
    }
    /// --name as a number that must be finite and >= `min` (NaN and infinities are refused).
    double get_double_at_least(const std::string& name, double fallback, double min) const {
        const double x = get_double(name, fallback);
        if (has(name)) require_finite_at_least(tool_, name, get(name), x, min);
        return x;
    }
    const std::string& tool() const { return tool_; }

private:
    const option_spec* find(const std::string& name) const {
        for (const option_spec& s : specs_)
            if (s.name == name) return &s;
        return nullptr;
    }

    std::string tool_, summary_;
    std::vector<option_spec> specs_;
    std::map<std::string, std::string> values_;
};

/// The options every tool has: the checkpoint, its tokenizer, the cache and the threads.
inline std::vector<option_spec> model_options_spec(const std::string& default_kv) {
    std::string kv_names;
    for (const std::string& n : kv_codec_names()) kv_names += (kv_names.empty() ? "" : " | ") + n;
    return {
        {"model", "PATH", "HF model folder (config.json + model.safetensors) or llama2.c .bin"},
        {"tokenizer", "PATH", "tokenizer.json, tokenizer.model, vocab.json or llama2.c tokenizer.bin, "
                              "or a folder (default: the model folder's tokenizer.json, then "
                              "tokenizer.model, then vocab.json + merges.txt)"},
        {"tokenizer-dir", "DIR", "folder to search for the tokenizer instead of the model folder "
                                 "(a 50257-token model without one uses DATA/tokenizers/gpt2)"},
        {"kv", "NAME", "KV cache codec: " + kv_names + " (default " + default_kv + ")"},
        {"keys", "post|pre", "Llama: cache keys after RoPE (default) or before (RoPE on read)"},
        {"threads", "N", "matmul threads (default: all hardware threads)"},
        {"data", "DIR", "data folder for the defaults below (tokenizers/, wikitext-2/, piqa/; "
                        "default: $KVCAR_DATA, else share/kvcar/data or shared/data above the "
                        "executable)"},
    };
}

/// --json: the final results as one JSON object on stdout, the report on stderr.
inline option_spec json_option_spec() {
    return {"json", "", "print the final results as one JSON object on stdout (the readable "
                        "report goes to stderr)"};
}

/// A tool's whole main(): runs `run(argc, argv)` and turns any exception into "error: <what>"
/// on stderr and exit status 1, so every tool fails the same way on bad input.
template <class Run>
int tool_main(int argc, char** argv, Run run) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}

/// --device, for the tools that have a CUDA path (generate, perplexity, piqa).
inline option_spec device_option_spec() {
#ifdef KVCAR_WITH_CUDA
    return {"device", "cpu|cuda", "run the model on the CPU (default) or the CUDA GPU"};
#else
    return {"device", "cpu|cuda", "run the model on the CPU (default; this build has no CUDA)"};
#endif
}

/// --no-graphs: the CUDA session's decode steps enqueued launch by launch instead of replayed
/// as CUDA graphs (cuda_backend::session_params::decode_graphs), to compare the two.
inline option_spec no_graphs_option_spec() {
    return {"no-graphs", "", "with --device cuda: enqueue each decode step's launches one by one "
                             "instead of replaying a CUDA graph of them"};
}

/// True for --device cuda. A build without CUDA refuses it rather than silently using the CPU.
inline bool parse_use_cuda(const command_line& cl) {
    const std::string device = cl.get("device", "cpu");
    require(device == "cpu" || device == "cuda",
            cl.tool() + ": --device must be 'cpu' or 'cuda', got '" + device + "'");
#ifndef KVCAR_WITH_CUDA
    require(device != "cuda", cl.tool() + ": --device cuda needs a build with CUDA (this one was "
                                          "configured without nvcc)");
#endif
    return device == "cuda";
}

/// --tensor-parallel and --shard-on-one-gpu, for the tools with a CUDA path.
inline std::vector<option_spec> tensor_parallel_option_specs() {
    return {
        {"tensor-parallel", "N",
         "with --device cuda: split heads and MLP over N GPUs (NCCL all-reduce); 1 runs that "
         "path on one GPU (default 0: the plain one-GPU model)"},
        {"shard-on-one-gpu", "", "with --tensor-parallel N: put all N ranks on one GPU, summed "
                                 "in-process (checks the sharding; slow)"},
    };
}

/// The tensor-parallel settings: {ranks (0 = plain model), ranks share one GPU}. Refused
/// without --device cuda, where they would silently do nothing.
struct tensor_parallel_choice {
    int ranks = 0;
    bool share_one_gpu = false;
};
inline tensor_parallel_choice parse_tensor_parallel(const command_line& cl, bool use_cuda) {
    tensor_parallel_choice t;
    t.ranks = int(cl.get_int_at_least("tensor-parallel", 0, 0));
    t.share_one_gpu = cl.has("shard-on-one-gpu");
    require(t.ranks >= 0, cl.tool() + ": --tensor-parallel must not be negative");
    require(use_cuda || (t.ranks == 0 && !t.share_one_gpu),
            cl.tool() + ": --tensor-parallel and --shard-on-one-gpu need --device cuda");
    require(!t.share_one_gpu || t.ranks > 0,
            cl.tool() + ": --shard-on-one-gpu needs --tensor-parallel N");
    return t;
}

inline model_options parse_model_options(const command_line& cl) {
    model_options o;
    o.threads = int(cl.get_int_at_least("threads", 0, 0));
    const std::string keys = cl.get("keys", "post");
    require(keys == "post" || keys == "pre",
            cl.tool() + ": --keys must be 'post' or 'pre', got '" + keys + "'");
    o.keys = keys == "pre" ? cached_keys::pre_rope : cached_keys::post_rope;
    return o;
}

// ---------------------------------------------------------------------------------------------
// Codec files: the keys they were fitted to must be the keys this run caches.

/// The keys `set` was fitted to: its "keys" field; for a file without it, what kvcar-calibrate
/// used to write in the notes ("keys=pre-rope"), else post-RoPE. `assumed` tells the caller
/// the file did not say.
inline io::codec_keys codec_file_keys(const io::codec_set& set, bool* assumed = nullptr) {
    if (assumed) *assumed = set.keys == io::codec_keys::unknown;
    if (set.keys != io::codec_keys::unknown) return set.keys;
    return set.calibration.notes.find("keys=pre-rope") != std::string::npos
               ? io::codec_keys::pre_rope
               : io::codec_keys::post_rope;
}

/// The keys `model` caches as a codec file records them (GPT-2 has no RoPE: always post).
inline io::codec_keys run_keys(const language_model& model) {
    return model.is_gpt2() || model.options().keys == cached_keys::post_rope
               ? io::codec_keys::post_rope
               : io::codec_keys::pre_rope;
}

/// Throws when the codec file `path` (loaded as `set`) was fitted to other keys than `model`
/// caches; notes on stderr when a RoPE model's file does not record its keys.
inline void check_codec_file_keys(const std::string& tool, const std::string& path,
                                  const io::codec_set& set, const language_model& model) {
    bool assumed = false;
    const io::codec_keys file = codec_file_keys(set, &assumed);
    const io::codec_keys run = run_keys(model);
    const auto flag = [](io::codec_keys k) {
        return k == io::codec_keys::pre_rope ? "--keys pre" : "--keys post (the default)";
    };
    require(file == run, tool + ": codec file '" + path + "' was fitted to " + to_string(file) +
                             " keys, but this run caches " + to_string(run) + " keys; run with " +
                             flag(file) + ", as the file was calibrated");
    if (assumed && !model.is_gpt2())
        std::fprintf(stderr, "note: codec file '%s' does not record its key mode (written before "
                             "the \"keys\" field); assuming %s\n",
                     path.c_str(), to_string(file));
}

/// Checks --kv before any work: a `file:PATH` must be a codec file for this model's geometry,
/// fitted to the keys this run caches.
inline void check_kv_option(const std::string& tool, const std::string& kv,
                            const language_model& model) {
    if (!kv.starts_with(kv_file_prefix)) {
        const auto& names = kv_codec_names();
        std::string known;
        for (const std::string& n : names) known += (known.empty() ? "" : ", ") + n;
        bool ok = false;
        for (const std::string& n : names) ok = ok || (n == kv && n != "file:PATH");
        require(ok, tool + ": --kv '" + kv + "' is not a known cache (known: " + known + ")");
        return;
    }
    const std::string path = kv.substr(kv_file_prefix.size());
    require(!path.empty(), tool + ": --kv 'file:' needs a codec file path (--kv file:PATH)");
    check_input_file(tool, "kv file:", path);
    const io::codec_set set = io::load_codec_set(path, model.cache_geometry());
    check_codec_file_keys(tool, path, set, model);
}

/// Bytes per token of the cache `kv` names for `model` (all layers, K and V), for estimates.
inline double kv_bytes_per_token(const std::string& kv, const language_model& model) {
    const kv_geometry g = model.cache_geometry();
    const double fp16 = double(g.fp16_bytes_per_token());
    // A fixed cache: one record per KV head, K and V, in every layer.
    if (const std::optional<dense_kv_codec> c = dense_kv_codec_named(kv, g.head_dim))
        return double(c->bytes_per_group()) * 2.0 * double(g.n_layers) * double(g.n_kv_heads);
    if (kv.starts_with(kv_file_prefix))
        return double(io::load_codec_set(kv.substr(kv_file_prefix.size()), g).bytes_per_token());
    return fp16;
}

// ---------------------------------------------------------------------------------------------
// Tokenizers: examples/common/tokenizer.hpp finds and reads them; this adds the tools' options.

class text_tokenizer : public tokenizer {
public:
    /// The tokenizer for `model`: --tokenizer, --tokenizer-dir, or the one in the model folder
    /// (tokenizer.json, tokenizer.model, vocab.json + merges.txt); its vocabulary must be the
    /// model's.
    static text_tokenizer for_model(const language_model& model, const command_line& cl) {
        text_tokenizer t(find_tokenizer({
            .model_path = model.path(),
            .llama2c_model = model.format() == checkpoint_format::llama2c,
            .tokenizer_path = cl.get("tokenizer"),
            .tokenizer_dir = cl.get("tokenizer-dir"),
            .model_vocab_size = model.vocab_size(),
            .gpt2_fallback_dir = shared_data_dir() + "/tokenizers/gpt2",
        }));
        check_tokenizer_vocab(t.vocab_size(), model.vocab_size(), "'" + t.path() + "'");
        return t;
    }

    /// The text of `id` as it follows `prev`.
    std::string piece(int prev, int id) const { return decode_piece(prev, id); }
    /// Generating this id ends the text (an EOS id of the model's config or the tokenizer).
    bool ends_text(int id) const { return is_eos(id); }

private:
    explicit text_tokenizer(tokenizer t) : tokenizer(std::move(t)) {}
};

/// --prompt-ids IDS or --ids-file FILE when given (at most one of them), else nothing.
inline std::optional<std::vector<int>> ids_from_options(const command_line& cl, int vocab_size) {
    require(!(cl.has("prompt-ids") && cl.has("ids-file")),
            cl.tool() + ": give --prompt-ids or --ids-file, not both");
    if (cl.has("prompt-ids")) return parse_token_ids(cl.get("prompt-ids"), vocab_size, "--prompt-ids");
    if (!cl.has("ids-file")) return std::nullopt;
    std::ifstream in(cl.get("ids-file"), std::ios::binary);
    require(bool(in), cl.tool() + ": cannot open --ids-file '" + cl.get("ids-file") + "'");
    std::ostringstream text;
    text << in.rdbuf();
    return parse_token_ids(text.str(), vocab_size, "--ids-file '" + cl.get("ids-file") + "'");
}

/// The prompt's ids: --prompt encoded (BOS in front when the tokenizer adds one), or
/// --prompt-ids / --ids-file taken as they are; exactly one of them.
inline std::vector<int> prompt_from_options(const command_line& cl, const tokenizer& t, int vocab_size) {
    std::optional<std::vector<int>> ids = ids_from_options(cl, vocab_size);
    require(!(ids && cl.has("prompt")), cl.tool() + ": give --prompt or token ids, not both");
    if (ids) return *ids;
    require(cl.has("prompt"), cl.tool() + ": --prompt (or --prompt-ids / --ids-file) is required");
    return t.encode(cl.get("prompt"));
}

// ---------------------------------------------------------------------------------------------
// The tools that learn codecs from the model's own activations (kvcar-calibrate, kvcar-finetune):
// their model options (no --kv: they build the cache from what they fit) and their text.

inline std::vector<option_spec> codec_fitting_options_spec() {
    std::vector<option_spec> specs;
    for (const option_spec& s : model_options_spec("identity-f16"))
        if (s.name != "kv") specs.push_back(s);
    return specs;
}

/// --text (what it is `for_what`) and --max-tokens (`max_tokens_help` says the default).
inline std::vector<option_spec> text_options_spec(const std::string& for_what,
                                                  const std::string& max_tokens_help) {
    return {
        {"text", "FILE", for_what + ", read as it is (default: DATA/wikitext-2/"
                                    "wiki.valid.tokens)"},
        {"max-tokens", "N", "use only the first N tokens of the text (" + max_tokens_help + ")"},
    };
}


struct tokenized_text {
    std::string path;
    std::vector<int> ids;  ///< every token of the file (BOS first when the tokenizer adds one)
};

/// --text's path (default: WikiText-2 validation), checked to be a readable file.
inline std::string text_option_path(const command_line& cl) {
    const std::string path = cl.get("text", shared_data_dir() + "/wikitext-2/wiki.valid.tokens");
    check_input_file(cl.tool(), "text", path);
    return path;
}

/// --text (default: WikiText-2 validation), tokenized; binary files are refused.
inline tokenized_text read_text_option(const command_line& cl, const text_tokenizer& tokenizer) {
    tokenized_text t;
    t.path = text_option_path(cl);
    t.ids = tokenizer.encode(read_text_file(cl.tool(), "text", t.path));
    return t;
}

// ---------------------------------------------------------------------------------------------
// Reporting.

using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point start) {
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

/// "12.3 KiB", "4.0 MiB": cache sizes at a glance.
inline std::string human_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 3) {
        bytes /= 1024.0;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
    return buf;
}

/// What the cache spent: the most bytes its records took at once (and the storage held for
/// them), per token, and how much smaller than an fp16 cache of the same model.
template <class Cache>
void print_cache_report(std::FILE* out, const std::string& kv, const Cache& cache,
                        std::size_t peak_bytes_used, std::size_t peak_bytes_reserved) {
    std::fprintf(out, "kv cache: %s, %zu bytes used at peak (%s; storage held %s), "
                      "%zu bytes/token, compression %.2fx vs fp16\n",
                 kv.c_str(), peak_bytes_used, human_bytes(double(peak_bytes_used)).c_str(),
                 human_bytes(double(peak_bytes_reserved)).c_str(), cache.bytes_per_token(),
                 cache.compression_ratio());
}

/// True when stderr is a terminal: only then may a progress line use "\r" and escape codes.
inline bool stderr_is_terminal() { return ::isatty(::fileno(stderr)) == 1; }

/// A progress line on stderr. On a terminal it is rewritten in place at most a few times a
/// second; redirected (a log file, a pipe) it is a plain line at most every `plain_every`, so
/// a log holds no "\r" or escape codes and still shows that a long run is alive.
class progress_line {
public:
    explicit progress_line(bool enabled = true, bool terminal = stderr_is_terminal(),
                           std::chrono::milliseconds plain_every = std::chrono::seconds(10))
        : enabled_(enabled), terminal_(terminal), plain_every_(plain_every) {}
    void update(const std::string& text, bool force = false) {
        if (!enabled_) return;
        const auto now = clock_type::now();
        const auto every = terminal_ ? std::chrono::milliseconds(250) : plain_every_;
        if (!force && shown_once_ && now - last_ < every) return;
        last_ = now;
        shown_once_ = true;
        if (terminal_) {
            std::fprintf(stderr, "\r%s\033[K", text.c_str());
            shown_ = true;
        } else {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
        std::fflush(stderr);
    }
    /// Ends a line rewritten in place (nothing to do for plain lines).
    void finish() {
        if (shown_) std::fprintf(stderr, "\n");
        shown_ = false;
    }

private:
    bool enabled_, terminal_;
    std::chrono::milliseconds plain_every_;
    bool shown_ = false, shown_once_ = false;
    clock_type::time_point last_{};
};

}  // namespace kvcar::examples
