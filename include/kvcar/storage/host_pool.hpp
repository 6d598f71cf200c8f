// kvcar/storage/host_pool.hpp — what the host storages share: one zeroed, 256-byte aligned block
// of records per slot, and the range checks on sequence and slot ids.
//
// Zeroed, because a kernel that loads a whole tile or page and masks the tail must never read NaN
// garbage (NaN * 0 = NaN); aligned, so a slot's records start on a boundary any vector load likes.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "kvcar/common.hpp"

namespace kvcar {

/// Alignment of every host pool.
inline constexpr std::size_t host_pool_alignment = 256;

/// Frees a host pool (operator delete[] with its alignment).
struct host_pool_delete {
    /// Frees `p`, allocated by allocate_host_pool.
    void operator()(std::byte* p) const {
        ::operator delete[](p, std::align_val_t(host_pool_alignment));
    }
};

/// An owned, aligned block of records.
using host_pool = std::unique_ptr<std::byte[], host_pool_delete>;

/// `bytes` zeroed bytes aligned to host_pool_alignment: the one place the host storages allocate
/// (a device allocator replaces it). Throws std::bad_alloc when they do not fit in memory.
inline host_pool allocate_host_pool(std::size_t bytes) {
    void* raw = ::operator new[](bytes, std::align_val_t(host_pool_alignment));
    auto* p = static_cast<std::byte*>(raw);
    std::memset(p, 0, bytes);
    return host_pool(p);
}

/// Throws "kvcar: <who>: <what> <value> out of range [0, <end>)" unless 0 <= value < end.
/// (Checks on per-call paths build the message only when they fail.)
inline void check_index(const char* who, const char* what, int value, int end) {
    if (value < 0 || value >= end) {
        throw error(std::string("kvcar: ") + who + ": " + what + " " + std::to_string(value) +
                    " out of range [0, " + std::to_string(end) + ")");
    }
}

}  // namespace kvcar
