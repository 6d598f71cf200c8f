// kvcar-perplexity — perplexity of a model whose KV cache is a kvcar cache, on WikiText-2 or
// any text, with a sliding window.
//
//   kvcar-perplexity --model shared/data/models/gpt2-tiny                      (wiki.test.raw)
//   kvcar-perplexity --model models/gpt2-tiny     (demo model; its excerpt without shared data)
//   kvcar-perplexity --model M --tokens-file shared/data/wikitext-2/wiki.test.tokens
//                    --ctx 512 --stride 512 --max-tokens 20000 --kv identity-f32
//
// Method (Hugging Face's "perplexity of fixed-length models"): the text is tokenized once into
// ids[0..N). Window w feeds the ctx tokens starting at w·stride (fewer at the end), each input
// predicting the token after it. The first window scores all its predictions; each later window
// scores only its last `stride` ones, which have at least ctx - stride tokens of context, so
// every token 1..N-1 is scored exactly once. stride == ctx gives non-overlapping windows (the
// data README's reference numbers); a smaller stride costs ctx/stride times more compute and
// gives every scored token more context. PPL = exp(mean negative log-likelihood).
//
// Every window starts a fresh sequence in the cache, prefilled in one forward pass: the logits
// of every position come from attention over K/V read back through the codec. With
// --device cuda the model and its cache live on the GPU, which returns only the log-probabilities.
//
// How much of the number is context: `--ctx 8 --stride 1` scores every token with exactly its 7
// preceding tokens (8 inputs), what a model that looks at 8 tokens would reach; the demo prints
// both.
//
// Output: the results on stdout, diagnostics and progress on stderr; with --json one JSON
// object on stdout instead of the results' lines (which go to stderr).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "examples/models/kv_dispatch.hpp"
#include "examples/models/model.hpp"
#include "examples/models/tensor_ops.hpp"
#include "examples/models/tool_checks.hpp"
#include "examples/models/tool_common.hpp"
#include "examples/models/tool_json.hpp"
#ifdef KVCAR_WITH_CUDA
#include "examples/models/cuda/backend.hpp"
#endif

namespace ex = kvcar::examples;

