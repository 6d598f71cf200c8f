// tests/tools/weights_option.cpp — --weights auto|fp32|bf16 (examples/models/weights_option.hpp):
// the values it takes, the ones it refuses and why, what auto resolves to for each stored dtype,
// and the loader's record of that dtype (stored_matrix_dtype).
#include "catch.hpp"

#include "examples/models/model.hpp"
#include "examples/models/tool_common.hpp"
#include "examples/models/weights_option.hpp"

#include <kvcar/io/safetensors_model.hpp>
#include <kvcar/io/safetensors_write.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include "common/temp_dir.hpp"
#include "common/argv.hpp"
#include "common/thrown.hpp"

namespace ex = kvcar::examples;
namespace io = kvcar::io;

namespace {

using kvcar::tests::thrown;

using kvcar::tests::args;

/// A command line of kvcar-demo with --weights, parsed from `argv` (after the tool's name).
ex::command_line parsed(std::vector<std::string> argv) {
    argv.insert(argv.begin(), "kvcar-demo");
    args a(std::move(argv));
    ex::command_line cl("kvcar-demo", "A test tool.", {ex::weights_option_spec()});
    REQUIRE(cl.parse(a.argc(), a.argv()));
    return cl;
}

}  // namespace

TEST_CASE("--weights takes auto, fp32 and bf16; auto is the default", "[tools]") {
    CHECK(ex::parse_weights_option(parsed({}), true) == ex::weights_choice::automatic);
    CHECK(ex::parse_weights_option(parsed({"--weights", "auto"}), true) ==
          ex::weights_choice::automatic);
    CHECK(ex::parse_weights_option(parsed({"--weights", "fp32"}), true) ==
          ex::weights_choice::fp32);
    CHECK(ex::parse_weights_option(parsed({"--weights", "bf16"}), true) ==
          ex::weights_choice::bf16);
    // On the CPU, auto and fp32 say what it does anyway.
    CHECK(ex::parse_weights_option(parsed({"--weights", "fp32"}), false) ==
          ex::weights_choice::fp32);
    CHECK(ex::parse_weights_option(parsed({}), false) == ex::weights_choice::automatic);
}

TEST_CASE("--weights refuses other values, and bf16 on the CPU, naming the rule", "[tools]") {
    for (const char* bad : {"fp16", "BF16", "f32", "bf16 "}) {
        const ex::command_line cl = parsed({"--weights", bad});
        const std::string m = thrown([&] { (void)ex::parse_weights_option(cl, true); });
        INFO(m);
        CHECK(m.find("kvcar-demo: --weights must be 'auto', 'fp32' or 'bf16', got '" +
                     std::string(bad) + "'") != std::string::npos);
    }
    const ex::command_line cl = parsed({"--weights", "bf16"});
    const std::string m = thrown([&] { (void)ex::parse_weights_option(cl, false); });
    CHECK(m.find("--weights bf16 needs --device cuda") != std::string::npos);
    CHECK(ex::weights_option_spec().value == "auto|fp32|bf16");
}

TEST_CASE("--weights auto is bf16 only for a BF16 checkpoint", "[tools]") {
    using ex::weight_precision;
    using ex::weights_choice;
    const auto automatic = weights_choice::automatic;
    CHECK(ex::resolve_weights(automatic, io::dtype::bf16) == weight_precision::bf16);
    CHECK(ex::resolve_weights(automatic, io::dtype::f32) == weight_precision::fp32);
    CHECK(ex::resolve_weights(automatic, io::dtype::f16) == weight_precision::fp32);
    CHECK(ex::resolve_weights(weights_choice::fp32, io::dtype::bf16) == weight_precision::fp32);
    CHECK(ex::resolve_weights(weights_choice::bf16, io::dtype::f32) == weight_precision::bf16);
    const ex::weights_used bf16{.precision = weight_precision::bf16,
                                .stored = io::dtype::bf16,
                                .device = "cuda",
                                .bytes = std::size_t(3) << 20,
                                .why = ex::weights_reason(automatic, weight_precision::bf16,
                                                          io::dtype::bf16)};
    CHECK(ex::weights_line(bf16) ==
          "weights: bf16 on the GPU, 3.0 MiB (auto: the checkpoint's matrices are BF16)");
    CHECK(ex::weights_reason(weights_choice::fp32, weight_precision::fp32, io::dtype::bf16) ==
          "--weights fp32");
    CHECK(kvcar::io::to_json(ex::weights_json(bf16)) ==
          R"({"precision":"bf16","stored":"BF16","device":"cuda","bytes":3145728})");
    const ex::weights_used cpu{.precision = weight_precision::fp32,
                               .stored = io::dtype::bf16,
                               .device = "cpu",
                               .bytes = 0,
                               .why = {}};
    CHECK(ex::weights_line(cpu) == "weights: fp32 on the CPU (the checkpoint's matrices are BF16)");
    CHECK(kvcar::io::to_json(ex::weights_json(cpu)) ==
          R"({"precision":"fp32","stored":"BF16","device":"cpu","bytes":0})");
}

TEST_CASE("the loader records the dtype a checkpoint's matrices are stored in", "[tools]") {
    kvcar_test::temp_dir dir("weights-option");
    const std::vector<std::uint16_t> bf16_values(6, 0x3f80);  // 1.0 in bf16
    const std::vector<float> f32_values(6, 1.0f);
    const auto bytes = [](const auto& v) {
        return std::span<const std::byte>(reinterpret_cast<const std::byte*>(v.data()),
                                          v.size() * sizeof(v[0]));
    };
    const auto write = [&](const std::string& name, const std::vector<io::tensor_to_write>& t) {
        const std::string path = (dir.path / name).string();
        io::write_safetensors(path, t);
        return io::safetensors_model::open(path);
    };
    // BF16 matrices beside an fp32 norm (1-D): the matrices decide.
    CHECK(ex::stored_matrix_dtype(write("bf16.safetensors",
                                        {{"a.weight", io::dtype::bf16, {2, 3}, bytes(bf16_values)},
                                         {"b.weight", io::dtype::bf16, {3, 2}, bytes(bf16_values)},
                                         {"norm", io::dtype::f32, {6}, bytes(f32_values)}})) ==
          io::dtype::bf16);
    CHECK(ex::stored_matrix_dtype(write(
              "f32.safetensors", {{"a.weight", io::dtype::f32, {2, 3}, bytes(f32_values)}})) ==
          io::dtype::f32);
    // Mixed matrices: not one dtype, so fp32 (auto then stays exact).
    CHECK(ex::stored_matrix_dtype(write("mixed.safetensors",
                                        {{"a.weight", io::dtype::bf16, {2, 3}, bytes(bf16_values)},
                                         {"b.weight", io::dtype::f32, {3, 2},
                                          bytes(f32_values)}})) == io::dtype::f32);
}
