// tests/io/codec_keys.cpp — the codec file's key mode ("keys": "post-rope" or "pre-rope",
// io/codec_file.hpp): written, read back, absent in older files (unknown), and any other value
// refused naming the file. The tools' refusal of a mismatch is in tests/tools/codec_keys.cpp.
#include "catch.hpp"

#include <kvcar/io/codec_file.hpp>

#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>
#include "common/thrown.hpp"

namespace io = kvcar::io;
namespace fs = std::filesystem;

namespace {

using kvcar::tests::thrown;

/// An identity codec set for `g` fitted to `keys`, written to a temporary file.
std::string write_set(const kvcar::kv_geometry& g, io::codec_keys keys, const std::string& name) {
    io::codec_set s = io::codec_set::identity(g);
    s.keys = keys;
    const std::string path =
        (fs::temp_directory_path() / ("kvcar-io-keys-" + std::to_string(::getpid()) + "-" + name))
            .string();
    io::save_codec_set(s, path);
    return path;
}

/// The file's bytes with `from` replaced by `to` (same length, so the header length holds).
std::vector<std::byte> patched(const std::string& path, const std::string& from,
                               const std::string& to) {
    REQUIRE(from.size() == to.size());
    std::vector<std::byte> bytes = io::detail::read_file_bytes(path, "test");
    std::string text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    const std::size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    std::memcpy(bytes.data() + at, to.data(), to.size());
    return bytes;
}

}  // namespace

TEST_CASE("codec files record their key mode and read it back", "[io][codec_file]") {
    const kvcar::kv_geometry g{.n_layers = 2, .n_kv_heads = 2, .head_dim = 8};
    for (io::codec_keys k : {io::codec_keys::post_rope, io::codec_keys::pre_rope, io::codec_keys::unknown}) {
        const std::string path = write_set(g, k, std::string("rt-") + io::to_string(k));
        CHECK(io::load_codec_set(path, g).keys == k);
        fs::remove(path);
    }
    // Absent: unknown (files written before the field). A value outside the two is refused.
    const std::string path = write_set(g, io::codec_keys::pre_rope, "bad");
    const std::vector<std::byte> bad = patched(path, "pre-rope", "sideways");
    const std::string m = thrown([&] { (void)io::parse_codec_set(bad, "bad.kvc"); });
    INFO(m);
    CHECK(m.find("bad.kvc") != std::string::npos);
    CHECK(m.find("\"keys\" is \"sideways\", not \"post-rope\" or \"pre-rope\"") != std::string::npos);
    fs::remove(path);
}
