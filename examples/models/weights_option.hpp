// examples/models/weights_option.hpp — --weights auto|fp32|bf16, for the tools that run the CUDA
// model (kvcar-generate, kvcar-perplexity, kvcar-piqa, kvcar-serve): how its weight matrices are
// stored on the GPU. Plain host code; the CUDA side is examples/models/cuda/device_matrix.cuh.
//
//   auto  bf16 when the checkpoint stores its matrices as BF16 (language_model::matrix_dtype),
//         else fp32: a bf16 checkpoint keeps its own values and half the memory
//   fp32  cuBLAS SGEMM on fp32 matrices: the CPU model's numbers (to float rounding)
//   bf16  bf16 matrices whatever the checkpoint stored (fp32 values rounded to nearest even)
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

#include "kvcar/common.hpp"
#include "kvcar/io/json.hpp"
#include "kvcar/io/safetensors.hpp"

#include "examples/models/model.hpp"
#include "examples/models/model_common.hpp"
#include "examples/models/tool_common.hpp"

namespace kvcar::examples {

/// --weights as given on the command line.
enum class weights_choice { automatic, fp32, bf16 };

inline option_spec weights_option_spec() {
    return {"weights", "auto|fp32|bf16",
            "with --device cuda: the weight matrices on the GPU in bf16 (half the memory, "
            "fp32 accumulation) or fp32 (cuBLAS SGEMM, the CPU's numbers); auto (default) keeps "
            "a BF16 checkpoint bf16 and anything else fp32"};
}

/// Parses --weights (default auto). Refuses any other value, and bf16 without --device cuda:
/// the CPU model always computes in fp32, so asking it for bf16 would silently do nothing.
inline weights_choice parse_weights_option(const command_line& cl, bool use_cuda) {
    const std::string w = cl.get("weights", "auto");
    require(w == "auto" || w == "fp32" || w == "bf16",
            cl.tool() + ": --weights must be 'auto', 'fp32' or 'bf16', got '" + w + "'");
    require(use_cuda || w != "bf16",
            cl.tool() + ": --weights bf16 needs --device cuda (the CPU model computes in fp32)");
    return w == "fp32" ? weights_choice::fp32
                       : w == "bf16" ? weights_choice::bf16 : weights_choice::automatic;
}

/// The precision `choice` means for a checkpoint whose matrices were stored as `stored`.
inline weight_precision resolve_weights(weights_choice choice, io::dtype stored) {
    switch (choice) {
        case weights_choice::fp32: return weight_precision::fp32;
        case weights_choice::bf16: return weight_precision::bf16;
        case weights_choice::automatic: break;
    }
    return stored == io::dtype::bf16 ? weight_precision::bf16 : weight_precision::fp32;
}

inline weight_precision resolve_weights(weights_choice choice, const language_model& model) {
    return resolve_weights(choice, model.matrix_dtype());
}

/// The weights a tool ran with: its report line on stderr and the "weights" member of --json.
struct weights_used {
    weight_precision precision = weight_precision::fp32;
    io::dtype stored = io::dtype::f32;  ///< the checkpoint's matrices
    const char* device = "cpu";
    std::size_t bytes = 0;              ///< device bytes of the weights (per GPU); 0 on the CPU
    std::string why;                    ///< "auto: ..." or "--weights bf16"; empty on the CPU
};

/// The CPU model computes in fp32 from the checkpoint's values, whatever --weights says.
inline weights_used cpu_weights(const language_model& model) {
    return {.precision = weight_precision::fp32,
            .stored = model.matrix_dtype(),
            .device = "cpu",
            .bytes = 0,
            .why = {}};
}

/// Why the GPU holds `precision`: "auto: the checkpoint's matrices are BF16" or "--weights fp32".
inline std::string weights_reason(weights_choice choice, weight_precision precision,
                                  io::dtype stored) {
    return choice == weights_choice::automatic
               ? std::string("auto: the checkpoint's matrices are ") + io::dtype_name(stored)
               : std::string("--weights ") + to_string(precision);
}

/// The report line: "weights: bf16 on the GPU, 2.0 GiB (auto: the checkpoint's matrices are
/// BF16)", or "weights: fp32 on the CPU (the checkpoint's matrices are BF16)".
inline std::string weights_line(const weights_used& w) {
    if (std::string(w.device) == "cpu")
        return std::string("weights: fp32 on the CPU (the checkpoint's matrices are ") +
               io::dtype_name(w.stored) + ")";
    return std::string("weights: ") + to_string(w.precision) + " on the GPU, " +
           human_bytes(double(w.bytes)) + " (" + w.why + ")";
}

/// What a CUDA session holds (`Session` is cuda_backend::session; a template so that this header
/// needs no CUDA), its line printed to stderr, and returned for the JSON report.
template <class Session>
weights_used gpu_weights(weights_choice choice, const language_model& model, const Session& gpu) {
    const weights_used w{.precision = gpu.weights(),
                         .stored = model.matrix_dtype(),
                         .device = "cuda",
                         .bytes = gpu.weight_bytes(),
                         .why = weights_reason(choice, gpu.weights(), model.matrix_dtype())};
    std::fprintf(stderr, "%s\n", weights_line(w).c_str());
    return w;
}

/// {"precision":"bf16","stored":"BF16","device":"cuda","bytes":2200000000}
inline io::json_value weights_json(const weights_used& w) {
    io::json_value j = io::json_value::object();
    j.set("precision", std::string(to_string(w.precision)));
    j.set("stored", std::string(io::dtype_name(w.stored)));
    j.set("device", std::string(w.device));
    j.set("bytes", w.bytes);
    return j;
}

}  // namespace kvcar::examples
