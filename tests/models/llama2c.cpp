// Tests for examples/models/llama/llama2c.hpp: llama2.c checkpoints and tokenizer.bin files,
// real ones when the shared data is there, and truncated or malformed copies.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <type_traits>
#include <vector>

#include "catch.hpp"
#include "examples/models/llama/llama2c.hpp"

#include "common/temp_dir.hpp"

using namespace kvcar::examples;
namespace fs = std::filesystem;

static_assert(std::is_aggregate_v<llama2c_config> && std::is_aggregate_v<llama2c_weights>);
static_assert(llama2c_header_bytes == 28);

namespace {

const std::string data_dir = std::string(KVCAR_SHARED_DATA) + "/llama2c";

using kvcar_test::temp_dir;

std::vector<std::byte> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    if (!c.empty()) std::memcpy(b.data(), c.data(), c.size());
    return b;
}

void write_bytes(const std::string& path, const std::vector<std::byte>& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

template <class T>
void put(std::vector<std::byte>& out, T v) {
    const std::size_t at = out.size();
    out.resize(at + sizeof v);
    std::memcpy(out.data() + at, &v, sizeof v);
}

std::vector<std::byte> header(std::initializer_list<std::int32_t> h) {
    std::vector<std::byte> b;
    for (std::int32_t v : h) put(b, v);
    return b;
}

/// A checkpoint whose every array is filled with its position in the file layout (1, 2, ...),
/// freq_cis with -1: reading an array from the wrong place shows up as a wrong constant.
std::vector<std::byte> synthetic_checkpoint(int dim, int hidden, int layers, int heads,
                                            int kv_heads, int vocab, int seq_len, bool shared) {
    std::vector<std::byte> b =
        header({dim, hidden, layers, heads, kv_heads, shared ? vocab : -vocab, seq_len});
    const int hs = dim / heads, kv = kv_heads * hs;
    const auto fill = [&](float value, long n) {
        for (long i = 0; i < n; ++i) put(b, value);
    };
    fill(1, long(vocab) * dim);
    fill(2, long(layers) * dim);
    fill(3, long(layers) * dim * dim);
    fill(4, long(layers) * kv * dim);
    fill(5, long(layers) * kv * dim);
    fill(6, long(layers) * dim * dim);
    fill(7, long(layers) * dim);
    fill(8, long(layers) * hidden * dim);
    fill(9, long(layers) * dim * hidden);
    fill(10, long(layers) * hidden * dim);
    fill(11, dim);
    fill(-1, long(seq_len) * hs);
    if (!shared) fill(12, long(vocab) * dim);
    return b;
}

bool all_equal(const std::vector<float>& v, float x) {
    for (float e : v)
        if (e != x) return false;
    return true;
}

}  // namespace

TEST_CASE("llama2c: aidreams260K.bin loads with its documented header", "[models][data]") {
    const std::string path = data_dir + "/aidreams260K.bin";
    if (!fs::exists(path)) {
        WARN("skipped: " << path << " is absent");
        return;
    }
    const llama2c_weights w = load_llama2c(path);
    const llama2c_config& c = w.config;
    CHECK(c.dim == 64);
    CHECK(c.hidden_dim == 172);
    CHECK(c.n_layers == 4);
    CHECK(c.n_heads == 4);
    CHECK(c.n_kv_heads == 4);
    CHECK(c.vocab_size == 512);
    CHECK(c.seq_len == 128);
    CHECK(c.shared_classifier);
    CHECK(c.head_size() == 16);
    CHECK(c.kv_dim() == 64);
    CHECK(w.token_embedding.size() == 512u * 64);
    CHECK(w.rms_att.size() == 4u * 64);
    CHECK(w.wq.size() == 4u * 64 * 64);
    CHECK(w.wk.size() == 4u * 64 * 64);
    CHECK(w.wv.size() == 4u * 64 * 64);
    CHECK(w.wo.size() == 4u * 64 * 64);
    CHECK(w.rms_ffn.size() == 4u * 64);
    CHECK(w.w1.size() == 4u * 172 * 64);
    CHECK(w.w2.size() == 4u * 64 * 172);
    CHECK(w.w3.size() == 4u * 172 * 64);
    CHECK(w.rms_final.size() == 64);
    CHECK(w.wcls.empty());
    // Values at known offsets of the file: the first embeddings, the first final-norm weights.
    CHECK(w.token_embedding[0] == Approx(0.10804883));
    CHECK(w.token_embedding[1] == Approx(0.15735304));
    CHECK(w.rms_final[0] == Approx(1.3196977));
    CHECK(w.rms_final[2] == Approx(1.3137162));
}

