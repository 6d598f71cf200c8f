// kvcar/io/safetensors.hpp — read safetensors files (safetensors_model.hpp: model folders and
// shards; safetensors_write.hpp: the writer).
//
// Format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
// mapping each tensor name to {dtype, shape, data_offsets: [begin, end]} (offsets relative to
// the data section that follows the header) plus an optional "__metadata__" string->string map,
// then the data section. These files come from the internet, so the reader checks every length,
// offset and count before use (overflow included) and names the file and the problem in every
// error. The whole file is read into memory: the views it hands out point into that buffer.
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

namespace kvcar::io {

/// Element types a safetensors file may hold (the byte-sized ones of the reference format).
enum class dtype : std::uint8_t {
    f64,
    f32,
    f16,
    bf16,
    f8_e4m3,
    f8_e5m2,
    i64,
    i32,
    i16,
    i8,
    u64,
    u32,
    u16,
    u8,
    boolean
};

/// Bytes per element.
constexpr std::size_t dtype_size(dtype t) {
    switch (t) {
        case dtype::f64:
        case dtype::i64:
        case dtype::u64:
            return 8;
        case dtype::f32:
        case dtype::i32:
        case dtype::u32:
            return 4;
        case dtype::f16:
        case dtype::bf16:
        case dtype::i16:
        case dtype::u16:
            return 2;
        case dtype::f8_e4m3:
        case dtype::f8_e5m2:
        case dtype::i8:
        case dtype::u8:
        case dtype::boolean:
            return 1;
    }
    return 0;
}

/// The name the safetensors header uses ("F16", "BOOL", ...).
constexpr const char* dtype_name(dtype t) {
    switch (t) {
        case dtype::f64:
            return "F64";
        case dtype::f32:
            return "F32";
        case dtype::f16:
            return "F16";
        case dtype::bf16:
            return "BF16";
        case dtype::f8_e4m3:
            return "F8_E4M3";
        case dtype::f8_e5m2:
            return "F8_E5M2";
        case dtype::i64:
            return "I64";
        case dtype::i32:
            return "I32";
        case dtype::i16:
            return "I16";
        case dtype::i8:
            return "I8";
        case dtype::u64:
            return "U64";
        case dtype::u32:
            return "U32";
        case dtype::u16:
            return "U16";
        case dtype::u8:
            return "U8";
        case dtype::boolean:
            return "BOOL";
    }
    return "?";
}

/// Every dtype, in value order (for loops over dtypes and parsing).
inline constexpr dtype all_dtypes[] = {dtype::f64,     dtype::f32,     dtype::f16,    dtype::bf16,
                                       dtype::f8_e4m3, dtype::f8_e5m2, dtype::i64,    dtype::i32,
                                       dtype::i16,     dtype::i8,      dtype::u64,    dtype::u32,
                                       dtype::u16,     dtype::u8,      dtype::boolean};

/// The dtype named `name` as safetensors headers spell it ("F32", "BF16", ...), or nullopt for an
/// unknown name.
constexpr std::optional<dtype> parse_dtype(std::string_view name) {
    for (dtype t : all_dtypes)
        if (name == dtype_name(t)) return t;
    return std::nullopt;
}

/// One tensor of a loaded file: its bytes stay owned by the file (or model) it came from.
struct tensor_view {
    io::dtype dtype = io::dtype::f32;  ///< element type
    std::vector<std::int64_t> shape;   ///< dimensions, outermost first (empty for a scalar)
    std::span<const std::byte> data;   ///< little-endian, row-major, not necessarily aligned

