// kvcar/kernels/prefill/dense_tiles.cuh — the tiled prefill path: each chunk's visible context
// is decoded once into dense fp16 K/V, then attended by tiles of 64 queries on tensor cores.
//
// Why. The per-query path (prefill_attention.cuh) makes every query token an item of decode
// attention, so a chunk of n queries over a context of L tokens reads and decodes the cache n
// times: n · L records per head, and for the latent codecs n projections and lifts as well. In
// continuous batching that made kvcar's prefill, not its decode, the bottleneck
// (docs/results/serving.md). Here the cost is
//     decode once      L records read, L · width fp16 written            (gather_dense_kernel)
//     attend by tiles  ⌈n / 64⌉ reads of the dense K/V per query head    (prefill_tiles_kernel)
// and the second read is of a few MB that stay in L2. The products are FlashAttention-2's:
//     S = Q Kᵀ (64 queries × 64 tokens, m16n8k16 fp16 → fp32), online softmax in exp2 units,
//     O += P V (P rounded to fp16; its accumulator fragment is already the A fragment of PV).
// Each of a CTA's 4 warps owns 16 query rows; K and V tiles stream through a two-stage
// cp.async ring in shared memory, and the tiles past a query tile's last position are skipped
// (causal), so a chunk's work is about half the n × L square.
//
// Precision: q (scaled), K, V and P are fp16 operands with fp32 accumulation, as on the decode
// tensor-core paths (fp16_operands_tolerance in the tests). Codecs that store exact f32 records
// (identity_codec<float>) keep the per-query path: their users chose exact scores.
//
// Limits (prefill_tiles_supported): head_dim 64 or 128 (the O accumulator of 128 is 64
// registers a lane); any codec the tile decoder reads, any layout, RoPE on read (keys are
// rotated as they are decoded). Dense scratch: 4 bytes per token per KV head element (K and V
// in fp16) over the visible contexts of the chunks of one launch; the caller cuts a batch into
// launches that fit max_dense_rows.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/prefill/dense_tiles.cuh needs nvcc"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kvcar/attention_params.hpp"
#include "kvcar/common.hpp"
#include "kvcar/cuda/activations.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/decode.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/generic_split.cuh"
#include "kvcar/kernels/decode/workspace.cuh"
#include "kvcar/kernels/mma.cuh"
#include "kvcar/rope.hpp"

namespace kvcar::kernels::detail {

/// One chunk of a tiled prefill, built on the host: a sequence's queries and the context they
/// see. Eight ints, uploaded as an array.
struct prefill_tile_item {
    std::int32_t sequence = 0;        ///< cache sequence
    std::int32_t kv_length = 0;       ///< tokens of the context (0 .. kv_length - 1 are decoded)
    std::int32_t first_position = 0;  ///< position of the chunk's first query
    std::int32_t query_row = 0;       ///< its first row of q and out
    std::int32_t n_queries = 0;       ///< rows of q and out
    std::int32_t dense_row = 0;       ///< first row of its tokens in the dense K/V
    std::int32_t first_kv_tile = 0;   ///< its first block of gather_dense_kernel (grid x)
    std::int32_t first_q_tile = 0;    ///< its first block of prefill_tiles_kernel (grid x)
};
static_assert(sizeof(prefill_tile_item) == 8 * sizeof(std::int32_t), "uploaded as ints");

inline constexpr int gather_tile = 16;      ///< tokens one gather block decodes at a time
inline constexpr int gather_threads = 128;
inline constexpr int prefill_q_tile = 64;   ///< queries per CTA (16 per warp)
inline constexpr int prefill_kv_tile = 64;  ///< tokens per K/V tile
inline constexpr int prefill_threads = 128;
/// Fewest queries of a chunk that take the tiled path by default: below it the chunk is
/// decode-shaped and the per-query path reads less (no dense copy of the context).
inline constexpr int prefill_tiles_default_min_queries = 16;

/// Whether Codec's records go through the tiled path: all but exact f32 identity records.
template <class Codec>
inline constexpr bool prefill_tiles_accepts = [] {
    using traits = device::codec_traits<Codec>;
    if constexpr (traits::family == device::codec_family::identity && !traits::quantized) {
        return !std::is_same_v<typename traits::element, float>;
    } else {
        return true;
    }
}();

/// Whether a chunk of `n_queries` takes the tiled path over `cache` (see the file comment).
template <class Codec>
bool prefill_tiles_supported(const device::cache_view<Codec>& cache, int n_queries,
                             const attention_workspace& ws) {
    if constexpr (!prefill_tiles_accepts<Codec>) {
        return false;
    } else {
        const int min_queries = ws.tune.prefill_tiles_min_queries;
        if (min_queries < 0) return false;
        if (cache.head_dim != 64 && cache.head_dim != 128) return false;
        return n_queries >= (min_queries > 0 ? min_queries : prefill_tiles_default_min_queries);
    }
}

/// The item whose first index (member `first`) is the largest one <= x: a binary search over
/// items sorted by it.
template <std::int32_t prefill_tile_item::*First>
__device__ int find_item(const prefill_tile_item* items, int n_items, int x) {
    int lo = 0, hi = n_items - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (items[mid].*First <= x) lo = mid; else hi = mid - 1;
    }
    return lo;
}

