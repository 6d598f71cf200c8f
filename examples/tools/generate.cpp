// kvcar-generate — continue a prompt with a GPT-2 or Llama checkpoint whose KV cache is a kvcar
// cache, and report what the cache cost.
//
//   kvcar-generate --model models/gpt2-tiny --prompt "The history of" --steps 40   (demo model)
//   kvcar-generate --model shared/data/models/gpt2-tiny --prompt "The history of" --device cuda
//   kvcar-generate --model aidreams260K.bin --tokenizer aidreams_tok512.bin --prompt ""
//   kvcar-generate --model M --prompt P --device cuda --tensor-parallel 2 --batch 32 --temperature 0
//
// The prompt is prefilled in one forward pass, then each new token is one decode step (the
// model's forward on one token, attending to everything cached so far). --device cuda runs the
// same model on the GPU (examples/models/cuda) with a device cache of the same codec;
// --tensor-parallel N splits it over N GPUs by heads, each GPU caching its share of the KV heads.
// --batch B runs B copies of the prompt as one batch (every decode step is one forward pass for
// all B sequences) and prints the first; the tokens/s line counts all of them. Before the batch
// is allocated, its memory is estimated (KV cache at full length, logits) and refused past
// --max-memory, with the estimate in the message.
//
// Output: the text on stdout, the timings and the cache report on stderr; with --json the text
// streams to stderr and stdout gets one JSON object (the text, the timings, the cache).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <random>
#include <span>
#include <string>
#include <vector>

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

/// The next token: argmax when temperature is 0, else a draw from softmax(logits / T)
/// restricted to the top_k most likely tokens (top_k 0: all of them).
int sample(std::span<const float> logits, double temperature, int top_k, std::mt19937_64& rng) {
    const int vocab = int(logits.size());
    if (temperature <= 0.0) return ex::argmax(logits);
    std::vector<int> ids(static_cast<std::size_t>(vocab));
    for (int i = 0; i < vocab; ++i) ids[std::size_t(i)] = i;
    const int k = top_k > 0 ? std::min(top_k, vocab) : vocab;
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                      [&](int a, int b) { return logits[std::size_t(a)] > logits[std::size_t(b)]; });
    std::vector<double> weights(static_cast<std::size_t>(k));
    const double top = logits[std::size_t(ids[0])];
    for (int i = 0; i < k; ++i)
        weights[std::size_t(i)] = std::exp((double(logits[std::size_t(ids[std::size_t(i)])]) - top) / temperature);
    std::discrete_distribution<int> pick(weights.begin(), weights.end());
    return ids[std::size_t(pick(rng))];
}

