// tests/tools/tool_checks.cpp — the command-line tools' early checks (examples/models/
// tool_checks.hpp, tool_common.hpp's parser and progress line, tool_json.hpp), in-process: every
// refusal names the option, the value and the rule.
#include "catch.hpp"

#include "examples/models/tool_checks.hpp"
#include "examples/models/tool_common.hpp"
#include "examples/models/tool_json.hpp"

#include <kvcar/calib/autoencoder_training.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "common/temp_dir.hpp"
#include "common/argv.hpp"
#include "common/thrown.hpp"

namespace ex = kvcar::examples;
namespace fs = std::filesystem;

namespace {

using kvcar::tests::thrown;

using kvcar_test::temp_dir;

using kvcar::tests::args;

ex::command_line demo_parser() {
    return ex::command_line("kvcar-demo", "A test tool.",
                            {{"temperature", "T", "a number"}, {"quiet", "", "a flag"}});
}

}  // namespace

TEST_CASE("numbers must be finite and within the rule, and the message says both", "[tools]") {
    for (const char* bad : {"nan", "inf", "-inf", "-0.5"}) {
        const double v = std::strtod(bad, nullptr);
        const std::string m = thrown([&] { ex::require_finite_at_least("kvcar-x", "temperature", bad, v, 0.0); });
        INFO(m);
        CHECK(m.find("--temperature '" + std::string(bad) + "' must be a finite number ≥ 0") !=
              std::string::npos);
    }
    CHECK(thrown([] { ex::require_finite_at_least("kvcar-x", "temperature", "0", 0.0, 0.0); }).empty());
    CHECK(thrown([] { ex::require_finite_at_least("kvcar-x", "temperature", "1.5", 1.5, 0.0); }).empty());

    args a({"kvcar-demo", "--temperature", "nan"});
    ex::command_line cl = demo_parser();
    REQUIRE(cl.parse(a.argc(), a.argv()));
    const std::string m = thrown([&] { (void)cl.get_double_at_least("temperature", 0.8, 0.0); });
    CHECK(m.find("--temperature 'nan' must be a finite number ≥ 0") != std::string::npos);
}

TEST_CASE("integers below their rule are refused with the value and the rule", "[tools]") {
    args a({"kvcar-demo", "--steps", "-3"});
    ex::command_line cl("kvcar-demo", "A test tool.", {{"steps", "N", "a count"}});
    REQUIRE(cl.parse(a.argc(), a.argv()));
    CHECK(thrown([&] { (void)cl.get_int_at_least("steps", 10, 0); })
              .find("--steps '-3' must be an integer ≥ 0") != std::string::npos);
    CHECK(cl.get_int_at_least("steps", 10, -5) == -3);
    CHECK(cl.get_int_at_least("other", 10, 20) == 10);  // the default is not checked
}

TEST_CASE("the parser: -h is --help, unknown and stray arguments are refused by name", "[tools]") {
    {
        args a({"kvcar-demo", "-h"});
        ex::command_line cl = demo_parser();
        CHECK_FALSE(cl.parse(a.argc(), a.argv()));  // printed the usage
        CHECK(cl.usage().find("-h = --help") != std::string::npos);
    }
    {
        args a({"kvcar-demo", "--colour", "red"});
        ex::command_line cl = demo_parser();
        CHECK(thrown([&] { cl.parse(a.argc(), a.argv()); }).find("unknown option '--colour'") !=
              std::string::npos);
    }
    {
        args a({"kvcar-demo", "stray"});
        ex::command_line cl = demo_parser();
        CHECK(thrown([&] { cl.parse(a.argc(), a.argv()); }).find("unexpected argument 'stray'") !=
              std::string::npos);
    }
    {
        args a({"kvcar-demo", "--temperature"});
        ex::command_line cl = demo_parser();
        CHECK(thrown([&] { cl.parse(a.argc(), a.argv()); }).find("--temperature needs a value") !=
              std::string::npos);
    }
    {
        args a({"kvcar-demo", "--quiet=1"});
        ex::command_line cl = demo_parser();
        CHECK(thrown([&] { cl.parse(a.argc(), a.argv()); }).find("--quiet takes no value") !=
              std::string::npos);
    }
}

