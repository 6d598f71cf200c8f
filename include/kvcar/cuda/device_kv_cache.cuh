// kvcar/cuda/device_kv_cache.cuh — a kv_cache whose records live in device memory.
//
// The device mirror of kvcar::kv_cache with paged storage: one page pool per stored slot (in one
// cudaMalloc), one block table shared by all slots (page p holds the same tokens in every slot),
// codec parameters and views uploaded once. Page bookkeeping (free list, block table, lengths)
// stays on the host, where appends are planned; block-table rows are uploaded when they change.
// Kernels receive view(): device pointers only, so any number of sequences of different lengths
// share the pools without copying.
//
//     kvcar::gpu::device_kv_cache<kvcar::identity_codec<kvcar::f16>> cache(
//         kvcar::dense_layout(geometry), kvcar::identity_codec<kvcar::f16>{head_dim},
//         {.max_sequences = 64, .max_tokens = 4096, .page_size = 16, .n_pages = 8192});
//     const int seq = cache.add_sequence();
//     kvcar::kernels::append(cache, layer, seqs, counts, k_dev, v_dev, stream);  // encode + write
//     kvcar::kernels::decode_attention(cache, layer, seqs, q_dev, out_dev, opts, ws, stream);
//
// One stream per cache: host bookkeeping assumes the work it enqueues runs in order.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/cuda/device_kv_cache.cuh needs nvcc"
#endif

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/cuda/buffer.cuh"
#include "kvcar/cuda/codec_params.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/decode.cuh"
#include "kvcar/kv_cache.hpp"
#include "kvcar/layout/dense.hpp"
#include "kvcar/storage/page_table.hpp"
#include "kvcar/page_view.hpp"
#include "kvcar/storage/sequence_table.hpp"

namespace kvcar::gpu {

/// A compressed KV cache whose records live in device memory: paged storage with one pool per
/// stored slot and one block table, codec parameters uploaded once, page bookkeeping on the host.
/// Kernels get device pointers through view(). Methods taking a sequence, layer or slot throw
/// kvcar::error when it is out of range or not live (changing nothing); failed CUDA calls throw
/// kvcar::error naming the call.
template <uploadable_codec Codec, kv_layout Layout = dense_layout>
class device_kv_cache {
public:
    using codec_type = Codec;    ///< the codec type of every stored slot
    using layout_type = Layout;  ///< maps (layer, group, K/V) to slots (dense_layout or reuse_map)

    /// Capacity: sequences, their longest length, and the page pool (all positive).
    struct params {
        int max_sequences;   ///< sequences held at once
        int max_tokens;      ///< tokens per sequence at most
        int page_size = 16;  ///< tokens per page
        int n_pages;       ///< pages in each slot's pool, shared by all sequences
    };

    /// Pools start on 256-byte boundaries: any vector load of a record is aligned.
    static constexpr std::size_t pool_alignment = 256;
    /// Block-table entries of pages a sequence does not hold: a real page, as in paged_storage.
    static constexpr std::int32_t unused_page = page_table::unused_page;