TEST_CASE("llama2c: aidreams_tok512.bin loads 512 pieces", "[models][data]") {
    const std::string path = data_dir + "/aidreams_tok512.bin";
    if (!fs::exists(path)) {
        WARN("skipped: " << path << " is absent");
        return;
    }
    const llama2c_vocab v = load_llama2c_vocab(path, 512);
    CHECK(v.max_token_length == 10);
    REQUIRE(v.pieces.size() == 512);
    REQUIRE(v.scores.size() == 512);
    CHECK(v.pieces[0] == "<unk>");
    CHECK(v.pieces[1] == "\n<s>\n");
    CHECK(v.pieces[2] == "\n</s>\n");
    CHECK(v.pieces[3] == "<0x00>");
    CHECK(v.pieces[258] == "<0xFF>");
    CHECK(v.pieces[259] == "in");
    CHECK(v.pieces[260] == "es");
    CHECK(v.pieces[261] == "er");
    CHECK(v.pieces[262] == " a");
    CHECK(v.scores[259] == 0.0f);
    CHECK(v.scores[260] == -1.0f);
    CHECK(v.scores[262] == -3.0f);
    CHECK(v.pieces[511] == "\xCE\xBC");  // single characters come last
    // The vocabulary size must match the file exactly.
    KVCAR_REQUIRE_ERROR(load_llama2c_vocab(path, 511), "bytes left after 511 tokens");
    KVCAR_REQUIRE_ERROR(load_llama2c_vocab(path, 513), "truncated at token 512 of 513");
}

TEST_CASE("llama2c: truncated and oversized copies are rejected", "[models][data]") {
    const std::string model = data_dir + "/aidreams260K.bin";
    const std::string tok = data_dir + "/aidreams_tok512.bin";
    if (!fs::exists(model) || !fs::exists(tok)) {
        WARN("skipped: " << data_dir << " is absent");
        return;
    }
    temp_dir tmp("cut");
    const std::string cut = tmp.file("cut.bin");
    std::vector<std::byte> bytes = read_bytes(model);
    REQUIRE(bytes.size() == 932124);

    write_bytes(cut, std::vector<std::byte>(bytes.begin(), bytes.end() - 4));
    KVCAR_REQUIRE_ERROR(load_llama2c(cut), cut +
                                               ": truncated: header (dim 64, hidden_dim 172, "
                                               "n_layers 4, n_heads 4, n_kv_heads 4, vocab_size "
                                               "512, seq_len 128) implies 932124 bytes, file "
                                               "has 932120");
    bytes.push_back(std::byte{0});
    write_bytes(cut, bytes);
    KVCAR_REQUIRE_ERROR(load_llama2c(cut), "oversized: header");
    KVCAR_REQUIRE_ERROR(load_llama2c(cut), "implies 932124 bytes, file has 932125");
    write_bytes(cut, std::vector<std::byte>(bytes.begin(), bytes.begin() + 28));
    KVCAR_REQUIRE_ERROR(load_llama2c(cut), "file has 28");
    write_bytes(cut, std::vector<std::byte>(bytes.begin(), bytes.begin() + 10));
    KVCAR_REQUIRE_ERROR(load_llama2c(cut), "truncated: 10 bytes, shorter than the 28-byte header");

    // The tokenizer, cut inside a piece, inside a score and after its first field.
    const std::vector<std::byte> t = read_bytes(tok);
    write_bytes(cut, std::vector<std::byte>(t.begin(), t.end() - 1));
    KVCAR_REQUIRE_ERROR(load_llama2c_vocab(cut, 512),
                        "truncated at token 511: length 2 but 1 bytes");
    write_bytes(cut, std::vector<std::byte>(t.begin(), t.begin() + 4 + 8 * 512 + 100));
    KVCAR_REQUIRE_ERROR(load_llama2c_vocab(cut, 512), "truncated at token");
    write_bytes(cut, std::vector<std::byte>(t.begin(), t.begin() + 4));
    KVCAR_REQUIRE_ERROR(load_llama2c_vocab(cut, 512), "512 tokens need at least 4096 bytes");
    write_bytes(cut, std::vector<std::byte>(t.begin(), t.begin() + 2));
    KVCAR_REQUIRE_ERROR(load_llama2c_vocab(cut, 512), "shorter than the 4-byte max_token_length");
    // A checkpoint is not a tokenizer (its first int32, 64, reads as max_token_length).
    KVCAR_REQUIRE_ERROR(load_llama2c_vocab(model, 512), model);
}

