// kvcar/kernels/csr_block_table.cuh — FlashInfer's paged-KV indices as kvcar's block table.
//
// FlashInfer (paged_kv_t) and runtimes built on it describe a batch's pages in CSR form:
//     indptr[b] … indptr[b + 1]   the entries of indices that hold item b's pages, in token order
//     last_page_len[b]            tokens in item b's last page (1 … page_size)
// kvcar's kernels read a dense table (row s = the pages of sequence s, as vLLM keeps it) and a
// length per item. This kernel writes item b's pages into row b of a dense table and
// kv_lengths[b] = (pages − 1) · page_size + last_page_len[b], and sequences[b] = b, so a
// page_pool_view bound to that table decodes the same batch. One thread per table entry: the copy
// is pages × 4 bytes per item, nothing beside the attention it feeds.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/csr_block_table.cuh needs nvcc"
#endif

#include <cstdint>
#include <string>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"

namespace kvcar::kernels {

/// The CSR description of a batch's pages (device pointers, FlashInfer's names).
struct csr_pages {
    const std::int32_t* indptr = nullptr;         ///< [batch + 1] offsets into indices
    const std::int32_t* indices = nullptr;        ///< [indptr[batch]] page ids
    const std::int32_t* last_page_len = nullptr;  ///< [batch] tokens in each item's last page
    int batch = 0;                                ///< items; 0 enqueues nothing
    int page_size = 0;                            ///< tokens per page
};

/// Where the dense form goes (device pointers the caller owns).
struct dense_pages {
    std::int32_t* block_table = nullptr;  ///< [batch][pages_per_sequence]: row b = item b's pages
    int pages_per_sequence = 0;           ///< row length: at least the most pages of any item
    std::int32_t* kv_lengths = nullptr;   ///< [batch] tokens of each item
    std::int32_t* sequences = nullptr;    ///< [batch] b (the row each item reads)
};

namespace detail {

__global__ void csr_block_table_kernel(csr_pages in, dense_pages out) {
    const int b = int(blockIdx.y);
    const int begin = in.indptr[b], pages = in.indptr[b + 1] - begin;
    for (int i = int(blockIdx.x * blockDim.x + threadIdx.x); i < pages;
         i += int(gridDim.x * blockDim.x)) {
        // A row shorter than the item's pages is a caller error the host cannot see (indptr
        // lives on the device): the entries past the row are dropped, and the length below
        // is clamped to the row, so no kernel reads beyond it.
        if (i < out.pages_per_sequence)
            out.block_table[std::size_t(b) * out.pages_per_sequence + i] = in.indices[begin + i];
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const int kept = pages < out.pages_per_sequence ? pages : out.pages_per_sequence;
        const int last = kept == pages ? in.last_page_len[b] : in.page_size;
        out.kv_lengths[b] = kept > 0 ? (kept - 1) * in.page_size + last : 0;
        out.sequences[b] = b;
    }
}

}  // namespace detail

/// Enqueues the conversion on `stream`. `max_pages_per_item`: a host-side bound of the pages
/// of any item (sizes the grid; entries past it are still written by the grid-stride loop).
inline void csr_block_table(const csr_pages& in, const dense_pages& out, int max_pages_per_item,
                            cudaStream_t stream = nullptr) {
    require(in.batch >= 0, "csr_block_table: batch must not be negative");
    if (in.batch == 0) return;
    require(in.indptr && in.indices && in.last_page_len,
            "csr_block_table: indptr, indices and last_page_len must be device pointers");
    require(out.block_table && out.kv_lengths && out.sequences,
            "csr_block_table: block_table, kv_lengths and sequences must be device pointers");
    require(in.page_size > 0, "csr_block_table: page_size must be positive (got " +
                                  std::to_string(in.page_size) + ")");
    require(out.pages_per_sequence > 0 && max_pages_per_item <= out.pages_per_sequence,
            "csr_block_table: rows of " + std::to_string(out.pages_per_sequence) +
                " entries cannot hold " + std::to_string(max_pages_per_item) + " pages");
    constexpr int threads = 128;
    const int blocks_x = max_pages_per_item > 0 ? (max_pages_per_item + threads - 1) / threads : 1;
    detail::csr_block_table_kernel<<<gpu::checked_grid(blocks_x, in.batch, 1, "csr_block_table"),
                                     threads, 0, stream>>>(in, out);
    KVCAR_CUDA_CHECK_LAUNCH("csr_block_table_kernel");
}

}  // namespace kvcar::kernels
