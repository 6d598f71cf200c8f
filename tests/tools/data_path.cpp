// Tests for examples/common/data_path.hpp: the tools' data folder comes from the option, then
// KVCAR_DATA, then a share/kvcar/data or shared/data folder above the executable; never from a
// path fixed at build time.
#include "catch.hpp"

#include "examples/common/data_path.hpp"

#include <filesystem>
#include <fstream>
#include <string>

namespace {

namespace fs = std::filesystem;
using kvcar::examples::resolve_data_dir;

/// A scratch folder tree, removed at the end of the test.
struct scratch {
    fs::path root;
    explicit scratch(const std::string& name)
        : root(fs::temp_directory_path() / ("kvcar_test_data_path_" + name)) {
        fs::remove_all(root);
        fs::create_directories(root);
    }
    ~scratch() {
        std::error_code ec;
        fs::remove_all(root, ec);
    }
    /// Creates folder `rel` under the root and returns its path.
    fs::path dir(const std::string& rel) const {
        fs::create_directories(root / rel);
        return root / rel;
    }
    /// Creates an empty file `rel` under the root and returns its path.
    fs::path file(const std::string& rel) const {
        fs::create_directories((root / rel).parent_path());
        std::ofstream(root / rel).put('x');
        return root / rel;
    }
};

}  // namespace

TEST_CASE("data_dir: the option wins, then KVCAR_DATA, each as given", "[tools][data_path]") {
    const scratch s("order");
    const fs::path exe = s.file("prefix/bin/kvcar-generate");
    s.dir("prefix/share/kvcar/data");
    CHECK(resolve_data_dir("/from/option", "/from/env", exe) == fs::path("/from/option"));
    CHECK(resolve_data_dir("", "/from/env", exe) == fs::path("/from/env"));
    // Not checked for existence: a wrong value must be reported by the tool, not skipped.
    CHECK(resolve_data_dir("/does/not/exist", nullptr, exe) == fs::path("/does/not/exist"));
    // An empty KVCAR_DATA counts as unset.
    CHECK(resolve_data_dir("", "", exe) == s.root / "prefix/share/kvcar/data");
}

TEST_CASE("data_dir: an installed tool finds <prefix>/share/kvcar/data", "[tools][data_path]") {
    const scratch s("installed");
    const fs::path exe = s.file("prefix/bin/kvcar-perplexity");
    s.dir("prefix/share/kvcar/data");
    CHECK(resolve_data_dir("", nullptr, exe) == s.root / "prefix/share/kvcar/data");
}

TEST_CASE("data_dir: a tool in a build tree finds ../shared/data beside the checkout",
          "[tools][data_path]") {
    const scratch s("build_tree");
    const fs::path exe = s.file("work/kvcar/build/examples/kvcar-calibrate");
    s.dir("work/shared/data");
    CHECK(resolve_data_dir("", nullptr, exe) == s.root / "work/shared/data");
    // The nearest folder wins: a share/kvcar/data closer to the executable comes first.
    s.dir("work/kvcar/build/share/kvcar/data");
    CHECK(resolve_data_dir("", nullptr, exe) == s.root / "work/kvcar/build/share/kvcar/data");
}

TEST_CASE("data_dir: nothing found is an empty path, and the help names every source",
          "[tools][data_path]") {
    const scratch s("none");
    const fs::path exe = s.file("a/b/kvcar-piqa");
    // Only folders count: a file named like the data folder is not one.
    s.file("a/shared/data");
    const fs::path found = resolve_data_dir("", nullptr, exe);
    // Some folder above the scratch root (e.g. /tmp/..) may really hold shared/data; below the
    // root nothing does.
    CHECK((found.empty() || found.string().rfind(s.root.string(), 0) != 0));
    CHECK(resolve_data_dir("", nullptr, fs::path()).empty());
    const std::string help = kvcar::examples::data_dir_help();
    CHECK(help.find("--data") != std::string::npos);
    CHECK(help.find("KVCAR_DATA") != std::string::npos);
    CHECK(help.find("share/kvcar/data") != std::string::npos);
}

TEST_CASE("data_dir: this test executable resolves like a tool", "[tools][data_path]") {
    const fs::path exe = kvcar::examples::executable_path();
    REQUIRE(!exe.empty());
    CHECK(fs::exists(exe));
    CHECK(kvcar::examples::data_dir("/explicit") == fs::path("/explicit"));
}
