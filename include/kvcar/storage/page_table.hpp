// kvcar/storage/page_table.hpp — the host bookkeeping of paged KV storage: which pages each
// sequence holds (one block-table row per sequence) and which pages are free.
//
// paged_storage (pools in host memory) and gpu::device_kv_cache (pools in device memory, the
// table mirrored there) both keep their pages with it, so the page policy lives in one place:
// a free list that hands out the lowest page first, rows that grow a page at a time as a
// sequence grows, and entries of pages a sequence does not hold that still name a real page
// (`unused_page`), so a kernel that loads a whole page speculatively stays inside the pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcar/common.hpp"

namespace kvcar {

/// Block table [max_sequences][pages_per_sequence] of page ids, pages held per sequence and the
/// free pages. Sequence ids are not checked here (unchecked preconditions: 0 <= seq <
/// max_sequences()); owners check them with their own messages.
class page_table {
public:
    /// What entries of pages a sequence does not hold contain: page 0, a real page.
    static constexpr std::int32_t unused_page = 0;

    /// A table for `max_sequences` sequences of up to `max_tokens` tokens in pages of
    /// `page_size` tokens, `n_pages` pages in all, every page free. Throws kvcar::error unless
    /// all four are positive; `who` names the owner in the message.
    page_table(int max_sequences, int max_tokens, int page_size, int n_pages,
               const std::string& who = "page_table")
        : max_sequences_(max_sequences), max_tokens_(max_tokens), page_size_(page_size),
          n_pages_(n_pages) {
        require(max_sequences > 0 && max_tokens > 0 && page_size > 0 && n_pages > 0,
                who + ": max_sequences, max_tokens, page_size and n_pages must be positive "
                      "(got " +
                    std::to_string(max_sequences) + ", " + std::to_string(max_tokens) + ", " +
                    std::to_string(page_size) + ", " + std::to_string(n_pages) + ")");
        pages_per_sequence_ = pages_for(max_tokens);
        entries_.assign(std::size_t(max_sequences) * std::size_t(pages_per_sequence_),
                        unused_page);
        held_.assign(std::size_t(max_sequences), 0);
        // A stack whose top is the lowest page: a fresh table hands out pages 0, 1, 2, ...
        free_.reserve(std::size_t(n_pages));
        for (int page = n_pages - 1; page >= 0; --page) free_.push_back(page);
    }

    /// Sequences (rows).
    int max_sequences() const { return max_sequences_; }
    /// Tokens a sequence can hold at most.
    int max_tokens() const { return max_tokens_; }
    /// Tokens per page.
    int page_size() const { return page_size_; }
    /// Pages in all.
    int n_pages() const { return n_pages_; }
    /// Entries per row: ceil(max_tokens / page_size).
    int pages_per_sequence() const { return pages_per_sequence_; }
    /// Pages no sequence holds.
    int free_pages() const { return int(free_.size()); }
    /// Pages that hold `tokens` tokens.
    int pages_for(int tokens) const { return (tokens + page_size_ - 1) / page_size_; }

    /// Pages `seq` holds.
    int pages_held(int seq) const { return held_[std::size_t(seq)]; }
    /// Tokens `seq`'s pages hold, never more than max_tokens.
    int capacity(int seq) const {
        const int tokens = pages_held(seq) * page_size_;
        return tokens < max_tokens_ ? tokens : max_tokens_;
    }
    /// Pages `seq` must still take to hold `tokens` tokens (0 when it already does).
    int shortfall(int seq, int tokens) const {
        const int more = pages_for(tokens) - pages_held(seq);
        return more > 0 ? more : 0;
    }
    /// Takes free pages until `seq` holds `tokens` tokens; returns whether its row changed.
    /// Preconditions: tokens <= max_tokens, shortfall(seq, tokens) <= free_pages() (the owner
    /// checks both first, so a failed request changes nothing).
    bool grow(int seq, int tokens) {
        const int needed = pages_for(tokens);
        int& held = held_[std::size_t(seq)];
        if (needed <= held) return false;
        std::int32_t* r = entries_.data() + row_offset(seq);
        for (; held < needed; ++held) {
            r[held] = free_.back();
            free_.pop_back();
        }
        return true;
    }
    /// Returns `seq`'s pages to the free list, last first, so the next sequence to grow to the
    /// same length gets the same pages back in the same order.
    void release(int seq) {
        std::int32_t* r = entries_.data() + row_offset(seq);
        int& held = held_[std::size_t(seq)];
        for (; held > 0; --held) {
            free_.push_back(r[held - 1]);
            r[held - 1] = unused_page;
        }
    }

    /// The page holding token `token` of `seq`. Precondition: token < capacity(seq).
    std::int32_t page_of(int seq, int token) const {
        return entries_[row_offset(seq) + std::size_t(token / page_size_)];
    }
    /// The pages `seq` holds, in token order.
    std::vector<std::int32_t> pages(int seq) const {
        const std::int32_t* r = row(seq);
        return std::vector<std::int32_t>(r, r + pages_held(seq));
    }
    /// `seq`'s row: pages_per_sequence() entries.
    const std::int32_t* row(int seq) const { return entries_.data() + row_offset(seq); }
    /// Index of `seq`'s first entry in entries().
    std::size_t row_offset(int seq) const {
        return std::size_t(seq) * std::size_t(pages_per_sequence_);
    }
    /// The whole table, row-major: what a kernel indexes as block_table[seq * pages_per_sequence
    /// + token / page_size].
    const std::vector<std::int32_t>& entries() const { return entries_; }

private:
    int max_sequences_, max_tokens_, page_size_, n_pages_;
    int pages_per_sequence_ = 0;
    std::vector<std::int32_t> entries_;  // [sequence][pages_per_sequence] page ids
    std::vector<int> held_;              // [sequence] live entries of its row
    std::vector<std::int32_t> free_;     // stack; top = lowest free page id
};

}  // namespace kvcar
