// kvcar/concepts.hpp — the contracts between codecs, layouts, storage and the cache.
//
// A new codec, layout or storage is one header that satisfies one of these concepts; nothing
// else in kvcar changes. Each concept is checked by a static_assert in its implementation's test.
//
// These are the contracts a user implements or passes in. The concepts that only say which
// machinery accepts a type live next to that machinery, whose terms they are written in:
// `float_element` (numeric.hpp: a latent element format), `registered_codec` (codec/traits.hpp:
// a codec's run-time registration), `uploadable_codec` (cuda/codec_params.cuh: a codec the device
// upload knows), `thread_scope` and `has_latent_record` (device/latent.cuh), and the decode
// paths' codec tests and `decode_policy` (kernels/).
#pragma once

#include <concepts>
#include <cstddef>
#include <span>

#include "kvcar/common.hpp"
#include "kvcar/page_view.hpp"

namespace kvcar {

/// A codec turns one *group* (one KV head, or a whole layer's token vector: `group_width()`
/// floats) into one stored *record* of `bytes_per_group()` bytes, and back.
///
/// It is a small copyable value holding its parameters or pointers to them, so the very same
/// object works in host code, in kvcar's kernels and in a user's kernel (`KVCAR_HD` members).
/// Records are at least 4-byte aligned; `bytes_per_group()` is a multiple of 4.
template <class C>
concept kv_codec = std::copyable<C> &&
    requires(const C& c, const float* x, float* y, std::byte* out, const std::byte* in) {
        typename C::storage_type;  // element type of the stored latent
        { c.group_width() } -> std::convertible_to<int>;       // D: floats per group
        { c.latent_width() } -> std::convertible_to<int>;      // d: stored elements per group
        { c.bytes_per_group() } -> std::convertible_to<std::size_t>;  // bytes per token per slot
        { c.encode(x, out) } -> std::same_as<void>;            // D floats -> one record
        { c.decode(in, y) } -> std::same_as<void>;             // one record -> D floats
    };

/// A codec whose record is a float latent vector `z` (width d) in some storage format, with the
/// transform between x and z exposed. quantized<Inner, Q> wraps exactly these: it quantizes z.
template <class C>
concept latent_codec =
    kv_codec<C> && requires(const C& c, const float* in, float* out) {
        { c.to_latent(in, out) } -> std::same_as<void>;    // x (D) -> z (d), not rounded to storage
        { c.from_latent(in, out) } -> std::same_as<void>;  // z (d) -> x̂ (D)
};

/// A latent codec whose decoder is affine, x̂ = P z + mu, so attention can run in latent space:
///   q . x̂_h     = (P_hᵀ q) . z + q . mu_h            (`project_query` returns q . mu_h)
///   Σ a_i x̂_h,i = P_h (Σ a_i z_i) + (Σ a_i) mu_h     (`lift`)
/// where h is the head's index inside the group and P_h, mu_h are that head's rows.
template <class C>
concept affine_latent_codec = latent_codec<C> &&
    requires(const C& c, const float* q, float* qz, const float* z, float w, float* out, int head) {
        { c.head_dim() } -> std::convertible_to<int>;
        { c.project_query(q, head, qz) } -> std::convertible_to<float>;
        { c.lift(z, w, head, out) } -> std::same_as<void>;
    };

/// Who writes a slot: the (layer, group, K/V) that owns it.
struct slot_owner {
    int layer;  ///< the layer whose K/V is stored in the slot
    int group;  ///< the group within that layer (a KV head, or 0 when a group is the whole layer)
    kv_kind kind;  ///< K or V
    /// Same layer, group and kind.
    friend constexpr bool operator==(const slot_owner&, const slot_owner&) = default;
};

/// A layout maps each logical (layer, group, K/V) to the physical slot it reads. A group is
/// `heads_per_group()` consecutive KV heads. Slots are numbered 0..n_slots()-1; the (layer,
/// group, K/V) that `owns` a slot writes it, every other one that maps to it only reads it.
/// Layouts are host objects; kernels see the flat table from `slot_table()`.
template <class L>
concept kv_layout = requires(const L& l, int layer, int group, kv_kind k, int slot) {
    { l.geometry() } -> std::convertible_to<kv_geometry>;
    { l.heads_per_group() } -> std::convertible_to<int>;
    { l.groups_per_layer() } -> std::convertible_to<int>;
    { l.n_slots() } -> std::convertible_to<int>;
    { l.slot(layer, group, k) } -> std::convertible_to<int>;
    { l.owns(layer, group, k) } -> std::convertible_to<bool>;
    { l.owner(slot) } -> std::convertible_to<slot_owner>;
};

/// Storage owns the bytes of every slot for many sequences. `reserve` makes room for a
/// sequence's first `tokens` tokens in every slot (or throws and changes nothing); `view` is what
/// readers and kernels index with (sequence, token). Constructed from its `params` and the
/// record size of each slot.
template <class S>
concept kv_storage = requires(S& s, const S& cs, int slot, int sequence, int tokens) {
    typename S::params;
    { s.reserve(sequence, tokens) } -> std::same_as<void>;
    { s.release(sequence) } -> std::same_as<void>;
    { cs.capacity(sequence) } -> std::convertible_to<int>;
    { cs.max_sequences() } -> std::convertible_to<int>;
    { cs.view(slot) } -> std::convertible_to<page_view>;
    { cs.bytes_reserved() } -> std::convertible_to<std::size_t>;
};

/// What the reference attention needs from a cache: its shape, how many tokens a (sequence,
/// layer) holds, and decoded floats for a token range, laid out [token][n_kv_heads * head_dim].
/// kv_cache satisfies it; so does any test double.
template <class C>
concept readable_kv_cache =
    requires(const C& c, int seq, int layer, kv_kind kind, int begin, int end,
             std::span<float> out) {
        { c.geometry() } -> std::convertible_to<kv_geometry>;
        { c.length(seq, layer) } -> std::convertible_to<int>;
        c.read(seq, layer, kind, begin, end, out);
    };

}  // namespace kvcar
