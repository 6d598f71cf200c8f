// examples/models/cuda/device_model.cuh — GPT-2 and Llama on a CUDA GPU, their KV cache a
// kvcar::gpu::device_kv_cache.
//
// The same model as examples/models/gpt2/gpt2.hpp and llama/llama.hpp (read those for the math),
// with its weights uploaded once by the family's own part (gpt2/gpt2_cuda.cuh,
// llama/llama_cuda.cuh) and every step on one stream. The weight matrices are fp32 (cuBLAS SGEMM,
// the exact path) or bf16 (a bf16 checkpoint kept bf16: half the memory and weight traffic;
// device_matrix.cuh, bf16_linear.cuh); norms, biases and activations are fp32 either way (with
// bf16 weights, a norm or SwiGLU that feeds a tensor-core product writes that product's bf16
// input itself: the values the product's rounding pass would make, without the pass). Where
// the families differ, the family's traits (device_weights.cuh: norm, MLP and position kinds)
// pick the kernel:
//
//   x = embed(tokens, positions)                         embed_kernel
//   for each layer:
//       h = norm_1(x)                                    layernorm / rmsnorm kernel (norm_kind)
//       qkv = h · W_qkvᵀ                                 one product ([q | k | v] rows fused)
//       q, k, v = split(qkv) (+ bias) (+ RoPE)           split_qkv_kernel, rope_kernel (rope)
//       kvcar::kernels::append(cache, layer, k, v)       K/V encoded through the codec, paged
//       a = prefill_attention or decode_attention        reads K/V back *through the codec*
//       x += a · W_oᵀ (+ bias)                           GEMM, residual_kernel
//       h = norm_2(x); x += MLP(h)                       GEMMs + activation kernel (mlp_kind)
//   logits = norm_f(x) · W_headᵀ                         GEMM (all rows, or each item's last)
//
// A forward pass takes a *batch*: item b appends counts[b] tokens to sequence sequences[b], each
// at its own position, so prompts of different lengths prefill together and a decode step runs
// every sequence's next token in one pass (one GEMM per weight for the whole batch). When every
// item has one token the attention is kvcar's decode kernel (split-KV over pages); otherwise the
// causal prefill kernel. Such a decode step does its host work first (pages, one upload), so its
// launches read only device memory and are replayed as one CUDA graph per batch size and context
// bucket (decode_graphs.cuh; use_decode_graphs(false) enqueues them one by one).
//
// Tensor parallelism (tensor_parallel_params): a device_model can hold one rank's share of the
// model, Megatron-style. Rank r of `world` keeps the query heads and KV heads of
// kvcar::shard.hpp's split (so its cache holds n_kv_heads / world heads of every layer), the rows
// of W_qkv for those heads, the matching columns of W_o, and 1/world of the MLP's hidden units
// (rows of the first matrix, columns of the second). Each rank's W_o and MLP products are then
// partial sums of the full ones; the communicator all-reduces them before the bias and the
// residual, so every rank carries the same residual stream:
//
//       x += all_reduce(a_r · W_o,rᵀ) + b_o          x += all_reduce(act_r · W_down,rᵀ) + b_down
//
// Embeddings, norms and the LM head are replicated (they are small next to the layers); only
// rank 0 computes logits.
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/cuda/device_model.cuh needs nvcc"
#endif

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/buffer.cuh"
#include "kvcar/cuda/device_kv_cache.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/kernels/append.cuh"
#include "kvcar/kernels/decode_attention.cuh"
#include "kvcar/kernels/decode_plan.cuh"
#include "kvcar/kernels/prefill_attention.cuh"
#include "kvcar/reference/attention.hpp"
#include "kvcar/shard.hpp"

#include "examples/models/cuda/communicator.cuh"
#include "examples/models/cuda/decode_graphs.cuh"
#include "examples/models/cuda/device_matrix.cuh"
#include "examples/models/cuda/device_ops.cuh"
#include "examples/models/cuda/device_weights.cuh"
#include "examples/models/cuda/pass_arrays.hpp"
#include "examples/models/gpt2/gpt2_cuda.cuh"
#include "examples/models/llama/llama_cuda.cuh"
#include "examples/models/model.hpp"
#include "examples/models/model_common.hpp"

