// examples/serve/requests.hpp — the requests a serving run replays: read from a JSONL trace, or
// drawn from a seed with given length distributions and an arrival rate.
//
// A trace has one JSON object per line (blank lines and lines starting with # are skipped):
//
//   {"id": "a", "prompt_ids": [464, 3290, 318], "max_new_tokens": 32, "arrival": 0.0}
//   {"id": 7, "prompt": "The history of", "max_new_tokens": 16, "arrival": 0.25}
//
//   id              string or integer (default: the line number)
//   prompt_ids      token ids, each in [0, vocab); or
//   prompt          text, tokenized with the model's tokenizer
//   max_new_tokens  tokens to generate (> 0); the run generates exactly that many (no stop at
//                   end of text, as serving benchmarks do with ignore_eos)
//   arrival         seconds after the start of the run (>= 0, default 0)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/json.hpp"

namespace kvcar::examples::serve {

struct request {
    std::string id;
    std::vector<int> prompt;  // [prompt length] token ids
    int max_new_tokens = 0;
    double arrival = 0;  // seconds after the start of the run
};

/// Turns a prompt's text into ids; empty when the caller has no tokenizer.
using tokenize_fn = std::function<std::vector<int>(std::string_view)>;

/// The requests of a JSONL trace, sorted by arrival (ties keep file order). `source` names the
/// trace in messages ("trace.jsonl:3: ..."). Throws kvcar::error on a malformed line, a missing
/// or mistyped field, an id outside [0, vocab), a text prompt without a tokenizer, or a repeated
/// id.
inline std::vector<request> parse_trace(std::string_view text, const std::string& source,
                                        int vocab, const tokenize_fn& tokenize = {}) {
    std::vector<request> out;
    int line_no = 0;
    for (std::size_t pos = 0; pos < text.size();) {
        const std::size_t end = std::min(text.find('\n', pos), text.size());
        const std::string_view line = text.substr(pos, end - pos);
        pos = end + 1;
        ++line_no;
        const std::size_t first = line.find_first_not_of(" \t\r");
        if (first == std::string_view::npos || line[first] == '#') continue;

        const std::string where = source + ":" + std::to_string(line_no) + ": ";
        const auto fail = [&](const std::string& what) { throw error("kvcar-serve: " + where + what); };
        io::json_value j;
        try {
            j = io::parse_json(line, source + ":" + std::to_string(line_no));
        } catch (const error& e) {
            throw error(std::string("kvcar-serve: trace line is not JSON: ") + e.what());
        }
        if (!j.is_object()) fail("expected a JSON object per line");

        request r;
        const io::json_value* id = j.find("id");
        if (!id) {
            r.id = std::to_string(line_no);
        } else if (id->is_string()) {
            r.id = id->as_string();
        } else if (id->is_integer()) {
            r.id = std::to_string(id->as_int());
        } else {
            fail("\"id\" must be a string or an integer");
        }

        const io::json_value* ids = j.find("prompt_ids");
        const io::json_value* prompt = j.find("prompt");
        if (ids && prompt) fail("give \"prompt_ids\" or \"prompt\", not both");
        if (ids) {
            if (!ids->is_array()) fail("\"prompt_ids\" must be an array of token ids");
            for (const io::json_value& t : ids->as_array()) {
                if (!t.is_integer() || t.as_int() < 0 || t.as_int() >= vocab)
                    fail("\"prompt_ids\" holds a value that is not a token id in [0, " +
                         std::to_string(vocab) + ")");
                r.prompt.push_back(int(t.as_int()));
            }
        } else if (prompt) {
            if (!prompt->is_string()) fail("\"prompt\" must be a string");
            if (!tokenize) fail("a text \"prompt\" needs the model's tokenizer");
            r.prompt = tokenize(prompt->as_string());
        } else {
            fail("needs \"prompt_ids\" (token ids) or \"prompt\" (text)");
        }
        if (r.prompt.empty()) fail("the prompt is empty");

        const io::json_value* n = j.find("max_new_tokens");
        if (!n || !n->is_integer() || n->as_int() <= 0 || n->as_int() > (1 << 30))
            fail("\"max_new_tokens\" must be a positive integer");
        r.max_new_tokens = int(n->as_int());

        if (const io::json_value* a = j.find("arrival")) {
            if (!a->is_number() || !(a->as_double() >= 0) || !std::isfinite(a->as_double()))
                fail("\"arrival\" must be a number of seconds >= 0");
            r.arrival = a->as_double();
        }
        for (const request& earlier : out)
            if (earlier.id == r.id) fail("request id '" + r.id + "' appears twice");
        out.push_back(std::move(r));
    }
    require(!out.empty(), "kvcar-serve: " + source + ": the trace has no requests");
    std::stable_sort(out.begin(), out.end(),
                     [](const request& a, const request& b) { return a.arrival < b.arrival; });
    return out;
}

/// An inclusive range of lengths, "MIN:MAX" (or "N" for MIN = MAX = N).
struct length_range {
    int min = 0, max = 0;
};

/// Parses "MIN:MAX" or "N"; `what` names the option in messages. Both must be positive.
inline length_range parse_range(const std::string& text, const std::string& what) {
    length_range r;
    const std::size_t colon = text.find(':');
    try {
        std::size_t used = 0;
        r.min = std::stoi(text.substr(0, colon), &used);
        require(used == (colon == std::string::npos ? text.size() : colon), "");
        if (colon == std::string::npos) {
            r.max = r.min;
        } else {
            r.max = std::stoi(text.substr(colon + 1), &used);
            require(used == text.size() - colon - 1, "");
        }
    } catch (const std::exception&) {
        throw error("kvcar-serve: " + what + " needs MIN:MAX or N (positive integers), got '" +
                    text + "'");
    }
    require(r.min > 0 && r.min <= r.max, "kvcar-serve: " + what +
                                             " needs 0 < MIN <= MAX, got '" + text + "'");
    return r;
}

/// How synthetic requests arrive.
struct arrival_process {
    double rate = 0;       // requests per second; 0 = all at time 0 (an offline batch)
    bool poisson = false;  // exponential gaps of mean 1/rate; else evenly spaced, 1/rate apart
};

/// `n` requests with prompt ids uniform in [0, vocab) and lengths uniform in the ranges, all
/// from `seed`: the same arguments give the same requests on every machine (std::mt19937_64 and
/// integer arithmetic only, apart from the Poisson gaps' logarithm).
inline std::vector<request> generate_requests(int n, std::uint64_t seed, length_range prompt,
                                              length_range output, arrival_process arrivals,
                                              int vocab) {
    require(n > 0, "kvcar-serve: --requests must be positive");
    require(arrivals.rate >= 0, "kvcar-serve: --rate must not be negative");
    std::mt19937_64 rng(seed);
    const auto uniform = [&](std::uint64_t lo, std::uint64_t hi) {  // in [lo, hi]
        return lo + rng() % (hi - lo + 1);
    };
    std::vector<request> out(static_cast<std::size_t>(n));
    double t = 0;
    for (int i = 0; i < n; ++i) {
        request& r = out[std::size_t(i)];
        r.id = std::to_string(i);
        r.prompt.resize(std::size_t(uniform(std::uint64_t(prompt.min), std::uint64_t(prompt.max))));
        for (int& id : r.prompt) id = int(uniform(0, std::uint64_t(vocab) - 1));
        r.max_new_tokens = int(uniform(std::uint64_t(output.min), std::uint64_t(output.max)));
        if (arrivals.rate > 0 && i > 0) {
            // 53 random bits in (0, 1] for the exponential gap.
            const double u = double((rng() >> 11) + 1) * 0x1.0p-53;
            t += arrivals.poisson ? -std::log(u) / arrivals.rate : 1.0 / arrivals.rate;
        }
        r.arrival = t;
    }
    return out;
}

}  // namespace kvcar::examples::serve
