// Tests for examples/serve (kvcar-serve's requests, scheduler and CPU engine): under preemption
// every request still gets exactly the greedy tokens it gets when run alone, none is lost, the
// scheduler's page plan matches the paged cache after every step and all pages come back; bad
// traces and requests that could never fit are refused with clear messages.
#include "catch.hpp"

#include "examples/models/kv_dispatch.hpp"
#include "examples/models/model.hpp"
#include "examples/models/tensor_ops.hpp"
#include "examples/serve/cpu_engine.hpp"
#include "examples/serve/requests.hpp"
#include "examples/serve/scheduler.hpp"

#include <kvcar/codec/identity.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/storage/paged.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace {

namespace ex = kvcar::examples;
namespace sv = kvcar::examples::serve;

const std::string model_dir = std::string(KVCAR_SOURCE_DIR) + "/models/gpt2-tiny";

/// An engine without a model: the next token is a hash of the sequence's whole token
/// history, so the next token depends on every token fed before it, in order. Run alone, a
/// request's tokens are that hash iterated; any token lost, repeated or reordered by the
/// scheduler shows up as a different continuation.
struct history_engine {
    int vocab = 97, page_size, n_pages, max_sequences;
    std::map<int, std::vector<int>> live;  // sequence id -> tokens fed

    history_engine(int page, int pages, int sequences)
        : page_size(page), n_pages(pages), max_sequences(sequences) {}

    static int next_token(const std::vector<int>& history, int vocab) {
        std::uint64_t h = 1469598103934665603ull;
        for (int t : history) h = (h ^ std::uint64_t(t)) * 1099511628211ull;
        return int(h % std::uint64_t(vocab));
    }
    int add_sequence() {
        for (int s = 0; s < max_sequences; ++s)
            if (!live.count(s)) {
                live[s];
                return s;
            }
        FAIL("history_engine: no free sequence id");
        return -1;
    }
    void remove_sequence(int seq) {
        REQUIRE(live.count(seq) == 1);
        live.erase(seq);
    }
    std::vector<int> next_tokens(std::span<const int> seqs, std::span<const int> counts,
                                 std::span<const int> tokens) {
        std::vector<int> next;
        std::size_t offset = 0;
        for (std::size_t b = 0; b < seqs.size(); ++b) {
            REQUIRE(live.count(seqs[b]) == 1);
            std::vector<int>& h = live[seqs[b]];
            h.insert(h.end(), tokens.begin() + long(offset), tokens.begin() + long(offset + counts[b]));
            offset += std::size_t(counts[b]);
            next.push_back(next_token(h, vocab));
        }
        REQUIRE(free_pages() >= 0);  // the plan never holds more pages than the budget
        return next;
    }
    int free_pages() const {
        int used = 0;
        for (const auto& [seq, h] : live) used += (int(h.size()) + page_size - 1) / page_size;
        return n_pages - used;
    }
};

/// Runs every request to the end on `engine`, checking the page plan after every step; returns
/// the tokens the forward passes computed (prompts, recomputations and decode tokens).
template <class Engine>
long long serve_all(sv::scheduler& s, Engine& engine) {
    double t = 0;
    int steps = 0;
    long long computed = 0;
    while (!s.done()) {
        for (const sv::step_item& it : sv::run_step(s, engine, [&] { return t; }).items)
            computed += it.count;
        t += 0.01;
        REQUIRE(engine.free_pages() == s.free_pages());
        REQUIRE(++steps < 100000);  // no livelock
    }
    return computed;
}

}  // namespace

