// kvcar-serve — a continuous-batching server loop over a paged kvcar cache, replaying requests
// that arrive over time, and what it sustained: generated tokens/s, time to first token,
// per-token latency, the most sequences live at once and the KV memory they held.
//
//   kvcar-serve --model models/gpt2-tiny --requests 40 --prompt-len 16:200 --output-len 8:64
//               --kv-budget 1MiB --kv identity-f16,int8                (CPU, two caches in turn)
//   kvcar-serve --model M --device cuda --trace trace.jsonl --kv-budget 4GiB,16GiB --json
//
// The pieces, top to bottom:
//   requests.hpp   the requests: a JSONL trace (--trace) or drawn from --seed (--requests,
//                  --prompt-len, --output-len, --rate with --poisson or evenly spaced arrivals)
//   scheduler.hpp  which requests run in the next forward pass (prefill chunks beside decode
//                  steps), page accounting, preemption by recompute when pages run out
//   cpu_engine.hpp the CPU engine: a reference model and kv_cache<..., paged_storage>, one
//                  sequence at a time
//   cuda_engine.hpp  the GPU engine: the models' CUDA session, one batched forward per step
//   here           the serving loop (clock, idle waits, the page cross-check) and the report
//
// The KV budget is bytes of cache records (--kv-budget, e.g. 4GiB) or pages (--n-pages); a
// cache that stores fewer bytes per token gets more pages from the same bytes, so it holds more
// sequences at once. That is what a compressed cache buys a server. Lists (--kv a,b and
// --kv-budget x,y) run every combination on the one loaded model, one result each: the engine is
// built once per cache with the largest budget's pages, and each run's scheduler uses only its
// own budget (a pool larger than the pages in use does not change the speed of a step).
//
// Sampling is greedy, and every request generates exactly its max_new_tokens (as serving
// benchmarks do with ignore_eos), so a request's tokens are the same whatever else runs beside
// it and however often it was preempted (tests/serve checks that against solo runs).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "kvcar/io/json.hpp"
#include "kvcar/storage/paged.hpp"

#include "examples/models/kv_dispatch.hpp"
#include "examples/models/model.hpp"
#include "examples/models/tool_common.hpp"
#include "examples/models/tool_json.hpp"
#include "examples/models/weights_option.hpp"
#include "examples/serve/cpu_engine.hpp"
#include "examples/serve/requests.hpp"
#include "examples/serve/scheduler.hpp"
#ifdef KVCAR_WITH_CUDA
#include "examples/serve/cuda_engine.hpp"
#endif

namespace ex = kvcar::examples;
namespace sv = kvcar::examples::serve;
using kvcar::require;

namespace {

const std::string tool = "kvcar-serve";

/// "a,b,c" -> {"a", "b", "c"}.
std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    std::size_t pos = 0;
    for (;;) {
        const std::size_t comma = s.find(',', pos);
        out.push_back(s.substr(pos, comma - pos));
        if (comma == std::string::npos) return out;
        pos = comma + 1;
    }
}

