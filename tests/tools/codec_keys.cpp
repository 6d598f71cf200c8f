// tests/tools/codec_keys.cpp — the tools' refusal of a codec file fitted to other keys than the
// run caches (tool_common.hpp check_codec_file_keys / check_kv_option; the file's "keys" field
// itself is tested in tests/io/codec_keys.cpp). Also: --keys pre is refused on GPT-2, which has
// no RoPE, and the shipped demo codec file still loads.
#include "catch.hpp"

#include "examples/models/model.hpp"
#include "examples/models/tool_common.hpp"

#include <kvcar/io/codec_file.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>
#include "common/thrown.hpp"

namespace ex = kvcar::examples;
namespace io = kvcar::io;
namespace fs = std::filesystem;

namespace {

const std::string gpt2_dir = std::string(KVCAR_SOURCE_DIR) + "/models/gpt2-tiny";
const std::string llama_dir = std::string(KVCAR_SHARED_DATA) + "/models/llama-tiny";

using kvcar::tests::thrown;

std::string temp_path(const std::string& name) {
    return (fs::temp_directory_path() /
            ("kvcar-keys-" + std::to_string(::getpid()) + "-" + name))
        .string();
}

/// An identity codec set for `g` fitted to `keys`, written to a temporary file.
std::string write_set(const kvcar::kv_geometry& g, io::codec_keys keys, const std::string& name,
                      const std::string& notes = "") {
    io::codec_set s = io::codec_set::identity(g);
    s.keys = keys;
    s.calibration.notes = notes;
    const std::string path = temp_path(name);
    io::save_codec_set(s, path);
    return path;
}

}  // namespace

TEST_CASE("files without the field: the old notes decide, else post-RoPE (with a note)",
          "[tools][codec_file]") {
    io::codec_set s;
    bool assumed = false;
    CHECK(ex::codec_file_keys(s, &assumed) == io::codec_keys::post_rope);
    CHECK(assumed);
    s.calibration.notes = "kvcar-calibrate: codec=linear keys=pre-rope ctx=512";
    CHECK(ex::codec_file_keys(s, &assumed) == io::codec_keys::pre_rope);
    CHECK(assumed);
    s.keys = io::codec_keys::post_rope;  // the field wins over the notes
    CHECK(ex::codec_file_keys(s, &assumed) == io::codec_keys::post_rope);
    CHECK_FALSE(assumed);
}

TEST_CASE("GPT-2: --keys pre is refused (no RoPE); a pre-RoPE file is refused", "[tools]") {
    const std::string m = thrown([] {
        (void)ex::language_model::load(gpt2_dir, {.threads = 1, .keys = ex::cached_keys::pre_rope});
    });
    INFO(m);
    CHECK(m.find("--keys pre does not apply to GPT-2") != std::string::npos);
    CHECK(m.find("no RoPE") != std::string::npos);

    const ex::language_model model = ex::language_model::load(gpt2_dir, {.threads = 1});
    CHECK(ex::run_keys(model) == io::codec_keys::post_rope);
    const std::string pre = write_set(model.cache_geometry(), io::codec_keys::pre_rope, "g-pre");
    const std::string refused = thrown([&] { ex::check_kv_option("kvcar-x", "file:" + pre, model); });
    INFO(refused);
    CHECK(refused.find("was fitted to pre-rope keys, but this run caches post-rope keys") !=
          std::string::npos);
    const std::string post = write_set(model.cache_geometry(), io::codec_keys::post_rope, "g-post");
    CHECK(thrown([&] { ex::check_kv_option("kvcar-x", "file:" + post, model); }).empty());
    fs::remove(pre);
    fs::remove(post);

    // --kv names: unknown ones and a missing file are refused before any work.
    CHECK(thrown([&] { ex::check_kv_option("kvcar-x", "int4", model); })
              .find("--kv 'int4' is not a known cache") != std::string::npos);
    CHECK(thrown([&] { ex::check_kv_option("kvcar-x", "file:PATH", model); }).find("no such file") !=
          std::string::npos);
    CHECK(thrown([&] { ex::check_kv_option("kvcar-x", "file:", model); })
              .find("needs a codec file path") != std::string::npos);
    CHECK(thrown([&] { ex::check_kv_option("kvcar-x", "identity-f16", model); }).empty());
}

TEST_CASE("the shipped demo codec file still loads and passes the checks", "[tools][codec_file]") {
    const ex::language_model model = ex::language_model::load(gpt2_dir, {.threads = 1});
    const std::string path = gpt2_dir + "/kv-linear-d32-int8.kvc";
    const io::codec_set set = io::load_codec_set(path, model.cache_geometry());
    CHECK(set.bytes_per_token() == 480);
    CHECK(ex::codec_file_keys(set) == io::codec_keys::post_rope);
    CHECK(thrown([&] { ex::check_kv_option("kvcar-x", "file:" + path, model); }).empty());
    CHECK(ex::kv_bytes_per_token("file:" + path, model) == 480.0);
    CHECK(ex::kv_bytes_per_token("identity-f16", model) == 3072.0);
    CHECK(ex::kv_bytes_per_token("identity-f32", model) == 6144.0);
    CHECK(ex::kv_bytes_per_token("int8", model) == Approx(3072.0 * 40 / 64));
}

TEST_CASE("Llama: a codec file fitted to other keys than --keys caches is refused", "[tools]") {
    if (!fs::exists(llama_dir)) {
        WARN("skipped: " << llama_dir << " is absent");
        return;
    }
    const ex::language_model post = ex::language_model::load(llama_dir, {.threads = 1});
    const ex::language_model pre =
        ex::language_model::load(llama_dir, {.threads = 1, .keys = ex::cached_keys::pre_rope});
    CHECK(ex::run_keys(post) == io::codec_keys::post_rope);
    CHECK(ex::run_keys(pre) == io::codec_keys::pre_rope);
    const std::string pre_file = write_set(pre.cache_geometry(), io::codec_keys::pre_rope, "l-pre");
    const std::string m = thrown([&] { ex::check_kv_option("kvcar-x", "file:" + pre_file, post); });
    INFO(m);
    CHECK(m.find("was fitted to pre-rope keys, but this run caches post-rope keys; run with "
                 "--keys pre") != std::string::npos);
    CHECK(thrown([&] { ex::check_kv_option("kvcar-x", "file:" + pre_file, pre); }).empty());
    // An old file whose notes say pre-RoPE: refused under post too.
    const std::string old = write_set(pre.cache_geometry(), io::codec_keys::unknown, "l-old",
                                      "kvcar-calibrate: codec=linear keys=pre-rope");
    CHECK(thrown([&] { ex::check_kv_option("kvcar-x", "file:" + old, post); })
              .find("was fitted to pre-rope keys") != std::string::npos);
    fs::remove(pre_file);
    fs::remove(old);
}