TEST_CASE("scheduler: every request gets its solo tokens under preemption", "[serve]") {
    for (std::uint64_t seed = 0; seed < 80; ++seed) {
        const int page_size = int(1 + seed % 7);  // 1..7: not only powers of two
        std::vector<sv::request> reqs = sv::generate_requests(
            int(4 + seed % 9), seed, {1, 40}, {1, 30}, {seed % 2 ? 50.0 : 0.0, seed % 3 == 0}, 97);
        int longest = 0;
        for (const sv::request& r : reqs)
            longest = std::max(longest, int(r.prompt.size()) + r.max_new_tokens - 1);
        sv::scheduler_params p;
        p.page_size = page_size;
        p.n_pages = (longest + page_size - 1) / page_size + int(seed % 5);  // tight
        p.max_sequences = int(1 + seed % 6);
        p.chunk = int(1 + seed % 23);
        p.max_tokens = longest;
        p.reserve_tokens = seed < 40 ? 0 : int(seed % 13);  // with and without admission headroom
        sv::scheduler s(p);
        for (const sv::request& r : reqs) s.submit(r);
        history_engine engine(page_size, p.n_pages, p.max_sequences);
        serve_all(s, engine);

        INFO("seed " << seed);
        REQUIRE(s.finished() == int(reqs.size()));
        REQUIRE(engine.live.empty());
        REQUIRE(s.free_pages() == p.n_pages);
        REQUIRE(s.peak_pages() <= p.n_pages);
        for (const sv::request_state& q : s.requests()) {
            std::vector<int> solo = q.req.prompt;
            for (int i = 0; i < q.req.max_new_tokens; ++i)
                solo.push_back(history_engine::next_token(solo, 97));
            const std::vector<int> want(solo.begin() + long(q.req.prompt.size()), solo.end());
            INFO("request " << q.req.id << ", preempted " << q.preemptions << " times");
            REQUIRE(q.generated == want);
        }
    }
}

TEST_CASE("scheduler: preemption happens when pages run out, oldest request first to finish",
          "[serve]") {
    std::vector<sv::request> reqs;
    for (int i = 0; i < 4; ++i)
        reqs.push_back({std::to_string(i), std::vector<int>(10, i + 1), 20, 0.0});
    sv::scheduler s({.n_pages = 8, .page_size = 4, .max_sequences = 4, .chunk = 64,
                     .max_tokens = 64});
    for (const sv::request& r : reqs) s.submit(r);
    history_engine engine(4, 8, 4);
    serve_all(s, engine);
    REQUIRE(s.preemptions() > 0);
    REQUIRE(s.peak_running() >= 2);
    REQUIRE(s.requests()[0].preemptions == 0);  // the oldest is never the victim
    REQUIRE(s.requests()[0].finish_time <= s.requests()[3].finish_time);
}

TEST_CASE("scheduler: admission headroom stops the newest request's preempt-recompute loop",
          "[serve]") {
    // The serve bench's trace (prompts 512-4096, outputs 128-512, all at time 0), its first
    // 150 requests, on the pool of fp16 TinyLlama at 512 MiB (1489 pages of 16 tokens: about
    // 10 requests). Without headroom each admission fills the pool, the next page a decode
    // crosses preempts the newest request, and its prompt is computed again when it is
    // readmitted a few steps later.
    const std::vector<sv::request> reqs =
        sv::generate_requests(150, 0, {512, 4096}, {128, 512}, {}, 97);
    long long computed[2] = {};
    int preemptions[2] = {}, peak[2] = {};
    for (const int reserve : {0, 64}) {
        sv::scheduler s({.n_pages = 1489, .page_size = 16, .max_sequences = 256, .chunk = 2048,
                         .max_tokens = 4096 + 511, .reserve_tokens = reserve});
        for (const sv::request& r : reqs) s.submit(r);
        history_engine engine(16, 1489, 256);
        const int k = reserve > 0;
        computed[k] = serve_all(s, engine);
        preemptions[k] = s.preemptions();
        peak[k] = s.peak_running();
        REQUIRE(s.finished() == int(reqs.size()));
        REQUIRE(s.free_pages() == 1489);
    }
    long long needed = 0;  // every prompt once, and every generated token but the last
    for (const sv::request& r : reqs) needed += long(r.prompt.size()) + r.max_new_tokens - 1;
    std::printf("admission headroom: %lld and %lld tokens computed for %lld needed, %d and %d "
                "preemptions, %d and %d sequences at most (reserve 0 and 64 tokens)\n",
                computed[0], computed[1], needed, preemptions[0], preemptions[1], peak[0], peak[1]);
    CHECK(preemptions[0] > 4 * std::max(preemptions[1], 1));
    CHECK(computed[1] < computed[0]);
    CHECK(computed[1] - needed < (computed[0] - needed) / 4);
    CHECK(peak[1] >= peak[0] - 2);  // the headroom costs at most a couple of sequences
}

