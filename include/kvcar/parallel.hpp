// kvcar/parallel.hpp — one pool of worker threads, started once and reused, and parallel_for
// over it (host only).
//
// The calibration trainer and the example models split every large matrix product across
// threads. Starting threads for each product costs tens of microseconds per call, as much as a
// small product itself, so the workers here are started on first use, grow to the most threads
// any call has asked for, and sleep between calls.
//
// parallel_for cuts [0, n) into contiguous slices and runs each slice once. Callers split only
// along independent elements (each computed by one fixed sequence of operations), so a result
// never depends on the thread count or on which worker ran which slice.
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace kvcar {

/// Threads to use: `requested` when positive, else every hardware thread (at least 1).
inline int resolve_threads(int requested) {
    if (requested > 0) return requested;
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : int(hw);
}

/// Workers that run the parts of one job at a time. A job's parts are claimed through an atomic
/// counter by the calling thread and the workers together; run() returns when every part is
/// done. A call from inside a job (nested) runs its parts on the calling thread, so a worker
/// never waits for itself; calls from several outside threads take turns.
class thread_pool {
public:
    thread_pool() = default;
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;
    ~thread_pool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        for (std::thread& t : workers_) t.join();
    }

    /// The pool every parallel_for uses, started on first use and stopped at exit.
    static thread_pool& shared() {
        static thread_pool pool;
        return pool;
    }

    /// Calls task(part) once for every part in [0, parts), on at most `threads` threads (the
    /// caller included). The first exception a part throws is rethrown here, after every part
    /// has finished.
    template <class Task>
    void run(std::size_t parts, int threads, Task&& task) {
        const std::size_t helpers =
            std::min(parts, std::size_t(std::max(threads, 1))) - (parts > 0 ? 1 : 0);
        if (helpers == 0 || inside_job()) {
            for (std::size_t p = 0; p < parts; ++p) task(p);
            return;
        }
        using task_type = std::remove_reference_t<Task>;
        const auto call = [](void* ctx, std::size_t p) { (*static_cast<task_type*>(ctx))(p); };
        void* const ctx = const_cast<void*>(static_cast<const void*>(&task));
        std::lock_guard<std::mutex> one_job(job_mutex_);
        start_workers(helpers);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            call_ = call;
            ctx_ = ctx;
            parts_ = parts;
            next_.store(0, std::memory_order_relaxed);
            remaining_ = parts;
            helpers_ = helpers;
            joined_ = 0;
            open_ = true;
            ++generation_;
        }
        wake_.notify_all();
        inside_job() = true;
        work(call, ctx, parts);
        inside_job() = false;

        std::unique_lock<std::mutex> lock(mutex_);
        // Done when every part has run and no worker is still between its claims; closing the
        // job in the same critical section keeps a late worker from joining it.
        done_.wait(lock, [&] { return remaining_ == 0 && active_ == 0; });
        open_ = false;
        std::exception_ptr error = std::exchange(error_, nullptr);
        lock.unlock();
        if (error) std::rethrow_exception(error);
    }

private:
    using call_type = void (*)(void*, std::size_t);

    /// Whether this thread is running a job's part now (a worker always is, while awake).
    static bool& inside_job() {
        static thread_local bool inside = false;
        return inside;
    }

    void start_workers(std::size_t count) {
        while (workers_.size() < count) workers_.emplace_back([this] { worker_loop(); });
    }

    /// Claims and runs parts until none is left; reports how many it ran.
    void work(call_type call, void* ctx, std::size_t parts) {
        std::size_t ran = 0;
        std::exception_ptr error;
        for (std::size_t p; (p = next_.fetch_add(1, std::memory_order_relaxed)) < parts; ++ran) {
            try {
                call(ctx, p);
            } catch (...) {
                if (!error) error = std::current_exception();
            }
        }
        std::lock_guard<std::mutex> lock(mutex_);
        remaining_ -= ran;
        if (error && !error_) error_ = error;
        if (remaining_ == 0 && active_ == 0) done_.notify_all();
    }

    void worker_loop() {
        inside_job() = true;
        std::uint64_t seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            // A worker joins an open job it has not joined yet, while the job wants helpers.
            wake_.wait(lock, [&] {
                return stop_ || (open_ && generation_ != seen && joined_ < helpers_);
            });
            if (stop_) return;
            seen = generation_;
            ++joined_;
            ++active_;
            const call_type call = call_;
            void* const ctx = ctx_;
            const std::size_t parts = parts_;
            lock.unlock();
            work(call, ctx, parts);
            lock.lock();
            --active_;
            if (remaining_ == 0 && active_ == 0) done_.notify_all();
        }
    }

    std::mutex job_mutex_;  // one job at a time
    std::mutex mutex_;      // everything below
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;
    call_type call_ = nullptr;
    void* ctx_ = nullptr;
    std::size_t parts_ = 0, remaining_ = 0, helpers_ = 0, joined_ = 0, active_ = 0;
    std::atomic<std::size_t> next_{0};
    std::uint64_t generation_ = 0;
    bool open_ = false, stop_ = false;
    std::exception_ptr error_;
};

/// Work below this many operations per slice stays on one thread: waking a worker costs about
/// what 64k multiply-adds do.
inline constexpr double parallel_grain = 65536.0;

/// Calls body(begin, end) on contiguous slices of [0, n) that cover it once, on up to `threads`
/// threads of thread_pool::shared(). `work` is the whole range's cost in operations (e.g. the
/// multiply-adds of a product): slices are never smaller than parallel_grain of it, and small
/// work runs on the calling thread alone.
template <std::integral Index, class Body>
void parallel_for(Index n, int threads, double work, Body&& body) {
    if (n <= 0) return;
    const double by_work = std::max(1.0, work / parallel_grain);
    const std::size_t count = std::size_t(n);
    std::size_t parts = std::min(count, std::size_t(std::max(threads, 1)));
    if (by_work < double(parts)) parts = std::size_t(by_work);
    if (parts <= 1) {
        body(Index(0), n);
        return;
    }
    const auto bound = [&](std::size_t p) { return Index(count * p / parts); };
    thread_pool::shared().run(parts, int(parts),
                              [&](std::size_t p) { body(bound(p), bound(p + 1)); });
}

}  // namespace kvcar
