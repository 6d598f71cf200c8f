// tests/common/temp_dir.hpp — a fresh, empty folder under the system's temporary folder, removed at
// the end of the scope. Its name holds the caller's tag and the process id, so that two test
// processes (ctest -j) never share one.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <unistd.h>

namespace kvcar_test {

struct temp_dir {
    std::filesystem::path path;
    explicit temp_dir(const std::string& tag)
        : path(std::filesystem::temp_directory_path() /
               ("kvcar-test-" + tag + "-" + std::to_string(::getpid()))) {
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;  // a destructor cannot throw; a leftover folder is harmless
        std::filesystem::remove_all(path, ec);
    }
    /// The path of `name` inside the folder (nothing is created).
    std::string file(const std::string& name) const { return (path / name).string(); }
    /// Writes `bytes` to `name` inside the folder and returns its path.
    std::string file(const std::string& name, const std::string& bytes) const {
        const std::filesystem::path p = path / name;
        std::ofstream(p, std::ios::binary) << bytes;
        return p.string();
    }
};

}  // namespace kvcar_test
