// kvcar/cuda/page_pool_view.cuh — kvcar's codecs and kernels over pages a runtime owns.
//
// vLLM, SGLang and TensorRT-LLM keep their own page pools and block tables: they allocate the
// memory, hand pages to sequences, free them on completion and preempt under pressure. Such a
// runtime wants kvcar's codecs (compressed records) and kernels (append, decode attention)
// without kvcar owning one byte of the cache. page_pool_view is that: it uploads only what is
// kvcar's own — the codecs' parameters, one page_view per stored slot and the layout's slot tables,
// a few KB — and points them at the runtime's pools and block table. Its view() is the same
// device::cache_view that device_kv_cache gives, so every kernel runs unchanged:
//
//     using view_t = kvcar::gpu::page_pool_view<kvcar::identity_codec<kvcar::f16>>;
//     const std::size_t bytes = view_t::pool_bytes(codec, n_pages, page_size);  // per slot
//     // ... the runtime allocates n_slots pools of `bytes` and its block table ...
//     view_t pages(layout, codec, {.slot_pools = pools, .page_size = 16, .n_pages = n_pages,
//                                  .block_table = table, .pages_per_sequence = row,
//                                  .max_sequences = rows});
//     kvcar::kernels::append(pages.view(), append_params, pages.max_latent_width(), stream);
//     kvcar::kernels::decode_attention(pages.view(), decode_params, workspace, stream);
//
// The block table is dense, as vLLM's: row s lists the pages of sequence s in token order
// (page p holds tokens p·page_size … of that sequence in every slot); `sequences` in the kernels'
// params pick rows. FlashInfer's CSR form (indptr / indices / last_page_len) converts to it on the
// device with kvcar::kernels::csr_block_table (kernels/csr_block_table.cuh).
//
// Memory rules: page p of slot s is at slot_pools[s] + p · page_size · record_bytes(s). Pages a
// kernel reads past a sequence's length are never touched, so the runtime need not zero them; a
// page that an append writes must be in the block table before the append is enqueued, and the
// pools and table must outlive every kernel enqueued on the view.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/cuda/page_pool_view.cuh needs nvcc"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/cuda/buffer.cuh"
#include "kvcar/cuda/codec_params.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/decode.cuh"
#include "kvcar/layout/dense.hpp"
#include "kvcar/page_view.hpp"

namespace kvcar::gpu {

/// kvcar's view of a paged KV cache whose memory a runtime owns (see the file comment): the
/// codecs and slot tables live here, the pools and the block table stay the runtime's.
/// Construction checks every argument before any device work and throws kvcar::error naming the
/// one that is wrong.
template <uploadable_codec Codec, kv_layout Layout = dense_layout>
class page_pool_view {
public:
    using codec_type = Codec;    ///< the codec every stored slot uses
    using layout_type = Layout;  ///< which slots are stored and which reuse a neighbour

    /// Records start 16-byte aligned in a pool: the kernels copy records in 16-byte pieces.
    static constexpr std::size_t pool_alignment = 16;

    /// The runtime's memory. Every pointer is device memory the runtime keeps alive.
    struct pools {
        std::span<std::byte* const> slot_pools;   ///< [n_slots] one pool per stored slot
        int page_size = 16;                       ///< tokens per page, the same in every slot
        int n_pages = 0;                        ///< pages in each pool
        const std::int32_t* block_table = nullptr;  ///< [max_sequences][pages_per_sequence]
        int pages_per_sequence = 0;               ///< entries per block-table row
        int max_sequences = 0;                    ///< block-table rows
    };

    /// Bytes one slot's pool needs for `n_pages` pages of `page_size` tokens of `codec`.
    static std::size_t pool_bytes(const Codec& codec, int n_pages, int page_size) {
        require(n_pages > 0 && page_size > 0,
                "page_pool_view::pool_bytes: n_pages and page_size must be positive (got " +
                    std::to_string(n_pages) + ", " + std::to_string(page_size) + ")");
        return std::size_t(n_pages) * std::size_t(page_size) * std::size_t(codec.bytes_per_group());
    }

