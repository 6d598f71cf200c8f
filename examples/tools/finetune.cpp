// kvcar-finetune — stage 2 of the KV-CAR paper's Algorithm 1: every autoencoder of a codec file
// inserted into the frozen model and fine-tuned jointly with the language-model loss.
//
//   kvcar-calibrate --model M --codec autoencoder --group layer --ratio 0.5 --out ae.kvc
//   kvcar-finetune  --model M --codec-file ae.kvc --out ae-ft.kvc --time-limit 600
//   kvcar-perplexity --model M --kv file:ae-ft.kvc
//
// Models: GPT-2 (examples/models/gpt2/gpt2_train.hpp) and Llama
// (examples/models/llama/llama_train.hpp; the keys seen by the codecs are the ones --keys
// caches, as in kvcar-perplexity). Codec files may reuse K/V groups between layers
// (kvcar-calibrate --reuse-*, the paper's Algorithm 2): a reused group reads the slot it reuses,
// so that slot's autoencoder is trained for both layers.
//
// Loss per window (examples/models/kv_train.hpp): mean next-token cross-entropy of the model
// whose attention reads K/V through the codecs, plus --l1 × Σ over autoencoder slots of
// mean |x̂ − x| (the paper's "scaled L1"). Only the autoencoders' weights change, in their folded
// form (BatchNorm merged into the FC before it): that is the network inference runs, so
// training it directly is equivalent at inference and the file is rewritten without loss.
// Every other slot (identity, linear, reuse) is kept as it is and differentiated through.
//
// Data: the text (default WikiText-2 validation, read as it is) is tokenized once and cut into
// non-overlapping windows of --ctx + 1 tokens (ctx inputs, each predicting the next). The last
// --eval-windows windows are held out: their mean CE is reported for the uncompressed model,
// for the codecs before training, and after (and every --eval-every steps, keeping the best
// weights). The rest are visited in a seeded random order, --batch windows per Adam step.
//
// Nothing is lost: the paths are checked before any work; --save-every N writes the weights to
// --out every N steps; SIGINT (Ctrl-C) or SIGTERM stops after the current step, saves the
// weights reached so far to --out and exits with 128 + the signal (130 for Ctrl-C).
//
// Train at the context length the cache will serve: on gpt2-tiny, autoencoders fine-tuned on
// 128-token windows improved perplexity at ctx 128 and 256 but worsened it at ctx 512
// (docs/results/stage2.md).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "kvcar/calib/adam.hpp"
#include "kvcar/codec/any.hpp"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/parallel.hpp"

#include "examples/models/gpt2/gpt2_train.hpp"
#include "examples/models/llama/llama_train.hpp"
#include "examples/models/model.hpp"
#include "examples/models/tool_checks.hpp"
#include "examples/models/tool_common.hpp"
#include "examples/models/tool_json.hpp"

namespace ex = kvcar::examples;
namespace io = kvcar::io;
using kvcar::require;

namespace {

const std::string tool = "kvcar-finetune";

/// A window: inputs ids[begin, begin + ctx), targets ids[begin + 1, begin + ctx + 1).
struct window {
    std::size_t begin = 0;
};

/// Seeded Fisher–Yates with unbiased draws (std::shuffle's draws are library-specific).
void shuffle(std::vector<window>& v, std::mt19937_64& rng) {
    for (std::size_t i = v.size(); i > 1; --i) {
        const std::uint64_t n = i, limit = (0 - n) % n;
        std::uint64_t r = rng();
        while (r < limit) r = rng();
        std::swap(v[i - 1], v[std::size_t(r % n)]);
    }
}

/// The stage-2 trainer of whichever model was loaded (both have the same interface).
class kv_trainer {
public:
    kv_trainer(const ex::language_model& model, const io::codec_set& set,
               const ex::kv_finetune_params& params)
        : impl_(make(model, set, params)) {}

