#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <kvcar/io/json.hpp>
#include <limits>
#include <string>
#include <type_traits>

#include "catch.hpp"

using kvcar::io::json_value;
using kvcar::io::parse_json;
using kvcar::io::to_json;

static_assert(std::is_base_of_v<kvcar::error, kvcar::io::json_error>);
static_assert(std::is_copy_constructible_v<json_value> &&
              std::is_nothrow_move_constructible_v<json_value>);

namespace {

json_value parse(std::string_view text) { return parse_json(text, "test.json"); }

/// Parses `text`, expecting a json_error at line:column whose problem contains `fragment`.
void require_syntax_error(std::string_view text, int line, int column, std::string_view fragment) {
    INFO("document: " << text);
    try {
        parse(text);
        FAIL("no error");
    } catch (const kvcar::io::json_error& e) {
        INFO("message: " << e.what());
        CHECK(e.line() == line);
        CHECK(e.column() == column);
        CHECK(e.problem().find(fragment) != std::string::npos);
        CHECK(std::string(e.what()).find("test.json:" + std::to_string(line) + ":" +
                                         std::to_string(column) + ":") != std::string::npos);
    }
}

}  // namespace

TEST_CASE("json: scalars", "[io]") {
    CHECK(parse("null").is_null());
    CHECK(parse("true").as_bool());
    CHECK_FALSE(parse(" false ").as_bool());
    CHECK(parse("\"hi\"").as_string() == "hi");
    CHECK(parse("0").as_int() == 0);
    CHECK(parse("-0").as_double() == 0.0);
    CHECK(std::signbit(parse("-0").as_double()));
    CHECK(parse("-0").as_int() == 0);
    CHECK(to_json(parse("-0")) == "-0");  // negative zero keeps its sign when written back
    CHECK(parse("42").as_int() == 42);
    CHECK(parse("-17").as_int() == -17);
    CHECK(parse("1.5").as_double() == 1.5);
    CHECK(parse("-2.5e-3").as_double() == Approx(-0.0025));
    CHECK(parse("1E+2").as_double() == 100.0);
    CHECK(parse("1e-5").as_double() == 1e-5);
    CHECK(parse(" \t\r\n 7 \n").as_int() == 7);
}

TEST_CASE("json: integers are exact across the int64 range", "[io]") {
    CHECK(parse("9223372036854775807").as_int() == std::numeric_limits<std::int64_t>::max());
    CHECK(parse("-9223372036854775808").as_int() == std::numeric_limits<std::int64_t>::min());
    CHECK(parse("9007199254740993").as_int() == 9007199254740993LL);  // not a double
    // Integral values written as decimals or exponents are integers too.
    CHECK(parse("1e3").as_int() == 1000);
    CHECK(parse("2.0").as_int() == 2);
    CHECK(parse("2.0").is_integer());
    CHECK_FALSE(parse("2.5").is_integer());
    KVCAR_REQUIRE_ERROR(parse("2.5").as_int(), "2.5 is not an integer");
    // Beyond int64: still a number (as a double), but not an int.
    const json_value big = parse("9223372036854775808");
    CHECK(big.as_double() == 9223372036854775808.0);
    CHECK_FALSE(big.is_integer());
    KVCAR_REQUIRE_ERROR(big.as_int(), "outside the range of a 64-bit integer");
    // Underflow rounds to zero; overflow is an error.
    CHECK(parse("1e-400").as_double() == 0.0);
    CHECK(parse("4.9e-324").as_double() > 0.0);
    require_syntax_error("1e400", 1, 1, "out of range of a double");
    require_syntax_error("[-1.5e99999999999999999999]", 1, 2, "out of range of a double");
}

