// kvcar/io/safetensors_model.hpp — a Hugging Face model folder: one .safetensors file or the shards
// of an index, read through safetensors_file (safetensors.hpp).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/json.hpp"
#include "kvcar/numeric.hpp"
#include "kvcar/io/safetensors.hpp"

namespace kvcar::io {

/// A Hugging Face model folder: `model.safetensors`, or shards listed by
/// `model.safetensors.index.json` ({"weight_map": {tensor name: shard file name}}).
class safetensors_model {
public:
    /// `path` is a model folder, a .safetensors file or a .safetensors.index.json file.
    static safetensors_model open(const std::string& path) {
        namespace fs = std::filesystem;
        std::error_code ec;
        if (fs::is_directory(path, ec)) {
            const fs::path dir(path);
            if (fs::exists(dir / "model.safetensors.index.json", ec))
                return open_index((dir / "model.safetensors.index.json").string());
            if (fs::exists(dir / "model.safetensors", ec))
                return open_single((dir / "model.safetensors").string());
            throw error(detail::msg() + "kvcar: safetensors_model: " + path +
                        ": folder has neither model.safetensors nor "
                        "model.safetensors.index.json");
        }
        if (path.size() >= 11 && path.compare(path.size() - 11, 11, ".index.json") == 0)
            return open_index(path);
        return open_single(path);
    }

    /// The folder or file that was opened.
    const std::string& path() const { return path_; }
    /// Tensor names: file order for a single file, weight_map order for shards.
    const std::vector<std::string>& names() const { return names_; }
    /// Number of tensors over all files.
    std::size_t size() const { return names_.size(); }
    /// Whether any file has a tensor named `name`.
    bool contains(std::string_view name) const { return where_.find(name) != where_.end(); }
    /// The opened files: one, or every shard of the index.
    const std::vector<safetensors_file>& files() const { return files_; }
    /// The file that holds `name`.
    const safetensors_file& file_of(std::string_view name) const {
        const auto it = where_.find(name);
        if (it == where_.end())
            throw error(detail::msg() + "kvcar: safetensors_model: " + path_ +
                        ": no tensor named '" + std::string(name) + "'");
        return files_[it->second];
    }
    /// The tensor `name` from whichever file holds it; throws kvcar::error when none does.
    tensor_view tensor(std::string_view name) const { return file_of(name).tensor(name); }
    /// The tensor `name` converted to float32; throws kvcar::error when no file holds it or its
    /// dtype is not a floating-point type.
    std::vector<float> to_float(std::string_view name) const {
        return file_of(name).to_float(name);
    }

private:
    std::string path_;
    std::vector<safetensors_file> files_;
    std::vector<std::string> names_;
    std::map<std::string, std::size_t, std::less<>> where_;

    static safetensors_model open_single(const std::string& file) {
        safetensors_model m;
        m.path_ = file;
        m.files_.push_back(safetensors_file::open(file));
        m.names_ = m.files_[0].names();
        for (const auto& n : m.names_) m.where_.emplace(n, 0);
        return m;
    }

    static safetensors_model open_index(const std::string& index_path) {
        const std::string where = "kvcar: safetensors_model: " + index_path + ": ";
        const json_value index = load_json(index_path);
        if (!index.is_object()) throw error(detail::msg() + where + "index is not a JSON object");
        const json_value* map = index.find("weight_map");
        if (!map || !map->is_object())
            throw error(detail::msg() + where + "index has no \"weight_map\" object");
        if (map->size() == 0) throw error(detail::msg() + where + "weight_map is empty");

        safetensors_model m;
        m.path_ = index_path;
        const std::filesystem::path dir = std::filesystem::path(index_path).parent_path();
        std::map<std::string, std::size_t, std::less<>> file_index;
        for (const auto& [name, file] : map->items()) {
            if (!file.is_string())
                throw error(detail::msg() + where + "weight_map entry '" + name +
                            "' is not a file name string");
            const std::string& f = file.as_string();
            // Shards live beside the index: a path elsewhere is a malformed (or hostile) index.
            if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos ||
                f.find('\\') != std::string::npos || f.find('\0') != std::string::npos)
                throw error(detail::msg() + where + "weight_map entry '" + name + "' names '" + f +
                            "', which is not a plain file name in the index's folder");
            auto it = file_index.find(f);
            if (it == file_index.end()) {
                it = file_index.emplace(f, m.files_.size()).first;
                m.files_.push_back(safetensors_file::open((dir / f).string()));
            }
            if (!m.files_[it->second].contains(name))
                throw error(detail::msg() + where + "weight_map maps '" + name + "' to '" + f +
                            "', which has no tensor of that name");
            m.names_.push_back(name);
            m.where_.emplace(name, it->second);
        }
        return m;
    }
};

}  // namespace kvcar::io
