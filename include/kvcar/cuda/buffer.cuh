// kvcar/cuda/buffer.cuh — an owning, typed array in device memory (RAII over cudaMalloc/cudaFree).
//
// Move-only: a device allocation has one owner. Copies to and from the host are explicit
// (upload/download), blocking, and size-checked, so a test or a cache never reads past an end.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/cuda/buffer.cuh needs nvcc"
#endif

#include <cstddef>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"

namespace kvcar::gpu {

/// An owning array of T in device memory (RAII over cudaMalloc/cudaFree). Move-only; host copies
/// are explicit, blocking unless named _async, and range-checked: an out-of-range copy throws
/// kvcar::error, and so does a failed CUDA call, naming the call.
template <class T>
class device_buffer {
    static_assert(std::is_trivially_copyable_v<T>, "device_buffer holds trivially copyable types");

public:
    device_buffer() = default;
    /// `count` elements, uninitialized (cudaMalloc gives 256-byte aligned memory).
    explicit device_buffer(std::size_t count) { allocate(count); }
    /// A device copy of `host`.
    explicit device_buffer(std::span<const T> host) {
        allocate(host.size());
        upload(host);
    }
    /// A device copy of `host`.
    explicit device_buffer(const std::vector<T>& host) : device_buffer(std::span<const T>(host)) {}

    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;
    /// Takes `other`'s allocation; `other` is left empty.
    device_buffer(device_buffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    /// Frees this buffer's allocation and takes `other`'s; `other` is left empty.
    device_buffer& operator=(device_buffer&& other) noexcept {
        if (this != &other) {
            release();
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }
    ~device_buffer() { release(); }

    /// Device pointer to the first element (null when empty).
    T* data() { return data_; }
    /// Device pointer to the first element (null when empty).
    const T* data() const { return data_; }
    /// Elements held.
    std::size_t size() const { return size_; }
    /// Bytes held: size() * sizeof(T).
    std::size_t bytes() const { return size_ * sizeof(T); }
    /// Whether the buffer holds no elements.
    bool empty() const { return size_ == 0; }

    /// Copies `host` to elements [offset, offset + host.size()). Blocking.
    void upload(std::span<const T> host, std::size_t offset = 0) {
        check_range("upload", offset, host.size());
        if (host.empty()) return;
        KVCAR_CUDA_CHECK(cudaMemcpy(data_ + offset, host.data(), host.size_bytes(),
                                    cudaMemcpyHostToDevice));
    }
    /// The same, ordered on `stream`. The host memory may be reused as soon as this returns
    /// (pageable memory is staged before the call returns).
    void upload_async(std::span<const T> host, cudaStream_t stream, std::size_t offset = 0) {
        check_range("upload_async", offset, host.size());
        if (host.empty()) return;
        KVCAR_CUDA_CHECK(cudaMemcpyAsync(data_ + offset, host.data(), host.size_bytes(),
                                         cudaMemcpyHostToDevice, stream));
    }
    /// Copies elements [offset, offset + host.size()) to `host`. Blocking (waits for the device).
    void download(std::span<T> host, std::size_t offset = 0) const {
        check_range("download", offset, host.size());
        if (host.empty()) return;
        KVCAR_CUDA_CHECK(cudaMemcpy(host.data(), data_ + offset, host.size_bytes(),
                                    cudaMemcpyDeviceToHost));
    }
    /// The whole buffer as a host vector.
    std::vector<T> to_host() const {
        std::vector<T> host(size_);
        download(std::span<T>(host));
        return host;
    }
    /// Sets every byte to `byte` (0 for zeros; 0xff poisons floats with NaN). Blocking.
    void fill_bytes(int byte) {
        if (size_ > 0) KVCAR_CUDA_CHECK(cudaMemset(data_, byte, bytes()));
    }
    /// Makes room for at least `count` elements, discarding the contents when it reallocates.
    void reserve_discard(std::size_t count) {
        if (count <= size_) return;
        device_buffer fresh(count);
        *this = std::move(fresh);
    }

private:
    void allocate(std::size_t count) {
        if (count == 0) return;
        void* p = nullptr;
        KVCAR_CUDA_CHECK(cudaMalloc(&p, count * sizeof(T)));
        data_ = static_cast<T*>(p);
        size_ = count;
    }
    void release() noexcept {
        if (data_) cudaFree(data_);  // a destructor cannot throw; a failed free leaks at worst
        data_ = nullptr;
        size_ = 0;
    }
    void check_range(const char* what, std::size_t offset, std::size_t count) const {
        if (offset > size_ || count > size_ - offset) {
            throw error("kvcar: device_buffer: " + std::string(what) + " of " +
                        std::to_string(count) + " elements at offset " + std::to_string(offset) +
                        " exceeds the buffer's " + std::to_string(size_) + " elements");
        }
    }

    T* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace kvcar::gpu