/// "4GiB", "512MiB", "300KiB", "1.5GB", "1000000" -> bytes.
double parse_bytes(const std::string& s) {
    std::size_t used = 0;
    double x = 0;
    try {
        x = std::stod(s, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    const std::string unit = s.substr(used);
    const std::vector<std::pair<std::string, double>> units = {
        {"", 1},           {"B", 1},          {"KiB", 1024.0},  {"MiB", 1048576.0},
        {"GiB", 1073741824.0}, {"KB", 1e3},   {"MB", 1e6},      {"GB", 1e9}};
    for (const auto& [name, scale] : units)
        if (used > 0 && unit == name && x > 0) return x * scale;
    throw kvcar::error(tool + ": --kv-budget needs a size such as 4GiB, 512MiB or 1000000, got '" +
                       s + "'");
}

/// The q-quantile of `v` (nearest rank), 0 for an empty list.
double quantile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const std::size_t i = std::size_t(std::ceil(q * double(v.size())));
    return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
}

/// What one run sustained.
struct run_result {
    std::string model, device, kv;
    long long budget_bytes = 0;
    int n_pages = 0, reserve_tokens = 0;
    std::size_t bytes_per_token = 0;
    double seconds = 0;
    double tokens_per_s = 0;  // generated tokens / seconds, after the warm-up if there was one
    double warmup = 0;        // seconds not counted in tokens_per_s
    int requests = 0, finished = 0, preemptions = 0, peak_sequences = 0, steps = 0;
    long long prompt_tokens = 0, generated_tokens = 0, computed_tokens = 0;
    double ttft_p50 = 0, ttft_p99 = 0, tpot_p50 = 0, tpot_p99 = 0;
    std::size_t peak_kv_bytes = 0;
    bool stopped_early = false;
    ex::weights_used weights;
    // Engines that report it (the CUDA one): the run's host time building and launching the
    // passes, and waiting for the GPU at their end; -1 otherwise.
    double engine_enqueue_s = -1, engine_wait_s = -1;
    long long engine_graph_steps = -1;  // decode steps launched as one CUDA graph
};

/// Everything about a run that is not the engine.
struct run_settings {
    const std::vector<sv::request>* requests = nullptr;
    sv::scheduler_params sched;
    std::size_t bytes_per_token = 0;  // of the cache: what a page of the budget holds
    double max_seconds = 0;  // 0: run until every request has finished
    double warmup = 0;       // throughput counts the tokens generated after this many seconds
    bool progress = true;
    std::string out_ids;     // JSONL of every request's generated ids, appended
};

/// A progress line on stderr: rewritten in place (\r) on a terminal, else a line every 10 s.
class progress_reporter {
public:
    explicit progress_reporter(bool enabled) : enabled_(enabled), tty_(isatty(2) != 0) {}
    void update(double t, const sv::scheduler& s) {
        if (!enabled_ || t - last_ < (tty_ ? 0.25 : 10.0)) return;
        last_ = t;
        std::fprintf(stderr, "%s%7.1f s  finished %d/%zu  running %d  waiting %d  free pages %d  "
                             "preempted %d  %.0f tok/s%s",
                     tty_ ? "\r" : "", t, s.finished(), s.requests().size(), s.running(),
                     s.waiting(), s.free_pages(), s.preemptions(),
                     t > 0 ? double(s.generated_tokens()) / t : 0.0, tty_ ? "\033[K" : "\n");
        std::fflush(stderr);
        shown_ = true;
    }
    void finish() {
        if (shown_ && tty_) std::fprintf(stderr, "\n");
    }

private:
    bool enabled_, tty_;
    bool shown_ = false;
    double last_ = -1e9;
};

/// Serves every request of `settings` on `engine` and measures it. The engine has
/// add_sequence, remove_sequence, next_tokens(sequences, counts, tokens) -> [items] greedy ids and
/// free_pages(); `spare_pages` are pages of its pool beyond this run's budget.
template <class Engine>
run_result serve(Engine& engine, const run_settings& settings, int spare_pages) {
    sv::scheduler s(settings.sched);
    for (const sv::request& r : *settings.requests) s.submit(r);

    // The engine's own account of where its time went, when it keeps one.
    constexpr bool timed = requires { engine.host_time(); };
    const auto host_before = [&] {
        if constexpr (timed) return engine.host_time(); else return 0;
    }();
    const auto start = ex::clock_type::now();
    const auto clock = [&] { return ex::seconds_since(start); };
    progress_reporter progress(settings.progress);
    run_result out;
    long long warm_tokens = -1;  // tokens generated when the warm-up ended
    double warm_time = 0;
    while (!s.done()) {
        if (warm_tokens < 0 && clock() >= settings.warmup) {
            warm_tokens = s.generated_tokens();
            warm_time = settings.warmup > 0 ? clock() : 0;
        }
        if (settings.max_seconds > 0 && clock() >= settings.max_seconds) {
            for (int seq : s.abandon()) engine.remove_sequence(seq);
            out.stopped_early = true;
            break;
        }
        if (!s.busy() && s.next_arrival() > clock()) {  // idle until the next request arrives
            std::this_thread::sleep_for(std::chrono::duration<double>(
                std::min(s.next_arrival() - clock(), 0.05)));
            continue;
        }
        const sv::step_plan p = sv::run_step(s, engine, clock);
        if (!p.items.empty()) ++out.steps;
        for (const sv::step_item& it : p.items) out.computed_tokens += it.count;
        // The scheduler plans pages on its own; the cache must agree after every step.
        require(engine.free_pages() - spare_pages == s.free_pages(),
                tool + ": the cache has " + std::to_string(engine.free_pages() - spare_pages) +
                    " free pages of the budget, the scheduler planned " +
                    std::to_string(s.free_pages()));
        progress.update(clock(), s);
    }
    out.seconds = clock();
    if constexpr (timed) {
        const auto host_after = engine.host_time();
        out.engine_enqueue_s = host_after.enqueue_s - host_before.enqueue_s;
        out.engine_wait_s = host_after.wait_s - host_before.wait_s;
        out.engine_graph_steps = host_after.graph_steps - host_before.graph_steps;
    }
    if (warm_tokens < 0 || out.seconds <= warm_time) {  // ended within the warm-up: count all
        warm_tokens = 0;
        warm_time = 0;
    }
    out.warmup = warm_time;
    out.tokens_per_s = out.seconds > warm_time
                           ? double(s.generated_tokens() - warm_tokens) / (out.seconds - warm_time)
                           : 0;
    progress.finish();

    std::vector<double> ttft;  // [requests that got a token] seconds from arrival to it
    for (const sv::request_state& q : s.requests()) {
        out.prompt_tokens += (long long)q.req.prompt.size();
        if (q.first_token_time >= 0) ttft.push_back(q.first_token_time - q.req.arrival);
    }
    out.requests = int(s.requests().size());
    out.finished = s.finished();
    out.preemptions = s.preemptions();
    out.peak_sequences = s.peak_running();
    out.generated_tokens = s.generated_tokens();
    out.ttft_p50 = quantile(ttft, 0.5);
    out.ttft_p99 = quantile(ttft, 0.99);
    out.tpot_p50 = quantile(s.token_gaps(), 0.5);
    out.tpot_p99 = quantile(s.token_gaps(), 0.99);
    out.n_pages = settings.sched.n_pages;
    out.reserve_tokens = settings.sched.reserve_tokens;
    out.peak_kv_bytes = std::size_t(s.peak_pages()) * std::size_t(settings.sched.page_size) *
                        settings.bytes_per_token;

    if (!settings.out_ids.empty()) {
        std::ofstream f(settings.out_ids, std::ios::app);
        require(bool(f), tool + ": cannot write '" + settings.out_ids + "'");
        for (const sv::request_state& q : s.requests()) {
            kvcar::io::json_value ids = kvcar::io::json_value::array_type{};
            for (int id : q.generated) ids.push_back(kvcar::io::json_value(id));
            kvcar::io::json_value line = kvcar::io::json_value::object_type{};
            line.set("id", kvcar::io::json_value(q.req.id));
            line.set("n_pages", kvcar::io::json_value(settings.sched.n_pages));
            line.set("generated", std::move(ids));
            f << kvcar::io::to_json(line) << "\n";
        }
    }
    return out;
}

/// Prints one run: a paragraph for people, or one JSON line (--json).
void report(const run_result& r, bool json) {
    const double tps = r.tokens_per_s;
    if (json) {
        using kvcar::io::json_value;
        json_value j = json_value::object_type{};
        j.set("model", json_value(ex::json_text(r.model)));
        j.set("device", json_value(r.device));
        j.set("kv", json_value(ex::json_text(r.kv)));
        j.set("budget_bytes", json_value(r.budget_bytes));
        j.set("n_pages", json_value(r.n_pages));
        j.set("reserve_tokens", json_value(r.reserve_tokens));
        j.set("bytes_per_token", json_value((long long)r.bytes_per_token));
        j.set("requests", json_value(r.requests));
        j.set("finished", json_value(r.finished));
        j.set("stopped_early", json_value(r.stopped_early));
        j.set("seconds", json_value(r.seconds));
        j.set("steps", json_value(r.steps));
        j.set("prompt_tokens", json_value(r.prompt_tokens));
        j.set("generated_tokens", json_value(r.generated_tokens));
        j.set("computed_tokens", json_value(r.computed_tokens));
        j.set("tokens_per_s", json_value(tps));
        j.set("warmup_s", json_value(r.warmup));
        j.set("ttft_p50_s", json_value(r.ttft_p50));
        j.set("ttft_p99_s", json_value(r.ttft_p99));
        j.set("tpot_p50_s", json_value(r.tpot_p50));
        j.set("tpot_p99_s", json_value(r.tpot_p99));
        j.set("peak_sequences", json_value(r.peak_sequences));
        j.set("peak_kv_bytes", json_value((long long)r.peak_kv_bytes));
        j.set("preemptions", json_value(r.preemptions));
        if (r.engine_enqueue_s >= 0) {
            j.set("engine_enqueue_s", json_value(r.engine_enqueue_s));
            j.set("engine_wait_s", json_value(r.engine_wait_s));
            j.set("engine_graph_steps", json_value(r.engine_graph_steps));
        }
        j.set("weights", ex::weights_json(r.weights));
        std::printf("%s\n", kvcar::io::to_json(j).c_str());
        std::fflush(stdout);
        return;
    }
    std::printf("%s, budget %s (%d pages, %zu bytes/token)\n", r.kv.c_str(),
                ex::human_bytes(double(r.budget_bytes)).c_str(), r.n_pages, r.bytes_per_token);
    std::printf("  %d/%d requests finished%s in %.2f s, %d steps, %lld tokens computed "
                "(prompts %lld)\n",
                r.finished, r.requests, r.stopped_early ? " (stopped at --max-seconds)" : "",
                r.seconds, r.steps, r.computed_tokens, r.prompt_tokens);
    std::printf("  throughput     %.1f generated tokens/s (%lld tokens%s)\n", tps,
                r.generated_tokens, r.warmup > 0 ? ", counted after the warm-up" : "");
    std::printf("  first token    p50 %.4f s, p99 %.4f s\n", r.ttft_p50, r.ttft_p99);
    std::printf("  per token      p50 %.4f s, p99 %.4f s\n", r.tpot_p50, r.tpot_p99);
    std::printf("  peak           %d sequences live, %s of KV pages held; %d preemptions\n",
                r.peak_sequences, ex::human_bytes(double(r.peak_kv_bytes)).c_str(),
                r.preemptions);
    if (r.engine_enqueue_s >= 0)
        std::printf("  engine host    %.2f s building and launching passes, %.2f s waiting for "
                    "the GPU (of %.2f s); %lld of %d steps as one CUDA graph\n",
                    r.engine_enqueue_s, r.engine_wait_s, r.seconds, r.engine_graph_steps, r.steps);
    std::fflush(stdout);
}

int run(int argc, char** argv) {
    std::vector<ex::option_spec> specs = ex::model_options_spec("identity-f16");
    specs.insert(specs.end(), {
        ex::device_option_spec(),
        ex::weights_option_spec(),
        ex::no_graphs_option_spec(),
        {"trace", "FILE", "JSONL requests: {\"id\", \"prompt_ids\" | \"prompt\", "
                          "\"max_new_tokens\", \"arrival\"} per line"},
        {"requests", "N", "without --trace: N requests drawn from --seed (default 32)"},
        {"seed", "S", "seed of the drawn requests (default 0)"},
        {"prompt-len", "MIN:MAX", "drawn prompt lengths, uniform (default 16:128)"},
        {"output-len", "MIN:MAX", "drawn max_new_tokens, uniform (default 16:64)"},
        {"rate", "R", "drawn arrivals per second; 0 = all at once (default 0)"},
        {"poisson", "", "drawn arrivals are a Poisson process (default: evenly spaced)"},
        {"kv-budget", "SIZE[,SIZE]", "KV memory for cache records: 4GiB, 512MiB, bytes; a list "
                                     "runs each (default 64MiB)"},
        {"n-pages", "N", "the KV budget in pages instead of bytes"},
        {"page-size", "N", "tokens per page (default 16)"},
        {"max-seqs", "N", "requests running at once at most (default 256)"},
        {"chunk", "N", "prefill tokens per forward pass, beside the decode tokens (default 512)"},
        {"reserve-tokens", "N", "admit a request only if the free pages also hold N more tokens "
                                "of it and of every running request (default 64; 0: admit "
                                "whatever fits now, and preempt more)"},
        {"max-seconds", "S", "stop each run after S seconds (default: when all have finished)"},
        {"warmup", "S", "throughput counts only tokens generated after S seconds (default 0)"},
        {"json", "", "print one JSON line per run on stdout"},
        {"out-ids", "FILE", "append each request's generated ids as JSONL"},
        {"quiet", "", "no progress line"},
    });
    ex::command_line cl(tool, "Serve requests with continuous batching over a paged kvcar cache.",
                        specs);
    if (!cl.parse(argc, argv)) return 0;
    const bool use_cuda = ex::parse_use_cuda(cl);
    [[maybe_unused]] const ex::weights_choice weights = ex::parse_weights_option(cl, use_cuda);
    const bool json = cl.has("json");
    // Checked before the model loads; past a sequence's length it changes nothing.
    const int reserve_tokens =
        int(std::min(cl.get_int_at_least("reserve-tokens", 64, 0), 1LL << 30));

    const auto load_start = ex::clock_type::now();
    const ex::language_model model =
        ex::language_model::load(cl.required("model"), ex::parse_model_options(cl));
    ex::weights_used weights_used = ex::cpu_weights(model);  // gpu_weights() with --device cuda
    std::fprintf(stderr, "model: %s (%s), loaded in %.2f s\n", model.path().c_str(),
                 model.describe().c_str(), ex::seconds_since(load_start));

    // The requests.
    std::vector<sv::request> requests;
    if (cl.has("trace")) {
        const std::string path = cl.get("trace");
        const sv::tokenize_fn tokenize = [&](std::string_view text) {
            static const ex::text_tokenizer tokenizer = ex::text_tokenizer::for_model(model, cl);
            return tokenizer.encode(text, tokenizer.is_llama2c());
        };
        requests = sv::parse_trace(ex::read_text_file(tool, "trace", path), path, model.vocab_size(),
                                   tokenize);
    } else {
        requests = sv::generate_requests(
            int(cl.get_int("requests", 32)), std::uint64_t(cl.get_int("seed", 0)),
            sv::parse_range(cl.get("prompt-len", "16:128"), "--prompt-len"),
            sv::parse_range(cl.get("output-len", "16:64"), "--output-len"),
            {cl.get_double("rate", 0), cl.has("poisson")}, model.vocab_size());
    }
    int longest = 0;
    for (const sv::request& r : requests)
        longest = std::max(longest, int(r.prompt.size()) + r.max_new_tokens - 1);

    run_settings settings;
    settings.requests = &requests;
    settings.sched.page_size = int(cl.get_int("page-size", 16));
    settings.sched.max_sequences = int(cl.get_int("max-seqs", 256));
    settings.sched.chunk = int(cl.get_int("chunk", 512));
    settings.sched.reserve_tokens = reserve_tokens;
    settings.sched.max_tokens = std::min(model.max_positions(), std::max(longest, 1));
    settings.max_seconds = cl.get_double("max-seconds", 0);
    settings.warmup = cl.get_double("warmup", 0);
    require(settings.max_seconds >= 0 && settings.warmup >= 0,
            tool + ": --max-seconds and --warmup must not be negative");
    settings.progress = !cl.has("quiet");
    settings.out_ids = cl.get("out-ids");
    require(settings.sched.page_size > 0 && settings.sched.max_sequences > 0 &&
                settings.sched.chunk > 0,
            tool + ": --page-size, --max-seqs and --chunk must be positive");
    if (!settings.out_ids.empty()) std::ofstream(settings.out_ids, std::ios::trunc);
    const int ps = settings.sched.page_size;
    const int max_tokens = settings.sched.max_tokens;

    for (const std::string& kv : split_list(cl.get("kv", "identity-f16"))) {
        // The budgets in pages of this cache: bytes / (bytes per token x page size). The CPU
        // cache's records are the device cache's, so its bytes per token hold for both.
        const std::size_t bpt = ex::with_kv_cache<kvcar::paged_storage>(
            kv, model.cache_geometry(), {1, 1, 1, 1},
            [](auto& cache) { return cache.bytes_per_token(); });
        std::vector<std::pair<long long, int>> budgets;  // {bytes, pages}
        if (cl.has("n-pages")) {
            const int pages = int(cl.get_int("n-pages", 0));
            require(pages > 0, tool + ": --n-pages must be positive");
            budgets.push_back({(long long)pages * ps * (long long)bpt, pages});
        } else {
            for (const std::string& b : split_list(cl.get("kv-budget", "64MiB"))) {
                const double bytes = parse_bytes(b);
                const double pages = std::floor(bytes / (double(bpt) * ps));
                require(pages >= 1 && pages < 2e9,
                        tool + ": --kv-budget " + b + " is " + std::to_string(pages) +
                            " pages of " + std::to_string(ps) + " tokens x " +
                            std::to_string(bpt) + " bytes (" + kv + "); need at least one");
                budgets.push_back({(long long)bytes, int(pages)});
            }
        }
        int pool = 0;
        for (const auto& b : budgets) pool = std::max(pool, b.second);
        std::fprintf(stderr, "kv: %s, %zu bytes/token, %zu budget%s, pool of %d pages\n",
                     kv.c_str(), bpt, budgets.size(), budgets.size() == 1 ? "" : "s", pool);

        // Every budget on one engine: built once per cache, with the largest budget's pages.
        const auto run_budgets = [&](auto& engine) {
            for (const auto& [bytes, pages] : budgets) {
                run_settings s = settings;
                s.sched.n_pages = pages;
                s.bytes_per_token = bpt;
                run_result r = serve(engine, s, pool - pages);
                r.model = model.path();
                r.device = use_cuda ? "cuda" : "cpu";
                r.weights = weights_used;
                r.kv = kv;
                r.budget_bytes = bytes;
                r.bytes_per_token = bpt;
                report(r, json);
            }
        };
        const kvcar::paged_storage::params storage{
            .max_sequences = settings.sched.max_sequences, .max_tokens = max_tokens,
            .page_size = ps, .n_pages = pool};
        if (use_cuda) {
#ifdef KVCAR_WITH_CUDA
            std::fprintf(stderr, "device: %s\n", ex::cuda_backend::device_description().c_str());
            ex::cuda_backend::session gpu(model, kv,
                                          {.max_sequences = storage.max_sequences,
                                           .max_tokens = storage.max_tokens,
                                           .page_size = storage.page_size,
                                           .n_pages = storage.n_pages,
                                           .weights = ex::resolve_weights(weights, model),
                                           .decode_graphs = !cl.has("no-graphs")});
            weights_used = ex::gpu_weights(weights, model, gpu);
            sv::cuda_engine engine{gpu};
            run_budgets(engine);
#endif
        } else {
            ex::with_kv_cache<kvcar::paged_storage>(kv, model.cache_geometry(), storage,
                                                    [&](auto& cache) {
                sv::cpu_engine<std::decay_t<decltype(cache)>> engine{model, cache};
                run_budgets(engine);
            });
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return kvcar::examples::tool_main(argc, argv, run); }
