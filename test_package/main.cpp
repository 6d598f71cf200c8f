// Host consumer (Conan test_package and tests/package/consumer): an fp16 identity codec round
// trip through kvcar::kvcar.
#include <kvcar/kvcar.hpp>

#include <cstdio>
#include <vector>

int main() {
    kvcar::identity_codec<kvcar::f16> codec{4};
    std::vector<std::byte> record(codec.bytes_per_group());
    const float x[4] = {1.0f, -2.0f, 0.5f, 3.0f};
    float y[4];
    codec.encode(x, record.data());
    codec.decode(record.data(), y);
    for (int i = 0; i < 4; ++i)
        if (x[i] != y[i]) return 1;
    std::printf("kvcar consumer (host): ok, %zu bytes per group\n", codec.bytes_per_group());
    return 0;
}