    /// Elements: the product of the shape (1 for a scalar).
    std::int64_t numel() const {
        std::int64_t n = 1;
        for (std::int64_t d : shape) n *= d;  // validated at load: cannot overflow
        return n;
    }
};

/// A tensor to write: `data` holds numel * dtype_size bytes, little-endian, row-major.
struct tensor_to_write {
    std::string name;                  ///< the tensor's name in the header (unique within the file)
    io::dtype dtype = io::dtype::f32;  ///< element type of `data`
    std::vector<std::int64_t> shape;   ///< dimensions, outermost first
    std::span<const std::byte> data;   ///< numel x dtype_size bytes, little-endian, row-major
};

/// Largest header the reader accepts (the reference implementation's limit).
inline constexpr std::uint64_t safetensors_max_header = 100u << 20;

/// A little-endian T stored at `p` (any alignment), on any host: the byte order of safetensors
/// headers and tensors, and of llama2.c files.
template <class T>
T load_le(const std::byte* p) {
    static_assert(std::is_trivially_copyable_v<T>);
    unsigned char b[sizeof(T)];
    std::memcpy(b, p, sizeof(T));
    if constexpr (std::endian::native == std::endian::big)
        for (std::size_t i = 0; i < sizeof(T) / 2; ++i) std::swap(b[i], b[sizeof(T) - 1 - i]);
    T v;
    std::memcpy(&v, b, sizeof(T));
    return v;
}

namespace detail {

/// `a * b` unless it exceeds `limit`.
inline bool mul_within(std::uint64_t a, std::uint64_t b, std::uint64_t limit, std::uint64_t& out) {
    if (a != 0 && b > limit / a) return false;
    out = a * b;
    return true;
}

inline std::string shape_text(std::span<const std::int64_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(shape[i]);
    }
    s += ']';
    return s;
}

/// Decodes F8_E5M2 (IEEE-like: 5 exponent bits, 2 mantissa bits): it is the top byte of an f16.
inline float f8_e5m2_to_float(std::uint8_t b) { return to_float(f16{std::uint16_t(b << 8)}); }

}  // namespace detail

/// Converts a F64, F32, F16, BF16, F8_E4M3 or F8_E5M2 tensor to float32; `what` names it in errors.
inline std::vector<float> tensor_to_float(const tensor_view& t, std::string_view what) {
    if (dtype_size(t.dtype) == 0)
        throw error(detail::msg() + "kvcar: safetensors: " + what + ": invalid dtype");
    const std::size_t n = t.data.size() / dtype_size(t.dtype);
    std::vector<float> out(n);
    const std::byte* p = t.data.data();
    switch (t.dtype) {
        case dtype::f64:
            for (std::size_t i = 0; i < n; ++i) out[i] = float(load_le<double>(p + 8 * i));
            break;
        case dtype::f32:
            for (std::size_t i = 0; i < n; ++i) out[i] = load_le<float>(p + 4 * i);
            break;
        case dtype::f16:
            for (std::size_t i = 0; i < n; ++i)
                out[i] = to_float(f16{load_le<std::uint16_t>(p + 2 * i)});
            break;
        case dtype::bf16:
            for (std::size_t i = 0; i < n; ++i)
                out[i] = to_float(bf16{load_le<std::uint16_t>(p + 2 * i)});
            break;
        case dtype::f8_e4m3:
            for (std::size_t i = 0; i < n; ++i) out[i] = to_float(fp8_e4m3{std::uint8_t(p[i])});
            break;
        case dtype::f8_e5m2:
            for (std::size_t i = 0; i < n; ++i)
                out[i] = detail::f8_e5m2_to_float(std::uint8_t(p[i]));
            break;
        default:
            throw error(detail::msg() + "kvcar: safetensors: " + what + " has dtype " +
                        dtype_name(t.dtype) + ", which is not a floating-point type");
    }
    return out;
}

/// One safetensors file, read whole into memory and validated.
class safetensors_file {
public:
    /// Reads and validates `path`. Throws kvcar::error "safetensors: <path>: <problem>".
    static safetensors_file open(const std::string& path) {
        return from_bytes(detail::read_file_bytes(path, "safetensors"), path);
    }

    /// Validates an in-memory file (a fuzzer's entry point); `source_name` names it in errors.
    static safetensors_file from_bytes(std::vector<std::byte> bytes, std::string source_name) {
        safetensors_file f;
        f.path_ = std::move(source_name);
        f.bytes_ = std::move(bytes);
        f.parse();
        return f;
    }

