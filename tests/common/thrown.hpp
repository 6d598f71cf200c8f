// tests/common/thrown.hpp — the message of what a callable throws, for tests that check an
// error's wording (a refusal must name the value and the rule), not only that it throws.
#pragma once

#include <exception>
#include <string>

namespace kvcar::tests {

/// The message of what `f` throws ("" when it does not throw).
template <class F>
std::string thrown(F&& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

}  // namespace kvcar::tests