    /// `codecs[slot]` encodes stored slot `slot` (its parameters are copied to the device).
    page_pool_view(Layout layout, std::vector<Codec> codecs, const pools& p)
        : layout_(std::move(layout)), host_codecs_(std::move(codecs)),
          codecs_(checked(layout_, host_codecs_, p)) {
        pool_ptrs_.assign(p.slot_pools.begin(), p.slot_pools.end());
        bind(p);
        read_slots_ = device_buffer<std::int32_t>(layout_.slot_table());
        std::vector<std::int32_t> writes(layout_.slot_table().size(), -1);
        const int groups = layout_.groups_per_layer();
        for (int layer = 0; layer < layout_.geometry().n_layers; ++layer)
            for (int group = 0; group < groups; ++group)
                for (kv_kind kind : {kv_kind::key, kv_kind::value})
                    if (layout_.owns(layer, group, kind))
                        writes[std::size_t((layer * groups + group) * kv_kind_count + int(kind))] =
                            layout_.slot(layer, group, kind);
        write_slots_ = device_buffer<std::int32_t>(writes);
        for (const Codec& c : host_codecs_) {
            max_latent_ = std::max(max_latent_, int(c.latent_width()));
            max_decode_scratch_ = std::max(max_decode_scratch_, device::decode_scratch_floats(c, 1));
            if constexpr (device::codec_traits<Codec>::family == device::codec_family::mlp)
                max_hidden_ = std::max(max_hidden_, int(device::core_of(c).hidden));
        }
    }

    /// The same codec for every stored slot.
    page_pool_view(Layout layout, const Codec& codec, const pools& p)
        : page_pool_view(layout, std::vector<Codec>(std::size_t(layout.n_slots()), codec), p) {}

    /// Points the view at another block table (a runtime that grew or moved its table). The
    /// pools stay; kernels enqueued before this call still read the old table's pointer (they
    /// were given it by value), so the old table must live until they have run.
    void rebind_block_table(const std::int32_t* block_table, int pages_per_sequence,
                            int max_sequences, cudaStream_t stream = nullptr) {
        pools p = pools_;
        p.block_table = block_table;
        p.pages_per_sequence = pages_per_sequence;
        p.max_sequences = max_sequences;
        check_table(p);
        bind(p, stream);
    }

    /// Stored slots: one codec and one runtime pool each.
    int n_slots() const { return layout_.n_slots(); }
    /// The slot layout (stored slots and reuse).
    const Layout& layout() const { return layout_; }
    /// Layers, heads and head width of the model the pools serve.
    kv_geometry geometry() const { return layout_.geometry(); }
    /// The host codec of stored slot `slot`.
    const Codec& host_codec(int slot) const { return host_codecs_.at(std::size_t(slot)); }
    /// Bytes one token takes over all stored slots of all layers.
    std::size_t bytes_per_token() const {
        std::size_t n = 0;
        for (const Codec& c : host_codecs_) n += std::size_t(c.bytes_per_group());
        return n;
    }
    /// The widest latent of any slot's codec (kernels::append sizes its scratch with it).
    int max_latent_width() const { return max_latent_; }

    /// What kernels receive: the same view device_kv_cache gives, over the runtime's pages.
    device::cache_view<Codec> view() const {
        device::cache_view<Codec> v = device::cache_view<Codec>::shaped_like(layout_);
        v.slots = views_.data();
        v.codecs = codecs_.data();
        v.read_slots = read_slots_.data();
        v.write_slots = write_slots_.data();
        v.max_sequences = pools_.max_sequences;
        v.max_latent_width = max_latent_;
        v.decode_scratch_per_token = max_decode_scratch_;
        v.max_hidden_width = max_hidden_;
        return v;
    }

private:
    static void check_table(const pools& p) {
        require(p.block_table != nullptr, "page_pool_view: block_table is null");
        require(p.pages_per_sequence > 0 && p.max_sequences > 0,
                "page_pool_view: pages_per_sequence and max_sequences must be positive (got " +
                    std::to_string(p.pages_per_sequence) + ", " + std::to_string(p.max_sequences) +
                    ")");
        require(reinterpret_cast<std::uintptr_t>(p.block_table) % alignof(std::int32_t) == 0,
                "page_pool_view: block_table is not 4-byte aligned");
    }

