// kvcar-piqa — zero-shot PIQA accuracy of a model whose KV cache is a kvcar cache.
//
//   kvcar-piqa --model shared/data/models/gpt2-tiny --piqa shared/data/piqa --limit 200
//   kvcar-piqa --model ... --device cuda        the model and its cache on the GPU
//
// Each example is a goal and two solutions. A solution's score is the log-probability the model
// gives its tokens after the goal, i.e. of the continuation in tokenize(goal + " " + sol) past
// tokenize(goal) (lm-evaluation-harness's split). Two accuracies: the solution with the higher
// summed log-probability (`acc`), and with the higher mean log-probability per continuation
// token (`acc_per_token`, which does not favour short solutions).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "kvcar/io/json.hpp"

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

struct piqa_example {
    std::string goal;
    std::string solutions[2];
    int label = 0;  // index of the correct solution
};

std::vector<piqa_example> load_piqa(const std::string& dir) {
    const std::string data_path = dir + "/dev.jsonl";
    const std::string labels_path = dir + "/dev-labels.lst";
    kvcar::examples::check_input_dir("kvcar-piqa", "piqa", dir);
    kvcar::examples::check_input_file("kvcar-piqa", "piqa", data_path);
    kvcar::examples::check_input_file("kvcar-piqa", "piqa", labels_path);
    std::ifstream data(data_path), labels(labels_path);
    kvcar::require(bool(data), "kvcar-piqa: cannot open '" + data_path + "'");
    kvcar::require(bool(labels), "kvcar-piqa: cannot open '" + labels_path + "'");
    std::vector<piqa_example> out;
    std::string line, label;
    int line_no = 0;
    while (std::getline(data, line)) {
        ++line_no;
        if (line.empty()) continue;
        const std::string where = data_path + " line " + std::to_string(line_no);
        const kvcar::io::json_value j = kvcar::io::parse_json(line, where);
        piqa_example e;
        e.goal = j.at("goal").as_string();
        e.solutions[0] = j.at("sol1").as_string();
        e.solutions[1] = j.at("sol2").as_string();
        kvcar::require(bool(std::getline(labels, label)),
                       "kvcar-piqa: " + labels_path + " has fewer labels than " + data_path +
                           " has examples (" + std::to_string(out.size() + 1) + "+)");
        kvcar::require(label == "0" || label == "1", "kvcar-piqa: " + labels_path + " line " +
                                                         std::to_string(out.size() + 1) +
                                                         " is '" + label + "', not 0 or 1");
        e.label = label == "1" ? 1 : 0;
        out.push_back(std::move(e));
    }
    kvcar::require(!out.empty(), "kvcar-piqa: " + data_path + " holds no examples");
    return out;
}

