// tests/common/argv.hpp — an argc/argv pair built from strings, for tests of command-line parsing.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kvcar::tests {

/// argv for command_line::parse: owns the strings, hands out the char* array.
struct args {
    std::vector<std::string> text;
    std::vector<char*> ptrs;
    explicit args(std::vector<std::string> a) : text(std::move(a)) {
        for (std::string& s : text) ptrs.push_back(s.data());
    }
    int argc() const { return int(ptrs.size()); }
    char** argv() { return ptrs.data(); }
};

}  // namespace kvcar::tests