TEST_CASE("llama2c: arrays are read in file order (synthetic GQA checkpoint)", "[models]") {
    // dim 32, hidden 48, 2 layers, 4 heads of 8, 2 KV heads, vocab 10, seq_len 6, own classifier.
    const auto bytes = synthetic_checkpoint(32, 48, 2, 4, 2, 10, 6, false);
    const llama2c_weights w = parse_llama2c(bytes, "synthetic.bin");
    CHECK_FALSE(w.config.shared_classifier);
    CHECK(w.config.vocab_size == 10);
    CHECK(w.config.kv_dim() == 16);
    CHECK(w.token_embedding.size() == 10u * 32);
    CHECK(w.wk.size() == 2u * 16 * 32);
    CHECK(w.wv.size() == 2u * 16 * 32);
    CHECK(w.w2.size() == 2u * 32 * 48);
    CHECK(w.wcls.size() == 10u * 32);
    CHECK(all_equal(w.token_embedding, 1));
    CHECK(all_equal(w.rms_att, 2));
    CHECK(all_equal(w.wq, 3));
    CHECK(all_equal(w.wk, 4));
    CHECK(all_equal(w.wv, 5));
    CHECK(all_equal(w.wo, 6));
    CHECK(all_equal(w.rms_ffn, 7));
    CHECK(all_equal(w.w1, 8));
    CHECK(all_equal(w.w2, 9));
    CHECK(all_equal(w.w3, 10));
    CHECK(all_equal(w.rms_final, 11));
    CHECK(all_equal(w.wcls, 12));  // after the skipped freq_cis

    const auto shared = synthetic_checkpoint(32, 48, 2, 4, 2, 10, 6, true);
    const llama2c_weights s = parse_llama2c(shared, "shared.bin");
    CHECK(s.config.shared_classifier);
    CHECK(s.wcls.empty());
    CHECK(shared.size() == bytes.size() - 10 * 32 * 4);
}