namespace kvcar::examples::cuda_model {

/// Which share of the model a device_model computes and how it meets the other shares.
struct tensor_parallel_params {
    head_shard shard{};            ///< {0, 1}: the whole model
    communicator* comm = nullptr;  ///< sums the partial products; required when world > 1
};

/// A stream created for one model and destroyed with it. A *blocking* stream: it waits for
/// work on the legacy default stream, where a device_kv_cache zeroes its pools and uploads
/// block tables with plain cudaMemset / cudaMemcpy, so nothing here can overtake them.
class owned_stream {
public:
    owned_stream() { KVCAR_CUDA_CHECK(cudaStreamCreate(&stream_)); }
    owned_stream(const owned_stream&) = delete;
    owned_stream& operator=(const owned_stream&) = delete;
    ~owned_stream() {
        if (stream_) cudaStreamDestroy(stream_);
    }
    cudaStream_t get() const { return stream_; }

private:
    cudaStream_t stream_ = nullptr;
};

/// A model of any family with a device part (GPT-2, Llama) on the current CUDA device, fp32 or
/// bf16 weight matrices, one stream, one cuBLAS handle.
/// Not copyable or movable (the handle is bound to the stream); hold it by pointer to move it.
class device_model {
public:
    /// Uploads `host`'s weights (all of them, or rank tp.shard's share) to the current device,
    /// the matrices in precision `weights` (rounded to bf16 on the host, one matrix at a time).
    /// The host model may be dropped afterwards. Throws kvcar::error when the model's heads or
    /// hidden units do not split evenly across tp.shard.world ranks, or when world > 1 comes
    /// without a communicator of that world.
    explicit device_model(const language_model& host, tensor_parallel_params tp = {},
                          weight_precision weights = weight_precision::fp32)
        : geometry_(shard_geometry(host.cache_geometry(), tp.shard)), vocab_(host.vocab_size()),
          max_positions_(host.max_positions()), tp_(tp), blas_(stream_.get()),
          linear_(blas_.get(), stream_.get()) {
        const head_shard shard = tp.shard;
        require(shard.world == 1 || (tp.comm && tp.comm->world() == shard.world &&
                                     tp.comm->rank() == shard.rank),
                "device_model: rank " + std::to_string(shard.rank) + " of " +
                    std::to_string(shard.world) + " needs a communicator of that rank and world");
        // The family's own upload (upload_weights of gpt2_cuda.cuh or llama_cuda.cuh).
        w_ = host.visit([&](const auto& m) {
            const auto& c = m.config();
            return upload_weights(m,
                                  rank_split::of(c.n_heads, c.d_ff, host.cache_geometry(), shard),
                                  weights);
        });
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
    }

    device_model(const device_model&) = delete;
    device_model& operator=(const device_model&) = delete;

    /// The traits of the family this model is (device_weights.cuh).
    const device_family& family() const { return w_.family; }
    int vocab_size() const { return vocab_; }
    int max_positions() const { return max_positions_; }
    kv_geometry cache_geometry() const { return geometry_; }
    /// How attention reads the cache (RoPE on read for Llama with pre-RoPE keys); n_heads is
    /// this rank's query heads.
    const attention_params& attention() const { return w_.attention; }
    /// This model's share of a tensor-parallel group ({0, 1} when unsharded).
    head_shard shard() const { return tp_.shard; }
    /// Only rank 0 computes logits; the other ranks' forward() returns no rows.
    bool computes_logits() const { return tp_.shard.rank == 0; }
    cudaStream_t stream() const { return stream_.get(); }
    /// Bytes of weights on the device (a tied head counted once).
    std::size_t weight_bytes() const { return w_.bytes(); }
    /// How the weight matrices are stored.
    weight_precision weights() const { return w_.precision; }

    /// Runs the batch through the model, appending every item's K/V to `cache`; returns logits
    /// [Σ counts][vocab] (logits_for::all) or [items][vocab], each item's last token
    /// (logits_for::last). Host-side errors (bad ids, too long, unknown or repeated sequence,
    /// cache of another shape, out of pages) throw before the cache changes.
    template <class Codec, class Layout>
    std::vector<float> forward(gpu::device_kv_cache<Codec, Layout>& cache,
                               const token_batch& batch, logits_for which = logits_for::all) {
        const auto start = host_clock::now();
        const int rows = run(cache, batch, which);
        const auto enqueued = host_clock::now();
        std::vector<float> logits(std::size_t(rows) * std::size_t(vocab_));
        if (rows > 0)
            KVCAR_CUDA_CHECK(cudaMemcpyAsync(logits.data(), logits_.data(),
                                             logits.size() * sizeof(float),
                                             cudaMemcpyDeviceToHost, stream_.get()));
        KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
        count_pass(start, enqueued);
        return logits;
    }