    ex::kv_finetune_loss loss(std::span<const int> inputs, std::span<const int> targets,
                              ex::ae_gradients<float>* gradient = nullptr, float scale = 1.0f) {
        return std::visit([&](auto& t) { return t.loss(inputs, targets, gradient, scale); }, impl_);
    }
    std::vector<ex::folded_ae_weights<float>>& autoencoders() {
        return std::visit([](auto& t) -> auto& { return t.autoencoders(); }, impl_);
    }
    ex::ae_gradients<float> zero_gradient() const {
        return std::visit([](const auto& t) { return t.zero_gradient(); }, impl_);
    }
    io::codec_set trained_codec_set() const {
        return std::visit([](const auto& t) { return t.trained_codec_set(); }, impl_);
    }

private:
    using variant = std::variant<ex::gpt2_kv_trainer<float>, ex::llama_kv_trainer<float>>;
    static variant make(const ex::language_model& model, const io::codec_set& set,
                        const ex::kv_finetune_params& params) {
        if (const ex::gpt2_model* g = model.as_gpt2())
            return variant(std::in_place_index<0>, *g, set, params);
        if (const ex::llama_model* l = model.as_llama())
            return variant(std::in_place_index<1>, *l, set, params);
        throw kvcar::error(tool + ": " + model.path() + " is a " + model.architecture() +
                           " model; fine-tuning supports GPT-2 and Llama");
    }
    variant impl_;
};

int run(int argc, char** argv) {
    std::vector<ex::option_spec> specs = ex::codec_fitting_options_spec();
    specs.push_back({"codec-file", "PATH", "stage-1 codec file with autoencoder slots (required)"});
    specs.push_back(
        {"out", "PATH", "codec file to write, the fine-tuned autoencoders in place (required)"});
    for (const ex::option_spec& s : ex::text_options_spec("training text", "default: all"))
        specs.push_back(s);
    specs.insert(specs.end(), {
        {"ctx", "N", "window length in tokens (default 128); train at the context the cache will "
                     "serve: autoencoders tuned on short windows can hurt later positions "
                     "(docs/results/stage2.md)"},
        {"steps", "N", "Adam steps (default 1000)"},
        {"time-limit", "SECONDS", "stop after this much wall time (default 0: no limit)"},
        {"batch", "N", "windows per step, gradients averaged (default 1)"},
        {"lr", "X", "Adam step size (default 1e-4)"},
        {"l1", "X", "weight of the reconstruction term Σ_slots mean |x̂ − x| (default 0.1)"},
        {"clip", "X", "clip the gradient's norm to X (default 1; 0 = no clipping)"},
        {"eval-windows", "N", "windows held out at the text's end for evaluation (default 8)"},
        {"eval-every", "N", "evaluate every N steps and save the best weights (default 0: only "
                            "before and after; the final weights are saved)"},
        {"log-every", "N", "print the mean training loss every N steps (default 50)"},
        {"save-every", "N", "write the current weights to --out every N steps (default 0: only "
                            "at the end, or when SIGINT/SIGTERM stops the run)"},
        {"seed", "N", "window order seed (default 0)"},
        {"quiet", "", "no progress line"},
        ex::json_option_spec(),
    });
    ex::command_line cl(tool,
                        "Fine-tunes a codec file's autoencoders jointly through the frozen model "
                        "with the language-model loss (KV-CAR stage 2).",
                        specs);
    if (!cl.parse(argc, argv)) return 0;

    // Everything the command line says is checked before the model loads.
    const std::string model_path = cl.required("model");
    const std::string in_path = cl.required("codec-file");
    ex::check_input_file(tool, "codec-file", in_path);
    const std::string out_path = cl.required("out");
    ex::check_output_file(tool, "out", out_path);
    (void)ex::text_option_path(cl);
    const bool json = cl.has("json");
    std::FILE* report = json ? stderr : stdout;
    const int ctx = int(cl.get_int_at_least("ctx", 128, 2));
    const long long steps = cl.get_int_at_least("steps", 1000, 0);
    const double time_limit = cl.get_double_at_least("time-limit", 0.0, 0.0);
    const int batch = int(cl.get_int_at_least("batch", 1, 1));
    const double lr = cl.get_double("lr", 1e-4);
    const double l1 = cl.get_double_at_least("l1", 0.1, 0.0);
    const double clip = cl.get_double_at_least("clip", 1.0, 0.0);
    const long long save_every = cl.get_int_at_least("save-every", 0, 0);
    const int eval_windows = int(cl.get_int_at_least("eval-windows", 8, 0));
    const long long eval_every = cl.get_int_at_least("eval-every", 0, 0);
    const long long log_every = cl.get_int_at_least("log-every", 50, 1);
    const long long seed = cl.get_int_at_least("seed", 0, 0);
    const long long max_tokens = cl.get_int_at_least("max-tokens", 0, 0);
    require(std::isfinite(lr) && lr > 0,
            tool + ": --lr '" + cl.get("lr", "1e-4") + "' must be a finite number > 0");
    require(!(eval_every > 0 && eval_windows == 0),
            tool + ": --eval-every needs --eval-windows > 0");

    const ex::language_model model =
        ex::language_model::load(model_path, ex::parse_model_options(cl));
    require(ctx <= model.max_positions(), tool + ": --ctx " + std::to_string(ctx) +
                                              " exceeds the model's context of " +
                                              std::to_string(model.max_positions()));
    const io::codec_set set = io::load_codec_set(in_path, model.cache_geometry());
    const int threads = ex::resolve_threads(int(cl.get_int("threads", 0)));
    const ex::kv_finetune_params params{.l1_weight = float(l1), .threads = threads};
    // The codecs must see the keys they were fitted to.
    ex::check_codec_file_keys(tool, in_path, set, model);
    kv_trainer trainer(model, set, params);
    require(!trainer.autoencoders().empty(),
            tool + ": " + in_path + " has no autoencoder slot; nothing to fine-tune (identity "
                   "and linear slots are kept fixed; for an identity file with reused heads, "
                   "kvcar-calibrate --codec autoencoder --ratio 1.0 gives the same bytes with "
                   "trainable slots)");

    // --- data ---
    const ex::text_tokenizer tokenizer = ex::text_tokenizer::for_model(model, cl);
    ex::tokenized_text text = ex::read_text_option(cl, tokenizer);
    const std::string& text_path = text.path;
    std::vector<int>& ids = text.ids;
    const std::size_t total_tokens = ids.size();
    if (max_tokens > 0 && ids.size() > std::size_t(max_tokens)) ids.resize(std::size_t(max_tokens));
    std::vector<window> windows;
    for (std::size_t b = 0; b + std::size_t(ctx) + 1 <= ids.size(); b += std::size_t(ctx))
        windows.push_back({b});
    require(windows.size() > std::size_t(eval_windows),
            tool + ": " + text_path + " gives " + std::to_string(windows.size()) +
                " windows of " + std::to_string(ctx + 1) + " tokens; need more than --eval-windows " +
                std::to_string(eval_windows));
    const std::vector<window> eval(windows.end() - eval_windows, windows.end());
    std::vector<window> train(windows.begin(), windows.end() - eval_windows);

    std::size_t n_ae_params = 0;
    for (const auto& a : trainer.autoencoders()) n_ae_params += a.parameter_count();
    std::fprintf(stderr, "model: %s (%s)\n", model.path().c_str(), model.describe().c_str());
    std::fprintf(stderr, "codecs: %s, %zu autoencoder slots (%zu parameters), %.2fx vs fp16\n",
                 in_path.c_str(), trainer.autoencoders().size(), n_ae_params,
                 set.compression_ratio());
    std::fprintf(stderr, "text: %s, %zu tokens, using %zu: %zu training windows of %d, %d held "
                         "out\n",
                 text_path.c_str(), total_tokens, ids.size(), train.size(), ctx, eval_windows);
    std::fprintf(stderr, "training: steps %lld, time limit %.0f s, batch %d, lr %g, l1 %g, clip "
                         "%g, threads %d, seed %lld\n",
                 steps, time_limit, batch, lr, l1, clip, threads, seed);

    const auto span_of = [&](const window& w, int offset) {
        return std::span<const int>(&ids[w.begin + std::size_t(offset)], std::size_t(ctx));
    };
    const auto evaluate = [&](kv_trainer& t) {
        ex::kv_finetune_loss sum;
        for (const window& w : eval) {
            const ex::kv_finetune_loss l = t.loss(span_of(w, 0), span_of(w, 1));
            sum.total += l.total;
            sum.ce += l.ce;
            sum.l1 += l.l1;
        }
        const double n = double(std::max<std::size_t>(1, eval.size()));
        return ex::kv_finetune_loss{sum.total / n, sum.ce / n, sum.l1 / n};
    };

    double exact_ce = NAN, ce_before = NAN, best_ce = NAN;
    long long best_step = 0;
    if (!eval.empty()) {
        kv_trainer exact(
            model,
            io::codec_set::identity(model.cache_geometry(), set.heads_per_group,
                                    kvcar::latent_storage::f32),
            params);
        exact_ce = evaluate(exact).ce;
        const ex::kv_finetune_loss before = evaluate(trainer);
        ce_before = best_ce = before.ce;
        std::fprintf(report, "held-out CE: exact model %.4f (ppl %.2f); codecs before fine-tuning "
                             "%.4f (ppl %.2f), l1 %.4f\n",
                     exact_ce, std::exp(exact_ce), before.ce, std::exp(before.ce), before.l1);
        std::fflush(report);
    }
    std::vector<ex::folded_ae_weights<float>> best = trainer.autoencoders();

    // --- training ---
    kvcar::calib::adam<float> adam = ex::ae_adam(trainer.autoencoders(), float(lr), float(clip));
    std::mt19937_64 rng{static_cast<std::uint64_t>(seed)};
    shuffle(train, rng);
    std::size_t next = 0;
    ex::progress_line progress(!cl.has("quiet"));
    const auto start = ex::clock_type::now();
    double log_total = 0, log_ce = 0, log_l1 = 0, log_norm = 0;
    long long log_count = 0, step = 0;
    bool diverged = false;
    // The weights as a codec file at --out, with how they were made in the notes.
    const auto save = [&](long long saved_step, long long steps_run, const std::string& extra) {
        io::codec_set out = trainer.trained_codec_set();
        out.calibration.notes +=
            (out.calibration.notes.empty() ? "" : "; ") + std::string("kvcar-finetune: ") +
            "text=" + std::filesystem::path(text_path).filename().string() +
            " ctx=" + std::to_string(ctx) + " steps=" + std::to_string(saved_step) + "/" +
            std::to_string(steps_run) + " batch=" + std::to_string(batch) + " lr=" +
            cl.get("lr", "1e-4") + " l1=" + cl.get("l1", "0.1") + " clip=" + cl.get("clip", "1") +
            " seed=" + std::to_string(seed) + extra;
        io::save_codec_set(out, out_path);
    };
    // From here on SIGINT/SIGTERM stop the loop after the current step; the weights are saved.
    ex::install_interrupt_flag();
    int signal_seen = 0;
    for (; step < steps; ++step) {
        if ((signal_seen = ex::interrupt_signal()) != 0) break;
        const double elapsed = ex::seconds_since(start);
        // Stop before a step that would likely overrun the limit.
        if (time_limit > 0 && step > 0 && elapsed * double(step + 1) / double(step) > time_limit)
            break;
        ex::ae_gradients<float> grad = trainer.zero_gradient();
        ex::kv_finetune_loss step_loss;
        for (int b = 0; b < batch; ++b) {
            if (next == train.size()) {
                shuffle(train, rng);
                next = 0;
            }
            const window& w = train[next++];
            const ex::kv_finetune_loss l =
                trainer.loss(span_of(w, 0), span_of(w, 1), &grad, 1.0f / float(batch));
            step_loss.total += l.total / batch;
            step_loss.ce += l.ce / batch;
            step_loss.l1 += l.l1 / batch;
        }
        if (!std::isfinite(step_loss.total)) {
            diverged = true;
            std::fprintf(stderr, "\n%s: the loss is not finite at step %lld; stopping\n",
                         tool.c_str(), step + 1);
            break;
        }
        const double norm = ex::ae_step(adam, trainer.autoencoders(), grad);
        log_total += step_loss.total;
        log_ce += step_loss.ce;
        log_l1 += step_loss.l1;
        log_norm += norm;
        ++log_count;

        const double s = ex::seconds_since(start);
        char line[200];
        std::snprintf(line, sizeof line, "step %lld  loss %.4f  ce %.4f  l1 %.4f  %.2f s/step",
                      step + 1, step_loss.total, step_loss.ce, step_loss.l1, s / double(step + 1));
        progress.update(line);
        if ((step + 1) % log_every == 0) {
            progress.finish();
            std::fprintf(report, "step %lld  %.0f s  train loss %.4f  ce %.4f  l1 %.4f  |grad| %.3g\n",
                         step + 1, s, log_total / log_count, log_ce / log_count,
                         log_l1 / log_count, log_norm / log_count);
            std::fflush(report);
            log_total = log_ce = log_l1 = log_norm = 0;
            log_count = 0;
        }
        if (eval_every > 0 && (step + 1) % eval_every == 0) {
            progress.finish();
            const ex::kv_finetune_loss e = evaluate(trainer);
            const bool better = e.ce < best_ce;
            if (better) {
                best_ce = e.ce;
                best_step = step + 1;
                best = trainer.autoencoders();
            }
            std::fprintf(report, "step %lld  held-out CE %.4f (ppl %.2f)  l1 %.4f%s\n", step + 1,
                         e.ce, std::exp(e.ce), e.l1, better ? "  (best so far)" : "");
            std::fflush(report);
        }
        if (save_every > 0 && (step + 1) % save_every == 0 && step + 1 < steps) {
            save(step + 1, step + 1, " checkpoint");
            progress.finish();
            std::fprintf(stderr, "step %lld: weights saved to %s\n", step + 1, out_path.c_str());
        }
    }
    if (signal_seen == 0) signal_seen = ex::interrupt_signal();
    progress.finish();
    if (signal_seen != 0) {
        // Stopped by a signal: keep the weights reached, skip the final evaluation.
        save(step, step, " interrupted");
        ex::remove_interrupt_flag();
        std::fprintf(stderr, "%s: stopped by signal %d after %lld steps; saved the weights of step "
                             "%lld to %s\n",
                     tool.c_str(), signal_seen, step, step, out_path.c_str());
        if (json) {
            kvcar::io::json_value r = ex::json_report(tool);
            r.set("codec_file", out_path);
            r.set("interrupted_by_signal", signal_seen);
            r.set("steps_run", step);
            r.set("saved_step", step);
            ex::print_json_report(r);
        }
        return ex::interrupted_exit_status(signal_seen);
    }
    ex::remove_interrupt_flag();
    const double seconds = ex::seconds_since(start);
    const long long steps_run = step;

    // What is saved: the final weights, unless --eval-every (or a divergence) found better ones.
    long long saved_step = steps_run;
    double ce_after = NAN;
    if (!eval.empty()) {
        const ex::kv_finetune_loss after = evaluate(trainer);
        if ((eval_every > 0 || diverged) && !(after.ce < best_ce)) {
            trainer.autoencoders() = best;
            saved_step = best_step;
        }
        ce_after = after.ce;
        std::fprintf(report, "held-out CE after %lld steps: %.4f (ppl %.2f), l1 %.4f; before "
                             "%.4f, exact %.4f\n",
                     steps_run, after.ce, std::exp(after.ce), after.l1, ce_before, exact_ce);
    } else if (diverged) {
        trainer.autoencoders() = best;  // the initial weights
        saved_step = 0;
    }

    save(saved_step, steps_run, "");
    std::fprintf(report, "trained %lld steps (%lld windows of %d tokens) in %.1f s, %.2f s/step; "
                         "saved the weights of step %lld to %s\n",
                 steps_run, steps_run * batch, ctx, seconds,
                 steps_run > 0 ? seconds / double(steps_run) : 0.0, saved_step, out_path.c_str());
    if (json) {
        kvcar::io::json_value r = ex::json_report(tool);
        r.set("codec_file", out_path);
        r.set("steps_run", steps_run);
        r.set("saved_step", saved_step);
        r.set("diverged", diverged);
        r.set("held_out_ce_exact", ex::json_number(exact_ce));
        r.set("held_out_ce_before", ex::json_number(ce_before));
        r.set("held_out_ce_after", ex::json_number(ce_after));
        r.set("seconds", ex::json_number(seconds));
        ex::print_json_report(r);
    }
    return diverged ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) { return kvcar::examples::tool_main(argc, argv, run); }