TEST_CASE("json: strings, escapes and UTF-8", "[io]") {
    CHECK(parse(R"("a\"b\\c\/d\b\f\n\r\t")").as_string() == "a\"b\\c/d\b\f\n\r\t");
    CHECK(parse(R"("\u0041\u00e9\u20AC")").as_string() == "A\xC3\xA9\xE2\x82\xAC");
    CHECK(parse(R"("\ud83d\ude00")").as_string() == "\xF0\x9F\x98\x80");  // U+1F600
    CHECK(parse(R"("\u0000")").as_string() == std::string(1, '\0'));
    CHECK(parse("\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"").as_string() ==
          "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
    CHECK(parse("\xEF\xBB\xBF\"bom\"").as_string() == "bom");  // a leading BOM is ignored
}

TEST_CASE("json: arrays and objects keep document order", "[io]") {
    const json_value v = parse(R"({"z": 1, "a": [1, "two", null, [], {}], "m": {"k": true}})");
    REQUIRE(v.is_object());
    REQUIRE(v.size() == 3);
    CHECK(v.items()[0].first == "z");
    CHECK(v.items()[1].first == "a");
    CHECK(v.items()[2].first == "m");
    const json_value& a = v.at("a");
    REQUIRE(a.is_array());
    REQUIRE(a.size() == 5);
    CHECK(a.at(0).as_int() == 1);
    CHECK(a.at(1).as_string() == "two");
    CHECK(a.at(2).is_null());
    CHECK(a.at(3).size() == 0);
    CHECK(a.at(4).is_object());
    CHECK(v.at("m").at("k").as_bool());
    CHECK(v.find("nope") == nullptr);
    CHECK(v.find("z") == &v.items()[0].second);
    CHECK(v.contains("m"));
    CHECK(a.find("x") == nullptr);  // find on a non-object is simply absent
}

TEST_CASE("json: lookups in a large object", "[io]") {
    const auto key = [](int i) { return std::string("k").append(std::to_string(i)); };
    std::string text = "{";
    for (int i = 0; i < 5000; ++i) {
        if (i) text += ',';
        text.append("\"").append(key(i)).append("\":").append(std::to_string(i));
    }
    text += "}";
    const json_value v = parse(text);
    REQUIRE(v.size() == 5000);
    for (int i = 0; i < 5000; i += 97) CHECK(v.at(key(i)).as_int() == i);
    CHECK(v.items()[4999].first == "k4999");
    CHECK(v.find("k5000") == nullptr);
}

TEST_CASE("json: accessor errors name the problem", "[io]") {
    const json_value v = parse(R"({"n_embd": "128", "list": [1]})");
    KVCAR_REQUIRE_ERROR(v.at("n_layer"), "missing key 'n_layer'");
    KVCAR_REQUIRE_ERROR(v.at("n_embd").as_int(), "expected a number, got a string");
    KVCAR_REQUIRE_ERROR(v.as_string(), "expected a string, got an object");
    KVCAR_REQUIRE_ERROR(v.at("list").at(1), "index 1 out of range for array of 1");
    KVCAR_REQUIRE_ERROR(v.at("list").at(0).size(), "neither an array nor an object");
    KVCAR_REQUIRE_ERROR(v.at("list").at("x"), "expected an object, got an array");
    KVCAR_REQUIRE_ERROR(parse("1").as_bool(), "expected a bool, got a number");
}

TEST_CASE("json: every syntax error class, with line and column", "[io]") {
    require_syntax_error("", 1, 1, "empty document");
    require_syntax_error("  \n ", 2, 2, "empty document");
    require_syntax_error("[1,]", 1, 4, "trailing comma in array");
    require_syntax_error("{\"a\":1,}", 1, 8, "trailing comma in object");
    require_syntax_error("[1 2]", 1, 4, "expected ',' or ']'");
    require_syntax_error("{\"a\" 1}", 1, 6, "expected ':'");
    require_syntax_error("{\"a\":1 \"b\":2}", 1, 8, "expected ',' or '}'");
    require_syntax_error("{a:1}", 1, 2, "expected a string key");
    require_syntax_error("{\"a\":1,\n \"a\":2}", 2, 2, "duplicate key 'a'");
    require_syntax_error("01", 1, 1, "leading zeros");
    require_syntax_error("-01", 1, 1, "leading zeros");
    require_syntax_error("-", 1, 2, "expected a digit after '-'");
    require_syntax_error("1.", 1, 3, "expected a digit after '.'");
    require_syntax_error("1.e5", 1, 3, "expected a digit after '.'");
    require_syntax_error("1e", 1, 3, "exponent");
    require_syntax_error("+1", 1, 1, "unexpected '+'");
    require_syntax_error(".5", 1, 1, "unexpected '.'");
    require_syntax_error("NaN", 1, 1, "unexpected 'N'");
    require_syntax_error("Infinity", 1, 1, "unexpected 'I'");
    require_syntax_error("tru", 1, 1, "invalid literal");
    require_syntax_error("nul", 1, 1, "invalid literal");
    require_syntax_error("True", 1, 1, "unexpected 'T'");
    require_syntax_error("1 2", 1, 3, "trailing garbage");
    require_syntax_error("{} x", 1, 4, "trailing garbage");
    require_syntax_error("[1]]", 1, 4, "trailing garbage");
    require_syntax_error("[1", 1, 3, "expected ',' or ']'");
    require_syntax_error("{\"a\":", 1, 6, "unexpected end of input");
    require_syntax_error("'a'", 1, 1, "unexpected '''");
    require_syntax_error("[1,\n  x]", 2, 3, "unexpected 'x'");
    require_syntax_error("\"abc", 1, 1, "unterminated string");
    require_syntax_error("\"abc\\", 1, 5, "unterminated string");
    require_syntax_error("\"a\tb\"", 1, 3, "control character");
    require_syntax_error("\"a\nb\"", 1, 3, "control character");
    require_syntax_error("\"\\x\"", 1, 2, "invalid escape");
    require_syntax_error("\"\\u12\"", 1, 2, "expected 4 hex digits");
    require_syntax_error("\"\\u12G4\"", 1, 2, "expected 4 hex digits");
    require_syntax_error(R"("\ud83d")", 1, 2, "lone high surrogate");
    require_syntax_error(R"("\ud83dx")", 1, 2, "lone high surrogate");
    require_syntax_error(R"("\ud83d\u0041")", 1, 2, "not followed by a low surrogate");
    require_syntax_error(R"("\ude00")", 1, 2, "lone low surrogate");
    require_syntax_error("\"\xFF\"", 1, 2, "invalid UTF-8");
    require_syntax_error("\"\xC0\xAF\"", 1, 2, "invalid UTF-8");          // overlong '/'
    require_syntax_error("\"\xE0\x80\xAF\"", 1, 2, "invalid UTF-8");      // overlong
    require_syntax_error("\"\xED\xA0\x80\"", 1, 2, "invalid UTF-8");      // encoded surrogate
    require_syntax_error("\"\xF4\x90\x80\x80\"", 1, 2, "invalid UTF-8");  // > U+10FFFF
    require_syntax_error("\"\xC3\"", 1, 2, "invalid UTF-8");              // cut sequence
    require_syntax_error("\"\xE2\x82", 1, 2, "invalid UTF-8");            // cut at end of text
    require_syntax_error(std::string_view("[\0]", 3), 1, 2, "byte 0x00");
}

TEST_CASE("json: nesting is limited to 256 levels", "[io]") {
    const std::string ok = std::string(256, '[') + std::string(256, ']');
    CHECK(parse(ok).is_array());
    const std::string deep = std::string(257, '[') + std::string(257, ']');
    require_syntax_error(deep, 1, 257, "nesting deeper than 256");
    std::string objects;
    for (int i = 0; i < 300; ++i) objects += "{\"a\":";
    require_syntax_error(objects, 1, 1 + 256 * 5, "nesting deeper than 256");
    // Far deeper input must fail the same way, not overflow the stack.
    require_syntax_error(std::string(1000000, '['), 1, 257, "nesting deeper than 256");
}

TEST_CASE("json: to_json writes compact JSON that reads back equal", "[io]") {
    const std::string text =
        R"({"name":"kvcar","n":-12,"big":9223372036854775807,"x":0.1,"tiny":1e-300,)"
        R"("list":[true,false,null,[],{}],"s":"q\"\\\n\u0001\u00e9\ud83d\ude00/"})";
    const json_value v = parse(text);
    const std::string out = to_json(v);
    CHECK(
        out ==
        "{\"name\":\"kvcar\",\"n\":-12,\"big\":9223372036854775807,\"x\":0.1,\"tiny\":1e-300,"
        "\"list\":[true,false,null,[],{}],\"s\":\"q\\\"\\\\\\n\\u0001\xC3\xA9\xF0\x9F\x98\x80/\"}");
    const json_value back = parse(out);
    CHECK(back == v);
    CHECK(to_json(back) == out);
    CHECK(back.at("big").as_int() == std::numeric_limits<std::int64_t>::max());
    CHECK(back.at("x").as_double() == 0.1);
}