TEST_CASE("input files: missing ones and folders are refused before any work", "[tools]") {
    const temp_dir d("input");
    const std::string file = d.file("a.txt", "hello\n");
    CHECK(thrown([&] { ex::check_input_file("kvcar-x", "text", file); }).empty());
    const std::string missing = (d.path / "nope.txt").string();
    CHECK(thrown([&] { ex::check_input_file("kvcar-x", "text", missing); })
              .find("--text '" + missing + "': no such file") != std::string::npos);
    CHECK(thrown([&] { ex::check_input_file("kvcar-x", "text", d.path.string()); })
              .find("is a folder, not a file") != std::string::npos);
    CHECK(thrown([&] { ex::check_input_dir("kvcar-x", "piqa", file); }).find("is a file, not a folder") !=
          std::string::npos);
    CHECK(thrown([&] { ex::check_input_dir("kvcar-x", "piqa", missing); }).find("no such folder") !=
          std::string::npos);
    CHECK(thrown([&] { ex::read_text_file("kvcar-x", "text", d.path.string()); })
              .find("is a folder, not a file") != std::string::npos);
}

TEST_CASE("output paths: the folder must exist and a folder is not a file", "[tools]") {
    const temp_dir d("output");
    const std::string ok = (d.path / "out.kvc").string();
    CHECK(thrown([&] { ex::check_output_file("kvcar-x", "out", ok); }).empty());
    CHECK_FALSE(fs::exists(ok));  // checking writes nothing
    const std::string missing = (d.path / "missing" / "out.kvc").string();
    CHECK(thrown([&] { ex::check_output_file("kvcar-x", "out", missing); })
              .find("folder '" + (d.path / "missing").string() + "' does not exist") !=
          std::string::npos);
    CHECK(thrown([&] { ex::check_output_file("kvcar-x", "out", d.path.string()); })
              .find("is a folder; give a file name inside it") != std::string::npos);
    const std::string file = d.file("plain", "x");
    CHECK(thrown([&] { ex::check_output_file("kvcar-x", "out", file + "/out.kvc"); })
              .find("is not a folder") != std::string::npos);
    CHECK(thrown([&] { ex::check_output_file("kvcar-x", "out", "bare-name.kvc"); }).empty());
}

TEST_CASE("binary input to a text option is refused, text in any UTF-8 passes", "[tools]") {
    CHECK_FALSE(ex::binary_reason("plain ASCII text\n").has_value());
    CHECK_FALSE(ex::binary_reason("caf\xc3\xa9, na\xc3\xafve, \xe2\x82\xac 5, \xf0\x9f\x98\x80\n"));
    CHECK_FALSE(ex::binary_reason("").has_value());
    // One Latin-1 accent in a long line: below the 1% rule.
    CHECK_FALSE(ex::binary_reason(std::string(200, 'a') + "caf\xe9" + std::string(200, 'b')));
    const auto nul = ex::binary_reason(std::string("abc\0def", 7));
    REQUIRE(nul.has_value());
    CHECK(*nul == "it holds a NUL byte at offset 3");
    const auto bad = ex::binary_reason(std::string(50, 'a') + std::string(10, '\xff'));
    REQUIRE(bad.has_value());
    CHECK(bad->find("10 of its 60 bytes are not UTF-8") != std::string::npos);
    // A truncated multi-byte sequence at the end is invalid too.
    CHECK(ex::binary_reason("\xe2\x82").has_value());

    const temp_dir d("binary");
    const std::string bin = d.file("model.safetensors", std::string("\x08\0\0\0\0\0\0\0{}", 10));
    const std::string m = thrown([&] { ex::read_text_file("kvcar-x", "tokens-file", bin); });
    CHECK(m.find("--tokens-file '" + bin + "' is not text: it holds a NUL byte at offset 1") !=
          std::string::npos);
    const std::string shipped = std::string(KVCAR_SOURCE_DIR) + "/models/gpt2-tiny/model.safetensors";
    CHECK(thrown([&] { ex::read_text_file("kvcar-x", "text", shipped); }).find("is not text") !=
          std::string::npos);
    const std::string excerpt = std::string(KVCAR_SOURCE_DIR) + "/models/wikitext-2-test-excerpt.tokens";
    CHECK(ex::read_text_file("kvcar-x", "text", excerpt).size() > 10000);
}