TEST_CASE("llama2c: bad headers are rejected", "[models]") {
    const auto parse = [](std::initializer_list<std::int32_t> h) {
        return parse_llama2c(header(h), "h.bin");
    };
    KVCAR_REQUIRE_ERROR(parse({0, 172, 4, 4, 4, 512, 128}),
                        "llama2c: h.bin: header dim = 0 is invalid (expected positive)");
    KVCAR_REQUIRE_ERROR(parse({64, -1, 4, 4, 4, 512, 128}), "hidden_dim = -1 is invalid");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 0, 4, 4, 512, 128}), "n_layers = 0");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 4, 0, 4, 512, 128}), "n_heads = 0");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 4, 4, 0, 512, 128}), "n_kv_heads = 0");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 4, 4, 4, 0, 128}),
                        "vocab_size = 0 is invalid (expected nonzero)");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 4, 4, 4, -2147483647 - 1, 128}),
                        "vocab_size = -2147483648");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 4, 4, 4, 512, -5}), "seq_len = -5");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 4, 3, 3, 512, 128}), "n_heads 3 does not divide dim 64");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 4, 4, 3, 512, 128}),
                        "n_kv_heads 3 does not divide n_heads 4");
    KVCAR_REQUIRE_ERROR(parse({60, 172, 4, 4, 4, 512, 128}), "head size 15 (dim / n_heads) is odd");
    // Sizes whose product overflows 64 bits must not wrap into a "matching" file size.
    KVCAR_REQUIRE_ERROR(parse({1 << 30, 1 << 30, 1 << 30, 2, 2, 1 << 30, 1 << 30}),
                        "overflow 64 bits");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 4, 4, 4, 512, 128}), "truncated: header (dim 64");
    KVCAR_REQUIRE_ERROR(parse({64, 172, 4, 4, 4, -512, 128}), "vocab_size -512");
    KVCAR_REQUIRE_ERROR(parse_llama2c({}, "empty.bin"), "empty.bin: truncated: 0 bytes");
}

TEST_CASE("llama2c: bad tokenizers are rejected", "[models]") {
    const auto vocab = [](std::int32_t max_len,
                          std::initializer_list<std::pair<float, std::string>> t,
                          std::int32_t forced_len = -2) {
        std::vector<std::byte> b;
        put(b, max_len);
        for (const auto& [score, piece] : t) {
            put(b, score);
            put(b, forced_len == -2 ? std::int32_t(piece.size()) : forced_len);
            for (char ch : piece) b.push_back(std::byte(ch));
        }
        return b;
    };
    const auto ok = vocab(3, {{0.5f, "ab"}, {-1.0f, ""}, {-2.0f, "xyz"}});
    const llama2c_vocab v = parse_llama2c_vocab(ok, 3, "t.bin");
    CHECK(v.pieces == std::vector<std::string>{"ab", "", "xyz"});
    CHECK(v.scores == std::vector<float>{0.5f, -1.0f, -2.0f});

    KVCAR_REQUIRE_ERROR(parse_llama2c_vocab(ok, 0, "t.bin"), "vocab_size 0 is not positive");
    KVCAR_REQUIRE_ERROR(parse_llama2c_vocab(ok, -3, "t.bin"), "vocab_size -3 is not positive");
    KVCAR_REQUIRE_ERROR(parse_llama2c_vocab(vocab(0, {{0.f, ""}}), 1, "t.bin"),
                        "max_token_length 0 is not positive");
    KVCAR_REQUIRE_ERROR(parse_llama2c_vocab(vocab(3, {{0.f, "ab"}}, -1), 1, "t.bin"),
                        "llama2c tokenizer: t.bin: token 0 has length -1, outside [0, "
                        "max_token_length 3]");
    KVCAR_REQUIRE_ERROR(parse_llama2c_vocab(vocab(2, {{0.f, "abc"}}), 1, "t.bin"),
                        "token 0 has length 3");
    KVCAR_REQUIRE_ERROR(parse_llama2c_vocab(vocab(100, {{0.f, "abc"}}, 100), 1, "t.bin"),
                        "truncated at token 0: length 100 but 3 bytes left");
    // A huge vocab_size is refused before anything is reserved for it.
    KVCAR_REQUIRE_ERROR(parse_llama2c_vocab(ok, 2147483647, "t.bin"),
                        "2147483647 tokens need at least 17179869176 bytes");
}

TEST_CASE("llama2c: missing files", "[models]") {
    KVCAR_REQUIRE_ERROR(load_llama2c("/nonexistent/model.bin"),
                        "llama2c: /nonexistent/model.bin: cannot open: no such file");
    KVCAR_REQUIRE_ERROR(load_llama2c_vocab("/nonexistent/tok.bin", 512),
                        "llama2c tokenizer: /nonexistent/tok.bin: cannot open");
}