    /// One sequence's chunk: forward(cache, {{seq}, {n}, tokens}, which).
    template <class Codec, class Layout>
    std::vector<float> forward(gpu::device_kv_cache<Codec, Layout>& cache, int seq,
                               std::span<const int> tokens, logits_for which = logits_for::all) {
        const int count = int(tokens.size());
        return forward(cache, token_batch{{&seq, 1}, {&count, 1}, tokens}, which);
    }

    /// Host time of the passes forward() and greedy() ran: `enqueue` in run() and the launches
    /// after it (validation, page and split planning, uploads, launches: the host's share of a
    /// step), `wait` in the synchronization that ends the pass (GPU work the host did not
    /// cover). When enqueue is most of a step, the host bounds it, not the GPU.
    struct pass_seconds {
        double enqueue = 0, wait = 0;
        long long passes = 0;
    };
    const pass_seconds& host_time() const { return host_time_; }

    /// Whether decode steps are captured and replayed as CUDA graphs (default on). Off, a step
    /// enqueues the very same launches one by one. Graphs are never used with a communicator.
    void use_decode_graphs(bool on) { graphs_.enabled = on; }
    /// Decode steps launched as one CUDA graph, and graphs captured.
    long long graph_steps() const { return graphs_.launches(); }
    long long graph_captures() const { return graphs_.captures(); }

    /// Whether norms and SwiGLU write the bf16 inputs of the tensor-core products themselves
    /// (default) or in fp32 followed by the products' rounding pass: the same values, so the
    /// same logits (a test compares the two).
    void fuse_bf16_rounding(bool on) { linear_.fuse_rounding = on; }

    /// Runs the batch like forward(…, logits_for::last) and returns each item's greedy next
    /// token, computed on the device (argmax_kernel): one int per item comes back, not a row of
    /// the vocabulary. Ranks that compute no logits return none.
    template <class Codec, class Layout>
    std::vector<int> greedy(gpu::device_kv_cache<Codec, Layout>& cache, const token_batch& batch) {
        const auto start = host_clock::now();
        const int rows = run(cache, batch, logits_for::last);
        std::vector<int> ids(static_cast<std::size_t>(rows));
        std::int32_t* dev = rows > 0 ? grow(greedy_ids_, std::size_t(rows)) : nullptr;
        if (rows > 0) {
            cuda_ops::argmax_kernel<<<unsigned(rows), cuda_ops::row_threads, 0, stream_.get()>>>(
                dev, logits_.data(), vocab_);
            KVCAR_CUDA_CHECK_LAUNCH("argmax_kernel");
        }
        // The copy counts as waiting: into pageable memory (ids), cudaMemcpyAsync returns only
        // once the pass has run, so taken before it, enqueue held the whole step (the 2026-12-07
        // serving run reported 29.9 of 30 s as enqueue).
        const auto enqueued = host_clock::now();
        if (rows > 0)
            KVCAR_CUDA_CHECK(cudaMemcpyAsync(ids.data(), dev, ids.size() * sizeof(int),
                                             cudaMemcpyDeviceToHost, stream_.get()));
        KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
        count_pass(start, enqueued);
        return ids;
    }