/// Block (tile of gather_tile tokens of one item, group blockIdx.y, kind blockIdx.z): decodes
/// the tile through the slot's codec into shared memory (RoPE on read rotates keys there), then
/// writes it to dense[kv_head][row][head_dim] as fp16.
template <class Codec>
__global__ void __launch_bounds__(gather_threads)
    gather_dense_kernel(device::cache_view<Codec> cache, const prefill_tile_item* items,
                        int n_items, int layer, int dense_rows, __half* dense_k, __half* dense_v,
                        bool rope, rope_params rope_cfg) {
    extern __shared__ float gather_smem[];
    const int gw = cache.group_width(), hd = cache.head_dim;
    float* tile = gather_smem;                          // [gather_tile][gw]
    float* scratch = gather_smem + gather_tile * gw;    // the tile decoder's
    const int i = find_item<&prefill_tile_item::first_kv_tile>(items, n_items, int(blockIdx.x));
    const prefill_tile_item it = items[i];
    const int t0 = (int(blockIdx.x) - it.first_kv_tile) * gather_tile;
    const int n = min(gather_tile, it.kv_length - t0);
    if (n <= 0) return;  // uniform across the block
    const int group = int(blockIdx.y);
    const kv_kind kind = blockIdx.z == 0 ? kv_kind::key : kv_kind::value;
    const int slot = cache.slot(layer, group, kind);
    device::decode_tile<gather_tile>(device::block_scope<gather_threads>{}, cache.codecs[slot],
                                     cache.slots[slot], it.sequence, t0, n, tile, gw, scratch);
    if (rope && kind == kv_kind::key) {
        rope_rows<gather_threads>(tile, n, gw, cache.heads_per_group, hd, t0, 1, rope_cfg);
        __syncthreads();
    }
    __half* dense = kind == kv_kind::key ? dense_k : dense_v;
    const int head0 = group * cache.heads_per_group;
    for (int idx = int(threadIdx.x); idx < n * gw; idx += gather_threads) {
        const int t = idx / gw, e = idx - t * gw;
        const int head = head0 + e / hd, d = e - (e / hd) * hd;
        dense[(std::size_t(head) * dense_rows + it.dense_row + t0 + t) * hd + d] =
            __float2half_rn(tile[t * gw + e]);
    }
}

/// What prefill_tiles_kernel reads and writes.
struct prefill_tiles_params {
    input_activations q;              ///< [rows][n_heads][head_dim]: f32, f16 or bf16
    output_activations out;           ///< same shape: f32, f16 or bf16
    const __half* dense_k = nullptr;  ///< [n_kv_heads][dense_rows][head_dim]
    const __half* dense_v = nullptr;
    const prefill_tile_item* items = nullptr;  ///< [n_items]
    int n_items = 0;
    int dense_rows = 0;
    int n_heads = 0;
    int gqa_ratio = 0;        ///< query heads per KV head
    float scale_log2 = 0.0f;  ///< softmax scale · log2(e): scores in exp2 units
    bool causal = true;
    bool rope = false;        ///< RoPE on read: queries rotate here, keys in the gather
    rope_params rope_cfg{};
};

