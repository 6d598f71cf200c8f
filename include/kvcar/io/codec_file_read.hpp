// kvcar/io/codec_file_read.hpp — parse_codec_set and load_codec_set: a codec file read and
// validated field by field, tensor by tensor, against itself and the model (docs/codec_file.md),
// every message naming the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "kvcar/codec/traits.hpp"
#include "kvcar/io/codec_set.hpp"
#include "kvcar/io/json.hpp"
#include "kvcar/io/safetensors.hpp"

namespace kvcar::io {

namespace detail {

/// Reads the JSON metadata of a codec file, reporting problems as "codec file <path>: ...".
class codec_metadata_reader {
public:
    explicit codec_metadata_reader(std::string path) : path_(std::move(path)) {}

    [[noreturn]] void fail(const std::string& problem) const {
        throw error("kvcar: codec file " + path_ + ": " + problem);
    }

    const json_value& member(const json_value& obj, const char* key,
                             const std::string& where) const {
        const json_value* v = obj.find(key);
        if (!v) fail(where + " has no \"" + key + "\"");
        return *v;
    }
    std::string get_string(const json_value& obj, const char* key, const std::string& where) const {
        const json_value& v = member(obj, key, where);
        if (!v.is_string())
            fail(where + " \"" + key + "\" is " + json_value::kind_name(v.type()) +
                 ", expected a string");
        return v.as_string();
    }
    int get_int(const json_value& obj, const char* key, const std::string& where) const {
        return as_int(member(obj, key, where), where + " \"" + key + "\"");
    }
    int as_int(const json_value& v, const std::string& what) const {
        if (!v.is_integer() || v.as_int() < std::int64_t(-2147483647 - 1) ||
            v.as_int() > std::int64_t(2147483647))
            fail(what + " is " +
                 (v.is_number() ? std::string("not a 32-bit integer")
                                : std::string(json_value::kind_name(v.type()))) +
                 ", expected an integer");
        return int(v.as_int());
    }
    const json_value& get_object(const json_value& obj, const char* key,
                                 const std::string& where) const {
        const json_value& v = member(obj, key, where);
        if (!v.is_object())
            fail(where + " \"" + key + "\" is " + json_value::kind_name(v.type()) +
                 ", expected an object");
        return v;
    }
    const json_value& get_array(const json_value& obj, const char* key,
                                const std::string& where) const {
        const json_value& v = member(obj, key, where);
        if (!v.is_array())
            fail(where + " \"" + key + "\" is " + json_value::kind_name(v.type()) +
                 ", expected an array");
        return v;
    }

    std::vector<reuse_entry> reuse_list(const json_value& root, const char* key) const {
        const json_value& a = get_array(root, key, "metadata");
        std::vector<reuse_entry> out;
        for (std::size_t i = 0; i < a.size(); ++i) {
            const std::string what = std::string(key) + "[" + std::to_string(i) + "]";
            const json_value& e = a.at(i);
            if (!e.is_array() || e.size() != 4)
                fail(what +
                     " is not an array of 4 integers [layer, group, source_layer, "
                     "source_group]");
            out.push_back({as_int(e.at(0), what + "[0]"), as_int(e.at(1), what + "[1]"),
                           as_int(e.at(2), what + "[2]"), as_int(e.at(3), what + "[3]")});
        }
        return out;
    }

private:
    std::string path_;
};

}  // namespace detail

namespace detail {

/// A members() visitor that fills a slot's parameters from its JSON object and the file's
/// tensors, checking each against the shape the sizes read before it give.
struct slot_reader {
    const codec_metadata_reader& r;
    const safetensors_file& file;
    const json_value& slot;
    const std::string& where;  // "slots[4] (1, 0, K)"
    const std::string& codec;  // its codec's name
    int width, latent;         // read for every codec
    std::string prefix;        // its tensors' name prefix
    std::set<std::string>& used_tensors;
    std::map<const int*, std::pair<std::string, int>> assigned{};  // the sizes set so far

