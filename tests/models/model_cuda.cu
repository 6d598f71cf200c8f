// Tests for examples/models/cuda (device_model.cuh, backend.hpp/.cu): the CUDA GPT-2 and Llama
// give the CPU reference models' logits through the same codec, for a batch of three sequences
// of different prompt lengths (one batched prefill, a mixed chunk, then ten batched decode
// steps), on synthetic models (head_dim 64: the direct decode kernel; untied head; GQA) and on
// the shared tiny checkpoints (head_dim 32: the generic kernel); aidreams260K's greedy ids equal
// run.c's; the session computes perplexity's log-probabilities and greedy ids (the argmax of its
// logits); decode steps replayed as CUDA graphs give the ids of launches one by one; bad
// batches throw and leave the cache as it was. Real checkpoints are read from
// KVCAR_SHARED_DATA; those cases skip without it.
// Codec files: model_cuda_codec_file.cu; the shared helpers: model_cuda_fixtures.cuh.
#include "model_cuda_fixtures.cuh"

using namespace model_cuda_test;

TEST_CASE("model_cuda: synthetic GPT-2 and Llama match the CPU for every cache",
          "[models][model_cuda]") {
    const auto run = [](const ex::language_model& m) {
        for_each_codec(m.cache_geometry().head_dim, [&](const auto& codec, double tol,
                                                        const char* name) {
            check_model(m, codec, tol, name);
        });
    };
    run(synthetic_gpt2());
    run(synthetic_llama(ex::cached_keys::post_rope));
    // Pre-RoPE keys: the attention kernel rotates queries and decoded keys (RoPE on read).
    const auto pre = synthetic_llama(ex::cached_keys::pre_rope);
    check_model(pre, kvcar::identity_codec<float>{64}, 1e-5, "identity-f32");
    check_model(pre, kvcar::identity_codec<kvcar::f16>{64}, 1e-3, "identity-f16");
}

TEST_CASE("model_cuda: gpt2-tiny and llama-tiny match the CPU", "[models][model_cuda][data]") {
    for (const char* name : {"gpt2-tiny", "llama-tiny"}) {
        const std::string path = data_dir + "/models/" + name;
        if (!have(path + "/model.safetensors")) continue;
        const auto m = ex::language_model::load(path, {.threads = 2});
        const int hd = m.cache_geometry().head_dim;
        check_model(m, kvcar::identity_codec<float>{hd}, 1e-5, "identity-f32");
        check_model(m, kvcar::identity_codec<kvcar::f16>{hd}, 1e-3, "identity-f16");
    }
    const std::string llama = data_dir + "/models/llama-tiny";
    if (have(llama + "/model.safetensors")) {
        const auto m =
            ex::language_model::load(llama, {.threads = 2, .keys = ex::cached_keys::pre_rope});
        check_model(m, kvcar::identity_codec<float>{32}, 1e-5, "identity-f32");
    }
}

TEST_CASE("model_cuda: aidreams260K greedy ids equal run.c's golden ids",
          "[models][model_cuda][data]") {
    const std::string path = data_dir + "/llama2c/aidreams260K.bin";
    if (!have(path)) return;
    const std::vector<int> golden = {1,   319, 459, 355, 260, 275, 429, 339, 315, 374, 327,
                                     446, 262, 421, 392, 275, 280, 269, 440, 270, 283, 446,
                                     299, 303, 266, 358, 430, 312, 379, 441, 260, 446, 262,
                                     421, 392, 275, 280, 269, 440, 270, 283};
    for (const auto keys : {ex::cached_keys::post_rope, ex::cached_keys::pre_rope}) {
        for (const char* kv : {"identity-f32", "identity-f16"}) {
            const auto m = ex::language_model::load(path, {.threads = 1, .keys = keys});
            ex::cuda_backend::session gpu(m, kv, {.max_sequences = 1, .max_tokens = 128});
            const int seq = gpu.add_sequence();
            std::vector<int> ids = {1};  // BOS
            std::vector<float> logits = gpu.forward(seq, ids, ex::logits_for::last);
            REQUIRE(logits.size() == 512);
            if (keys == ex::cached_keys::post_rope && std::string(kv) == "identity-f32") {
                // run.c's logits after BOS: 319 = 11.064, 459 = 5.239, 461 = 4.879.
                CHECK(logits[319] == Approx(11.064).margin(1e-3));
                CHECK(logits[459] == Approx(5.239).margin(1e-3));
                CHECK(logits[461] == Approx(4.879).margin(1e-3));
            }
            for (int step = 0; step < 40; ++step) {
                const int next =
                    int(std::max_element(logits.begin(), logits.end()) - logits.begin());
                ids.push_back(next);
                logits = gpu.forward(seq, std::span<const int>(&ids.back(), 1),
                                     ex::logits_for::last);
            }
            INFO("keys " << ex::to_string(keys) << ", cache " << kv);
            CHECK(ids == golden);
            CHECK(gpu.length(seq) == 41);
        }
    }
}