    /// Runs the batch like forward(…, logits_for::all) and returns, for every row r,
    /// log softmax(logits[r])[targets[r]] (in double), computed on the device: perplexity needs
    /// 8 bytes per token back, not a row of the vocabulary.
    template <class Codec, class Layout>
    std::vector<double> log_probs(gpu::device_kv_cache<Codec, Layout>& cache,
                                  const token_batch& batch, std::span<const int> targets) {
        require(targets.size() == batch.tokens.size(),
                "cuda model: " + std::to_string(targets.size()) + " targets for " +
                    std::to_string(batch.tokens.size()) + " tokens");
        for (std::size_t i = 0; i < targets.size(); ++i) {
            require(targets[i] >= 0 && targets[i] < vocab_,
                    "cuda model: target " + std::to_string(i) + " has id " +
                        std::to_string(targets[i]) + ", outside the vocabulary [0, " +
                        std::to_string(vocab_) + ")");
        }
        const std::vector<std::int32_t> host_targets(targets.begin(), targets.end());
        const int rows = run(cache, batch, logits_for::all);
        if (rows == 0) {
            KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
            return {};
        }
        std::int32_t* t = grow(targets_, std::size_t(rows));
        double* out = grow(log_probs_, std::size_t(rows));
        KVCAR_CUDA_CHECK(cudaMemcpyAsync(t, host_targets.data(), std::size_t(rows) * 4,
                                         cudaMemcpyHostToDevice, stream_.get()));
        cuda_ops::log_prob_kernel<<<unsigned(rows), cuda_ops::row_threads, 0, stream_.get()>>>(
            out, logits_.data(), t, vocab_);
        KVCAR_CUDA_CHECK_LAUNCH("log_prob_kernel");
        std::vector<double> result(static_cast<std::size_t>(rows));
        KVCAR_CUDA_CHECK(cudaMemcpyAsync(result.data(), out, result.size() * sizeof(double),
                                         cudaMemcpyDeviceToHost, stream_.get()));
        KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
        return result;
    }

private:
    /// The forward pass; leaves the logits in logits_ and returns their rows (0 on ranks that
    /// compute no logits). A decode step (one token per item) goes to decode_step; anything
    /// else appends and attends through the cache's own entry points, layer by layer.
    template <class Codec, class Layout>
    int run(gpu::device_kv_cache<Codec, Layout>& cache, const token_batch& b, logits_for which) {
        const pass_limits limits{std::string(w_.family.name) + " (cuda)", geometry_, vocab_,
                                 max_positions_};
        const std::vector<int> first_positions = validate_batch(limits, cache, b);
        if (is_decode_step(b)) return decode_step(cache, b, first_positions, which);
        const cudaStream_t s = stream_.get();
        const std::vector<std::int32_t> ints = prefill_arrays(b, first_positions);
        std::int32_t* dev = grow(ints_, ints.size());
        KVCAR_CUDA_CHECK(
            cudaMemcpyAsync(dev, ints.data(), ints.size() * 4, cudaMemcpyHostToDevice, s));
        const auto append_kv = [&](int layer, const float* k, const float* v) {
            kernels::append(cache, layer, b.sequences, b.counts, k, v, s);
        };
        const auto attend = [&](int layer, const float* q, output_activations out) {
            kernels::prefill_attention(cache, layer, b.sequences, b.counts, q, out, w_.attention,
                                       workspace_, s);
        };
        return enqueue_layers(int(b.tokens.size()), int(b.sequences.size()), dev, which,
                              append_kv, attend);
    }

    /// A decode step: one token per item. Unlike a prefill pass, the host work comes first and
    /// once: every layer's pages and lengths (prepare_append), then one upload of the step's
    /// arrays at a fixed address (pass_arrays.hpp); the layers' launches then read only device
    /// memory, with attention run for the length bucket. So the launches are the same from step
    /// to step, and a CUDA graph of them replays the step with one launch (decode_graphs.cuh).
    template <class Codec, class Layout>
    int decode_step(gpu::device_kv_cache<Codec, Layout>& cache, const token_batch& b,
                    const std::vector<int>& first_positions, logits_for which) {
        const cudaStream_t s = stream_.get();
        for (int l = 0; l < geometry_.n_layers; ++l) {
            const std::vector<std::int32_t> pos = cache.prepare_append(l, b.sequences, b.counts, s);
            require(std::equal(pos.begin(), pos.end(), first_positions.begin()),
                    "cuda model: layer " + std::to_string(l) +
                        " of the cache holds another length than layer 0 for a sequence");
        }
        const decode_arrays arrays(b, first_positions);
        std::int32_t* dev = grow(ints_, arrays.ints.size());
        KVCAR_CUDA_CHECK(cudaMemcpyAsync(dev, arrays.ints.data(), arrays.ints.size() * 4,
                                         cudaMemcpyHostToDevice, s));
        const int n = arrays.n;
        const device::cache_view<Codec> view = cache.view();
        const int bucket = decode_length_bucket(arrays.longest, cache.max_tokens());
        kernels::append_params ap;
        ap.token_offsets = dev + arrays.token_offsets();
        ap.sequences = dev + arrays.sequences();
        ap.positions = dev + arrays.positions();
        ap.batch = n;
        ap.total_tokens = n;
        kernels::decode_attention_params dp =
            kernels::detail::decode_shape(n, bucket, w_.attention);
        dp.sequences = dev + arrays.sequences();
        dp.kv_lengths = dev + arrays.kv_lengths();
        const auto append_kv = [&](int layer, const float* k, const float* v) {
            ap.k = k;
            ap.v = v;
            ap.layer = layer;
            kernels::append(view, ap, cache.max_latent_width(), s);
        };
        // Without graphs (or with a communicator, whose all-reduce is not captured here): the
        // same launches, decode attention choosing its path on each call. With graphs: the path
        // planned once for the key, and the step captured or replayed (decode_graphs.cuh).
        decode_graphs::entry* g = graphs_.enabled && !tp_.comm
                                      ? &graphs_.at(cache.serial(), n, bucket, int(which))
                                      : nullptr;
        if (g && g->plan.paths.empty())
            g->plan = kernels::plan_decode_attention(view, dp, workspace_, s);
        const auto attend = [&](int layer, const float* q, output_activations out) {
            dp.layer = layer;
            dp.q = q;
            dp.out = out;
            if (g) kernels::run_decode_attention(g->plan, view, dp, workspace_, s);
            else kernels::decode_attention(view, dp, workspace_, s);
        };
        const auto enqueue = [&] { return enqueue_layers(n, n, dev, which, append_kv, attend); };
        return g ? graphs_.run(*g, s, buffer_generation(), enqueue) : enqueue();
    }