    /// `codecs[slot]` (host views; their parameters are copied) encodes stored slot `slot`.
    device_kv_cache(Layout layout, std::vector<Codec> codecs, params p)
        : layout_(std::move(layout)), host_codecs_(std::move(codecs)), params_(p),
          codecs_(validated(layout_, host_codecs_, p)),
          pages_(p.max_sequences, p.max_tokens, p.page_size, p.n_pages, "device_kv_cache"),
          sequences_(p.max_sequences, layout_.geometry().n_layers, "device_kv_cache") {
        const kv_geometry g = layout_.geometry();

        // One allocation for every slot's pool, zeroed: a kernel that loads a whole tile and
        // masks the tail reads zeros, never NaN garbage.
        std::size_t total = 0;
        for (const Codec& c : host_codecs_) {
            slot_offsets_.push_back(total);
            const std::size_t bytes = std::size_t(p.n_pages) * std::size_t(p.page_size) *
                                      std::size_t(c.bytes_per_group());
            total += (bytes + pool_alignment - 1) / pool_alignment * pool_alignment;
        }
        pool_ = device_buffer<std::byte>(total);
        pool_.fill_bytes(0);
        block_table_dev_ = device_buffer<std::int32_t>(pages_.entries());

        std::vector<page_view> views;
        for (std::size_t s = 0; s < host_codecs_.size(); ++s) {
            page_view v;
            v.pool = pool_.data() + slot_offsets_[s];
            v.record_bytes = std::size_t(host_codecs_[s].bytes_per_group());
            v.page_size = p.page_size;
            v.block_table = block_table_dev_.data();
            v.pages_per_sequence = pages_.pages_per_sequence();
            views.push_back(v);
        }
        views_dev_ = device_buffer<page_view>(views);

        const std::vector<std::int32_t> reads = layout_.slot_table();
        std::vector<std::int32_t> writes(reads.size(), -1);
        for (int layer = 0; layer < g.n_layers; ++layer)
            for (int group = 0; group < layout_.groups_per_layer(); ++group)
                for (kv_kind kind : {kv_kind::key, kv_kind::value})
                    if (layout_.owns(layer, group, kind))
                        writes[logical_index(layer, group, kind)] = layout_.slot(layer, group, kind);
        read_slots_dev_ = device_buffer<std::int32_t>(reads);
        write_slots_dev_ = device_buffer<std::int32_t>(writes);
        for (const Codec& c : host_codecs_) {
            max_latent_ = std::max(max_latent_, int(c.latent_width()));
            max_decode_scratch_ = std::max(max_decode_scratch_, device::decode_scratch_floats(c, 1));
            if constexpr (device::codec_traits<Codec>::family == device::codec_family::mlp)
                max_hidden_ = std::max(max_hidden_, int(device::core_of(c).hidden));
        }
    }

    /// The same codec for every stored slot.
    device_kv_cache(Layout layout, const Codec& codec, params p)
        : device_kv_cache(layout, std::vector<Codec>(std::size_t(layout.n_slots()), codec), p) {}

    device_kv_cache(const device_kv_cache&) = delete;
    device_kv_cache& operator=(const device_kv_cache&) = delete;
    /// Takes `other`'s device memory and bookkeeping.
    device_kv_cache(device_kv_cache&&) = default;
    /// Frees this cache's device memory and takes `other`'s.
    device_kv_cache& operator=(device_kv_cache&&) = default;

    // --- shape ---------------------------------------------------------------------------------
    /// The layout the cache was built with.
    const Layout& layout() const { return layout_; }
    /// The logical shape this cache stores (the layout's).
    kv_geometry geometry() const { return layout_.geometry(); }
    /// Stored slots, one codec each.
    int n_slots() const { return int(host_codecs_.size()); }
    /// Slot `slot`'s codec as given (host pointers): for host-side encode/decode of records.
    const Codec& host_codec(int slot) const {
        check_slot(slot);
        return host_codecs_[std::size_t(slot)];
    }
    /// Slot `slot`'s codec with device pointers: what kernels use.
    const Codec& device_codec(int slot) const {
        check_slot(slot);
        return codecs_[std::size_t(slot)];
    }
    /// Sequences held at once.
    int max_sequences() const { return params_.max_sequences; }
    /// Tokens a sequence can hold at most.
    int max_tokens() const { return params_.max_tokens; }
    /// Tokens per page.
    int page_size() const { return params_.page_size; }
    /// Pages in each slot's pool.
    int n_pages() const { return params_.n_pages; }
    /// Block-table entries per sequence: ceil(max_tokens / page_size).
    int pages_per_sequence() const { return pages_.pages_per_sequence(); }
    /// Pages no sequence holds now.
    int free_pages() const { return pages_.free_pages(); }
    /// Widest latent of any slot's codec.
    int max_latent_width() const { return max_latent_; }
    /// Stored bytes per token, all slots.
    std::size_t bytes_per_token() const {
        std::size_t sum = 0;
        for (const Codec& c : host_codecs_) sum += std::size_t(c.bytes_per_group());
        return sum;
    }
    /// Device bytes of the pools (held or free).
    std::size_t pool_bytes() const { return pool_.bytes(); }
    /// A number no other cache of this process had: state a caller keeps per cache (a CUDA graph
    /// that holds this cache's device addresses) can tell it from a later cache that was
    /// allocated at the same addresses. A move takes it along with the memory.
    std::uint64_t serial() const { return serial_; }

