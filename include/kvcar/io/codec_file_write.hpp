// kvcar/io/codec_file_write.hpp — save_codec_set: a codec set as a codec file (safetensors with
// the "kvcar" JSON metadata; docs/codec_file.md), written to path.tmp and renamed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "kvcar/codec/traits.hpp"
#include "kvcar/io/codec_set.hpp"
#include "kvcar/io/json.hpp"
#include "kvcar/io/safetensors_write.hpp"

namespace kvcar::io {

namespace detail {

inline json_value reuse_json(const std::vector<reuse_entry>& entries) {
    json_value a = json_value::array();
    for (const reuse_entry& e : entries)
        a.push_back(
            json_value(json_value::array_type{e.layer, e.group, e.source_layer, e.source_group}));
    return a;
}

/// A members() visitor over a slot's parameters that writes its further sizes and reals to the
/// slot's JSON object and queues its tensors (width and latent are written for every codec).
struct slot_writer {
    json_value& slot;
    std::vector<tensor_to_write>& tensors;
    std::vector<std::vector<std::byte>>& keep;
    std::string prefix;

    void size(const char* name, const int& v) {
        const std::string_view n(name);
        if (n != "width" && n != "latent") slot.set(name, v);
    }
    void real(const char* name, const float& v) { slot.set(name, double(v)); }
    void tensor(const char* name, const std::vector<float>& v, std::initializer_list<int> shape) {
        tensors.push_back({prefix + name, dtype::f32,
                           std::vector<std::int64_t>(shape.begin(), shape.end()),
                           le_bytes(v, keep)});
    }
};

}  // namespace detail

/// Writes `set` to `path` (validated first; written to path.tmp and renamed, so a failure
/// leaves no half file). The slots' kinds are of `List`; the file names each slot's codec.
template <class List = builtin_codecs>
void save_codec_set(const codec_set& set, const std::string& path) {
    set.validate<List>();
    const reuse_map map = set.layout();
    json_value model = json_value::object();
    model.set("architecture", set.model.architecture);
    model.set("n_layers", set.geometry.n_layers);
    model.set("n_kv_heads", set.geometry.n_kv_heads);
    model.set("head_dim", set.geometry.head_dim);
    model.set("name", set.model.name);

    std::vector<tensor_to_write> tensors;
    std::vector<std::vector<std::byte>> keep;
    std::vector<std::string> names;
    json_value slots = json_value::array();
    for (int i = 0; i < map.n_slots(); ++i) {
        const slot_owner o = map.owner(i);
        const slot_codec& s = *set.find(o.layer, o.group, o.kind);
        json_value j = json_value::object();
        j.set("layer", s.layer);
        j.set("group", s.group);
        j.set("kind", to_string(s.kind));
        j.set("codec", codec_name(List{}, int(s.codec)));
        j.set("width", s.width);
        j.set("latent", s.latent_width<List>());
        detail::slot_writer writer{j, tensors, keep,
                                   detail::slot_prefix(s.layer, s.group, s.kind)};
        s.with_codec<List>([&]<class Codec>() {
            using reg = codec_registration<Codec>;
            const typename reg::params none{};  // a codec the slot holds no parameters for
            const auto* p = s.find_params<typename reg::params>();
            reg::members(p ? *p : none, writer);
        });
        j.set("storage", to_string(s.storage));
        slots.push_back(std::move(j));
    }
    json_value calibration = json_value::object();
    calibration.set("text", set.calibration.text);
    calibration.set("tokens", set.calibration.tokens);
    calibration.set("notes", set.calibration.notes);

    json_value root = json_value::object();
    root.set("format", codec_file_format);
    root.set("version", codec_file_version);
    root.set("model", std::move(model));
    root.set("heads_per_group", set.heads_per_group);
    if (set.keys != codec_keys::unknown) root.set("keys", to_string(set.keys));
    root.set("key_reuse", detail::reuse_json(set.key_reuse));
    root.set("value_reuse", detail::reuse_json(set.value_reuse));
    root.set("slots", std::move(slots));
    root.set("calibration", std::move(calibration));
    write_safetensors(path, tensors, {{"kvcar", to_json(root)}});
}

}  // namespace kvcar::io