    /// Every layer and the head over a pass of n tokens from `items` items whose arrays are
    /// `dev_ints` ([tokens n | positions n | last row of each item]): append_kv(layer, k, v)
    /// stores the layer's K/V, attend(layer, q, out) writes its attention. Returns the logit rows.
    template <class AppendKV, class Attend>
    int enqueue_layers(int n, int items, const std::int32_t* dev_ints, logits_for which,
                       const AppendKV& append_kv, const Attend& attend) {
        const cudaStream_t s = stream_.get();
        const device_family& fam = w_.family;
        const int D = w_.d_model, F = w_.d_ff, V = vocab_, hd = geometry_.head_dim;
        const int n_heads = w_.n_heads;
        const int Q = n_heads * hd, KV = geometry_.n_kv_heads * hd, QKV = Q + 2 * KV;
        // SwiGLU's first matrix is the fused [gate | up]: twice the hidden width.
        const int up_width = fam.mlp == mlp_kind::swiglu ? 2 * F : F;
        const std::size_t N = std::size_t(n);
        const std::int32_t* tokens = dev_ints;
        const std::int32_t* positions = dev_ints + N;
        const std::int32_t* last_rows = dev_ints + 2 * N;

        float* x = grow(x_, N * D);
        float* h = grow(h_, N * D);
        float* qkv = grow(qkv_, N * QKV);
        float* q = grow(q_, N * Q);
        float* k = grow(k_, N * KV);
        float* v = grow(v_, N * KV);
        float* att = grow(att_, N * Q);
        float* proj = grow(proj_, N * D);
        float* ff = grow(ff_, N * up_width);
        // GELU activates in place; SwiGLU writes silu(gate) ⊙ up beside its input.
        float* act = fam.mlp == mlp_kind::gelu ? ff : grow(act_, N * F);

        const int T = 256;
        const auto blocks = [&](long long count) { return cuda_ops::elementwise_blocks(count, T); };
        // Learned positions add their table's row to the token's; rotary ones come later.
        const float* position_table =
            fam.positions == position_kind::learned ? w_.position_embedding.data() : nullptr;
        w_.token_embedding.visit([&](const auto* table) {
            cuda_ops::embed_kernel<<<unsigned(n), 128, 0, s>>>(x, table, position_table, tokens,
                                                               positions, D);
        });
        KVCAR_CUDA_CHECK_LAUNCH("embed_kernel");

        for (int l = 0; l < int(w_.layers.size()); ++l) {
            const device_layer& L = w_.layers[std::size_t(l)];
            // --- attention ---
            normed_product(qkv, h, x, L.norm1_w, L.norm1_b, L.qkv_w, n);
            cuda_ops::split_qkv_kernel<<<blocks((long long)n * QKV), T, 0, s>>>(
                qkv, L.qkv_b.empty() ? nullptr : L.qkv_b.data(), q, k, v, n, Q, KV);
            KVCAR_CUDA_CHECK_LAUNCH("split_qkv_kernel");
            // Rotary positions: q and k rotated here unless the cache keeps keys unrotated
            // (then attention rotates each key it reads, w_.attention.rope).
            if (fam.positions == position_kind::rope && w_.rotate_before_storing) {
                const int pairs = rope_rotary_dim(w_.rope, hd) / 2;
                cuda_ops::rope_kernel<<<blocks((long long)n * n_heads * pairs), T, 0, s>>>(
                    q, positions, n, n_heads, hd, w_.rope);
                KVCAR_CUDA_CHECK_LAUNCH("rope_kernel");
                cuda_ops::rope_kernel<<<blocks((long long)n * geometry_.n_kv_heads * pairs), T, 0,
                                        s>>>(k, positions, n, geometry_.n_kv_heads, hd, w_.rope);
                KVCAR_CUDA_CHECK_LAUNCH("rope_kernel");
            }
            append_kv(l, k, v);
            // When the output projection rounds its input to bf16, attention stores its output
            // in bf16 there itself (the same rounding, to nearest even): no fp32 write, no pass.
            const bool att_rounded = linear_.takes_rounded(L.o_w, n);
            const output_activations att_out =
                att_rounded ? output_activations(linear_.rounded_input(N * std::size_t(Q)),
                                                 activation_type::bf16)
                            : output_activations(att);
            attend(l, q, att_out);
            if (att_rounded) linear_.from_rounded(proj, L.o_w, n);
            else linear_(proj, att, L.o_w, n);
            sum_across_ranks(proj, std::size_t(n) * std::size_t(D));
            residual(x, proj, L.o_b, n, D);

            // --- MLP ---
            normed_product(ff, h, x, L.norm2_w, L.norm2_b, L.up_w, n);
            if (fam.mlp == mlp_kind::gelu) {
                cuda_ops::bias_gelu_kernel<<<blocks((long long)n * F), T, 0, s>>>(
                    ff, L.up_b.data(), n, F);
                KVCAR_CUDA_CHECK_LAUNCH("bias_gelu_kernel");
                linear_(proj, act, L.down_w, n);
            } else if (linear_.takes_rounded(L.down_w, n)) {
                // SwiGLU writes the down product's bf16 input itself (no rounding pass).
                cuda_ops::silu_mul_kernel<<<blocks((long long)n * F), T, 0, s>>>(
                    linear_.rounded_input(N * std::size_t(F)), ff, n, F);
                KVCAR_CUDA_CHECK_LAUNCH("silu_mul_kernel");
                linear_.from_rounded(proj, L.down_w, n);
            } else {
                cuda_ops::silu_mul_kernel<<<blocks((long long)n * F), T, 0, s>>>(act, ff, n, F);
                KVCAR_CUDA_CHECK_LAUNCH("silu_mul_kernel");
                linear_(proj, act, L.down_w, n);
            }
            sum_across_ranks(proj, std::size_t(n) * std::size_t(D));
            residual(x, proj, L.down_b, n, D);
        }

        // Final norm and the LM head, for the rows asked for (on rank 0 only: every rank holds
        // the same residual stream, so one head suffices).
        if (!computes_logits()) return 0;
        const int rows = which == logits_for::last ? items : n;
        const float* final_in = x;
        if (which == logits_for::last) {
            float* last = grow(last_, std::size_t(items) * D);
            cuda_ops::gather_rows_kernel<<<unsigned(items), 128, 0, s>>>(last, x, last_rows, D);
            KVCAR_CUDA_CHECK_LAUNCH("gather_rows_kernel");
            final_in = last;
        }
        float* logits = grow(logits_, std::size_t(rows) * std::size_t(V));
        normed_product(logits, h, final_in, w_.final_norm_w, w_.final_norm_b, w_.head(), rows);
        return rows;
    }

