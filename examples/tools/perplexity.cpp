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
// What a compressed cache costs, beyond the perplexity (which is printed with its standard error,
// PPL · s/√n over the per-token NLL): --kl runs a second, fp16 cache (identity-f16) over the same
// windows and reports the KL divergence of each scored next-token distribution from the fp16
// one — mean, median, p99 and max, as llama.cpp's --kl-divergence does — and how often the
// greedy token agrees. On CUDA both caches' logits then come back to the host.
//
// Output: the results on stdout, diagnostics and progress on stderr; with --json one JSON
// object on stdout instead of the results' lines (which go to stderr).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "kvcar/codec/identity.hpp"
#include "kvcar/kv_cache.hpp"
#include "kvcar/layout/dense.hpp"

#include "examples/models/kv_dispatch.hpp"
#include "examples/models/model.hpp"
#include "examples/models/tensor_ops.hpp"
#include "examples/models/tool_checks.hpp"
#include "examples/models/tool_common.hpp"
#include "examples/models/weights_option.hpp"
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

/// One window's scores: log p(target) of each scored input, and (for --kl) the logits of every
/// input, [len][vocab].
struct window_scores {
    std::vector<double> lp;
    std::vector<float> logits;
};

/// log p(targets[i]) from rows i >= first of `logits` [len][vocab].
std::vector<double> scored_log_probs(const std::vector<float>& logits, std::size_t vocab,
                                     std::span<const int> targets, long long first) {
    std::vector<double> lp;
    for (std::size_t i = std::size_t(first); i < targets.size(); ++i)
        lp.push_back(ex::log_prob(std::span<const float>(&logits[i * vocab], vocab), targets[i]));
    return lp;
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
        {"kl", "", "also run an fp16 cache (identity-f16) over the same windows and report the KL "
                   "divergence of each next-token distribution from it (mean, median, p99, max) "
                   "and how often the greedy token agrees"},
        {"kl-tokens", "N", "with --kl: compare only the windows that start in the first N tokens "
                           "(default: all). The KL needs both caches' full logits on the host; "
                           "past N a window is scored from log-probabilities alone, which the "
                           "GPU computes itself"},
        {"prompt-ids", "IDS", "score these token ids instead of a text (\"1 450 4996\" or a JSON array)"},
        {"ids-file", "FILE", "score the token ids in FILE instead of a text (same forms)"},
        ex::device_option_spec(),
        ex::json_option_spec(),
    });
    for (const ex::option_spec& o : ex::tensor_parallel_option_specs()) specs.push_back(o);
    specs.push_back(ex::weights_option_spec());
    ex::command_line cl("kvcar-perplexity",
                        "Sliding-window perplexity of a model whose KV cache is kvcar's.", specs);
    if (!cl.parse(argc, argv)) return 0;

    // Everything the command line says is checked before the model loads, the text included.
    const std::string model_path = cl.required("model");
    const std::string kv = cl.get("kv", "identity-f16");
    [[maybe_unused]] const bool use_cuda = ex::parse_use_cuda(cl);
    [[maybe_unused]] const ex::tensor_parallel_choice tp = ex::parse_tensor_parallel(cl, use_cuda);
    [[maybe_unused]] const ex::weights_choice weights = ex::parse_weights_option(cl, use_cuda);
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
    long long kl_tokens = 0;
    if (cl.has("kl-tokens")) {
        kvcar::require(cl.has("kl"), tool + ": --kl-tokens needs --kl");
        kl_tokens = cl.get_int("kl-tokens", 0);
        kvcar::require(kl_tokens >= 1, tool + ": --kl-tokens " + cl.get("kl-tokens") +
                                           " must be at least 1");
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
    ex::weights_used weights_used = ex::cpu_weights(model);  // gpu_weights() with --device cuda
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
    // With --kl, base_logits(inputs) gives the fp16 cache's logits [len][vocab] for a window and
    // log_probs, told so by its last argument, also returns the compressed cache's
    // (window_scores::logits); --kl-tokens limits that to the windows that start before it.
    const bool kl = cl.has("kl");
    const std::size_t vocab = std::size_t(model.vocab_size());
    std::function<std::vector<float>(std::span<const int>)> base_logits;
    const auto evaluate = [&](auto& cache, auto&& log_probs) {
        ex::token_stats stats;
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
            const bool window_kl = kl && (kl_tokens == 0 || begin < kl_tokens);
            const window_scores ws = log_probs(cache, seq, inputs, targets, first, window_kl);
            const std::vector<double>& lp = ws.lp;
            peak_bytes = std::max(peak_bytes, cache.bytes_used());
            peak_reserved = std::max(peak_reserved, cache.bytes_reserved());
            cache.remove_sequence(seq);
            fed += len;
            for (const double v : lp) {
                nll -= v;
                stats.nll.push_back(-v);
            }
            if (window_kl) {
                // P: the fp16 cache's distribution after each scored input; Q: this cache's.
                const std::vector<float> base = base_logits(inputs);
                for (long long i = first; i < len; ++i) {
                    const std::span<const float> p(&base[std::size_t(i) * vocab], vocab);
                    const std::span<const float> q(&ws.logits[std::size_t(i) * vocab], vocab);
                    stats.kl.push_back(ex::kl_divergence(p, q));
                    stats.same_top += ex::argmax(p) == ex::argmax(q);
                }
            }
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

        std::fprintf(report, "perplexity: %.4f +/- %.4f (standard error)\n",
                     std::exp(nll / double(scored)), stats.perplexity_stderr());
        std::fprintf(report, "tokens scored: %lld (windows %lld, ctx %d, stride %d)\n", scored, w,
                     ctx, stride);
        std::fprintf(report, "mean nll: %.6f nats/token\n", nll / double(scored));
        if (kl) {
            std::fprintf(report,
                         "KL divergence from the fp16 cache: mean %.6f, median %.6f, p99 %.6f, "
                         "max %.6f nats/token; same greedy token %.2f%% (over %zu of the %lld "
                         "scored tokens)\n",
                         stats.mean_kl(), stats.kl_quantile(0.5), stats.kl_quantile(0.99),
                         stats.kl_quantile(1.0),
                         100.0 * double(stats.same_top) / double(stats.kl.size()),
                         stats.kl.size(), scored);
        }
        std::fprintf(report, "time: %.1f s, %.1f tokens/s fed through the model\n", seconds,
                     double(fed) / seconds);
        ex::print_cache_report(report, kv, cache, peak_bytes, peak_reserved);
        if (json) {
            kvcar::io::json_value r = ex::json_report(tool);
            r.set("text", ex::json_text(source));
            r.set("perplexity", ex::json_number(std::exp(nll / double(scored))));
            r.set("perplexity_stderr", ex::json_number(stats.perplexity_stderr()));
            r.set("mean_nll", ex::json_number(nll / double(scored)));
            if (kl) {
                r.set("kl_mean", ex::json_number(stats.mean_kl()));
                r.set("kl_median", ex::json_number(stats.kl_quantile(0.5)));
                r.set("kl_p99", ex::json_number(stats.kl_quantile(0.99)));
                r.set("kl_max", ex::json_number(stats.kl_quantile(1.0)));
                r.set("same_top_fraction",
                      ex::json_number(double(stats.same_top) / double(stats.kl.size())));
                r.set("kl_tokens", (long long)stats.kl.size());
            }
            r.set("tokens_scored", scored);
            r.set("windows", w);
            r.set("ctx", ctx);
            r.set("stride", stride);
            r.set("seconds", ex::json_number(seconds));
            r.set("weights", ex::weights_json(weights_used));
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
                                       .ranks_share_one_gpu = tp.share_one_gpu,
                                       .weights = ex::resolve_weights(weights, model)});
        weights_used = ex::gpu_weights(weights, model, gpu);
        std::optional<ex::cuda_backend::session> base;
        if (kl) {
            // The same weights as the measured run: the KL is the cache's alone.
            base.emplace(model, "identity-f16",
                         ex::cuda_backend::session_params{.max_sequences = 1,
                                                          .max_tokens = ctx,
                                                          .weights = gpu.weights()});
            base_logits = [&](std::span<const int> inputs) {
                const int s = base->add_sequence();
                std::vector<float> l = base->forward(s, inputs, ex::logits_for::all);
                base->remove_sequence(s);
                return l;
            };
        }
        return evaluate(gpu, [&](auto& session, int seq, std::span<const int> inputs,
                                 std::span<const int> targets, long long first, bool want_logits) {
            window_scores ws;
            if (!want_logits) {
                // Only the log-probabilities come back from the GPU; keep the scored ones.
                ws.lp = session.log_probs(seq, inputs, targets);
                ws.lp.erase(ws.lp.begin(), ws.lp.begin() + first);
                return ws;
            }
            ws.logits = session.forward(seq, inputs, ex::logits_for::all);
            ws.lp = scored_log_probs(ws.logits, vocab, targets, first);
            return ws;
        });
    }
