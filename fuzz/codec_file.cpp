// Fuzzes kvcar::io::parse_codec_set (a safetensors file whose "kvcar" metadata describes every
// slot's codec), straight from the input bytes; load_codec_set(path) is the same parser over a
// file's bytes. An accepted set must be usable: every codec view encodes and decodes a vector
// (AddressSanitizer sees any parameter array shorter than its codec reads), and the set saves and
// loads again to the same thing.
//
// Only that round trip touches the disk (save_codec_set writes a file), in $TMPDIR.
// Seeds: KVCAR_FUZZ_WRITE_SEEDS=fuzz/corpus/codec_file build-fuzz/fuzz/fuzz_codec_file
// writes files made by save_codec_set itself, so they follow the format as the writer does.
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "kvcar/io/codec_file.hpp"

namespace {

namespace io = kvcar::io;

std::string temp_path(const char* suffix) {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/kvcar-fuzz-codec-" +
           std::to_string(::getpid()) + suffix;
}

std::vector<float> ramp(std::size_t n, float scale) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.7f * float(i) + 0.3f);
    return v;
}

kvcar::linear_params small_linear(int width, int rank, int heads) {
    kvcar::linear_params p;
    p.width = width;
    p.rank = rank;
    p.heads = heads;
    p.mean = ramp(std::size_t(width), 0.1f);
    p.basis = ramp(std::size_t(width) * std::size_t(rank), 0.5f);
    return p;
}

kvcar::folded_autoencoder small_autoencoder(int width, int hidden, int latent) {
    kvcar::folded_autoencoder a;
    a.width = width;
    a.hidden = hidden;
    a.latent = latent;
    a.slope = 0.01f;
    const auto D = std::size_t(width), h = std::size_t(hidden), d = std::size_t(latent);
    a.enc1_w = ramp(h * D, 0.3f);
    a.enc1_b = ramp(h, 0.1f);
    a.enc2_wt = ramp(h * d, 0.3f);
    a.enc2_b = ramp(d, 0.1f);
    a.dec1_w = ramp(h * d, 0.3f);
    a.dec1_b = ramp(h, 0.1f);
    a.dec2_wt = ramp(h * D, 0.3f);
    a.dec2_b = ramp(D, 0.1f);
    return a;
}

void write_seeds(const std::string& dir) {
    std::filesystem::create_directories(dir);
    // The uncompressed baseline: 2 layers x 2 KV heads x head_dim 4, one head per group.
    io::codec_set identity = io::codec_set::identity({2, 2, 4});
    identity.model = {"gpt2", "seed-identity"};
    io::save_codec_set(identity, dir + "/identity");

    // Whole-layer groups (2 heads x 4 = 8 wide), every codec kind and several storages, and
    // layer 2 reusing layer 1's K and layer 0's V.
    io::codec_set mixed;
    mixed.geometry = {3, 2, 4};
    mixed.heads_per_group = 2;
    mixed.key_reuse = {{2, 0, 1, 0}};
    mixed.value_reuse = {{2, 0, 0, 0}};
    mixed.model = {"llama", "seed-mixed"};
    mixed.calibration = {"synthetic", 1234, "written by fuzz/codec_file.cpp"};
    using kvcar::kv_kind;
    using kvcar::latent_storage;
    mixed.slots = {
        io::slot_codec::identity(0, 0, kv_kind::key, 8, latent_storage::bf16),
        io::slot_codec::make_linear(0, 0, kv_kind::value, small_linear(8, 3, 2),
                                    latent_storage::int8),
        io::slot_codec::make_autoencoder(1, 0, kv_kind::key, small_autoencoder(8, 5, 2),
                                         latent_storage::f16),
        io::slot_codec::make_linear(1, 0, kv_kind::value, small_linear(8, 2, 2),
                                    latent_storage::fp8_e4m3),
    };
    io::save_codec_set(mixed, dir + "/mixed");
}

/// Every stored slot's codec encodes and decodes a vector; widths are capped so that a huge
/// (valid) identity geometry does not make the fuzzer itself allocate gigabytes.
void exercise(const io::codec_set& set) {
    for (const kvcar::any_codec& c : set.codecs()) {
        if (c.group_width() > (1 << 16) || c.bytes_per_group() > (std::size_t(1) << 20)) continue;
        const std::vector<float> x = ramp(std::size_t(c.group_width()), 1.0f);
        std::vector<float> y(x.size());
        std::vector<std::byte> record(c.bytes_per_group());
        c.encode(x.data(), record.data());
        c.decode(record.data(), y.data());
    }
    (void)set.bytes_per_token();
    (void)set.compression_ratio();
}

/// The round trip keeps every codec: the same kind, shape and storage, and, since a codec is
/// its parameters, the same record bytes and decoded floats for a test vector (a parameter that
/// changed on the way through the file changes them; bit patterns are compared, so NaN too).
void same_codecs(const io::codec_set& set, const io::codec_set& again) {
    const std::vector<kvcar::any_codec> a = set.codecs(), b = again.codecs();
    kvcar_fuzz::check(a.size() == b.size(), "codec_file: save + load changed the slot count");
    for (std::size_t i = 0; i < a.size(); ++i) {
        const kvcar::any_codec &x = a[i], &y = b[i];
        kvcar_fuzz::check(x.kind == y.kind && x.storage == y.storage &&
                              x.group_width() == y.group_width() &&
                              x.latent_width() == y.latent_width() &&
                              x.bytes_per_group() == y.bytes_per_group(),
                          "codec_file: save + load changed a codec's kind, storage or shape");
        if (x.group_width() > (1 << 16) || x.bytes_per_group() > (std::size_t(1) << 20)) continue;
        const std::vector<float> in = ramp(std::size_t(x.group_width()), 0.75f);
        std::vector<std::byte> rx(x.bytes_per_group()), ry(y.bytes_per_group());
        x.encode(in.data(), rx.data());
        y.encode(in.data(), ry.data());
        kvcar_fuzz::check(rx == ry, "codec_file: save + load changed what a codec encodes");
        std::vector<float> dx(in.size()), dy(in.size());
        x.decode(rx.data(), dx.data());
        y.decode(ry.data(), dy.data());
        kvcar_fuzz::check(std::memcmp(dx.data(), dy.data(), dx.size() * sizeof(float)) == 0,
                          "codec_file: save + load changed what a codec decodes");
    }
}

}  // namespace

namespace {
// The round trip's scratch file; removed at exit (a crash leaves it, with the pid).
std::string again_path;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    if (const char* dir = std::getenv("KVCAR_FUZZ_WRITE_SEEDS")) {
        write_seeds(dir);
        std::exit(0);
    }
    again_path = temp_path("-again.safetensors");
    std::atexit([] {
        std::error_code ignored;
        std::filesystem::remove(again_path, ignored);
    });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto bytes = std::as_bytes(std::span<const std::uint8_t>(data, size));
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const io::codec_set set = io::parse_codec_set(bytes, "fuzz input");
        kvcar_fuzz::must_not_throw("using an accepted codec set", [&] {
            exercise(set);
            io::save_codec_set(set, again_path);
            const io::codec_set again = io::load_codec_set(again_path);
            kvcar_fuzz::check(again.slots.size() == set.slots.size() &&
                                  again.bytes_per_token() == set.bytes_per_token() &&
                                  again.key_reuse == set.key_reuse &&
                                  again.value_reuse == set.value_reuse,
                              "codec_file: save + load changed the set");
            same_codecs(set, again);
        });
    });
}
