// kvcar/storage/contiguous.hpp — each sequence owns a fixed region of max_tokens records a slot.
//
// The simplest storage: no bookkeeping beyond "is this sequence's region in use", and a token's
// record is one multiply away. It wastes the unused tail of every region, which paged storage
// avoids. Kernels see it as a page_view with one page per sequence (page_size = max_tokens,
// block_table[s] = s), so they need only one code path.
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
#include "kvcar/storage/host_pool.hpp"
#include "kvcar/page_view.hpp"

namespace kvcar {

/// Storage where each sequence owns a fixed region of max_tokens records in every slot, allocated
/// up front (zeroed, 256-byte aligned pools). Simple and one multiply per lookup; wastes the unused
/// tail of each region. Methods taking a sequence or slot throw kvcar::error when it is out of
/// range.
class contiguous_storage {
public:
    /// Capacity: how many sequences, each of how many tokens at most.
    struct params {
        using storage_type = contiguous_storage;  ///< what these params build (kv_cache deduces it)
        int max_sequences;  ///< sequences held at once (> 0)
        int max_tokens;     ///< tokens per sequence, the size of each region (> 0)
    };

    /// Pools are 256-byte aligned, so a slot's records start on a boundary any vector load likes.
    static constexpr std::size_t pool_alignment = host_pool_alignment;

    /// Allocates max_sequences x max_tokens records of `record_bytes_per_slot[s]` bytes for every
    /// slot s. Throws kvcar::error when a count is not positive, there is no slot, or a record size
    /// is not a positive multiple of 4; std::bad_alloc when the pools do not fit in memory.
    contiguous_storage(params p, std::vector<std::size_t> record_bytes_per_slot)
        : params_(p), record_bytes_(std::move(record_bytes_per_slot)) {
        require(p.max_sequences > 0 && p.max_tokens > 0,
                "contiguous_storage: max_sequences and max_tokens must be positive (got " +
                    std::to_string(p.max_sequences) + ", " + std::to_string(p.max_tokens) + ")");
        require(!record_bytes_.empty(), "contiguous_storage: needs at least one slot");
        for (std::size_t s = 0; s < record_bytes_.size(); ++s) {
            require(record_bytes_[s] > 0 && record_bytes_[s] % 4 == 0,
                    "contiguous_storage: slot " + std::to_string(s) + " has records of " +
                        std::to_string(record_bytes_[s]) +
                        " bytes; records must be a positive multiple of 4 bytes");
        }
        block_table_.resize(std::size_t(p.max_sequences));
        for (int s = 0; s < p.max_sequences; ++s) block_table_[std::size_t(s)] = s;
        in_use_.assign(std::size_t(p.max_sequences), 0);
        pools_.reserve(record_bytes_.size());
        for (std::size_t bytes : record_bytes_) {
            pools_.push_back(allocate_host_pool(region_records() * bytes));
        }
    }

    /// Makes room for `sequence`'s first `tokens` tokens in every slot. Its whole region is
    /// already allocated, so this only marks it in use (tokens > 0) or checks the bound.
    void reserve(int sequence, int tokens) {
        check_sequence(sequence);
        if (tokens < 0) {
            throw error("kvcar: contiguous_storage: sequence " + std::to_string(sequence) +
                        " cannot reserve a negative token count " + std::to_string(tokens));
        }
        if (tokens > params_.max_tokens) {
            throw error("kvcar: contiguous_storage: sequence " + std::to_string(sequence) +
                        " needs " + std::to_string(tokens) + " tokens, more than max_tokens " +
                        std::to_string(params_.max_tokens));
        }
        if (tokens > 0) in_use_[std::size_t(sequence)] = 1;
    }
    /// Marks `sequence`'s region free again (its records are left as they are).
    void release(int sequence) {
        check_sequence(sequence);
        in_use_[std::size_t(sequence)] = 0;
    }
    /// Tokens `sequence` may hold now: its region, once reserved.
    int capacity(int sequence) const {
        check_sequence(sequence);
        return in_use_[std::size_t(sequence)] ? params_.max_tokens : 0;
    }
    /// Sequences the storage holds at once.
    int max_sequences() const { return params_.max_sequences; }
    /// Tokens a sequence can hold at most.
    int max_tokens() const { return params_.max_tokens; }
    /// Slots, one pool each.
    int n_slots() const { return int(record_bytes_.size()); }
    /// Bytes of one record (one token's encoded group) in slot `slot`.
    std::size_t record_bytes(int slot) const {
        check_slot(slot);
        return record_bytes_[std::size_t(slot)];
    }

    /// Slot `slot` as kernels read it: one page per sequence, page_size = max_tokens.
    page_view view(int slot) const {
        check_slot(slot);
        page_view v;
        v.pool = pools_[std::size_t(slot)].get();
        v.record_bytes = record_bytes_[std::size_t(slot)];
        v.page_size = params_.max_tokens;
        v.block_table = block_table_.data();
        v.pages_per_sequence = 1;
        return v;
    }

    /// Bytes held by sequences in use (all slots).
    std::size_t bytes_reserved() const {
        std::size_t in_use = 0;
        for (char u : in_use_) in_use += u ? 1u : 0u;
        return in_use * std::size_t(params_.max_tokens) * bytes_per_token();
    }
    /// Bytes of all pools, in use or not.
    std::size_t bytes_allocated() const { return region_records() * bytes_per_token(); }

private:
    std::size_t region_records() const {
        return std::size_t(params_.max_sequences) * std::size_t(params_.max_tokens);
    }
    std::size_t bytes_per_token() const {
        std::size_t sum = 0;
        for (std::size_t b : record_bytes_) sum += b;
        return sum;
    }
    void check_sequence(int sequence) const {
        check_index("contiguous_storage", "sequence", sequence, params_.max_sequences);
    }
    void check_slot(int slot) const { check_index("contiguous_storage", "slot", slot, n_slots()); }

    params params_;
    std::vector<std::size_t> record_bytes_;
    std::vector<host_pool> pools_;
    std::vector<std::int32_t> block_table_;  // [sequence] -> its page (itself)
    std::vector<char> in_use_;
};

}  // namespace kvcar
