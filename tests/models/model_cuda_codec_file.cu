// Tests for examples/models/cuda with codec files: a file's codecs (whole-layer linear latents in
// f16 and int8, identity with K/V reuse, a mix of every kind) give the same logits on the GPU as
// on the CPU, through the session the tools use.
#include "model_cuda_fixtures.cuh"

using namespace model_cuda_test;

namespace {

/// Codec files for the synthetic GPT-2 (2 layers x 4 KV heads x 64), one per path the CUDA
/// session takes for a file: whole-layer linear f16 latents (the tensor-core latent path),
/// whole-layer linear int8 latents (read in place), a whole-layer f16 autoencoder (its
/// tensor-core path: fp16 operands, hence the 1e-2 bound), identity f16 with K/V reuse, and a
/// mix of every kind and storage with reuse (any_codec, decoded per record).
kvcar::io::codec_set synthetic_codec_set(const kvcar::kv_geometry& g, const std::string& which) {
    using kvcar::io::slot_codec;
    using kvcar::latent_storage;
    std::mt19937 rng(11);
    const auto linear = [&](int width, int rank, int heads) {
        kvcar::linear_params p;
        p.width = width;
        p.rank = rank;
        p.heads = heads;
        p.mean = normal(std::size_t(width), rng, 0.0f, 0.2f);
        // Columns of norm ~1: latents and reconstructions keep the scale of K and V.
        p.basis = normal(std::size_t(width) * std::size_t(rank), rng, 0.0f,
                         1.0f / std::sqrt(float(width)));
        return p;
    };
    const auto autoencoder = [&](int width, int hidden, int latent) {
        kvcar::folded_autoencoder f;
        f.width = width;
        f.hidden = hidden;
        f.latent = latent;
        f.slope = 0.02f;
        const auto w = [&](int rows, int cols) {
            return normal(std::size_t(rows) * std::size_t(cols), rng, 0.0f,
                          1.0f / std::sqrt(float(cols)));
        };
        f.enc1_w = w(hidden, width);
        f.enc1_b = normal(std::size_t(hidden), rng, 0.0f, 0.05f);
        f.enc2_wt = w(hidden, latent);
        f.enc2_b = normal(std::size_t(latent), rng, 0.0f, 0.05f);
        f.dec1_w = w(hidden, latent);
        f.dec1_b = normal(std::size_t(hidden), rng, 0.0f, 0.05f);
        f.dec2_wt = w(hidden, width);
        f.dec2_b = normal(std::size_t(width), rng, 0.0f, 0.05f);
        return f;
    };
    kvcar::io::codec_set s;
    s.geometry = g;
    s.heads_per_group =
        (which == "linear-f16" || which == "linear-int8" || which == "autoencoder-f16")
            ? g.n_kv_heads
            : 1;
    if (which == "reuse" || which == "mixed") {
        s.key_reuse = {{1, 1, 0, 1}};
        s.value_reuse = {{1, 3, 0, 3}};
    }
    const kvcar::reuse_map map = s.layout();
    const int width = s.heads_per_group * g.head_dim;
    for (int slot = 0; slot < map.n_slots(); ++slot) {
        const kvcar::slot_owner o = map.owner(slot);
        if (which == "linear-f16" || which == "linear-int8") {
            s.slots.push_back(slot_codec::make_linear(
                o.layer, o.group, o.kind, linear(width, width / 2, s.heads_per_group),
                which == "linear-f16" ? latent_storage::f16 : latent_storage::int8));
        } else if (which == "autoencoder-f16") {
            s.slots.push_back(slot_codec::make_autoencoder(o.layer, o.group, o.kind,
                                                           autoencoder(width, 64, 32),
                                                           latent_storage::f16));
        } else if (which == "reuse") {
            s.slots.push_back(slot_codec::identity(o.layer, o.group, o.kind, width));
        } else {  // mixed: every kind, every storage
            const latent_storage storages[] = {latent_storage::f32, latent_storage::f16,
                                               latent_storage::bf16, latent_storage::int8,
                                               latent_storage::fp8_e4m3};
            const latent_storage st = storages[slot % 5];
            switch (slot % 3) {
                case 0:
                    s.slots.push_back(slot_codec::identity(o.layer, o.group, o.kind, width, st));
                    break;
                case 1:
                    s.slots.push_back(
                        slot_codec::make_linear(o.layer, o.group, o.kind, linear(width, 40, 1),
                                                st));
                    break;
                default:
                    s.slots.push_back(slot_codec::make_autoencoder(
                        o.layer, o.group, o.kind, autoencoder(width, 48, 32), st));
            }
        }
    }
    s.validate();
    return s;
}

}  // namespace