#endif
    // The fp16 baseline of --kl: one more cache, dense identity-f16, as `--kv identity-f16` runs.
    const kvcar::kv_geometry g = model.cache_geometry();
    kvcar::kv_cache<kvcar::identity_codec<kvcar::f16>> base(
        kvcar::dense_layout(g), kvcar::identity_codec<kvcar::f16>{g.head_dim},
        kvcar::contiguous_storage::params{.max_sequences = 1, .max_tokens = kl ? ctx : 1});
    base_logits = [&](std::span<const int> inputs) {
        const int s = base.add_sequence();
        std::vector<float> l = model.forward(base, s, inputs);
        base.remove_sequence(s);
        return l;
    };
    return ex::with_kv_cache(kv, g, {1, ctx}, [&](auto& cache) {
        return evaluate(cache, [&](auto& c, int seq, std::span<const int> inputs,
                                   std::span<const int> targets, long long first,
                                   bool want_logits) {
            window_scores ws;
            std::vector<float> logits = model.forward(c, seq, inputs);
            ws.lp = scored_log_probs(logits, vocab, targets, first);
            if (want_logits) ws.logits = std::move(logits);
            return ws;
        });
    });
}

}  // namespace

int main(int argc, char** argv) { return kvcar::examples::tool_main(argc, argv, run); }