TEST_CASE("json: values built in code", "[io]") {
    json_value meta = json_value::object();
    meta.set("model", "gpt2-tiny");
    meta.set("d", 64);
    meta.set("ratio", 0.5);
    meta.set("ok", true);
    json_value list = json_value::array();
    list.push_back(1);
    list.push_back(std::uint64_t(7));
    list.push_back(nullptr);
    meta.set("list", list);
    meta.set("d", 32);  // replaces in place
    CHECK(to_json(meta) ==
          R"({"model":"gpt2-tiny","d":32,"ratio":0.5,"ok":true,"list":[1,7,null]})");
    CHECK(meta.at("d").as_int() == 32);
    CHECK(meta.size() == 5);

    KVCAR_REQUIRE_ERROR(to_json(json_value(std::numeric_limits<double>::quiet_NaN())), "NaN");
    KVCAR_REQUIRE_ERROR(to_json(json_value(std::numeric_limits<double>::infinity())), "infinity");
    KVCAR_REQUIRE_ERROR(to_json(json_value("\xFF")), "not valid UTF-8");
    KVCAR_REQUIRE_ERROR(list.set("k", 1), "expected an object, got an array");
    CHECK(list.size() == 3);  // unchanged by the failed call
    KVCAR_REQUIRE_ERROR(json_value(json_value::object_type{{"a", 1}, {"b", 2}}).at("c"),
                        "missing key 'c'");
    CHECK(json_value(json_value::object_type{{"a", 1}, {"a", 2}}).at("a").as_int() == 2);
}