/// CTA: query tile blockIdx.x (of some item) for query head blockIdx.y; 4 warps of 16 rows.
template <int HEAD_DIM>
__global__ void __launch_bounds__(prefill_threads)
    prefill_tiles_kernel(prefill_tiles_params p) {
    static_assert(HEAD_DIM == 64 || HEAD_DIM == 128, "head_dim 64 or 128");
    constexpr int BQ = prefill_q_tile, BK = prefill_kv_tile;
    constexpr int LD = HEAD_DIM + 8;  // +16 bytes a row: ldmatrix rows fall in distinct banks
    constexpr int KSTEPS = HEAD_DIM / 16;
    constexpr int DTILES = HEAD_DIM / 8;
    extern __shared__ __align__(16) unsigned char prefill_smem[];
    __half* sq = reinterpret_cast<__half*>(prefill_smem);  // [BQ][LD]
    __half* sk = sq + BQ * LD;                              // [2][BK][LD]
    __half* sv = sk + 2 * BK * LD;                          // [2][BK][LD]

    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int head = int(blockIdx.y), kv_head = head / p.gqa_ratio;
    const int i = find_item<&prefill_tile_item::first_q_tile>(p.items, p.n_items, int(blockIdx.x));
    const prefill_tile_item it = p.items[i];
    const int q0 = (int(blockIdx.x) - it.first_q_tile) * BQ;
    const int nq = min(BQ, it.n_queries - q0);
    if (nq <= 0) return;  // uniform across the block

    // Q tile → fp16 in shared memory, pre-scaled into exp2 units; rows past the chunk are zero.
    for (int idx = tid; idx < BQ * HEAD_DIM / 4; idx += prefill_threads) {
        const int r = idx / (HEAD_DIM / 4), c = 4 * (idx - r * (HEAD_DIM / 4));
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r < nq) {
            const std::size_t x0 =
                (std::size_t(it.query_row + q0 + r) * p.n_heads + head) * HEAD_DIM;
            if (p.rope) {
                const int position = it.first_position + q0 + r;
                const auto x = [&](int e) { return gpu::load(p.q, x0 + std::size_t(e)); };
                v = make_float4(rope_element_of(x, c, HEAD_DIM, position, p.rope_cfg),
                                rope_element_of(x, c + 1, HEAD_DIM, position, p.rope_cfg),
                                rope_element_of(x, c + 2, HEAD_DIM, position, p.rope_cfg),
                                rope_element_of(x, c + 3, HEAD_DIM, position, p.rope_cfg));
            } else {
                v = gpu::load4(p.q, x0 + std::size_t(c));
            }
        }
        std::uint32_t* dst = reinterpret_cast<std::uint32_t*>(sq + r * LD + c);
        dst[0] = pack_half2(v.x * p.scale_log2, v.y * p.scale_log2);
        dst[1] = pack_half2(v.z * p.scale_log2, v.w * p.scale_log2);
    }

    // The tokens this tile sees: all of the context, or (causal) up to its last query.
    const int last_position = it.first_position + q0 + nq - 1;
    const int kv_end = p.causal ? min(it.kv_length, last_position + 1) : it.kv_length;
    const int n_tiles = (kv_end + BK - 1) / BK;
    const __half* kbase = p.dense_k + (std::size_t(kv_head) * p.dense_rows + it.dense_row) * HEAD_DIM;
    const __half* vbase = p.dense_v + (std::size_t(kv_head) * p.dense_rows + it.dense_row) * HEAD_DIM;
    // Tile j → ring stage j % 2: rows past kv_end are zeroed (a zero P times garbage V could be
    // NaN), the rest copied asynchronously in 16-byte pieces.
    auto load_tile = [&](int j) {
        __half* k = sk + (j & 1) * BK * LD;
        __half* v = sv + (j & 1) * BK * LD;
        for (int idx = tid; idx < BK * HEAD_DIM / 8; idx += prefill_threads) {
            const int r = idx / (HEAD_DIM / 8), c = 8 * (idx - r * (HEAD_DIM / 8));
            const int token = j * BK + r;
            if (token < kv_end) {
                cp_async16(k + r * LD + c, kbase + std::size_t(token) * HEAD_DIM + c);
                cp_async16(v + r * LD + c, vbase + std::size_t(token) * HEAD_DIM + c);
            } else {
                *reinterpret_cast<uint4*>(k + r * LD + c) = make_uint4(0u, 0u, 0u, 0u);
                *reinterpret_cast<uint4*>(v + r * LD + c) = make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };
    load_tile(0);
    cp_async_commit();
    __syncthreads();  // the Q tile

    // This warp's A fragments of Q (rows 16·warp …): matrix m = lane / 8 of each ldmatrix is
    // (rows + 8·(m % 2), columns + 8·(m / 2)), the order of the m16n8k16 A registers.
    std::uint32_t qf[KSTEPS][4];
#pragma unroll
    for (int s = 0; s < KSTEPS; ++s) {
        const int row = 16 * warp + ((lane >> 3) & 1) * 8 + (lane & 7);
        ldmatrix_x4(qf[s], sq + row * LD + 16 * s + (lane >> 4) * 8);
    }

    float o[DTILES][4];
#pragma unroll
    for (int d = 0; d < DTILES; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g and g + 8
    // Positions of this lane's two rows (rows past the chunk see the whole tile: harmless).
    const int pos[2] = {it.first_position + q0 + 16 * warp + g,
                        it.first_position + q0 + 16 * warp + g + 8};

    for (int j = 0; j < n_tiles; ++j) {
        if (j + 1 < n_tiles) load_tile(j + 1);
        cp_async_commit();
        cp_async_wait<1>();  // tile j has landed (only tile j + 1 may be in flight)
        __syncthreads();
        const __half* K = sk + (j & 1) * BK * LD;
        const __half* V = sv + (j & 1) * BK * LD;

        // S = Q Kᵀ. K is [token][dim] row-major, i.e. the B operand stored transposed: matrix
        // m = lane / 8 is (tokens + 8·(m / 2), dims + 8·(m % 2)), so registers 0, 1 are the B
        // fragment of tokens 16n … 16n + 7 and 2, 3 that of the next 8.
        float s[BK / 8][4];
#pragma unroll
        for (int n = 0; n < BK / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
            for (int n = 0; n < BK / 16; ++n) {
                std::uint32_t b[4];
                ldmatrix_x4(b, K + (16 * n + (lane >> 4) * 8 + (lane & 7)) * LD + 16 * ks +
                                   ((lane >> 3) & 1) * 8);
                mma_16816(s[2 * n], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], b[0], b[1]);
                mma_16816(s[2 * n + 1], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], b[2], b[3]);
            }
        }
        // Masks: tokens past the context, and (causal) past each row's own position.
        const int token0 = j * BK + 2 * t;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int limit = p.causal ? min(pos[r], kv_end - 1) : kv_end - 1;
#pragma unroll
            for (int n = 0; n < BK / 8; ++n) {
                if (token0 + 8 * n > limit) s[n][2 * r] = -INFINITY;
                if (token0 + 8 * n + 1 > limit) s[n][2 * r + 1] = -INFINITY;
            }
        }
        // Online softmax per row over the quad's 4 lanes. Token 0 is in the first tile and
        // visible to every row, so each row's maximum is finite from the first tile on.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = -INFINITY;
#pragma unroll
            for (int n = 0; n < BK / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[r], mx);
            const float alpha = exp2f(m[r] - m_new);
            m[r] = m_new;
            float sum = 0.f;
#pragma unroll
            for (int n = 0; n < BK / 8; ++n) {
                s[n][2 * r] = exp2f(s[n][2 * r] - m_new);
                s[n][2 * r + 1] = exp2f(s[n][2 * r + 1] - m_new);
                sum += s[n][2 * r] + s[n][2 * r + 1];
            }
            l[r] = l[r] * alpha + sum;
#pragma unroll
            for (int d = 0; d < DTILES; ++d) {
                o[d][2 * r] *= alpha;
                o[d][2 * r + 1] *= alpha;
            }
        }
        // O += P V. The accumulators of token blocks 2k and 2k + 1 are, packed to fp16, the A
        // fragment of k-step k. V is [token][dim] row-major (B row-major: ldmatrix .trans);
        // matrix m = lane / 8 is (tokens + 8·(m % 2), dims + 8·(m / 2)).
