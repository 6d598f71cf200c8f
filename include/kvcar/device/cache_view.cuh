// kvcar/device/cache_view.cuh — what a kernel is given to read (and write) a kvcar cache.
//
// A cache_view is a small value (pass it by value as a kernel argument) holding device pointers
// to: one page_view per stored slot (pool + block table + page size), one codec per stored slot,
// and the layout's slot table flattened to [layer][group][K/V]. A kernel finds the record of
// token t of sequence s for (layer, group, kind) with two loads and one multiply:
//
//     const int slot = view.slot(layer, group, kind);          // reuse maps resolve here
//     const std::byte* rec = view.slots[slot].record(s, t);    // paging resolves here
//     view.codecs[slot].decode(rec, x);                        // the codec turns it into floats
//
// The owner (kvcar::gpu::device_kv_cache) keeps every pointer valid while it lives and is not
// modified; a view taken before an append stays valid after it (pages never move).
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/device/cache_view.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/page_view.hpp"

namespace kvcar::device {

/// Device-side view of a kvcar cache whose stored slots all use codec type `Codec`: what a
/// kernel needs to find, decode and (through write_slots) append records. Pass by value; every
/// pointer is device memory owned by kvcar::gpu::device_kv_cache.
template <kv_codec Codec>
struct cache_view {
    /// The codec type of every stored slot.
    using codec_type = Codec;

    const page_view* slots = nullptr;          ///< [n_slots] where each stored slot's records are
    const Codec* codecs = nullptr;             ///< [n_slots] the codec of each stored slot
    const std::int32_t* read_slots = nullptr;  ///< [n_layers][groups][2] slot each triple reads
    const std::int32_t* write_slots = nullptr; ///< same index: slot it owns and writes, or -1
    int n_layers = 0;    ///< layers of the model (logical, before reuse)
    int n_kv_heads = 0;  ///< K/V heads per layer (GQA: fewer than the query heads)
    int head_dim = 0;    ///< floats per head
    int heads_per_group = 0;   ///< KV heads in one group (one record per token per slot)
    int groups_per_layer = 0;  ///< n_kv_heads / heads_per_group
    int n_slots = 0;      ///< stored slots: entries of `slots` and `codecs`
    int max_sequences = 0;  ///< sequence indices run 0 .. max_sequences - 1 (block table rows)
    // Host-side sizing hints for kernels' shared memory (the owner fills them):
    int max_latent_width = 0;          ///< widest latent of any slot's codec
    int decode_scratch_per_token = 0;  ///< max over slots of decode_scratch_floats(codec, 1)
    int max_hidden_width = 0;  ///< widest autoencoder hidden layer of any slot (0: none)

    /// A view with the shape of `layout` (geometry, groups, stored slots) and no memory yet: the
    /// owner (gpu::device_kv_cache, gpu::page_pool_view) sets the pointers and sizing hints.
    template <kv_layout Layout>
    static cache_view shaped_like(const Layout& layout) {
        const kv_geometry g = layout.geometry();
        cache_view v;
        v.n_layers = g.n_layers;
        v.n_kv_heads = g.n_kv_heads;
        v.head_dim = g.head_dim;
        v.heads_per_group = layout.heads_per_group();
        v.groups_per_layer = layout.groups_per_layer();
        v.n_slots = layout.n_slots();
        return v;
    }

    /// Floats in one group: the codecs' group_width().
    KVCAR_HD int group_width() const { return heads_per_group * head_dim; }
    /// Floats in one layer's K (or V) token vector.
    KVCAR_HD int token_width() const { return n_kv_heads * head_dim; }
    /// Index of (layer, group, kind) in read_slots / write_slots (the dense layout's numbering).
    KVCAR_HD int logical_index(int layer, int group, kv_kind kind) const {
        return (layer * groups_per_layer + group) * kv_kind_count + int(kind);
    }
    /// The stored slot (layer, group, kind) reads: its own, or an earlier layer's under reuse.
    /// Precondition: 0 <= layer < n_layers, 0 <= group < groups_per_layer.
    __device__ int slot(int layer, int group, kv_kind kind) const {
        return read_slots[logical_index(layer, group, kind)];
    }
    /// The record of `token` of `sequence` that (layer, group, kind) reads.
    /// Precondition: `token` is below the sequence's length in the slot's owner layer.
    __device__ const std::byte* record(int layer, int group, kv_kind kind, int sequence,
                                       int token) const {
        return slots[slot(layer, group, kind)].record(sequence, token);
    }
};

}  // namespace kvcar::device
