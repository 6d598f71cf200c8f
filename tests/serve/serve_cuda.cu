// Tests for examples/serve on the GPU: the scheduler drives the CUDA session (cuda_engine.hpp)
// through preemptions; no request is lost, the device cache's free pages match the plan after
// every step and all come back, and the tokens agree with each request run alone on the GPU.
// Exact agreement is not required: cuBLAS may pick another GEMM for another batch shape, which
// can flip a greedy near-tie; the test requires 90% of the tokens and prints the agreement.
#include "catch.hpp"

#include "examples/models/model.hpp"
#include "examples/models/tensor_ops.hpp"
#include "examples/serve/cuda_engine.hpp"
#include "examples/serve/requests.hpp"
#include "examples/serve/scheduler.hpp"

#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace {

namespace ex = kvcar::examples;
namespace sv = kvcar::examples::serve;

const std::string model_dir = std::string(KVCAR_SOURCE_DIR) + "/models/gpt2-tiny";

}  // namespace

TEST_CASE("serve on CUDA: gpt2-tiny under preemption, pages all free, tokens as alone",
          "[serve][gpu]") {
    const ex::language_model model = ex::language_model::load(model_dir);
    const std::vector<sv::request> reqs =
        sv::generate_requests(8, 11, {8, 60}, {4, 24}, {}, model.vocab_size());
    const sv::scheduler_params p{.n_pages = 14, .page_size = 6, .max_sequences = 4,
                                 .chunk = 32, .max_tokens = 96};
    for (const char* kv : {"identity-f32", "int8"}) {
        INFO("--kv " << kv);
        ex::cuda_backend::session gpu(model, kv,
                                      {.max_sequences = p.max_sequences, .max_tokens = p.max_tokens,
                                       .page_size = p.page_size, .n_pages = p.n_pages});
        sv::cuda_engine engine{gpu};
        sv::scheduler s(p);
        for (const sv::request& r : reqs) s.submit(r);
        double t = 0;
        while (!s.done()) {
            sv::run_step(s, engine, [&] { return t; });
            t += 0.01;
            REQUIRE(gpu.free_pages() == s.free_pages());
        }
        REQUIRE(s.preemptions() > 0);
        REQUIRE(s.finished() == int(reqs.size()));
        REQUIRE(gpu.free_pages() == p.n_pages);

        // Each request alone on a one-sequence session: the prompt in one pass, then one token
        // per pass.
        ex::cuda_backend::session solo(model, kv, {.max_sequences = 1, .max_tokens = p.max_tokens});
        int same = 0, total = 0;
        for (const sv::request_state& q : s.requests()) {
            const int seq = solo.add_sequence();
            std::vector<float> logits = solo.forward(seq, q.req.prompt, ex::logits_for::last);
            std::vector<int> alone;
            for (int i = 0; i < q.req.max_new_tokens; ++i) {
                alone.push_back(ex::argmax(logits));
                if (i + 1 < q.req.max_new_tokens)
                    logits = solo.forward(seq, std::span<const int>(&alone.back(), 1),
                                          ex::logits_for::last);
            }
            solo.remove_sequence(seq);
            REQUIRE(q.generated.size() == alone.size());
            for (std::size_t i = 0; i < alone.size(); ++i) same += q.generated[i] == alone[i];
            total += int(alone.size());
        }
        std::printf("serve on CUDA (%s): %d of %d tokens as alone, %d preemptions\n", kv, same,
                    total, s.preemptions());
        REQUIRE(same * 10 >= total * 9);
    }
}
