// examples/common/data_path.hpp — where the tools find their data folder (tokenizers/,
// wikitext-2/, piqa/, models/, as in ../shared/data beside a checkout), with no path fixed at
// build time, so a tool works from a build tree, after `cmake --install`, and when moved.
//
// The rule, first match wins:
//   1. the tool's own option (e.g. --data PATH), when given;
//   2. the environment variable KVCAR_DATA, when set and not empty;
//   3. beside the executable: for each folder A above it (its own folder first),
//      A/share/kvcar/data (an installed tool: <prefix>/bin/kvcar-x -> <prefix>/share/kvcar/data)
//      or A/shared/data (a build tree: <repo>/build/examples/kvcar-x -> <repo>/../shared/data);
//   4. none: an empty path; the tool then names what it looked for (data_dir_help()).
// 1 and 2 are returned as given, existing or not, so a wrong value is reported, never skipped.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

namespace kvcar::examples {

/// The rule above with its inputs explicit (testable): `option` (empty: not given), `env` (the
/// value of KVCAR_DATA, nullptr when unset), `executable` (the running binary's path; empty:
/// unknown, step 3 is skipped).
inline std::filesystem::path resolve_data_dir(std::string_view option, const char* env,
                                              const std::filesystem::path& executable) {
    namespace fs = std::filesystem;
    if (!option.empty()) return fs::path(option);
    if (env != nullptr && *env != '\0') return fs::path(env);
    if (executable.empty()) return {};
    std::error_code ec;
    fs::path folder = fs::weakly_canonical(executable, ec).parent_path();
    if (ec) folder = executable.parent_path();
    for (int up = 0; up < 8 && !folder.empty(); ++up) {
        for (const fs::path& candidate :
             {folder / "share" / "kvcar" / "data", folder / "shared" / "data"}) {
            if (fs::is_directory(candidate, ec)) return candidate;
        }
        const fs::path parent = folder.parent_path();
        if (parent == folder) break;  // the root
        folder = parent;
    }
    return {};
}

/// The running executable's path (Linux: /proc/self/exe); empty where it cannot be read.
inline std::filesystem::path executable_path() {
    std::error_code ec;
    std::filesystem::path p = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::filesystem::path() : p;
}

/// The tools' call: data_dir(value of --data or "") by the rule above, from KVCAR_DATA and the
/// executable's location.
inline std::filesystem::path data_dir(std::string_view option = {}) {
    return resolve_data_dir(option, std::getenv("KVCAR_DATA"), executable_path());
}

/// For messages when data is missing: where it was looked for and how to point elsewhere.
inline std::string data_dir_help() {
    return "the data folder comes from --data PATH, else $KVCAR_DATA, else share/kvcar/data or "
           "shared/data in a folder above the executable";
}

}  // namespace kvcar::examples