    // --- sequences (the same contract as kv_cache) ---------------------------------------------
    /// Whether `seq` was handed out by add_sequence and not removed since; false for any
    /// out-of-range id.
    bool is_live(int seq) const { return sequences_.is_live(seq); }
    /// How many sequences are live now.
    int live_sequences() const { return sequences_.live_sequences(); }
    /// Starts an empty sequence and returns its id, the lowest one not in use.
    int add_sequence() { return sequences_.add(); }
    /// Ends a sequence and returns its pages. Work already enqueued that reads it must not run
    /// after pages are reused: this call orders nothing on the device.
    void remove_sequence(int seq) {
        check_live(seq);
        // The device row keeps its stale entries until the id is reused: nothing may read a
        // removed sequence, and the next append of a new sequence uploads its row.
        pages_.release(seq);
        sequences_.remove(seq);
    }
    /// Tokens appended to every layer.
    int length(int seq) const { return sequences_.length(seq); }
    /// Tokens appended to layer `layer` of sequence `seq`.
    int length(int seq, int layer) const { return sequences_.length(seq, layer); }
    /// Tokens the pages held make room for.
    int capacity(int seq) const {
        check_live(seq);
        return pages_.capacity(seq);
    }
    /// Pages `seq` holds now.
    int pages_held(int seq) const {
        check_live(seq);
        return pages_.pages_held(seq);
    }

    /// Plans an append of counts[i] tokens to sequences[i] in `layer`: makes room (all or nothing
    /// for the whole batch: on any error nothing changes), uploads changed block-table rows on
    /// `stream`, advances the lengths, and returns each item's first position. The caller must
    /// then enqueue, on `stream`, the kernel that writes those records (kernels::append does).
    std::vector<std::int32_t> prepare_append(int layer, std::span<const int> sequences,
                                             std::span<const int> counts, cudaStream_t stream) {
        check_layer(layer);
        if (sequences.size() != counts.size()) {
            throw error("kvcar: device_kv_cache: append got " + std::to_string(sequences.size()) +
                        " sequences but " + std::to_string(counts.size()) + " counts");
        }
        std::vector<char> seen(std::size_t(max_sequences()), 0);
        int pages_needed = 0;
        for (std::size_t i = 0; i < sequences.size(); ++i) {
            const int seq = sequences[i];
            check_live(seq);
            if (seen[std::size_t(seq)]) {
                throw error("kvcar: device_kv_cache: sequence " + std::to_string(seq) +
                            " appears twice in one append");
            }
            seen[std::size_t(seq)] = 1;
            if (counts[i] < 0) {
                throw error("kvcar: device_kv_cache: negative token count " +
                            std::to_string(counts[i]) + " for sequence " + std::to_string(seq));
            }
            const long long end = (long long)length_ref(seq, layer) + counts[i];
            if (end > params_.max_tokens) {
                throw error("kvcar: device_kv_cache: appending " + std::to_string(counts[i]) +
                            " tokens to sequence " + std::to_string(seq) + " layer " +
                            std::to_string(layer) + " (length " +
                            std::to_string(length_ref(seq, layer)) + ") exceeds max_tokens " +
                            std::to_string(params_.max_tokens));
            }
            pages_needed += pages_.shortfall(seq, int(end));
        }
        if (pages_needed > free_pages()) {
            throw error("kvcar: device_kv_cache: out of pages: the append needs " +
                        std::to_string(pages_needed) + " more, " + std::to_string(free_pages()) +
                        " free");
        }
        // Nothing below throws but a CUDA failure.
        std::vector<std::int32_t> positions(sequences.size());
        for (std::size_t i = 0; i < sequences.size(); ++i) {
            const int seq = sequences[i];
            positions[i] = length_ref(seq, layer);
            if (pages_.grow(seq, positions[i] + counts[i])) upload_row(seq, stream);
            length_ref(seq, layer) += counts[i];
        }
        return positions;
    }