TEST_CASE("model_cuda: codec files run on the GPU as on the CPU", "[model_cuda][codec_file]") {
    const auto m = synthetic_gpt2();
    const int V = m.vocab_size();
    const kvcar::kv_geometry g = m.cache_geometry();
    const std::vector<int> ids = random_ids(48, V, 9);
    const std::span<const int> prompt(ids.data(), 40);
    const fs::path dir =
        fs::temp_directory_path() / ("kvcar-model-cuda-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    // The same records on both sides; what differs is float rounding (and, for int8/fp8, a
    // latent that lands on the other side of a step): tolerances as for_each_codec's.
    const std::pair<const char*, double> cases[] = {
        {"linear-f16", 1e-3}, {"linear-int8", 1e-2}, {"autoencoder-f16", 1e-2},
        {"reuse", 1e-3},      {"mixed", 1e-2}};
    for (const auto& [which, tolerance] : cases) {
        const kvcar::io::codec_set set = synthetic_codec_set(g, which);
        const std::string path = (dir / (std::string(which) + ".kvc")).string();
        kvcar::io::save_codec_set(set, path);

        // CPU: the tools' codec-file cache, one prompt then 8 single-token steps.
        kvcar::kv_cache<kvcar::any_codec, kvcar::reuse_map> cpu(set.layout(), set.codecs(),
                                                                {1, 64});
        const int cpu_seq = cpu.add_sequence();
        std::vector<float> want = m.forward(cpu, cpu_seq, prompt, ex::logits_for::last);
        ex::cuda_backend::session gpu(m, "file:" + path, {.max_sequences = 2, .max_tokens = 64});
        const int seq = gpu.add_sequence();
        std::vector<float> got = gpu.forward(seq, prompt, ex::logits_for::last);
        error_meter err;
        REQUIRE(got.size() == want.size());
        err.add(got.data(), want.data(), want.size());
        for (int step = 40; step < 48; ++step) {
            const std::span<const int> token(&ids[std::size_t(step)], 1);
            want = m.forward(cpu, cpu_seq, token, ex::logits_for::last);
            got = gpu.forward(seq, token, ex::logits_for::last);
            REQUIRE(got.size() == want.size());
            err.add(got.data(), want.data(), want.size());
        }
        std::printf("model_cuda file:%-12s prompt 40 + 8 decode steps: rel err vs CPU %.2e "
                    "(tolerance %.0e), %zu bytes/token\n",
                    which, err.relative(), tolerance, gpu.bytes_per_token());
        INFO("codec file " << which);
        CHECK(err.relative() < tolerance);
        CHECK(gpu.bytes_per_token() == cpu.bytes_per_token());
        CHECK(gpu.length(seq) == 48);
    }
    // A file for another model is refused before anything is allocated.
    const auto other = kvcar::io::codec_set::identity(kvcar::kv_geometry{3, 4, 64});
    const std::string other_path = (dir / "other.kvc").string();
    kvcar::io::save_codec_set(other, other_path);
    KVCAR_REQUIRE_ERROR(ex::cuda_backend::session(m, "file:" + other_path,
                                                  {.max_sequences = 1, .max_tokens = 64}),
                        "was made for 3 layers");
    fs::remove_all(dir);
}
