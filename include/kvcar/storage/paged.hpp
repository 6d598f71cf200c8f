// kvcar/storage/paged.hpp — a pool of fixed-size pages per slot and one block table, as in vLLM.
//
// A sequence holds only the pages its tokens need, so many sequences of different lengths share
// memory without each reserving max_tokens. Every slot has its own pool ([n_pages][page_size]
// [record]), but page p means the same tokens in every slot, so one block table serves them all:
// a kernel reading K and V of all layers looks each page up once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/storage/page_table.hpp"
#include "kvcar/storage/host_pool.hpp"
#include "kvcar/page_view.hpp"

namespace kvcar {

/// Storage as a pool of fixed-size pages per slot and one block table: a sequence holds only the
/// pages its tokens need, so sequences of different lengths share memory. Page p covers the same
/// tokens in every slot, so one table serves all slots. Methods taking a sequence or slot throw
/// kvcar::error when it is out of range.
class paged_storage {
public:
    /// Capacity: sequences, their longest length, and the page pool.
    struct params {
        using storage_type = paged_storage;  ///< what these params build (kv_cache deduces it)
        int max_sequences;   ///< sequences held at once (> 0)
        int max_tokens;      ///< tokens per sequence at most (> 0)
        int page_size = 16;  ///< tokens per page (> 0)
        int n_pages;       ///< pages in each slot's pool, shared by all sequences (> 0)
    };

    /// Pools are 256-byte aligned, so a slot's records start on a boundary any vector load likes.
    static constexpr std::size_t pool_alignment = host_pool_alignment;
    /// What block-table entries of pages a sequence does not hold contain: a real page, so a
    /// kernel that speculatively loads past a sequence's end stays inside the pool. The number of
    /// pages held, not the table, says which entries are live.
    static constexpr std::int32_t unused_page = page_table::unused_page;

    /// Allocates n_pages x page_size records of `record_bytes_per_slot[s]` bytes for every slot
    /// s, all pages free. Throws kvcar::error when a count is not positive, there is no slot, or a
    /// record size is not a positive multiple of 4; std::bad_alloc when the pools do not fit in
    /// memory.
    paged_storage(params p, std::vector<std::size_t> record_bytes_per_slot)
        : params_(p), record_bytes_(std::move(record_bytes_per_slot)),
          pages_(p.max_sequences, p.max_tokens, p.page_size, p.n_pages, "paged_storage") {
        require(!record_bytes_.empty(), "paged_storage: needs at least one slot");
        for (std::size_t s = 0; s < record_bytes_.size(); ++s) {
            require(record_bytes_[s] > 0 && record_bytes_[s] % 4 == 0,
                    "paged_storage: slot " + std::to_string(s) + " has records of " +
                        std::to_string(record_bytes_[s]) +
                        " bytes; records must be a positive multiple of 4 bytes");
        }
        pools_.reserve(record_bytes_.size());
        for (std::size_t bytes : record_bytes_) {
            pools_.push_back(allocate_host_pool(std::size_t(p.n_pages) * std::size_t(p.page_size) * bytes));
        }
    }

    /// Makes room for `sequence`'s first `tokens` tokens in every slot, taking pages from the
    /// free list; all or nothing: when the free pages do not suffice, throws and takes none.
    void reserve(int sequence, int tokens) {
        check_sequence(sequence);
        if (tokens < 0) {
            throw error("kvcar: paged_storage: sequence " + std::to_string(sequence) +
                        " cannot reserve a negative token count " + std::to_string(tokens));
        }
        if (tokens > params_.max_tokens) {
            throw error("kvcar: paged_storage: sequence " + std::to_string(sequence) + " needs " +
                        std::to_string(tokens) + " tokens, more than max_tokens " +
                        std::to_string(params_.max_tokens));
        }
        const int more = pages_.shortfall(sequence, tokens);
        if (more > free_pages()) {
            throw error("kvcar: paged_storage: out of pages: sequence " + std::to_string(sequence) +
                        " needs " + std::to_string(more) + " more page" + (more == 1 ? "" : "s") +
                        ", " + std::to_string(free_pages()) + " free");
        }
        pages_.grow(sequence, tokens);
    }
    /// Returns the sequence's pages to the free list (in reverse, so the next reserve of the same
    /// length gets the same pages back in order).
    void release(int sequence) {
        check_sequence(sequence);
        pages_.release(sequence);
    }
    /// Tokens `sequence` may hold now: its pages' tokens, never more than max_tokens.
    int capacity(int sequence) const {
        check_sequence(sequence);
        return pages_.capacity(sequence);
    }
    /// Sequences the storage holds at once.
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
    /// Pages `sequence` holds now.
    int pages_held(int sequence) const {
        check_sequence(sequence);
        return pages_.pages_held(sequence);
    }
    /// The pages `sequence` holds, in token order.
    std::vector<std::int32_t> pages(int sequence) const {
        check_sequence(sequence);
        return pages_.pages(sequence);
    }
    /// Slots, one pool each.
    int n_slots() const { return int(record_bytes_.size()); }
    /// Bytes of one record (one token's encoded group) in slot `slot`.
    std::size_t record_bytes(int slot) const {
        check_slot(slot);
        return record_bytes_[std::size_t(slot)];
    }

    /// Slot `slot` as kernels read it: its pool and the shared block table.
    page_view view(int slot) const {
        check_slot(slot);
        page_view v;
        v.pool = pools_[std::size_t(slot)].get();
        v.record_bytes = record_bytes_[std::size_t(slot)];
        v.page_size = params_.page_size;
        v.block_table = pages_.entries().data();
        v.pages_per_sequence = pages_.pages_per_sequence();
        return v;
    }

    /// Bytes of the pages sequences hold (all slots).
    std::size_t bytes_reserved() const {
        return std::size_t(params_.n_pages - free_pages()) * bytes_per_page();
    }
    /// Bytes of all pools, held or free.
    std::size_t bytes_allocated() const {
        return std::size_t(params_.n_pages) * bytes_per_page();
    }

private:
    std::size_t bytes_per_page() const {
        std::size_t sum = 0;
        for (std::size_t b : record_bytes_) sum += b;
        return sum * std::size_t(params_.page_size);
    }
    void check_sequence(int sequence) const {
        check_index("paged_storage", "sequence", sequence, params_.max_sequences);
    }
    void check_slot(int slot) const { check_index("paged_storage", "slot", slot, n_slots()); }

    params params_;
    std::vector<std::size_t> record_bytes_;
    page_table pages_;  // block table, pages held, free list
    std::vector<host_pool> pools_;
};

}  // namespace kvcar