int run(int argc, char** argv) {
    std::vector<ex::option_spec> specs = ex::model_options_spec("identity-f16");
    specs.insert(specs.end(), {
        {"piqa", "DIR", "folder with dev.jsonl and dev-labels.lst (default: DATA/piqa, DATA = "
                        "the --data folder)"},
        {"limit", "N", "evaluate only the first N examples (default: all 1838)"},
        {"quiet", "", "no progress line"},
        ex::device_option_spec(),
        ex::weights_option_spec(),
        ex::json_option_spec(),
    });
    ex::command_line cl("kvcar-piqa", "Zero-shot PIQA accuracy of a model whose KV cache is kvcar's.",
                        specs);
    if (!cl.parse(argc, argv)) return 0;

    // Everything the command line says, the data included, is checked before the model loads.
    const std::string model_path = cl.required("model");
    const std::string kv = cl.get("kv", "identity-f16");
    [[maybe_unused]] const bool use_cuda = ex::parse_use_cuda(cl);
    [[maybe_unused]] const ex::weights_choice weights = ex::parse_weights_option(cl, use_cuda);
    const bool json = cl.has("json");
    std::FILE* report = json ? stderr : stdout;
    long long limit = 0;
    if (cl.has("limit")) {
        limit = cl.get_int("limit", 0);
        kvcar::require(limit > 0, "kvcar-piqa: --limit " + cl.get("limit") + " must be positive");
    }
    std::vector<piqa_example> examples = load_piqa(cl.get("piqa", ex::shared_data_dir() + "/piqa"));
    if (limit > 0 && examples.size() > std::size_t(limit)) examples.resize(std::size_t(limit));
    const ex::language_model model = ex::language_model::load(model_path, ex::parse_model_options(cl));
    ex::weights_used weights_used = ex::cpu_weights(model);  // gpu_weights() with --device cuda
    ex::check_kv_option("kvcar-piqa", kv, model);
    const ex::text_tokenizer tokenizer = ex::text_tokenizer::for_model(model, cl);
    std::fprintf(stderr, "model: %s (%s)\n", model.path().c_str(), model.describe().c_str());

    const int context = model.max_positions();
    ex::progress_line progress(!cl.has("quiet"));
    // The example loop, for a CPU cache or the CUDA session alike. log_probs(cache, seq, inputs,
    // targets) runs `inputs` through the model as the fresh sequence `seq` and returns
    // log p(targets[i] | inputs[0..i]) for every i.
    const auto evaluate = [&](auto& cache, auto&& log_probs) {
        int correct_sum = 0, correct_mean = 0, truncated = 0;
        long long tokens_fed = 0;
        std::size_t peak_bytes = 0, peak_reserved = 0;
        const auto start = ex::clock_type::now();
        for (std::size_t e = 0; e < examples.size(); ++e) {
            const piqa_example& ex_ = examples[e];
            const std::vector<int> goal_ids = tokenizer.encode(ex_.goal);
            double sum[2], mean[2];
            for (int s = 0; s < 2; ++s) {
                std::vector<int> ids =
                    tokenizer.encode(ex_.goal + " " + ex_.solutions[s]);
                // The continuation: tokens past the goal's own tokenization (at least one).
                std::size_t first = std::min(goal_ids.size(), ids.size() - 1);
                // Too long for the context: drop the oldest goal tokens, keep the continuation.
                if (ids.size() > std::size_t(context)) {
                    const std::size_t drop = ids.size() - std::size_t(context);
                    ++truncated;
                    ids.erase(ids.begin(), ids.begin() + std::ptrdiff_t(drop));
                    first = first > drop ? first - drop : 1;
                }
                first = std::max<std::size_t>(first, 1);
                // Input i predicts token i + 1: inputs up to the last but one, targets from 1.
                const std::span<const int> inputs(ids.data(), ids.size() - 1);
                const std::span<const int> targets(ids.data() + 1, ids.size() - 1);
                const int seq = cache.add_sequence();
                const std::vector<double> lp = log_probs(cache, seq, inputs, targets);
                peak_bytes = std::max(peak_bytes, cache.bytes_used());
                peak_reserved = std::max(peak_reserved, cache.bytes_reserved());
                cache.remove_sequence(seq);
                tokens_fed += (long long)inputs.size();

                double total = 0.0;
                for (std::size_t t = first; t < ids.size(); ++t) total += lp[t - 1];
                sum[s] = total;
                mean[s] = total / double(ids.size() - first);
            }
            // Ties go to solution 0, as argmax does in lm-evaluation-harness.
            correct_sum += int((sum[1] > sum[0] ? 1 : 0) == ex_.label);
            correct_mean += int((mean[1] > mean[0] ? 1 : 0) == ex_.label);

            char line[200];
            const double done = double(e + 1);
            std::snprintf(line, sizeof line,
                          "example %zu/%zu  acc %.4f  acc_per_token %.4f  %.0f tokens/s", e + 1,
                          examples.size(), correct_sum / done, correct_mean / done,
                          double(tokens_fed) / ex::seconds_since(start));
            progress.update(line, e + 1 == examples.size());
        }
        progress.finish();
        const double n = double(examples.size());
        const double seconds = ex::seconds_since(start);
        std::fprintf(report, "piqa examples: %zu%s\n", examples.size(),
                     truncated ? (" (" + std::to_string(truncated) +
                                  " sequences cut to the context)").c_str()
                               : "");
        std::fprintf(report, "acc (summed log-prob):        %.4f  (%d/%zu)\n", correct_sum / n,
                     correct_sum, examples.size());
        std::fprintf(report, "acc_per_token (mean log-prob): %.4f  (%d/%zu)\n",
                     correct_mean / n, correct_mean, examples.size());
        std::fprintf(report, "time: %.1f s, %.1f tokens/s fed through the model\n", seconds,
                     double(tokens_fed) / seconds);
        ex::print_cache_report(report, kv, cache, peak_bytes, peak_reserved);
        if (json) {
            kvcar::io::json_value r = ex::json_report("kvcar-piqa");
            r.set("examples", examples.size());
            r.set("truncated_sequences", truncated);
            r.set("acc", ex::json_number(correct_sum / n));
            r.set("correct", correct_sum);
            r.set("acc_per_token", ex::json_number(correct_mean / n));
            r.set("correct_per_token", correct_mean);
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
                                       .max_tokens = context,
                                       .weights = ex::resolve_weights(weights, model)});
        weights_used = ex::gpu_weights(weights, model, gpu);
        // Only the log-probabilities come back from the GPU, not the logits.
        return evaluate(gpu, [](ex::cuda_backend::session& session, int seq,
                                std::span<const int> inputs, std::span<const int> targets) {
            return session.log_probs(seq, inputs, targets);
        });
    }
#endif
    const int vocab = model.vocab_size();
    return ex::with_kv_cache(kv, model.cache_geometry(), {1, context}, [&](auto& cache) {
        return evaluate(cache, [&](auto& c, int seq, std::span<const int> inputs,
                                   std::span<const int> targets) {
            const std::vector<float> logits = model.forward(c, seq, inputs);
            std::vector<double> lp(inputs.size());
            for (std::size_t i = 0; i < inputs.size(); ++i)
                lp[i] = ex::log_prob(std::span<const float>(&logits[i * std::size_t(vocab)],
                                                            std::size_t(vocab)),
                                     targets[i]);
            return lp;
        });
    });
}

}  // namespace

int main(int argc, char** argv) { return kvcar::examples::tool_main(argc, argv, run); }