    using host_clock = std::chrono::steady_clock;

    /// Adds one pass to host_time_: enqueued − start to enqueue, now − enqueued to wait.
    void count_pass(host_clock::time_point start, host_clock::time_point enqueued) {
        const auto end = host_clock::now();
        host_time_.enqueue += std::chrono::duration<double>(enqueued - start).count();
        host_time_.wait += std::chrono::duration<double>(end - enqueued).count();
        ++host_time_.passes;
    }

    /// The all-reduce that completes a row-split product (nothing without a communicator; a
    /// world of one still calls it, so one GPU runs the very code path of several).
    void sum_across_ranks(float* data, std::size_t count) {
        if (tp_.comm) tp_.comm->all_reduce_sum(data, count, stream_.get());
    }

    /// out = norm(x) · Wᵀ over `rows` rows. When the product rounds its input to bf16 first
    /// (linear_op::takes_rounded), the norm writes bf16 straight into the product's input: the
    /// same values without the fp32 write, read and rounding pass. Otherwise through `h`.
    void normed_product(float* out, float* h, const float* x, const gpu::device_buffer<float>& w,
                        const gpu::device_buffer<float>& b, const device_matrix& W, int rows) {
        if (linear_.takes_rounded(W, rows)) {
            norm(linear_.rounded_input(std::size_t(rows) * std::size_t(w_.d_model)), x, w, b,
                 rows);
            linear_.from_rounded(out, W, rows);
        } else {
            norm(h, x, w, b, rows);
            linear_(out, h, W, rows);
        }
    }

