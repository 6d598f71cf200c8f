// kvcar/io/safetensors_write.hpp — write a safetensors file (the format is described in
// safetensors.hpp), atomically: a temporary file renamed over the target.
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

/// Writes a safetensors file: header padded with spaces to a multiple of 8 bytes (so the data
/// section is 8-byte aligned when the file is mapped), tensors in the given order. Writes
/// `path`.tmp and renames it over `path`, so a failed write never leaves a half file at `path`.
inline void write_safetensors(const std::string& path, std::span<const tensor_to_write> tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
    const std::string where = "kvcar: write_safetensors: " + path + ": ";
    json_value header = json_value::object();
    if (!metadata.empty()) {
        json_value meta = json_value::object();
        for (const auto& [k, v] : metadata) meta.set(k, v);
        header.set("__metadata__", std::move(meta));
    }
    std::uint64_t offset = 0;
    const std::uint64_t max_bytes = std::uint64_t(std::numeric_limits<std::int64_t>::max());
    for (const tensor_to_write& t : tensors) {
        const std::string what = "tensor '" + t.name + "'";
        if (t.name.empty()) throw error(detail::msg() + where + "a tensor has an empty name");
        if (t.name == "__metadata__")
            throw error(detail::msg() + where + "'__metadata__' is not a tensor name");
        if (header.contains(t.name)) throw error(detail::msg() + where + what + " appears twice");
        if (dtype_size(t.dtype) == 0) throw error(detail::msg() + where + what + ": invalid dtype");
        std::uint64_t numel = 1;
        json_value shape = json_value::array();
        for (std::int64_t d : t.shape) {
            if (d < 0)
                throw error(detail::msg() + where + what + ": negative dimension in shape " +
                            detail::shape_text(t.shape));
            if (!detail::mul_within(numel, std::uint64_t(d), max_bytes, numel))
                throw error(detail::msg() + where + what + ": shape " +
                            detail::shape_text(t.shape) + " has too many elements");
            shape.push_back(d);
        }
        std::uint64_t nbytes = 0;
        if (!detail::mul_within(numel, dtype_size(t.dtype), max_bytes, nbytes) ||
            nbytes != t.data.size())
            throw error(detail::msg() + where + what + " has " + t.data.size() +
                        " bytes but shape " + detail::shape_text(t.shape) + " of " +
                        dtype_name(t.dtype) + " needs " +
                        (nbytes ? std::to_string(nbytes) : std::string("more")));
        json_value entry = json_value::object();
        entry.set("dtype", dtype_name(t.dtype));
        entry.set("shape", std::move(shape));
        entry.set("data_offsets", json_value(json_value::array_type{offset, offset + nbytes}));
        header.set(t.name, std::move(entry));
        offset += nbytes;
    }
    std::string text = to_json(header);
    text.append((8 - (8 + text.size()) % 8) % 8, ' ');
    if (text.size() > safetensors_max_header)
        throw error(detail::msg() + where + "header of " + text.size() +
                    " bytes exceeds the 100 MiB limit");

    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw error(detail::msg() + where + "cannot open " + tmp + " for writing");
        unsigned char len[8];
        for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(text.size() >> (8 * i));
        out.write(reinterpret_cast<const char*>(len), 8);
        out.write(text.data(), std::streamsize(text.size()));
        for (const tensor_to_write& t : tensors)
            if (!t.data.empty())
                out.write(reinterpret_cast<const char*>(t.data.data()),
                          std::streamsize(t.data.size()));
        out.close();
        if (!out) {
            std::error_code ec;
            std::filesystem::remove(tmp, ec);
            throw error(detail::msg() + where + "writing " + tmp + " failed");
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::error_code ec2;
        std::filesystem::remove(tmp, ec2);
        throw error(detail::msg() + where + "cannot rename " + tmp + " to " + path + ": " +
                    ec.message());
    }
}

}  // namespace kvcar::io