TEST_CASE("kvcar-generate's batch memory estimate and its refusal", "[tools]") {
    // gpt2-tiny: fp16 cache 3072 bytes/token, vocabulary 50257.
    const ex::generate_memory_estimate e = ex::estimate_generate_memory(100000, 72, 3072.0, 50257);
    CHECK(e.kv_cache == Approx(100000.0 * 72 * 3072));
    CHECK(e.logits == Approx(2.0 * 100000 * 50257 * 4));
    CHECK(e.total() > 40.0 * (1ull << 30));
    const std::string m =
        thrown([&] { ex::check_generate_memory("kvcar-generate", 100000, 72, e, 8.0 * (1ull << 30)); });
    INFO(m);
    CHECK(m.find("--batch 100000 would need about") != std::string::npos);
    CHECK(m.find("more than the limit of 8.00 GiB") != std::string::npos);
    CHECK(m.find("raise --max-memory") != std::string::npos);
    const ex::generate_memory_estimate small = ex::estimate_generate_memory(1, 72, 3072.0, 50257);
    CHECK(small.total() < double(1 << 20));
    CHECK(thrown([&] { ex::check_generate_memory("kvcar-generate", 1, 72, small, 8.0 * (1ull << 30)); })
              .empty());
}

TEST_CASE("SIGINT and SIGTERM set the flag a long run checks, and it exits 128 + signal",
          "[tools]") {
    ex::install_interrupt_flag();
    CHECK(ex::interrupt_signal() == 0);
    std::raise(SIGINT);  // would end the test run without the handler
    CHECK(ex::interrupt_signal() == SIGINT);
    CHECK(ex::interrupted_exit_status(ex::interrupt_signal()) == 130);
    ex::install_interrupt_flag();  // installing again clears it
    CHECK(ex::interrupt_signal() == 0);
    std::raise(SIGTERM);
    CHECK(ex::interrupt_signal() == SIGTERM);
    CHECK(ex::interrupted_exit_status(SIGTERM) == 143);
    ex::remove_interrupt_flag();
}