#pragma unroll
        for (int k = 0; k < BK / 16; ++k) {
            const std::uint32_t a0 = pack_half2(s[2 * k][0], s[2 * k][1]);
            const std::uint32_t a1 = pack_half2(s[2 * k][2], s[2 * k][3]);
            const std::uint32_t a2 = pack_half2(s[2 * k + 1][0], s[2 * k + 1][1]);
            const std::uint32_t a3 = pack_half2(s[2 * k + 1][2], s[2 * k + 1][3]);
#pragma unroll
            for (int d = 0; d < HEAD_DIM / 16; ++d) {
                std::uint32_t b[4];
                ldmatrix_x4_trans(b, V + (16 * k + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD +
                                         16 * d + (lane >> 4) * 8);
                mma_16816(o[2 * d], a0, a1, a2, a3, b[0], b[1]);
                mma_16816(o[2 * d + 1], a0, a1, a2, a3, b[2], b[3]);
            }
        }
        __syncthreads();  // every warp is done with stage j % 2 before tile j + 2 lands there
    }

    // Normalize by the row sums (summed over the quad) and store this lane's columns.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int row = q0 + 16 * warp + g + 8 * r;
        if (row - q0 >= nq) continue;
        const float inv = 1.0f / sum;
        const std::size_t dst = (std::size_t(it.query_row + row) * p.n_heads + head) * HEAD_DIM;