    /// The path (or source name) it was read from, as messages name it.
    const std::string& path() const { return path_; }
    /// Tensor names in header order.
    const std::vector<std::string>& names() const { return names_; }
    /// Number of tensors.
    std::size_t size() const { return names_.size(); }
    /// Whether the file has a tensor named `name`.
    bool contains(std::string_view name) const { return entries_.find(name) != entries_.end(); }
    /// The header's "__metadata__" entries (string to string; empty when absent).
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

    /// The tensor `name`; throws kvcar::error when the file has none of that name.
    tensor_view tensor(std::string_view name) const {
        const auto it = entries_.find(name);
        if (it == entries_.end())
            throw error(detail::msg() + "kvcar: safetensors: " + path_ + ": no tensor named '" +
                        name + "'");
        const entry& e = it->second;
        return {e.type, e.shape,
                std::span<const std::byte>(bytes_.data() + data_start_ + e.begin, e.end - e.begin)};
    }

    /// The tensor converted to float32 (F64/F32/F16/BF16/F8).
    std::vector<float> to_float(std::string_view name) const {
        return tensor_to_float(tensor(name),
                               std::string(detail::msg() + path_ + ": tensor '" + name + "'"));
    }

private:
    struct entry {
        dtype type;
        std::vector<std::int64_t> shape;
        std::size_t begin, end;  // within the data section
    };

    std::string path_;
    std::vector<std::byte> bytes_;
    std::size_t data_start_ = 0;
    std::vector<std::string> names_;
    std::map<std::string, entry, std::less<>> entries_;
    std::map<std::string, std::string> metadata_;

    [[noreturn]] void fail(const std::string& problem) const {
        throw error(detail::msg() + "kvcar: safetensors: " + path_ + ": " + problem);
    }

    void parse() {
        const std::uint64_t file_size = bytes_.size();
        if (file_size < 8)
            fail(detail::msg() + "not a safetensors file: " + file_size +
                 " bytes, too short for the 8-byte header length");
        const std::uint64_t header_len = load_le<std::uint64_t>(bytes_.data());
        if (header_len > safetensors_max_header)
            fail(detail::msg() + "not a safetensors file: header length " + header_len +
                 " exceeds the 100 MiB limit");
        if (header_len > file_size - 8)
            fail(detail::msg() + "truncated: header says " + header_len +
                 " bytes of JSON, file has " + (file_size - 8));
        if (header_len < 2 || bytes_[8] != std::byte('{'))
            fail(detail::msg() + "not a safetensors file: header does not start with '{'");
        data_start_ = 8 + std::size_t(header_len);
        const std::uint64_t data_size = file_size - data_start_;

        const std::string_view text(reinterpret_cast<const char*>(bytes_.data()) + 8,
                                    std::size_t(header_len));
        json_value header;
        try {
            header = parse_json(text, path_);
        } catch (const json_error& e) {
            fail(detail::msg() + "header is not valid JSON: " + e.line() + ":" + e.column() + ": " +
                 e.problem());
        }
        if (!header.is_object()) fail(detail::msg() + "header is not a JSON object");

        struct range {
            std::uint64_t begin, end;
            const std::string* name;
        };
        std::vector<range> ranges;
        for (const auto& [name, info] : header.items()) {
            if (name == "__metadata__") {
                read_metadata(info);
                continue;
            }
            entry e = read_entry(name, info, data_size);
            if (e.end > e.begin) ranges.push_back({e.begin, e.end, &name});
            names_.push_back(name);
            entries_.emplace(name, std::move(e));
        }
        std::sort(ranges.begin(), ranges.end(),
                  [](const range& a, const range& b) { return a.begin < b.begin; });
        for (std::size_t i = 1; i < ranges.size(); ++i)
            if (ranges[i].begin < ranges[i - 1].end)
                fail(detail::msg() + "tensors '" + *ranges[i - 1].name + "' and '" +
                     *ranges[i].name + "' overlap: data_offsets [" + ranges[i - 1].begin + ", " +
                     ranges[i - 1].end + "] and [" + ranges[i].begin + ", " + ranges[i].end + "]");
    }