    void size(const char* name, int& v) {
        const std::string_view n(name);
        const int value = n == "width"    ? width
                          : n == "latent" ? latent
                                          : r.get_int(slot, name, where);
        if (value <= 0)
            r.fail(where + " " + name + " must be positive (got " + std::to_string(value) + ")");
        // Two names for one member (an identity's latent is its width) must agree.
        if (const auto it = assigned.find(&v); it != assigned.end() && it->second.second != value)
            r.fail(where + " is " + with_article(codec) + " codec with " + name + " " +
                   std::to_string(value) + " but " + it->second.first + " " +
                   std::to_string(it->second.second));
        v = value;
        assigned[&v] = {name, value};
    }
    void real(const char* name, float& v) {
        const json_value& x = r.member(slot, name, where);
        if (!x.is_number()) r.fail(where + " " + name + " is not a number");
        v = float(x.as_double());
    }
    void tensor(const char* suffix, std::vector<float>& v, std::initializer_list<int> dims) {
        const std::string name = prefix + suffix;
        const std::vector<std::int64_t> shape(dims.begin(), dims.end());
        if (!file.contains(name))
            r.fail(where + " (" + codec + ") needs tensor '" + name +
                   "', which the file does not have");
        const tensor_view t = file.tensor(name);
        if (t.dtype != dtype::f32)
            r.fail("tensor '" + name + "' has dtype " + dtype_name(t.dtype) + ", expected F32");
        if (t.shape != shape)
            r.fail("tensor '" + name + "' has shape " + shape_text(t.shape) + ", expected " +
                   shape_text(shape) + " from " + where);
        v = tensor_to_float(t, name);
        used_tensors.insert(name);
    }
};

/// parse_codec_set over bytes it owns: the path loader hands its file's bytes over without a
/// copy, since safetensors_file keeps the bytes its tensor views point into.
template <class List>
codec_set parse_owned_codec_bytes(std::vector<std::byte> bytes, const std::string& source) {
    const codec_metadata_reader r(source);
    safetensors_file file = [&] {
        try {
            return safetensors_file::from_bytes(std::move(bytes), source);
        } catch (const error& e) {
            r.fail(slot_codec::strip(e.what()));
        }
    }();
    const auto meta = file.metadata().find("kvcar");
    if (meta == file.metadata().end())
        r.fail("is not a kvcar codec file: its safetensors metadata has no \"kvcar\" entry");
    json_value root;
    try {
        root = parse_json(meta->second, source + " metadata");
    } catch (const json_error& e) {
        r.fail("metadata is not valid JSON: " + std::to_string(e.line()) + ":" +
               std::to_string(e.column()) + ": " + e.problem());
    }
    if (!root.is_object()) r.fail("metadata is not a JSON object");
    const std::string format = r.get_string(root, "format", "metadata");
    if (format != codec_file_format)
        r.fail("is not a kvcar codec file: format is \"" + format + "\", expected \"" +
               codec_file_format + "\"");
    const int version = r.get_int(root, "version", "metadata");
    if (version != codec_file_version)
        r.fail("has format version " + std::to_string(version) + "; this kvcar reads version " +
               std::to_string(codec_file_version));

    codec_set set;
    const json_value& model = r.get_object(root, "model", "metadata");
    set.model.architecture = r.get_string(model, "architecture", "model");
    set.model.name = r.get_string(model, "name", "model");
    set.geometry.n_layers = r.get_int(model, "n_layers", "model");
    set.geometry.n_kv_heads = r.get_int(model, "n_kv_heads", "model");
    set.geometry.head_dim = r.get_int(model, "head_dim", "model");
    set.heads_per_group = r.get_int(root, "heads_per_group", "metadata");
    if (root.contains("keys")) {
        const std::string keys = r.get_string(root, "keys", "metadata");
        if (keys == "post-rope")
            set.keys = codec_keys::post_rope;
        else if (keys == "pre-rope")
            set.keys = codec_keys::pre_rope;
        else
            r.fail("metadata \"keys\" is \"" + keys + "\", not \"post-rope\" or \"pre-rope\"");
    }
    set.key_reuse = r.reuse_list(root, "key_reuse");
    set.value_reuse = r.reuse_list(root, "value_reuse");
    if (const json_value* cal = root.find("calibration")) {
        if (!cal->is_object()) r.fail("metadata \"calibration\" is not an object");
        if (cal->contains("text")) set.calibration.text = r.get_string(*cal, "text", "calibration");
        if (cal->contains("notes"))
            set.calibration.notes = r.get_string(*cal, "notes", "calibration");
        if (const json_value* tokens = cal->find("tokens")) {
            if (!tokens->is_integer() || tokens->as_int() < 0)
                r.fail("calibration \"tokens\" is not a non-negative integer");
            set.calibration.tokens = tokens->as_int();
        }
    }

    const json_value& slots = r.get_array(root, "slots", "metadata");
    std::set<std::string> used_tensors;
    set.slots.reserve(slots.size());
    for (std::size_t i = 0; i < slots.size(); ++i) {
        const std::string where = "slots[" + std::to_string(i) + "]";
        const json_value& j = slots.at(i);
        if (!j.is_object()) r.fail(where + " is not an object");
        slot_codec s;
        s.layer = r.get_int(j, "layer", where);
        s.group = r.get_int(j, "group", where);
        const std::string kind = r.get_string(j, "kind", where);
        if (kind != "K" && kind != "V") r.fail(where + " kind is \"" + kind + "\", not K or V");
        s.kind = kind == "K" ? kv_kind::key : kv_kind::value;
        const std::string slot_where = where + " " + s.name();
        const std::string codec = r.get_string(j, "codec", slot_where);
        const int index = codec_index_of_name(List{}, codec);
        if (index < 0) {
            std::string known;
            for (int k = 0; k < int(List::size); ++k)
                known += std::string(k == 0 ? "" : k + 1 == int(List::size) ? " or " : ", ") +
                         codec_name(List{}, k);
            r.fail(slot_where + " has unknown codec \"" + codec + "\" (expected " + known + ")");
        }
        s.codec = codec_kind(index);
        const std::string storage = r.get_string(j, "storage", slot_where);
        const auto st = parse_latent_storage(storage);
        if (!st)
            r.fail(slot_where + " has unknown storage \"" + storage +
                   "\" (expected f32, f16, bf16, int8 or fp8_e4m3)");
        s.storage = *st;
        s.width = r.get_int(j, "width", slot_where);
        const int latent = r.get_int(j, "latent", slot_where);
        if (s.width <= 0 || latent <= 0)
            r.fail(slot_where + " width and latent must be positive (got " +
                   std::to_string(s.width) + ", " + std::to_string(latent) + ")");
        slot_reader reader{r, file, j, slot_where, codec, s.width, latent,
                           slot_prefix(s.layer, s.group, s.kind), used_tensors};
        s.with_codec<List>([&]<class Codec>() {
            using reg = codec_registration<Codec>;
            reg::members(s.params<typename reg::params>(), reader);
        });
        set.slots.push_back(std::move(s));
    }
    for (const std::string& name : file.names())
        if (!used_tensors.count(name))
            r.fail("tensor '" + name + "' belongs to no slot of the metadata");

    // Every logical (layer, group, K/V) is either a listed slot or a reuse entry, so there are
    // at least as many entries as groups. Checked in 64 bits before validate() builds the layout: a geometry the
    // file cannot back with slots would otherwise size tables from the header alone (found by
    // fuzz/codec_file).
    if (set.heads_per_group > 0 && set.geometry.n_kv_heads > 0 && set.geometry.n_layers > 0 &&
        set.geometry.n_kv_heads % set.heads_per_group == 0) {
        const long long logical = 2LL * set.geometry.n_layers *
                                  (set.geometry.n_kv_heads / set.heads_per_group);
        const long long listed = static_cast<long long>(set.slots.size() + set.key_reuse.size() +
                                                        set.value_reuse.size());
        // Fewer entries than groups: name the first group nothing covers, found from the
        // entries alone (sorting them), not from tables the size of the claimed geometry. More
        // entries than groups is left to validate(), which names the duplicate or the cycle.
        if (logical > listed) {
            const long long groups = set.geometry.n_kv_heads / set.heads_per_group;
            auto index = [&](long long layer, long long group, kv_kind kind) {
                return (layer * groups + group) * 2 + int(kind);
            };
            std::vector<long long> covered;
            covered.reserve(std::size_t(listed));
            for (const slot_codec& c : set.slots) covered.push_back(index(c.layer, c.group, c.kind));
            for (const reuse_entry& e : set.key_reuse) covered.push_back(index(e.layer, e.group, kv_kind::key));
            for (const reuse_entry& e : set.value_reuse) covered.push_back(index(e.layer, e.group, kv_kind::value));
            std::sort(covered.begin(), covered.end());
            long long missing = 0;
            for (long long c : covered) {
                if (c != missing) break;
                ++missing;
            }
            const int layer = int(missing / 2 / groups), group = int(missing / 2 % groups);
            r.fail("stored slot " + slot_codec::identity(layer, group, kv_kind(missing % 2), 0).name() +
                   " has no codec (the geometry has " + std::to_string(logical) +
                   " logical K/V groups, the file lists " + std::to_string(listed) + ")");
        }
    }
    try {
        set.validate<List>();
    } catch (const error& e) {
        r.fail(slot_codec::strip(e.what()));
    }
    return set;
}

}  // namespace detail

/// Parses and validates a codec file held in memory (every field, tensor and reference; see
/// docs/codec_file.md), exactly as load_codec_set reads one from disk: the entry point for
/// files that did not come from a path (a download, an archive member, a fuzzer's input).
/// `bytes` is copied; `source` names the input in messages. Throws kvcar::error
/// "codec file <source>: <problem>", e.g. for bytes too short to be safetensors, a header
/// that runs past the end, metadata that is not a kvcar codec set, or a tensor that
/// contradicts it.
/// The slots' codecs are looked up by name in `List`.
template <class List = builtin_codecs>
codec_set parse_codec_set(std::span<const std::byte> bytes, const std::string& source) {
    return detail::parse_owned_codec_bytes<List>(std::vector<std::byte>(bytes.begin(), bytes.end()),
                                           source);
}

/// Reads and validates the codec file at `path` (parse_codec_set over the file's bytes).
/// Throws kvcar::error "codec file <path>: <problem>", also when the file cannot be read.
template <class List = builtin_codecs>
codec_set load_codec_set(const std::string& path) {
    std::vector<std::byte> bytes;
    try {
        bytes = detail::read_file_bytes(path, "safetensors");
    } catch (const error& e) {
        detail::codec_metadata_reader(path).fail(slot_codec::strip(e.what()));
    }
    return detail::parse_owned_codec_bytes<List>(std::move(bytes), path);
}

/// Loads a codec file for a model of geometry `expected`: as load_codec_set(path), and the file
/// must have been made for that geometry.
template <class List = builtin_codecs>
codec_set load_codec_set(const std::string& path, const kv_geometry& expected) {
    codec_set set = load_codec_set<List>(path);
    const kv_geometry& g = set.geometry;
    if (g.n_layers != expected.n_layers || g.n_kv_heads != expected.n_kv_heads ||
        g.head_dim != expected.head_dim)
        throw error("kvcar: codec file " + path + " was made for " + std::to_string(g.n_layers) +
                    " layers x " + std::to_string(g.n_kv_heads) + " KV heads x " +
                    std::to_string(g.head_dim) + ", this model has " +
                    std::to_string(expected.n_layers) + " x " +
                    std::to_string(expected.n_kv_heads) + " x " +
                    std::to_string(expected.head_dim));
    return set;
}

}  // namespace kvcar::io