    /// Replaces this cache's contents with `host`'s: the same live sequence ids, lengths and
    /// records (copied byte for byte, so device kernels and host reference code read the very
    /// same latents). The layouts must match and each slot's records must have the same size.
    /// Blocking; copies whole pools, so it is meant for tests and warm starts.
    template <class Storage>
    void copy_from(const kv_cache<Codec, Layout, Storage>& host) {
        const kv_geometry g = geometry(), hg = host.geometry();
        require(hg.n_layers == g.n_layers && hg.n_kv_heads == g.n_kv_heads &&
                    hg.head_dim == g.head_dim &&
                    host.layout().heads_per_group() == layout_.heads_per_group() &&
                    host.layout().slot_table() == layout_.slot_table(),
                "device_kv_cache: copy_from needs a host cache of the same layout");
        for (int s = 0; s < n_slots(); ++s) {
            require(std::size_t(host.codec(s).bytes_per_group()) ==
                        std::size_t(host_codecs_[std::size_t(s)].bytes_per_group()),
                    "device_kv_cache: copy_from: slot " + std::to_string(s) + " has " +
                        std::to_string(host.codec(s).bytes_per_group()) +
                        "-byte records on the host but " +
                        std::to_string(host_codecs_[std::size_t(s)].bytes_per_group()) +
                        " here");
        }
        require(host.max_sequences() <= max_sequences(),
                "device_kv_cache: copy_from: the host cache has " +
                    std::to_string(host.max_sequences()) + " sequence ids, more than " +
                    std::to_string(max_sequences()));
        int pages = 0;
        for (int seq = 0; seq < host.max_sequences(); ++seq) {
            if (!host.is_live(seq)) continue;
            const int longest = longest_layer(host, seq);
            require(longest <= max_tokens(), "device_kv_cache: copy_from: sequence " +
                                                 std::to_string(seq) + " holds " +
                                                 std::to_string(longest) +
                                                 " tokens, more than max_tokens " +
                                                 std::to_string(max_tokens()));
            pages += pages_.pages_for(longest);
        }
        require(pages <= n_pages(), "device_kv_cache: copy_from: out of pages: the host cache "
                                      "needs " + std::to_string(pages) + ", " +
                                      std::to_string(n_pages()) + " exist");

        for (int seq = 0; seq < max_sequences(); ++seq)
            if (is_live(seq)) remove_sequence(seq);
        std::vector<std::byte> image(pool_.size(), std::byte{0});
        for (int seq = 0; seq < host.max_sequences(); ++seq) {
            if (!host.is_live(seq)) continue;
            sequences_.add_at(seq);
            pages_.grow(seq, longest_layer(host, seq));
            for (int layer = 0; layer < n_layers(); ++layer)
                length_ref(seq, layer) = host.length(seq, layer);
            for (int s = 0; s < n_slots(); ++s) {
                const page_view src = host.view(s);
                const int owner_layer = layout_.owner(s).layer;
                for (int t = 0; t < host.length(seq, owner_layer); ++t) {
                    std::memcpy(image.data() + record_offset(s, seq, t), src.record(seq, t),
                                src.record_bytes);
                }
            }
        }
        pool_.upload(std::span<const std::byte>(image));
        block_table_dev_.upload(std::span<const std::int32_t>(pages_.entries()));
    }

    /// Records of tokens [begin, end) of `seq` in `slot`, downloaded (blocking): for tests and
    /// debugging. Precondition: the kernels that wrote them have been enqueued.
    std::vector<std::byte> download_records(int slot, int seq, int begin, int end) const {
        check_slot(slot);
        check_live(seq);
        if (begin < 0 || begin > end || end > capacity(seq)) {
            throw error("kvcar: device_kv_cache: download of tokens [" + std::to_string(begin) +
                        ", " + std::to_string(end) + ") of sequence " + std::to_string(seq) +
                        " outside its capacity " + std::to_string(capacity(seq)));
        }
        const std::size_t rb = std::size_t(host_codecs_[std::size_t(slot)].bytes_per_group());
        std::vector<std::byte> out(std::size_t(end - begin) * rb);
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        for (int t = begin; t < end; ++t) {
            KVCAR_CUDA_CHECK(cudaMemcpy(out.data() + std::size_t(t - begin) * rb,
                                        pool_.data() + record_offset(slot, seq, t), rb,
                                        cudaMemcpyDeviceToHost));
        }
        return out;
    }