TEST_CASE("model_cuda: the session's log-probabilities are the CPU perplexity's",
          "[models][model_cuda]") {
    const auto m = synthetic_gpt2();
    const int V = m.vocab_size();
    const std::vector<int> ids = random_ids(41, V, 5);
    const std::span<const int> inputs(ids.data(), 40), targets(ids.data() + 1, 40);

    kvcar::kv_cache<kvcar::identity_codec<float>> cpu(kvcar::dense_layout(m.cache_geometry()),
                                                      kvcar::identity_codec<float>{64}, {1, 64});
    const std::vector<float> logits = m.forward(cpu, cpu.add_sequence(), inputs);

    ex::cuda_backend::session gpu(m, "identity-f32", {.max_sequences = 2, .max_tokens = 64});
    CHECK(gpu.bytes_per_token() == 2u * 2u * 4u * 64u * 4u);  // layers x K,V x heads x hd x 4 B
    CHECK(gpu.compression_ratio() == Approx(0.5));
    const int seq = gpu.add_sequence();
    const std::vector<double> lp = gpu.log_probs(seq, inputs, targets);
    REQUIRE(lp.size() == 40);
    for (std::size_t i = 0; i < 40; ++i) {
        const double want = ex::log_prob(
            std::span<const float>(&logits[i * std::size_t(V)], std::size_t(V)), targets[i]);
        CHECK(lp[i] == Approx(want).margin(1e-4));
    }
    CHECK(gpu.length(seq) == 40);
    CHECK(gpu.bytes_used() == 40u * gpu.bytes_per_token());
    // A window after remove_sequence starts fresh: the same inputs give the same answers.
    gpu.remove_sequence(seq);
    const int again = gpu.add_sequence();
    const std::vector<double> lp2 = gpu.log_probs(again, inputs, targets);
    for (std::size_t i = 0; i < 40; ++i) CHECK(lp2[i] == Approx(lp[i]).margin(1e-9));
    CHECK(gpu.bytes_used() == 40u * gpu.bytes_per_token());
}

TEST_CASE("model_cuda: the session's greedy ids are the argmax of its logits",
          "[models][model_cuda]") {
    // Two sessions fed the same batches: one returns each item's last logits, the other only its
    // greedy id (what kvcar-serve samples with). A prefill of three prompts, then decode steps.
    const auto m = synthetic_llama(ex::cached_keys::post_rope);
    const int V = m.vocab_size();
    ex::cuda_backend::session logits_gpu(m, "identity-f16", {.max_sequences = 3, .max_tokens = 64});
    ex::cuda_backend::session greedy_gpu(m, "identity-f16", {.max_sequences = 3, .max_tokens = 64});
    std::vector<int> seqs;
    for (int i = 0; i < 3; ++i) {
        seqs.push_back(logits_gpu.add_sequence());
        REQUIRE(greedy_gpu.add_sequence() == seqs.back());
    }
    std::vector<int> counts{7, 1, 12};
    std::vector<int> tokens = random_ids(20, V, 11);
    for (int step = 0; step < 6; ++step) {
        const std::vector<float> logits =
            logits_gpu.forward(seqs, counts, tokens, ex::logits_for::last);
        const std::vector<int> ids = greedy_gpu.greedy(seqs, counts, tokens);
        REQUIRE(ids.size() == seqs.size());
        for (std::size_t b = 0; b < seqs.size(); ++b)
            CHECK(ids[b] == ex::argmax(std::span<const float>(logits).subspan(
                                b * std::size_t(V), std::size_t(V))));
        counts.assign(seqs.size(), 1);  // decode steps feed the greedy ids back
        tokens = ids;
    }
}

