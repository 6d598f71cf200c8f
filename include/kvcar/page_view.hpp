// kvcar/page_view.hpp — how any kernel finds a token's record in a slot.
//
// Both storages present a slot the same way, as vLLM and FlashInfer do: a pool of fixed-size
// pages and a block table per sequence. Contiguous storage is the special case of one page per
// sequence whose page size is the sequence capacity, so kernels have one code path.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcar/common.hpp"

namespace kvcar {

/// Where a slot's records are, as a kernel sees it: a pool of fixed-size pages and a block table
/// per sequence (vLLM and FlashInfer's scheme). Plain pointers, cheap to copy into a kernel's
/// arguments; valid while the storage that made it lives.
struct page_view {
    /// Pages of records: page p, token t is at pool + (p * page_size + t) * record_bytes.
    std::byte* pool = nullptr;
    std::size_t record_bytes = 0;               ///< bytes per token (the codec's bytes_per_group)
    int page_size = 0;                          ///< tokens per page
    const std::int32_t* block_table = nullptr;  ///< [sequence][pages_per_sequence] page ids
    int pages_per_sequence = 0;                 ///< block-table entries per sequence (a row)

    /// Precondition: `token` is below the sequence's reserved capacity.
    KVCAR_HD std::byte* record(int sequence, int token) const {
        const int page = block_table[std::size_t(sequence) * pages_per_sequence + token / page_size];
        return pool + (std::size_t(page) * page_size + token % page_size) * record_bytes;
    }
};

}  // namespace kvcar