    /// What kernels receive: device pointers to the slot views, codecs and slot tables.
    device::cache_view<Codec> view() const {
        device::cache_view<Codec> v = device::cache_view<Codec>::shaped_like(layout_);
        v.slots = views_dev_.data();
        v.codecs = codecs_.data();
        v.read_slots = read_slots_dev_.data();
        v.write_slots = write_slots_dev_.data();
        v.max_sequences = max_sequences();
        v.max_latent_width = max_latent_;
        v.decode_scratch_per_token = max_decode_scratch_;
        v.max_hidden_width = max_hidden_;
        return v;
    }
    /// Device memory for small per-launch arrays (batch descriptors), grown on demand and owned
    /// by the cache, so that launches on the cache's stream need no allocation of their own.
    /// Each call may reuse the memory of the last: enqueue its use before the next call.
    std::int32_t* scratch_ints(std::size_t count) const {
        scratch_.reserve_discard(count);
        return scratch_.data();
    }

private:
    static const std::vector<Codec>& validated(const Layout& layout,
                                               const std::vector<Codec>& codecs, const params& p) {
        require(p.max_sequences > 0 && p.max_tokens > 0 && p.page_size > 0 && p.n_pages > 0,
                "device_kv_cache: max_sequences, max_tokens, page_size and n_pages must be "
                "positive (got " +
                    std::to_string(p.max_sequences) + ", " + std::to_string(p.max_tokens) + ", " +
                    std::to_string(p.page_size) + ", " + std::to_string(p.n_pages) + ")");
        require(int(codecs.size()) == layout.n_slots(),
                "device_kv_cache: " + std::to_string(codecs.size()) + " codecs for a layout of " +
                    std::to_string(layout.n_slots()) + " slots (one codec per slot)");
        const int group_width = layout.heads_per_group() * layout.geometry().head_dim;
        for (std::size_t s = 0; s < codecs.size(); ++s) {
            require(int(codecs[s].group_width()) == group_width,
                    "device_kv_cache: codec for slot " + std::to_string(s) + " has group width " +
                        std::to_string(int(codecs[s].group_width())) +
                        ", the layout's groups are " + std::to_string(group_width) + " wide");
            const std::size_t rb = std::size_t(codecs[s].bytes_per_group());
            require(rb > 0 && rb % 4 == 0, "device_kv_cache: codec for slot " + std::to_string(s) +
                                               " has records of " + std::to_string(rb) +
                                               " bytes; records must be a positive multiple of 4");
        }
        return codecs;
    }

    template <class Host>
    int longest_layer(const Host& host, int seq) const {
        int longest = 0;
        for (int layer = 0; layer < n_layers(); ++layer)
            longest = std::max(longest, host.length(seq, layer));
        return longest;
    }
    void upload_row(int seq, cudaStream_t stream) {
        block_table_dev_.upload_async(
            std::span<const std::int32_t>(pages_.row(seq),
                                          std::size_t(pages_.pages_per_sequence())),
            stream, pages_.row_offset(seq));
    }
    std::size_t record_offset(int slot, int seq, int token) const {
        const int page = pages_.page_of(seq, token);
        return slot_offsets_[std::size_t(slot)] +
               (std::size_t(page) * std::size_t(params_.page_size) +
                std::size_t(token % params_.page_size)) *
                   std::size_t(host_codecs_[std::size_t(slot)].bytes_per_group());
    }
    std::size_t logical_index(int layer, int group, kv_kind kind) const {
        return std::size_t((layer * layout_.groups_per_layer() + group) * kv_kind_count + int(kind));
    }
    int n_layers() const { return layout_.geometry().n_layers; }
    int& length_ref(int seq, int layer) { return sequences_.at(seq, layer); }
    int length_ref(int seq, int layer) const { return sequences_.at(seq, layer); }
    void check_live(int seq) const { sequences_.check_live(seq); }
    void check_layer(int layer) const { sequences_.check_layer(layer); }
    void check_slot(int slot) const {
        if (slot < 0 || slot >= n_slots()) {
            throw error("kvcar: device_kv_cache: slot " + std::to_string(slot) +
                        " out of range [0, " + std::to_string(n_slots()) + ")");
        }
    }

    Layout layout_;
    std::vector<Codec> host_codecs_;
    params params_;
    device_codecs<Codec> codecs_;
    page_table pages_;           // block table (host copy), pages held, free list
    sequence_table sequences_;   // live ids, tokens appended per layer
    std::vector<std::size_t> slot_offsets_;  // byte offset of each slot's pool in pool_
    device_buffer<std::byte> pool_;
    device_buffer<std::int32_t> block_table_dev_;
    device_buffer<page_view> views_dev_;
    device_buffer<std::int32_t> read_slots_dev_, write_slots_dev_;
    mutable device_buffer<std::int32_t> scratch_;
    int max_latent_ = 0;
    int max_decode_scratch_ = 0;
    int max_hidden_ = 0;  // widest autoencoder hidden layer (sizes tensor-core decode)
    std::uint64_t serial_ = next_serial();

    static std::uint64_t next_serial() {
        static std::atomic<std::uint64_t> count{0};
        return ++count;
    }
};

}  // namespace kvcar::gpu