TEST_CASE("json: load_json reads a file and names it in errors", "[io]") {
    const auto dir = std::filesystem::temp_directory_path() / "kvcar_test_json";
    std::filesystem::create_directories(dir);
    const std::string good = (dir / "good.json").string();
    const std::string bad = (dir / "bad.json").string();
    std::ofstream(good) << "{\"a\": [1, 2]}";
    std::ofstream(bad) << "{\n  \"a\": [1, 2,]\n}";
    CHECK(kvcar::io::load_json(good).at("a").size() == 2);
    KVCAR_REQUIRE_ERROR(kvcar::io::load_json(bad), bad + ":2:14: trailing comma in array");
    KVCAR_REQUIRE_ERROR(kvcar::io::load_json((dir / "missing.json").string()), "no such file");
    KVCAR_REQUIRE_ERROR(kvcar::io::load_json(dir.string()), "is a directory");
    std::filesystem::remove_all(dir);
}

TEST_CASE("json: the GPT-2 vocabulary parses", "[io][data]") {
    const std::string path = std::string(KVCAR_SHARED_DATA) + "/tokenizers/gpt2/vocab.json";
    if (!std::filesystem::exists(path)) {
        WARN("skipped: " << path << " is absent");
        return;
    }
    const json_value v = kvcar::io::load_json(path);
    REQUIRE(v.size() == 50257);
    CHECK(v.at("<|endoftext|>").as_int() == 50256);
    CHECK(v.at("!").as_int() == 0);
    CHECK(v.at("\xC4\xA0the").as_int() == 262);  // "Ġthe"
}