TEST_CASE("model_cuda: decode steps replayed as CUDA graphs give the ids of launches one by one",
          "[models][model_cuda][graphs]") {
    // Two sessions fed the same batches, one replaying decode steps as CUDA graphs
    // (decode_graphs.cuh), one enqueueing the same launches one by one. Graphs run the very same
    // kernels with the same arguments, so the ids must agree exactly, step by step, while the
    // batch changes size, contexts cross a length bucket and reach the capacity's (100), and a
    // long prefill in between reallocates the activations every captured graph points to.
    for (const ex::cached_keys keys : {ex::cached_keys::post_rope, ex::cached_keys::pre_rope}) {
        const auto m = synthetic_llama(keys, 128);
        const int V = m.vocab_size();
        for (const char* kv : {"identity-f16", "int8", "fp8"}) {
            INFO("--kv " << kv << (keys == ex::cached_keys::pre_rope ? ", pre-RoPE keys" : ""));
            ex::cuda_backend::session graphs(m, kv, {.max_sequences = 4, .max_tokens = 100});
            ex::cuda_backend::session plain(
                m, kv, {.max_sequences = 4, .max_tokens = 100, .decode_graphs = false});
            std::vector<int> seqs;
            for (int i = 0; i < 3; ++i) {
                seqs.push_back(graphs.add_sequence());
                REQUIRE(plain.add_sequence() == seqs.back());
            }
            std::vector<int> counts{7, 1, 12};
            std::vector<int> tokens = random_ids(20, V, 11);
            for (int step = 0; step < 70; ++step) {
                if (step == 30) {  // one sequence ends, a new one prefills 40 tokens beside the decodes
                    graphs.remove_sequence(seqs[1]);
                    plain.remove_sequence(seqs[1]);
                    const int fresh = graphs.add_sequence();
                    REQUIRE(plain.add_sequence() == fresh);
                    seqs[1] = fresh;
                    counts[1] = 40;
                    const std::vector<int> prompt = random_ids(40, V, 3);
                    tokens.insert(tokens.begin() + 2, prompt.begin(), prompt.end());
                    tokens.erase(tokens.begin() + 1);
                }
                if (step == 50) {  // the batch shrinks to two
                    graphs.remove_sequence(seqs[0]);
                    plain.remove_sequence(seqs[0]);
                    seqs.erase(seqs.begin());
                    counts.erase(counts.begin());
                    tokens.erase(tokens.begin());
                }
                const std::vector<int> want = plain.greedy(seqs, counts, tokens);
                const std::vector<int> got = graphs.greedy(seqs, counts, tokens);
                INFO("step " << step);
                REQUIRE(got == want);
                counts.assign(seqs.size(), 1);
                tokens = got;
            }
            const auto t = graphs.pass_host_time();
            // Keys (items, bucket): (3, 64) and (3, 100) before the prefill, (3, 100) again
            // after it reallocated the activations, (2, 100): each captured once its first step
            // has run uncaptured.
            CHECK(t.graph_captures >= 4);
            CHECK(t.graph_steps >= 55);
            CHECK(plain.pass_host_time().graph_steps == 0);
            CHECK(plain.pass_host_time().graph_captures == 0);
        }
    }
}

TEST_CASE("model_cuda: argmax_kernel gives the host argmax on ties, infinities and NaNs",
          "[models][model_cuda]") {
    // Rows shorter and longer than the block, the maximum in every lane of a warp, ties inside
    // one thread's strided elements and across threads, -inf rows and NaNs (never the largest).
    std::vector<std::vector<float>> rows;
    for (int n : {1, 31, 256, 257, 1000, 32000}) {
        for (int at : {0, n / 2, n - 1}) {
            std::vector<float> x(static_cast<std::size_t>(n), -1.0f);
            x[std::size_t(at)] = 2.0f;
            rows.push_back(x);
            if (at + 256 < n) x[std::size_t(at + 256)] = 2.0f;  // a tie in the same thread
            if (at + 1 < n) x[std::size_t(at + 1)] = 2.0f;      // a tie in the next thread
            rows.push_back(x);
        }
    }
    rows.push_back(std::vector<float>(300, -INFINITY));
    std::vector<float> nan_first(300, 0.5f);
    nan_first[0] = NAN;
    nan_first[299] = 0.75f;
    rows.push_back(nan_first);
    rows.push_back(std::vector<float>(300, NAN));
    // One launch per row length (the kernel takes a fixed vocab per launch).
    for (const std::vector<float>& x : rows) {
        const kvcar::gpu::device_buffer<float> dev(x);
        kvcar::gpu::device_buffer<std::int32_t> out(std::size_t(1));
        ex::cuda_ops::argmax_kernel<<<1, ex::cuda_ops::row_threads>>>(out.data(), dev.data(),
                                                                      int(x.size()));
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        std::int32_t got = -1;
        KVCAR_CUDA_CHECK(cudaMemcpy(&got, out.data(), sizeof got, cudaMemcpyDeviceToHost));
        CHECK(got == ex::argmax(x));
    }
}