    void read_metadata(const json_value& info) {
        if (!info.is_object()) fail(detail::msg() + "__metadata__ is not a JSON object");
        for (const auto& [key, value] : info.items()) {
            if (!value.is_string())
                fail(detail::msg() + "__metadata__ value of '" + key + "' is " +
                     json_value::kind_name(value.type()) + ", not a string");
            metadata_.emplace(key, value.as_string());
        }
    }

    /// A non-negative integer field, or an error naming the tensor and the field.
    std::uint64_t read_count(const json_value& v, const std::string& tensor,
                             const std::string& field) const {
        if (!v.is_integer() || v.as_int() < 0)
            fail(detail::msg() + "tensor '" + tensor + "': " + field + " is " +
                 (v.is_number() ? std::string(v.is_integer() ? "negative" : "not an integer")
                                : json_value::kind_name(v.type())) +
                 ", expected a non-negative integer");
        return std::uint64_t(v.as_int());
    }

    entry read_entry(const std::string& name, const json_value& info,
                     std::uint64_t data_size) const {
        const std::string what = "tensor '" + name + "'";
        if (!info.is_object()) fail(detail::msg() + what + ": entry is not a JSON object");
        const json_value* dt = info.find("dtype");
        const json_value* sh = info.find("shape");
        const json_value* off = info.find("data_offsets");
        if (!dt || !sh || !off)
            fail(detail::msg() + what + ": missing '" +
                 std::string(!dt   ? "dtype"
                             : !sh ? "shape"
                                   : "data_offsets") +
                 "'");
        if (!dt->is_string()) fail(detail::msg() + what + ": dtype is not a string");
        const std::optional<dtype> type = parse_dtype(dt->as_string());
        if (!type)
            fail(detail::msg() + what + ": unknown or unsupported dtype '" + dt->as_string() + "'");
        const std::size_t item = dtype_size(*type);

        if (!sh->is_array()) fail(detail::msg() + what + ": shape is not an array");
        entry e{*type, {}, 0, 0};
        std::uint64_t numel = 1;
        const std::uint64_t max_numel = std::uint64_t(std::numeric_limits<std::int64_t>::max());
        for (std::size_t i = 0; i < sh->size(); ++i) {
            const std::uint64_t d = read_count(sh->at(i), name, detail::msg() + "shape[" + i + "]");
            if (!detail::mul_within(numel, d, max_numel, numel))
                fail(detail::msg() + what + ": shape " + detail::shape_text(e.shape) + "x" + d +
                     "... has more elements than fit in 64 bits");
            e.shape.push_back(std::int64_t(d));
        }
        std::uint64_t nbytes = 0;
        if (!detail::mul_within(numel, item, max_numel, nbytes))
            fail(detail::msg() + what + ": shape " + detail::shape_text(e.shape) + " of " +
                 dt->as_string() + " needs more bytes than fit in 64 bits");

        if (!off->is_array() || off->size() != 2)
            fail(detail::msg() + what + ": data_offsets is not an array of two integers");
        const std::uint64_t begin = read_count(off->at(0), name, "data_offsets[0]");
        const std::uint64_t end = read_count(off->at(1), name, "data_offsets[1]");
        if (begin > end)
            fail(detail::msg() + what + ": data_offsets [" + begin + ", " + end +
                 "] end before begin");
        if (end > data_size)
            fail(detail::msg() + what + ": data_offsets [" + begin + ", " + end +
                 "] out of range: data section has " + data_size + " bytes");
        if (end - begin != nbytes)
            fail(detail::msg() + what + ": data_offsets [" + begin + ", " + end + "] hold " +
                 (end - begin) + " bytes but shape " + detail::shape_text(e.shape) + " of " +
                 dt->as_string() + " needs " + nbytes);
        e.begin = std::size_t(begin);
        e.end = std::size_t(end);
        return e;
    }
};

}  // namespace kvcar::io