#pragma unroll
        for (int d = 0; d < DTILES; ++d)
            gpu::store2(p.out, dst + std::size_t(8 * d + 2 * t),
                        make_float2(o[d][2 * r] * inv, o[d][2 * r + 1] * inv));
    }
}

/// Shared memory of prefill_tiles_kernel<HEAD_DIM>: the Q tile and two stages of K and V.
inline std::size_t prefill_tiles_smem(int head_dim) {
    return std::size_t(prefill_q_tile + 4 * prefill_kv_tile) * std::size_t(head_dim + 8) *
           sizeof(__half);
}

/// Launches one tiled prefill over `items` (already on the device, `n_items` of them, built by
/// the caller with dense rows and tile offsets; `kv_tiles` and `q_tiles` are the grid totals).
/// q, out and the shape come from `opt`-style arguments; the dense K/V come from ws.
template <class Codec>
void launch_prefill_tiles(const device::cache_view<Codec>& cache, const prefill_tile_item* items,
                          int n_items, int kv_tiles, int q_tiles, int dense_rows, int layer,
                          input_activations q, output_activations out,
                          const attention_params& opt, attention_workspace& ws,
                          cudaStream_t stream) {
    const int hd = cache.head_dim;
    const std::size_t half_count = std::size_t(cache.n_kv_heads) * std::size_t(dense_rows) * hd;
    __half* dense = ws.dense_kv(2 * half_count);
    const std::size_t gather_smem =
        std::size_t(gather_tile) *
        (std::size_t(cache.group_width()) + std::size_t(cache.decode_scratch_per_token)) *
        sizeof(float);
    gpu::allow_dynamic_smem(gather_dense_kernel<Codec>, gather_smem, ws.max_shared_bytes(),
                            "gather_dense_kernel");
    gpu::launch(gather_dense_kernel<Codec>,
                {gpu::checked_grid(kv_tiles, cache.groups_per_layer, 2, "gather_dense_kernel"),
                 dim3(gather_threads), gather_smem, stream, false},
                "gather_dense_kernel", cache, items, n_items, layer, dense_rows, dense,
                dense + half_count, opt.rope == rope_mode::on_read, opt.rope_cfg);

    prefill_tiles_params tp;
    tp.q = q;
    tp.out = out;
    tp.dense_k = dense;
    tp.dense_v = dense + half_count;
    tp.items = items;
    tp.n_items = n_items;
    tp.dense_rows = dense_rows;
    tp.n_heads = opt.n_heads;
    tp.gqa_ratio = opt.n_heads / cache.n_kv_heads;
    tp.scale_log2 = (opt.scale == 0.0f ? 1.0f / std::sqrt(float(hd)) : opt.scale) *
                    1.4426950408889634f;
    tp.causal = opt.causal;
    tp.rope = opt.rope == rope_mode::on_read;
    tp.rope_cfg = opt.rope_cfg;
    const std::size_t smem = prefill_tiles_smem(hd);
    dispatch_int<64, 128>(hd, [&]<int HD>() {
        gpu::allow_dynamic_smem(prefill_tiles_kernel<HD>, smem, ws.max_shared_bytes(),
                                "prefill_tiles_kernel");
        gpu::launch(prefill_tiles_kernel<HD>,
                    {gpu::checked_grid(q_tiles, opt.n_heads, 1, "prefill_tiles_kernel"),
                     dim3(prefill_threads), smem, stream, false},
                    "prefill_tiles_kernel", tp);
    });
}

}  // namespace kvcar::kernels::detail
