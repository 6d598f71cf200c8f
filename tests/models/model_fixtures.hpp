// tests/models/model_fixtures.hpp — what the model tests (gpt2_model.cpp, llama_model.cpp) share:
// the logits fixtures tools/make_model_fixtures.py writes, how far our logits are from them, an
// f32 cache for a model, and a stand-in for a safetensors checkpoint.
//
// A header, not a test: tests/CMakeLists.txt globs *.cpp and *.cu only.
#pragma once

#include "catch.hpp"

#include "examples/models/model.hpp"

#include <kvcar/codec/identity.hpp>
#include <kvcar/io/json.hpp>
#include <kvcar/kv_cache.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace kvcar_test {

/// True when `path` exists; otherwise warns that the test is skipped (shared data is optional).
inline bool have(const std::string& path) {
    if (std::filesystem::exists(path)) return true;
    WARN("skipped: " << path << " is absent");
    return false;
}

/// What tools/make_model_fixtures.py wrote: Hugging Face's float32 logits for a prompt.
struct fixture {
    std::vector<int> ids;
    std::vector<std::vector<std::pair<int, double>>> top5;  // [position][5] (id, logit)
    std::vector<double> last_logits;                        // every logit of the last position
};

inline fixture load_fixture(const std::string& path) {
    const kvcar::io::json_value j = kvcar::io::load_json(path);
    fixture f;
    for (const auto& v : j.at("ids").as_array()) f.ids.push_back(int(v.as_int()));
    for (const auto& row : j.at("top5").as_array()) {
        std::vector<std::pair<int, double>> r;
        for (const auto& e : row.as_array())
            r.emplace_back(int(e.at(0).as_int()), e.at(1).as_double());
        f.top5.push_back(r);
    }
    for (const auto& v : j.at("last_logits").as_array()) f.last_logits.push_back(v.as_double());
    return f;
}

/// max |ours - ref| / max |ref| over the fixture's entries for every position, and over the
/// whole last row. `logits` is [n][vocab].
inline double relative_error(const fixture& f, const std::vector<float>& logits, int vocab) {
    double max_diff = 0, max_ref = 0;
    for (std::size_t t = 0; t < f.top5.size(); ++t) {
        for (const auto& [id, ref] : f.top5[t]) {
            const double ours = logits[t * std::size_t(vocab) + std::size_t(id)];
            max_diff = std::max(max_diff, std::fabs(ours - ref));
            max_ref = std::max(max_ref, std::fabs(ref));
        }
    }
    const std::size_t last = f.top5.size() - 1;
    for (std::size_t i = 0; i < f.last_logits.size(); ++i) {
        const double ours = logits[last * std::size_t(vocab) + i];
        max_diff = std::max(max_diff, std::fabs(ours - f.last_logits[i]));
        max_ref = std::max(max_ref, std::fabs(f.last_logits[i]));
    }
    return max_diff / max_ref;
}

/// relative_error, also reported (as llm.c prints max_diff), so the bound can follow the
/// precision achieved.
inline double reported_error(const fixture& f, const std::vector<float>& logits, int vocab) {
    const double e = relative_error(f, logits, vocab);
    WARN("relative error vs transformers: " << e);
    return e;
}

inline int argmax(const float* x, int n) { return int(std::max_element(x, x + n) - x); }

/// The uncompressed cache the fixtures were checked through.
using f32_cache = kvcar::kv_cache<kvcar::identity_codec<float>>;

/// An f32 cache of `m`'s geometry for `max_sequences` sequences of `max_tokens` tokens.
inline f32_cache make_f32_cache(const kvcar::examples::language_model& m, int max_sequences,
                                int max_tokens) {
    const kvcar::kv_geometry g = m.cache_geometry();
    return f32_cache(kvcar::dense_layout(g), kvcar::identity_codec<float>{g.head_dim},
                     {max_sequences, max_tokens});
}

/// A stand-in for a safetensors checkpoint: named float tensors with shapes.
struct fake_tensors {
    struct entry {
        std::vector<std::int64_t> shape;
        std::vector<float> data;
    };
    std::map<std::string, entry> tensors;
    bool contains(const std::string& name) const { return tensors.count(name) != 0; }
    const entry& tensor(const std::string& name) const { return tensors.at(name); }
    std::vector<float> to_float(const std::string& name) const { return tensors.at(name).data; }
    /// A tensor of `shape` filled with 0.01 (small enough that a forward pass stays finite).
    void add(const std::string& name, std::vector<std::int64_t> shape) {
        std::int64_t n = 1;
        for (auto d : shape) n *= d;
        tensors[name] = {shape, std::vector<float>(std::size_t(n), 0.01f)};
    }
};

}  // namespace kvcar_test