    // Every check before the first device call: a wrong argument leaves nothing allocated.
    static std::span<const Codec> checked(const Layout& layout, const std::vector<Codec>& codecs,
                                          const pools& p) {
        require(int(codecs.size()) == layout.n_slots(),
                "page_pool_view: " + std::to_string(codecs.size()) + " codecs for a layout of " +
                    std::to_string(layout.n_slots()) + " slots (one codec per slot)");
        require(int(p.slot_pools.size()) == layout.n_slots(),
                "page_pool_view: " + std::to_string(p.slot_pools.size()) +
                    " pools for a layout of " + std::to_string(layout.n_slots()) +
                    " slots (one pool per stored slot)");
        require(p.page_size > 0 && p.n_pages > 0,
                "page_pool_view: page_size and n_pages must be positive (got " +
                    std::to_string(p.page_size) + ", " + std::to_string(p.n_pages) + ")");
        check_table(p);
        const int group_width = layout.heads_per_group() * layout.geometry().head_dim;
        for (std::size_t s = 0; s < codecs.size(); ++s) {
            const std::string slot = "page_pool_view: slot " + std::to_string(s);
            require(int(codecs[s].group_width()) == group_width,
                    slot + ": its codec is " + std::to_string(int(codecs[s].group_width())) +
                        " wide, the layout's groups are " + std::to_string(group_width));
            const std::size_t rb = std::size_t(codecs[s].bytes_per_group());
            require(rb > 0 && rb % 4 == 0,
                    slot + ": records of " + std::to_string(rb) +
                        " bytes; records must be a positive multiple of 4");
            require(p.slot_pools[s] != nullptr, slot + ": its pool is null");
            require(reinterpret_cast<std::uintptr_t>(p.slot_pools[s]) % pool_alignment == 0,
                    slot + ": its pool is not " + std::to_string(pool_alignment) +
                        "-byte aligned (the kernels copy records in 16-byte pieces)");
        }
        return codecs;
    }

    // One page_view per slot over the runtime's pool and table (a few dozen bytes each).
    void bind(const pools& p, cudaStream_t stream = nullptr) {
        pools_ = p;
        pools_.slot_pools = {};  // the caller's span need not outlive the constructor
        std::vector<page_view> views(host_codecs_.size());
        for (std::size_t s = 0; s < views.size(); ++s) {
            views[s].pool = pool_ptrs_[s];
            views[s].record_bytes = std::size_t(host_codecs_[s].bytes_per_group());
            views[s].page_size = p.page_size;
            views[s].block_table = p.block_table;
            views[s].pages_per_sequence = p.pages_per_sequence;
        }
        if (views_.size() != views.size()) {
            views_ = device_buffer<page_view>(views);
        } else {
            // Stream-ordered on `stream`: kernels enqueued before on the same stream see the old
            // views, later ones the new (kernels on other streams must be ordered by the caller).
            staged_views_ = views;
            views_.upload_async(std::span<const page_view>(staged_views_), stream);
        }
    }

    Layout layout_;
    std::vector<Codec> host_codecs_;
    device_codecs<Codec> codecs_;
    std::vector<std::byte*> pool_ptrs_;
    pools pools_{};
    std::vector<page_view> staged_views_;  // host source of the last asynchronous upload
    device_buffer<page_view> views_;
    device_buffer<std::int32_t> read_slots_, write_slots_;
    int max_latent_ = 0;
    int max_decode_scratch_ = 0;
    int max_hidden_ = 0;
};

}  // namespace kvcar::gpu
