// Fuzzes kvcar::io::safetensors_file::from_bytes. An accepted file must hand out tensors whose
// bytes lie inside the file (every byte is read, so AddressSanitizer sees any overrun) and whose
// size matches dtype x shape; conversion to float32 must work for every floating dtype.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_common.hpp"
#include "kvcar/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    namespace io = kvcar::io;
    std::vector<std::byte> bytes(size);
    for (std::size_t i = 0; i < size; ++i) bytes[i] = std::byte(data[i]);
    return kvcar_fuzz::accept_only_kvcar_errors([&] {
        const io::safetensors_file f = io::safetensors_file::from_bytes(std::move(bytes), "fuzz");
        kvcar_fuzz::must_not_throw("reading the tensors of an accepted file", [&] {
            kvcar_fuzz::check(f.size() == f.names().size(), "safetensors: size() != names()");
            for (const auto& [key, value] : f.metadata()) (void)(key.size() + value.size());
            for (const std::string& name : f.names()) {
                kvcar_fuzz::check(f.contains(name), "safetensors: listed tensor not contained");
                const io::tensor_view t = f.tensor(name);
                std::uint64_t numel = 1;
                for (std::int64_t d : t.shape) {
                    kvcar_fuzz::check(d >= 0, "safetensors: negative dimension accepted");
                    numel *= std::uint64_t(d);
                }
                kvcar_fuzz::check(t.data.size() == numel * io::dtype_size(t.dtype),
                                  "safetensors: tensor bytes != numel * dtype size");
                unsigned sum = 0;
                for (std::byte b : t.data) sum += unsigned(b);
                (void)sum;
                const bool floating = t.dtype == io::dtype::f64 || t.dtype == io::dtype::f32 ||
                                      t.dtype == io::dtype::f16 || t.dtype == io::dtype::bf16 ||
                                      t.dtype == io::dtype::f8_e4m3 ||
                                      t.dtype == io::dtype::f8_e5m2;
                if (floating)
                    kvcar_fuzz::check(f.to_float(name).size() == numel,
                                      "safetensors: to_float size != numel");
            }
        });
    });
}
