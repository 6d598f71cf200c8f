// Fuzzes kvcar::io::parse_json. Whatever parses must serialize with to_json, parse back to an
// equal value, and serialize to the same text again (the writer is the reader's inverse).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_common.hpp"
#include "kvcar/io/json.hpp"

namespace {

using kvcar::io::json_value;

/// Touches every accessor a reader would use; kvcar::error from a wrong-type access is fine.
void walk(const json_value& v, int depth) {
    kvcar_fuzz::check(depth <= kvcar::io::json_max_depth + 1, "json deeper than json_max_depth");
    switch (v.type()) {
        case json_value::kind::number:
            if (v.is_integer()) (void)v.as_int();
            (void)v.as_double();
            break;
        case json_value::kind::array:
            for (std::size_t i = 0; i < v.size(); ++i) walk(v.at(i), depth + 1);
            break;
        case json_value::kind::object:
            for (const auto& [key, member] : v.items()) {
                kvcar_fuzz::check(v.find(key) != nullptr, "json object cannot find its own key");
                walk(member, depth + 1);
            }
            break;
        default:
            break;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const json_value v = kvcar::io::parse_json(kvcar_fuzz::as_text(data, size), "fuzz.json");
        kvcar_fuzz::must_not_throw("walking a parsed json value", [&] { walk(v, 0); });
        std::string text;
        kvcar_fuzz::must_not_throw("to_json of a parsed value",
                                   [&] { text = kvcar::io::to_json(v); });
        json_value again;
        kvcar_fuzz::must_not_throw("parsing to_json's output",
                                   [&] { again = kvcar::io::parse_json(text, "to_json output"); });
        kvcar_fuzz::check(again == v, "json: parse(to_json(v)) != v");
        kvcar_fuzz::check(kvcar::io::to_json(again) == text, "json: to_json is not stable");
    });
}
