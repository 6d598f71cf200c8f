// Tests for kvcar/parallel.hpp: parallel_for covers its range once whatever the thread count,
// small work stays on the caller, a nested call runs inline, callers on several threads take
// turns, and an exception from a slice reaches the caller.
#include "catch.hpp"

#include <kvcar/parallel.hpp>

#include <atomic>
#include <cstddef>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

// Big enough that parallel_for splits it over every thread asked for.
constexpr double lots_of_work = 1e9;

}  // namespace

TEST_CASE("parallel_for runs every index exactly once", "[parallel]") {
    for (int threads : {1, 2, 3, 8}) {
        for (int n : {0, 1, 5, 1000}) {
            std::vector<std::atomic<int>> hits(std::size_t(n + 1));
            kvcar::parallel_for(n, threads, lots_of_work, [&](int begin, int end) {
                REQUIRE(0 <= begin);
                REQUIRE(begin <= end);
                REQUIRE(end <= n);
                for (int i = begin; i < end; ++i) ++hits[std::size_t(i)];
            });
            for (int i = 0; i < n; ++i) CHECK(hits[std::size_t(i)] == 1);
        }
    }
}

TEST_CASE("small work stays on the calling thread", "[parallel]") {
    const std::thread::id me = std::this_thread::get_id();
    int calls = 0;
    kvcar::parallel_for(std::size_t(100), 8, 1000.0, [&](std::size_t begin, std::size_t end) {
        CHECK(std::this_thread::get_id() == me);
        CHECK(begin == 0);
        CHECK(end == 100);
        ++calls;
    });
    CHECK(calls == 1);
}

TEST_CASE("a parallel_for inside a parallel_for runs inline", "[parallel]") {
    std::atomic<long> sum{0};
    kvcar::parallel_for(4, 4, lots_of_work, [&](int b0, int b1) {
        for (int i = b0; i < b1; ++i)
            kvcar::parallel_for(100, 4, lots_of_work, [&](int j0, int j1) {
                for (int j = j0; j < j1; ++j) sum += j;
            });
    });
    CHECK(sum == 4 * 4950);
}

TEST_CASE("callers on several threads share the pool", "[parallel]") {
    std::atomic<long> sum{0};
    std::vector<std::thread> callers;
    for (int c = 0; c < 4; ++c)
        callers.emplace_back([&] {
            for (int round = 0; round < 50; ++round)
                kvcar::parallel_for(64, 3, lots_of_work, [&](int b, int e) {
                    for (int i = b; i < e; ++i) sum += 1;
                });
        });
    for (std::thread& t : callers) t.join();
    CHECK(sum == 4 * 50 * 64);
}

TEST_CASE("an exception in a slice reaches the caller, and the pool works after", "[parallel]") {
    CHECK_THROWS_AS(kvcar::parallel_for(8, 4, lots_of_work,
                                        [&](int begin, int) {
                                            if (begin > 0) throw std::runtime_error("slice");
                                        }),
                    std::runtime_error);
    std::atomic<int> count{0};
    kvcar::parallel_for(8, 4, lots_of_work, [&](int b, int e) { count += e - b; });
    CHECK(count == 8);
}

TEST_CASE("resolve_threads", "[parallel]") {
    CHECK(kvcar::resolve_threads(3) == 3);
    CHECK(kvcar::resolve_threads(0) >= 1);
}