namespace {

/// What `f` writes to stderr (file descriptor 2), captured through a temporary file.
template <class F>
std::string captured_stderr(F&& f) {
    const temp_dir d("stderr");
    const std::string path = (d.path / "err").string();
    std::fflush(stderr);
    const int saved = ::dup(2);
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fd, 2);
    ::close(fd);
    f();
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST_CASE("progress lines: escape codes and \\r on a terminal only", "[tools]") {
    const std::string plain = captured_stderr([] {
        ex::progress_line p(true, /*terminal=*/false, std::chrono::milliseconds(0));
        p.update("step 1");
        p.update("step 2");
        p.update("done", true);
        p.finish();
    });
    CHECK(plain == "step 1\nstep 2\ndone\n");
    const std::string throttled = captured_stderr([] {
        ex::progress_line p(true, /*terminal=*/false, std::chrono::hours(1));
        p.update("first");  // the first line shows at once
        p.update("skipped");
        p.update("forced", true);
    });
    CHECK(throttled == "first\nforced\n");
    const std::string tty = captured_stderr([] {
        ex::progress_line p(true, /*terminal=*/true);
        p.update("step 1", true);
        p.finish();
    });
    CHECK(tty == "\rstep 1\033[K\n");
    // The default follows stderr, which is the capture file here: not a terminal.
    const std::string by_default = captured_stderr([] {
        ex::progress_line p;
        p.update("x", true);
        p.finish();
    });
    CHECK(by_default.find('\r') == std::string::npos);
    CHECK(by_default.find('\033') == std::string::npos);
}

TEST_CASE("--json reports: one object, non-finite numbers as null", "[tools]") {
    kvcar::io::json_value r = ex::json_report("kvcar-x");
    r.set("perplexity", ex::json_number(152.5));
    r.set("nan", ex::json_number(std::numeric_limits<double>::quiet_NaN()));
    r.set("inf", ex::json_number(std::numeric_limits<double>::infinity()));
    const std::string text = kvcar::io::to_json(r);
    CHECK(text == R"({"tool":"kvcar-x","perplexity":152.5,"nan":null,"inf":null})");
    const kvcar::io::json_value back = kvcar::io::parse_json(text, "report");
    CHECK(back.at("perplexity").as_double() == 152.5);
    CHECK(back.at("nan").is_null());
}

TEST_CASE("autoencoder training reports every epoch (kvcar-calibrate's progress inside a slot)",
          "[tools]") {
    // 400 rows of width 8 on a 2-dimensional plane plus noise.
    std::vector<float> rows(400 * 8);
    for (std::size_t r = 0; r < 400; ++r)
        for (std::size_t i = 0; i < 8; ++i)
            rows[r * 8 + i] = float(std::sin(0.1 * double(r) + double(i)) +
                                    0.5 * std::cos(0.37 * double(r) * double(i + 1)));
    kvcar::calib::autoencoder_training_params p;
    p.hidden = 8;
    p.latent = 2;
    p.max_epochs = 3;
    p.patience = 10;
    p.batch = 64;
    p.threads = 1;
    std::vector<int> epochs;
    std::vector<double> losses;
    p.on_epoch = [&](int epoch, int max_epochs, double loss) {
        CHECK(max_epochs == 3);
        epochs.push_back(epoch);
        losses.push_back(loss);
    };
    const auto r = kvcar::calib::train_autoencoder(rows.data(), 400, 8, p);
    CHECK(epochs == std::vector<int>{1, 2, 3});
    REQUIRE(r.holdout_history.size() == 4);  // before training, then one per epoch
    for (std::size_t e = 0; e < losses.size(); ++e) CHECK(losses[e] == r.holdout_history[e + 1]);
}

TEST_CASE("--data sets the folder the tools' defaults come from", "[tools]") {
    const std::string before = ex::data_option();
    args a({"kvcar-demo", "--data", "/some/data"});
    ex::command_line cl("kvcar-demo", "A test tool.", ex::model_options_spec("identity-f16"));
    REQUIRE(cl.parse(a.argc(), a.argv()));
    CHECK(ex::shared_data_dir() == "/some/data");
    CHECK(ex::text_options_spec("text", "all")[0].help.find("DATA/wikitext-2") != std::string::npos);
    ex::data_option() = before;
}

TEST_CASE("json_text replaces ill-formed UTF-8 as Python's errors='replace' does", "[tools]") {
    // Expected bytes from CPython 3: bytes.decode("utf-8", errors="replace").encode("utf-8").
    const std::string ufffd = "\xEF\xBF\xBD";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"plain", "plain"},
        {"\xE2\x82", ufffd},                       // a character cut after two of three bytes
        {"\xE2\x82" "A", ufffd + "A"},
        {"\xFF", ufffd},                           // no character starts with 0xFF
        {"\xE0\x80", ufffd + ufffd},               // overlong: 0x80 cannot follow 0xE0
        {"\xED\xA0\x80", ufffd + ufffd + ufffd},   // a surrogate
        {"\xF0\x9F\x98", ufffd},                   // an emoji cut short
        {"a\xF0\x9F\x98\x80" "b", "a\xF0\x9F\x98\x80" "b"},
        {"\xC3", ufffd},
        {"\xC3\xA9\xC3", "\xC3\xA9" + ufffd},
        {"\xF4\x90\x80\x80", ufffd + ufffd + ufffd + ufffd},  // past U+10FFFF
        {"\x80\x80", ufffd + ufffd},
    };
    for (const auto& [in, want] : cases) {
        INFO(kvcar::io::to_json(kvcar::io::json_value(want)));
        CHECK(ex::json_text(in) == want);
        CHECK_NOTHROW(kvcar::io::to_json(kvcar::io::json_value(ex::json_text(in))));
    }
}