TEST_CASE("model_cuda: bad batches throw and leave the cache unchanged",
          "[models][model_cuda][errors]") {
    const auto m = synthetic_gpt2();
    device_model gpu(m);
    device_kv_cache<kvcar::identity_codec<float>> cache(
        kvcar::dense_layout(m.cache_geometry()), kvcar::identity_codec<float>{64},
        {.max_sequences = 3, .max_tokens = 128, .page_size = 16, .n_pages = 4});
    const int a = cache.add_sequence(), b = cache.add_sequence();
    const std::vector<int> two = {1, 2}, one = {1};
    (void)gpu.forward(cache, a, two);
    const int free_pages = cache.free_pages();
    const auto unchanged = [&] {
        CHECK(cache.length(a) == 2);
        CHECK(cache.length(b) == 0);
        CHECK(cache.free_pages() == free_pages);
    };
    const std::vector<int> seqs = {a, b}, counts = {1, 1};

    SECTION("token id outside the vocabulary") {
        const std::vector<int> bad = {1, 300};
        KVCAR_REQUIRE_ERROR(gpu.forward(cache, token_batch{seqs, counts, bad}),
                            "outside the vocabulary");
        unchanged();
    }
    SECTION("a sequence that is not live") {
        const std::vector<int> dead = {a, 2};
        KVCAR_REQUIRE_ERROR(gpu.forward(cache, token_batch{dead, counts, two}), "not live");
        unchanged();
    }
    SECTION("a sequence twice in one batch") {
        const std::vector<int> twice = {a, a};
        KVCAR_REQUIRE_ERROR(gpu.forward(cache, token_batch{twice, counts, two}), "appears twice");
        unchanged();
    }
    SECTION("counts that do not add up to the tokens") {
        const std::vector<int> three = {1, 2, 3};
        KVCAR_REQUIRE_ERROR(gpu.forward(cache, token_batch{seqs, counts, three}), "add up to");
        unchanged();
    }
    SECTION("an empty item") {
        const std::vector<int> zero = {0, 2};
        KVCAR_REQUIRE_ERROR(gpu.forward(cache, token_batch{seqs, zero, two}), "at least one");
        unchanged();
    }
    SECTION("past the model's context of 64 positions") {
        const std::vector<int> long_prompt = random_ids(63, 300, 1);
        KVCAR_REQUIRE_ERROR(gpu.forward(cache, a, long_prompt), "context of 64");
        unchanged();
    }
    SECTION("out of pages: the pool holds 4 pages of 16 tokens") {
        const std::vector<int> fifty = random_ids(50, 300, 2);
        KVCAR_REQUIRE_ERROR(gpu.forward(cache, b, fifty), "out of pages");
        unchanged();
    }
    SECTION("a cache shaped for another model") {
        device_kv_cache<kvcar::identity_codec<float>> other(
            kvcar::dense_layout({2, 2, 64}), kvcar::identity_codec<float>{64},
            {.max_sequences = 1, .max_tokens = 16, .page_size = 16, .n_pages = 1});
        const int s = other.add_sequence();
        KVCAR_REQUIRE_ERROR(gpu.forward(other, s, one), "shaped");
        CHECK(other.length(s) == 0);
        unchanged();
    }
    SECTION("a target outside the vocabulary") {
        const std::vector<int> targets = {5, -1};
        KVCAR_REQUIRE_ERROR(gpu.log_probs(cache, token_batch{seqs, counts, two}, targets),
                            "outside the vocabulary");
        unchanged();
    }
    SECTION("the session refuses an unknown cache name") {
        KVCAR_REQUIRE_ERROR(ex::cuda_backend::session(m, "identity-f12", {}), "not a known cache");
        unchanged();
    }
    // After every refusal the cache still works: a valid step appends one token to each.
    const std::vector<float> logits = gpu.forward(cache, token_batch{seqs, counts, two},
                                                  ex::logits_for::last);
    CHECK(logits.size() == 2u * 300u);
    CHECK(cache.length(a) == 3);
    CHECK(cache.length(b) == 1);
}