namespace {

const std::string tool = "kvcar-perplexity";

/// WikiText-2 raw joined the usual way (GPTQ, most KV-cache papers): the file's lines, each
/// kept with its "\n", blank ones (" \n") made empty, joined with "\n\n" — the string
/// `"\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])`.
std::string wikitext_joined(const std::string& raw) {
    std::string out;
    out.reserve(raw.size() * 2);
    std::size_t pos = 0;
    bool first = true;
    while (pos < raw.size()) {
        std::size_t end = raw.find('\n', pos);
        end = end == std::string::npos ? raw.size() : end + 1;
        std::string_view line(raw.data() + pos, end - pos);
        if (line == " \n") line = {};
        if (!first) out += "\n\n";
        out += line;
        first = false;
        pos = end;
    }
    return out;
}

/// --text's default: WikiText-2 test from the shared data when it is there, else the excerpt
/// shipped with the demo model (models/wikitext-2-test-excerpt.txt, beside or one folder above
/// the model), so `kvcar-perplexity --model models/gpt2-tiny` runs on a fresh checkout.
std::string default_text(const std::string& model_path) {
    namespace fs = std::filesystem;
    const std::string shared = ex::shared_data_dir() + "/wikitext-2/wiki.test.raw";
    if (fs::exists(shared)) return shared;
    fs::path folder(model_path);
    if (!fs::is_directory(folder)) folder = folder.parent_path();
    folder = folder.lexically_normal();
    if (folder.filename().empty()) folder = folder.parent_path();  // "models/gpt2-tiny/"
    for (const fs::path& p : {folder / "wikitext-2-test-excerpt.txt",
                              folder.parent_path() / "wikitext-2-test-excerpt.txt"}) {
        if (fs::exists(p)) return p.string();
    }
    return shared;  // absent: the error names the file the user most likely wants
}

int run(int argc, char** argv) {
    std::vector<ex::option_spec> specs = ex::model_options_spec("identity-f16");
    specs.insert(specs.end(), {
        {"text", "FILE", "WikiText raw file, joined the usual way (default: "
                         "DATA/wikitext-2/wiki.test.raw (DATA: the --data folder), else "
                         "models/wikitext-2-test-excerpt.txt)"},
        {"tokens-file", "FILE", "any text file read as it is (e.g. wiki.test.tokens)"},
        {"ctx", "N", "window length in tokens (default 512, at most the model's context)"},
        {"stride", "N", "tokens between window starts; only the last `stride` predictions of a "
                        "window after the first are scored (default: ctx)"},
        {"max-tokens", "N", "use only the first N tokens of the text (default: all)"},
        {"quiet", "", "no progress line"},
        {"prompt-ids", "IDS", "score these token ids instead of a text (\"1 450 4996\" or a JSON array)"},
        {"ids-file", "FILE", "score the token ids in FILE instead of a text (same forms)"},
        ex::device_option_spec(),
        ex::json_option_spec(),
    });
    for (const ex::option_spec& o : ex::tensor_parallel_option_specs()) specs.push_back(o);
    ex::command_line cl("kvcar-perplexity",
                        "Sliding-window perplexity of a model whose KV cache is kvcar's.", specs);
    if (!cl.parse(argc, argv)) return 0;

    // Everything the command line says is checked before the model loads, the text included.
    const std::string model_path = cl.required("model");
    const std::string kv = cl.get("kv", "identity-f16");
    [[maybe_unused]] const bool use_cuda = ex::parse_use_cuda(cl);
    [[maybe_unused]] const ex::tensor_parallel_choice tp = ex::parse_tensor_parallel(cl, use_cuda);
    kvcar::require(!(cl.has("text") && cl.has("tokens-file")),
                   tool + ": give --text or --tokens-file, not both");
    const bool json = cl.has("json");
    std::FILE* report = json ? stderr : stdout;
    long long max_tokens = 0;
    if (cl.has("max-tokens")) {
        max_tokens = cl.get_int("max-tokens", 0);
        kvcar::require(max_tokens >= 2, tool + ": --max-tokens " + cl.get("max-tokens") +
                                            " must be at least 2");
    }
    for (const char* opt : {"ctx", "stride"})
        if (cl.has(opt))
            kvcar::require(cl.get_int(opt, 0) >= 1, tool + ": --" + opt + " " + cl.get(opt) +
                                                        " must be at least 1");
    kvcar::require(!((cl.has("prompt-ids") || cl.has("ids-file")) &&
                     (cl.has("text") || cl.has("tokens-file"))),
                   tool + ": give token ids (--prompt-ids / --ids-file) or a text, not both");
    std::string source, text;
    if (cl.has("tokens-file")) {
        source = cl.get("tokens-file");
        text = ex::read_text_file(tool, "tokens-file", source);
    } else if (cl.has("text")) {
        source = cl.get("text");
        text = wikitext_joined(ex::read_text_file(tool, "text", source));
    }

    const ex::language_model model =
        ex::language_model::load(model_path, ex::parse_model_options(cl));
    ex::check_kv_option(tool, kv, model);
    const ex::text_tokenizer tokenizer = ex::text_tokenizer::for_model(model, cl);

    const int ctx = int(cl.get_int("ctx", std::min(512, model.max_positions())));
    const int stride = int(cl.get_int("stride", ctx));
    kvcar::require(ctx >= 1 && ctx <= model.max_positions(),
                   "kvcar-perplexity: --ctx " + std::to_string(ctx) +
                       " must be in [1, the model's context " +
                       std::to_string(model.max_positions()) + "]");
    kvcar::require(stride >= 1 && stride <= ctx, "kvcar-perplexity: --stride " +
                                                     std::to_string(stride) + " must be in [1, ctx " +
                                                     std::to_string(ctx) + "]");
    const std::optional<std::vector<int>> given_ids = ex::ids_from_options(cl, model.vocab_size());
    if (given_ids) {
        source = cl.has("ids-file") ? cl.get("ids-file") : "--prompt-ids";
    } else if (source.empty()) {
        source = default_text(model.path());
        text = wikitext_joined(ex::read_text_file(tool, "text", source));
    }
    const auto tokenize_start = ex::clock_type::now();
    std::vector<int> ids = given_ids ? *given_ids : tokenizer.encode(text);
    const std::size_t total_tokens = ids.size();
    if (max_tokens > 0 && ids.size() > std::size_t(max_tokens)) ids.resize(std::size_t(max_tokens));
    kvcar::require(ids.size() >= 2, "kvcar-perplexity: '" + source + "' has " +
                                        std::to_string(ids.size()) +
                                        " tokens; perplexity needs at least 2");
    const long long n = (long long)ids.size();
    std::fprintf(stderr, "model: %s (%s)\n", model.path().c_str(), model.describe().c_str());
    std::fprintf(stderr, "text: %s, %zu tokens (tokenized in %.2f s), using %lld\n",
                 source.c_str(), total_tokens, ex::seconds_since(tokenize_start), n);

    // Windows: inputs [begin, begin + len) with len = min(ctx, n - 1 - begin), so that every
    // input has a target; the loop ends once the last token has been scored.
    long long windows = 0;
    for (long long begin = 0, end = 1; end < n; begin += stride) {
        end = std::min(begin + ctx, n - 1) + 1;
        ++windows;
    }

    ex::progress_line progress(!cl.has("quiet"));
    // The window loop, for a CPU cache or the CUDA session alike. log_probs(cache, seq, inputs,
    // targets, first) runs `inputs` through the model as a fresh sequence and returns
    // log p(targets[i]) after input i, for i >= first (the predictions this window scores).
    const auto evaluate = [&](auto& cache, auto&& log_probs) {
        double nll = 0.0;
        long long scored = 0;
        long long scored_end = 1;  // tokens [1, scored_end) have been scored
        std::size_t peak_bytes = 0, peak_reserved = 0;
        const auto start = ex::clock_type::now();
        long long fed = 0, w = 0;
        for (long long begin = 0; scored_end < n; begin += stride, ++w) {
            const long long len = std::min<long long>(ctx, n - 1 - begin);
            const std::span<const int> inputs(&ids[std::size_t(begin)], std::size_t(len));
            const std::span<const int> targets(&ids[std::size_t(begin + 1)], std::size_t(len));
            const int seq = cache.add_sequence();
            // Input i (token begin + i) predicts token begin + i + 1; score the new ones.
            const long long first = std::max(0ll, scored_end - 1 - begin);
            const std::vector<double> lp = log_probs(cache, seq, inputs, targets, first);
            peak_bytes = std::max(peak_bytes, cache.bytes_used());
            peak_reserved = std::max(peak_reserved, cache.bytes_reserved());
            cache.remove_sequence(seq);
            fed += len;
            for (const double v : lp) nll -= v;
            scored += (long long)lp.size();
            scored_end = begin + len + 1;

            const double s = ex::seconds_since(start);
            char line[200];
            std::snprintf(line, sizeof line,
                          "window %lld/%lld  scored %lld tokens  ppl %.3f  %.0f tokens/s", w + 1,
                          windows, scored, std::exp(nll / double(scored)), double(fed) / s);
            progress.update(line, scored_end >= n);
        }
        progress.finish();
        const double seconds = ex::seconds_since(start);

        std::fprintf(report, "perplexity: %.4f\n", std::exp(nll / double(scored)));
        std::fprintf(report, "tokens scored: %lld (windows %lld, ctx %d, stride %d)\n", scored, w,
                     ctx, stride);
        std::fprintf(report, "mean nll: %.6f nats/token\n", nll / double(scored));
        std::fprintf(report, "time: %.1f s, %.1f tokens/s fed through the model\n", seconds,
                     double(fed) / seconds);
        ex::print_cache_report(report, kv, cache, peak_bytes, peak_reserved);
        if (json) {
            kvcar::io::json_value r = ex::json_report(tool);
            r.set("text", source);
            r.set("perplexity", ex::json_number(std::exp(nll / double(scored))));
            r.set("mean_nll", ex::json_number(nll / double(scored)));
            r.set("tokens_scored", scored);
            r.set("windows", w);
            r.set("ctx", ctx);
            r.set("stride", stride);
            r.set("seconds", ex::json_number(seconds));
            ex::add_cache_json(r, kv, cache, peak_bytes, peak_reserved);
            ex::print_json_report(r);
        }
        return 0;
    };

#ifdef KVCAR_WITH_CUDA
    if (use_cuda) {
        std::fprintf(stderr, "device: %s\n", ex::cuda_backend::device_description().c_str());
        ex::cuda_backend::session gpu(model, kv,
                                      {.max_sequences = 1,
                                       .max_tokens = ctx,
                                       .tensor_parallel = tp.ranks,
                                       .ranks_share_one_gpu = tp.share_one_gpu});
        return evaluate(gpu, [](auto& session, int seq, std::span<const int> inputs,
                                std::span<const int> targets, long long first) {
            // Log-probabilities come back from the GPU for every input; keep the scored ones.
            std::vector<double> lp = session.log_probs(seq, inputs, targets);
            lp.erase(lp.begin(), lp.begin() + first);
            return lp;
        });
    }
#endif
    return ex::with_kv_cache(kv, model.cache_geometry(), {1, ctx}, [&](auto& cache) {
        const int vocab = model.vocab_size();
        return evaluate(cache, [&](auto& c, int seq, std::span<const int> inputs,
                                   std::span<const int> targets, long long first) {
            const std::vector<float> logits = model.forward(c, seq, inputs);
            std::vector<double> lp;
            for (long long i = first; i < (long long)inputs.size(); ++i) {
                const std::span<const float> row(&logits[std::size_t(i) * std::size_t(vocab)],
                                                 std::size_t(vocab));
                lp.push_back(ex::log_prob(row, targets[std::size_t(i)]));
            }
            return lp;
        });
    });
}

}  // namespace

int main(int argc, char** argv) { return kvcar::examples::tool_main(argc, argv, run); }