TEST_CASE("scheduler: a request that could never fit is refused, not queued forever", "[serve]") {
    sv::scheduler s({.n_pages = 4, .page_size = 16, .max_sequences = 2, .chunk = 64,
                     .max_tokens = 512});
    // 60 + 5 - 1 = 64 cached tokens: exactly 4 pages.
    REQUIRE_NOTHROW(s.submit({"fits", std::vector<int>(60, 1), 5, 0.0}));
    KVCAR_REQUIRE_ERROR(s.submit({"big", std::vector<int>(60, 1), 6, 0.0}),
                        "request 'big' (prompt 60 + 6 new tokens) needs 5 pages of 16 tokens, "
                        "more than the whole KV budget (4 pages)");
    KVCAR_REQUIRE_ERROR(s.submit({"long", std::vector<int>(600, 1), 1, 0.0}),
                        "more than a sequence holds (512)");
    KVCAR_REQUIRE_ERROR(s.submit({"early", std::vector<int>(4, 1), 1, -1.0}),
                        "arrives before the one submitted before it");
}

TEST_CASE("scheduler: requests wait for their arrival", "[serve]") {
    sv::scheduler s({.n_pages = 64, .page_size = 16, .max_sequences = 8, .chunk = 64,
                     .max_tokens = 512});
    s.submit({"a", {1, 2, 3}, 2, 0.0});
    s.submit({"b", {4, 5}, 2, 5.0});
    sv::step_plan p = s.plan(0.0);
    REQUIRE(p.admitted == std::vector<int>{0});
    REQUIRE(s.waiting() == 1);
    REQUIRE(s.next_arrival() == 5.0);
}

TEST_CASE("serve on the CPU: gpt2-tiny, paged cache, greedy tokens equal solo runs", "[serve]") {
    const ex::language_model model =
        ex::language_model::load(model_dir, {.threads = 1});
    // Small enough that the budget cannot hold every request at once.
    const std::vector<sv::request> reqs =
        sv::generate_requests(6, 7, {8, 48}, {4, 16}, {}, model.vocab_size());
    const sv::scheduler_params p{.n_pages = 10, .page_size = 6, .max_sequences = 4,
                                 .chunk = 24, .max_tokens = 96};
    for (const char* kv : {"identity-f16", "int8"}) {
        INFO("--kv " << kv);
        std::vector<std::vector<int>> served;
        ex::with_kv_cache<kvcar::paged_storage>(
            kv, model.cache_geometry(),
            {.max_sequences = p.max_sequences, .max_tokens = p.max_tokens,
             .page_size = p.page_size, .n_pages = p.n_pages},
            [&](auto& cache) {
                sv::cpu_engine<std::decay_t<decltype(cache)>> engine{model, cache};
                sv::scheduler s(p);
                for (const sv::request& r : reqs) s.submit(r);
                serve_all(s, engine);
                REQUIRE(s.preemptions() > 0);
                REQUIRE(s.finished() == int(reqs.size()));
                REQUIRE(cache.live_sequences() == 0);
                REQUIRE(cache.storage().free_pages() == p.n_pages);
                for (const sv::request_state& q : s.requests()) served.push_back(q.generated);
            });
        // Each request alone: prefill the prompt in one pass, then one token per pass.
        ex::with_kv_cache(kv, model.cache_geometry(), {1, p.max_tokens}, [&](auto& cache) {
            for (std::size_t i = 0; i < reqs.size(); ++i) {
                const int seq = cache.add_sequence();
                std::vector<float> logits =
                    model.forward(cache, seq, reqs[i].prompt, ex::logits_for::last);
                std::vector<int> solo;
                for (int t = 0; t < reqs[i].max_new_tokens; ++t) {
                    solo.push_back(ex::argmax(logits));
                    if (t + 1 < reqs[i].max_new_tokens)
                        logits = model.forward(cache, seq, std::span<const int>(&solo.back(), 1),
                                               ex::logits_for::last);
                }
                cache.remove_sequence(seq);
                INFO("request " << i);
                REQUIRE(served[i] == solo);
            }
        });
    }
}