int run(int argc, char** argv) {
    std::vector<ex::option_spec> specs = ex::model_options_spec("identity-f16");
    specs.insert(specs.end(), {
        ex::device_option_spec(),
        {"prompt", "TEXT", "text to continue (required unless --prompt-ids or --ids-file gives ids; "
                           "llama2.c models: may be empty, starting from BOS)"},
        {"prompt-ids", "IDS", "the prompt as token ids instead: \"1 450 4996\", \"1,450\" or "
                              "\"[1, 450]\" (no BOS is added)"},
        {"ids-file", "FILE", "the prompt as token ids read from FILE (same forms)"},
        {"print-ids", "", "print the ids (prompt, then generated) on stdout as a JSON array; "
                          "the text goes to stderr"},
        {"steps", "N", "tokens to generate (default 64; stops early at end of text or context)"},
        {"ignore-eos", "", "generate all --steps tokens even past an end-of-text id (for timing, "
                           "as llama.cpp's --ignore-eos)"},
        {"temperature", "T", "sampling temperature; 0 = greedy (default 0.8)"},
        {"top-k", "K", "sample among the K most likely tokens; 0 = all (default 40)"},
        {"seed", "S", "random seed (default 42)"},
        {"batch", "B", "generate B sequences of the prompt together; prints the first (default 1)"},
        {"max-memory", "GIB", "refuse a run whose estimated memory (KV cache at full length, "
                              "logits) exceeds GIB gibibytes (default 8)"},
        ex::json_option_spec(),
    });
    for (const ex::option_spec& o : ex::tensor_parallel_option_specs()) specs.push_back(o);
    specs.push_back(ex::weights_option_spec());
    specs.push_back(ex::no_graphs_option_spec());
    ex::command_line cl("kvcar-generate", "Generate text with a model whose KV cache is kvcar's.",
                        specs);
    if (!cl.parse(argc, argv)) return 0;

    const std::string tool = "kvcar-generate";
    // Everything the command line says is checked before the model loads.
    const std::string model_path = cl.required("model");
    kvcar::require(cl.has("prompt") || cl.has("prompt-ids") || cl.has("ids-file"),
                   tool + ": --prompt is required (or the prompt as --prompt-ids / --ids-file)");
    const std::string kv = cl.get("kv", "identity-f16");
    const long long steps_arg = cl.get_int("steps", 64);
    const double temperature = cl.get_double_at_least("temperature", 0.8, 0.0);
    const long long top_k_arg = cl.get_int("top-k", 40);
    kvcar::require(steps_arg >= 0 && steps_arg <= 1000000,
                   tool + ": --steps " + cl.get("steps") + " must be in [0, 1000000]");
    kvcar::require(top_k_arg >= 0 && top_k_arg <= 1000000000,
                   tool + ": --top-k " + cl.get("top-k") + " must be in [0, 1e9] (0 = all)");
    const int steps = int(steps_arg), top_k = int(top_k_arg);
    std::mt19937_64 rng(std::uint64_t(cl.get_int("seed", 42)));
    const long long batch_arg = cl.get_int("batch", 1);
    kvcar::require(batch_arg >= 1 && batch_arg <= 1000000000,
                   tool + ": --batch " + cl.get("batch") + " must be at least 1");
    const int batch = int(batch_arg);
    const double max_memory_gib = cl.get_double_at_least("max-memory", 8.0, 0.0);
    const bool json = cl.has("json");
    const bool ignore_eos = cl.has("ignore-eos");
    // With --json or --print-ids, stdout is for the machine-readable output.
    std::FILE* text_out = json || cl.has("print-ids") ? stderr : stdout;
    [[maybe_unused]] const bool use_cuda = ex::parse_use_cuda(cl);
    [[maybe_unused]] const ex::tensor_parallel_choice tp = ex::parse_tensor_parallel(cl, use_cuda);
    [[maybe_unused]] const ex::weights_choice weights = ex::parse_weights_option(cl, use_cuda);

    const auto load_start = ex::clock_type::now();
    const ex::language_model model =
        ex::language_model::load(model_path, ex::parse_model_options(cl));
    ex::weights_used weights_used = ex::cpu_weights(model);  // gpu_weights() with --device cuda
    ex::check_kv_option(tool, kv, model);
    const ex::text_tokenizer tokenizer = ex::text_tokenizer::for_model(model, cl);
    std::fprintf(stderr, "model: %s (%s), loaded in %.2f s\n", model.path().c_str(),
                 model.describe().c_str(), ex::seconds_since(load_start));
    std::fprintf(stderr, "tokenizer: %s\n", tokenizer.describe().c_str());

    const std::vector<int> prompt_ids = ex::prompt_from_options(cl, tokenizer, model.vocab_size());
    kvcar::require(!prompt_ids.empty(), "kvcar-generate: the prompt is empty");
    kvcar::require(int(prompt_ids.size()) <= model.max_positions(),
                   "kvcar-generate: the prompt has " + std::to_string(prompt_ids.size()) +
                       " tokens, more than the model's context of " +
                       std::to_string(model.max_positions()));
    const int capacity = std::min<long long>(model.max_positions(),
                                             (long long)prompt_ids.size() + steps);
    ex::check_generate_memory(tool, batch, capacity,
                              ex::estimate_generate_memory(batch, capacity,
                                                           ex::kv_bytes_per_token(kv, model),
                                                           model.vocab_size()),
                              max_memory_gib * double(1ull << 30));

    // The generation loop, for a CPU cache (model.forward) or the CUDA session alike: `cache`
    // gives add_sequence/length and the report; `forward(cache, seqs, counts, tokens)` runs item
    // b's counts[b] tokens through sequence seqs[b] and returns each item's last logits.
    const auto generate = [&](auto& cache, auto&& forward) {
        std::vector<int> seqs;
        for (int b = 0; b < batch; ++b) seqs.push_back(cache.add_sequence());
        std::vector<std::vector<int>> ids(std::size_t(batch), prompt_ids);
        int prev = -1;
        std::string prompt_text, generated_text;
        for (int id : prompt_ids) {
            prompt_text += tokenizer.piece(prev, id);
            prev = id;
        }
        std::fputs(prompt_text.c_str(), text_out);
        std::fflush(text_out);

        // Prefill: every copy of the prompt in one pass.
        std::vector<int> counts(std::size_t(batch), int(prompt_ids.size()));
        std::vector<int> tokens;
        for (const std::vector<int>& seq_ids : ids) tokens.insert(tokens.end(), seq_ids.begin(), seq_ids.end());
        const auto prefill_start = ex::clock_type::now();
        std::vector<float> logits = forward(cache, seqs, counts, tokens);
        const double prefill_s = ex::seconds_since(prefill_start);

        // Decode: one token per sequence per pass. Sequence 0 is printed and decides when to stop.
        const std::size_t vocab = logits.size() / std::size_t(batch);
        std::fill(counts.begin(), counts.end(), 1);
        const auto decode_start = ex::clock_type::now();
        int generated = 0;
        const char* stop = "steps done";
        while (generated < steps) {
            for (int b = 0; b < batch; ++b) {
                tokens[std::size_t(b)] = sample(
                    std::span<const float>(logits).subspan(std::size_t(b) * vocab, vocab),
                    temperature, top_k, rng);
            }
            const int next = tokens[0];
            if (!ignore_eos && tokenizer.ends_text(next)) {
                stop = "end of text";
                break;
            }
            for (int b = 0; b < batch; ++b) ids[std::size_t(b)].push_back(tokens[std::size_t(b)]);
            ++generated;
            const std::string piece = tokenizer.piece(prev, next);
            generated_text += piece;
            std::fputs(piece.c_str(), text_out);
            std::fflush(text_out);
            prev = next;
            if (generated == steps) break;
            if (cache.length(seqs[0]) >= capacity) {
                stop = "context full";
                break;
            }
            logits = forward(cache, seqs, counts, std::span<const int>(tokens.data(), std::size_t(batch)));
        }
        const double decode_s = ex::seconds_since(decode_start);
        std::fprintf(text_out, "\n");
        if (cl.has("print-ids")) std::printf("%s\n", ex::format_token_ids(ids[0]).c_str());

        const double prompt_tokens = double(prompt_ids.size()) * batch;
        std::fprintf(stderr, "\nprompt: %zu tokens x %d sequences, prefill %.3f s (%.1f tokens/s)\n",
                     prompt_ids.size(), batch, prefill_s, prompt_tokens / prefill_s);
        std::fprintf(stderr, "generated: %d tokens x %d sequences (%s), %.3f s (%.1f tokens/s)\n",
                     generated, batch, stop, decode_s,
                     decode_s > 0 ? double(generated) * batch / decode_s : 0.0);
        ex::print_cache_report(stderr, kv, cache, cache.bytes_used(), cache.bytes_reserved());
        if (json) {
            kvcar::io::json_value r = ex::json_report(tool);
            r.set("prompt", ex::json_text(prompt_text));
            r.set("text", ex::json_text(generated_text));
            r.set("prompt_tokens", prompt_ids.size());
            r.set("generated_tokens", generated);
            r.set("batch", batch);
            r.set("stop", stop);
            r.set("prefill_seconds", ex::json_number(prefill_s));
            r.set("decode_seconds", ex::json_number(decode_s));
            r.set("decode_tokens_per_second",
                  ex::json_number(decode_s > 0 ? double(generated) * batch / decode_s : NAN));
            r.set("weights", ex::weights_json(weights_used));
            ex::add_cache_json(r, kv, cache, cache.bytes_used(), cache.bytes_reserved());
            ex::print_json_report(r);
        }
        return 0;
    };

#ifdef KVCAR_WITH_CUDA
    if (use_cuda) {
        std::fprintf(stderr, "device: %s\n", ex::cuda_backend::device_description().c_str());
        ex::cuda_backend::session gpu(model, kv,
                                      {.max_sequences = batch,
                                       .max_tokens = capacity,
                                       .tensor_parallel = tp.ranks,
                                       .ranks_share_one_gpu = tp.share_one_gpu,
                                       .weights = ex::resolve_weights(weights, model),
                                       .decode_graphs = !cl.has("no-graphs")});
        weights_used = ex::gpu_weights(weights, model, gpu);
        if (tp.ranks > 0) {
            std::fprintf(stderr, "tensor parallel: %d ranks (%s), KV bytes below are per GPU\n",
                         gpu.ranks(),
                         tp.share_one_gpu ? "all on this GPU, in-process sum"
                                          : ex::cuda_backend::nccl_description().c_str());
        }
        return generate(gpu, [](auto& session, std::span<const int> seqs,
                                std::span<const int> counts, std::span<const int> tokens) {
            return session.forward(seqs, counts, tokens, ex::logits_for::last);
        });
    }
#endif
    return ex::with_kv_cache(kv, model.cache_geometry(), {batch, capacity}, [&](auto& cache) {
        return generate(cache, [&](auto& c, std::span<const int> seqs, std::span<const int> counts,
                                   std::span<const int> tokens) {
            // The CPU model runs one sequence at a time; the logits rows line up with the items.
            std::vector<float> all;
            std::size_t offset = 0;
            for (std::size_t b = 0; b < seqs.size(); ++b) {
                const std::vector<float> row = model.forward(
                    c, seqs[b], tokens.subspan(offset, std::size_t(counts[b])), ex::logits_for::last);
                all.insert(all.end(), row.begin(), row.end());
                offset += std::size_t(counts[b]);
            }
            return all;
        });
    });
}

}  // namespace

int main(int argc, char** argv) { return kvcar::examples::tool_main(argc, argv, run); }