    /// The family's norm (norm_kind) of `rows` rows of d_model, written as Out (float or bf16).
    template <class Out>
    void norm(Out* out, const float* in, const gpu::device_buffer<float>& w,
              const gpu::device_buffer<float>& b, int rows) {
        if (w_.family.norm == norm_kind::layernorm) {
            cuda_ops::layernorm_kernel<<<unsigned(rows), cuda_ops::row_threads, 0, stream_.get()>>>(
                out, in, w.data(), b.data(), w_.d_model, w_.norm_eps);
            KVCAR_CUDA_CHECK_LAUNCH("layernorm_kernel");
        } else {
            cuda_ops::rmsnorm_kernel<<<unsigned(rows), cuda_ops::row_threads, 0, stream_.get()>>>(
                out, in, w.data(), w_.d_model, w_.norm_eps);
            KVCAR_CUDA_CHECK_LAUNCH("rmsnorm_kernel");
        }
    }

    void residual(float* x, const float* y, const gpu::device_buffer<float>& bias, int rows,
                  int dim) {
        const int T = 256;
        cuda_ops::residual_kernel<<<cuda_ops::elementwise_blocks((long long)rows * dim, T), T, 0,
                                    stream_.get()>>>(x, y, bias.empty() ? nullptr : bias.data(),
                                                     rows, dim);
        KVCAR_CUDA_CHECK_LAUNCH("residual_kernel");
    }

    /// Room for `count` elements in `b`. Growing waits for the stream first: the old buffer may
    /// still be read by work already enqueued.
    template <class T>
    T* grow(gpu::device_buffer<T>& b, std::size_t count) {
        if (count > b.size()) {
            KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
            b.reserve_discard(std::max(count, b.size() * 3 / 2));
            ++growths_;
        }
        return b.data();
    }

    /// Reallocations so far of every buffer a decode step's launches hold: the activations,
    /// the products' bf16 input and attention's workspace. A graph captured at another count
    /// holds freed addresses.
    std::uint64_t buffer_generation() const {
        return growths_ + linear_.growths + workspace_.growths();
    }

    // Shape.
    kv_geometry geometry_;
    int vocab_ = 0, max_positions_ = 0;
    tensor_parallel_params tp_{};

    // Execution. The stream is declared first: it outlives the handle and the buffers.
    owned_stream stream_;
    cuda_ops::cublas_handle blas_;
    cuda_model::linear_op linear_;  ///< every product: SGEMM, or bf16 GEMV / GemmEx
    kernels::attention_workspace workspace_;
    decode_graphs graphs_;       ///< decode steps replayed as CUDA graphs (decode_graphs.cuh)
    std::uint64_t growths_ = 0;  ///< reallocations of the buffers below (grow)
    pass_seconds host_time_;

    // The family's traits, this rank's shape, and its weights.
    device_weights w_;

    // Activations, grown to the largest batch seen.
    gpu::device_buffer<float> x_, h_, qkv_, q_, k_, v_, att_, proj_, ff_, act_, last_, logits_;
    gpu::device_buffer<std::int32_t> ints_, targets_, greedy_ids_;
    gpu::device_buffer<double> log_probs_;
};

}  // namespace kvcar::examples::cuda_model