TEST_CASE("trace: JSONL requests, sorted by arrival", "[serve]") {
    const std::string text =
        "# a comment\n"
        "{\"id\": \"late\", \"prompt_ids\": [1, 2, 3], \"max_new_tokens\": 4, \"arrival\": 2.5}\n"
        "\n"
        "{\"prompt_ids\": [7], \"max_new_tokens\": 1}\n"
        "{\"id\": 9, \"prompt\": \"ab\", \"max_new_tokens\": 2, \"arrival\": 0.5}\n";
    const auto tokenize = [](std::string_view s) {
        std::vector<int> ids;
        for (char c : s) ids.push_back(int(c));
        return ids;
    };
    const std::vector<sv::request> r = sv::parse_trace(text, "t.jsonl", 100, tokenize);
    REQUIRE(r.size() == 3);
    REQUIRE(r[0].id == "4");  // no id: the line number
    REQUIRE(r[0].prompt == std::vector<int>{7});
    REQUIRE(r[1].id == "9");
    REQUIRE(r[1].prompt == std::vector<int>{'a', 'b'});
    REQUIRE(r[2].id == "late");
    REQUIRE(r[2].max_new_tokens == 4);
    REQUIRE(r[2].arrival == 2.5);
}

TEST_CASE("trace: errors name the file, the line and the problem", "[serve]") {
    const auto parse = [](const std::string& text) {
        return sv::parse_trace(text, "t.jsonl", 100);
    };
    KVCAR_REQUIRE_ERROR(parse("{\"prompt_ids\": [1], \"max_new_tokens\": 1}\n{oops}\n"),
                        "t.jsonl:2");
    KVCAR_REQUIRE_ERROR(parse("[1, 2]"), "t.jsonl:1: expected a JSON object per line");
    KVCAR_REQUIRE_ERROR(parse("{\"prompt_ids\": [1]}"),
                        "t.jsonl:1: \"max_new_tokens\" must be a positive integer");
    KVCAR_REQUIRE_ERROR(parse("{\"prompt_ids\": [1], \"max_new_tokens\": 0}"),
                        "\"max_new_tokens\" must be a positive integer");
    KVCAR_REQUIRE_ERROR(parse("{\"prompt_ids\": [1, 100], \"max_new_tokens\": 1}"),
                        "not a token id in [0, 100)");
    KVCAR_REQUIRE_ERROR(parse("{\"prompt_ids\": [], \"max_new_tokens\": 1}"), "the prompt is empty");
    KVCAR_REQUIRE_ERROR(parse("{\"max_new_tokens\": 1}"), "needs \"prompt_ids\"");
    KVCAR_REQUIRE_ERROR(parse("{\"prompt\": \"hi\", \"max_new_tokens\": 1}"),
                        "a text \"prompt\" needs the model's tokenizer");
    KVCAR_REQUIRE_ERROR(parse("{\"prompt_ids\": [1], \"max_new_tokens\": 1, \"arrival\": -1}"),
                        "\"arrival\" must be a number of seconds >= 0");
    KVCAR_REQUIRE_ERROR(parse("{\"id\": 1, \"prompt_ids\": [1], \"max_new_tokens\": 1}\n"
                              "{\"id\": \"1\", \"prompt_ids\": [2], \"max_new_tokens\": 1}"),
                        "t.jsonl:2: request id '1' appears twice");
    KVCAR_REQUIRE_ERROR(parse("\n# nothing\n"), "the trace has no requests");
}

TEST_CASE("drawn requests: reproducible from the seed, within the ranges", "[serve]") {
    const auto a = sv::generate_requests(50, 3, {5, 9}, {2, 4}, {10.0, true}, 1000);
    const auto b = sv::generate_requests(50, 3, {5, 9}, {2, 4}, {10.0, true}, 1000);
    double last = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        REQUIRE(a[i].prompt == b[i].prompt);
        REQUIRE(a[i].arrival == b[i].arrival);
        REQUIRE(a[i].prompt.size() >= 5);
        REQUIRE(a[i].prompt.size() <= 9);
        REQUIRE(a[i].max_new_tokens >= 2);
        REQUIRE(a[i].max_new_tokens <= 4);
        REQUIRE(a[i].arrival >= last);
        last = a[i].arrival;
    }
    REQUIRE(last > 0);
    const auto even = sv::generate_requests(3, 0, {1, 1}, {1, 1}, {4.0, false}, 10);
    REQUIRE(even[2].arrival == 0.5);
    REQUIRE(sv::parse_range("512:4096", "--prompt-len").max == 4096);
    REQUIRE(sv::parse_range("7", "--x").min == 7);
    KVCAR_REQUIRE_ERROR(sv::parse_range("9:3", "--output-len"), "--output-len needs 0 < MIN <= MAX");
    KVCAR_REQUIRE_ERROR(sv::parse_range("a:3", "--output-len"), "needs MIN:MAX or N");
}
