// kvcar/kernels/decode/latent_tc_split.cuh — the split kernel of the tensor-core latent path:
// flash-decoding over a whole-layer latent, S = Qz·Zᵀ and P·Z_v by mma.sync from a cp.async ring
// (see kvcar/kernels/latent_decode_attention.cuh for the math and the schedule).
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/latent_tc_split.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>

#include "kvcar/kernels/decode/latent_tc_common.cuh"
#include "kvcar/kernels/mma.cuh"

namespace kvcar::kernels::detail::latent_tc {

/// One CTA of NW warps (8 or 16): split blockIdx.x of item blockIdx.y, all heads. MT: 16-row
/// head blocks (1, 2, 4); NB: 8-wide column blocks of the V latent each warp accumulates (even).
///
/// Per tile of 32 tokens, with three barriers:
///   scores   warp (token block n, slice s of NW / 2) multiplies Qz (ldmatrix from shared
///            memory) by its 16 tokens × the k-steps s, s + NW / 2, … of K; the slices' partial
///            scores meet in shared memory;
///   softmax  lane per token, warp w the heads w, w + NW, …: the online softmax's running max m
///            and sum l (registers), the tile's fp16 probabilities and the factor α that
///            rescales the accumulators;
///   P·V      warp w owns the V-latent columns 8·(w + NW·j) … + 8 for every head: the fp32
///            accumulators never leave registers, P (ldmatrix) and V (ldmatrix.trans) come from
///            shared memory, each V byte is read once.
/// The ring holds `stages` tiles, K and V in separate copy groups, and the next tile is requested
/// before this one is awaited, so a multiprocessor always has tiles in flight; V's arrival hides
/// behind the score product.
template <class Codec, int MT, int NB, int NW>
__global__ void __launch_bounds__(NW * 32, NW == 8 && two_ctas_per_sm(MT, NB) ? 2 : 1)
    split_kernel(split_params<Codec> p) {
    using E = typename device::codec_traits<Codec>::element;
    constexpr bool QUANT = device::codec_traits<Codec>::quantized;
    constexpr int NQP = 16 * MT;
    constexpr int NT = NW * 32;                 // threads
    constexpr int KSL = NW / token_blocks;      // d-slices of the score product
    static_assert(NQP % NW == 0, "every softmax warp owns the same number of heads");
    static_assert(NB % 2 == 0, "V column blocks are loaded in pairs");
    extern __shared__ __align__(128) unsigned char smem[];

    gpu::wait_for_prior_grids();  // the projected queries (launched with overlap)
    gpu::allow_dependent_grids();
    const int split = int(blockIdx.x), b = int(blockIdx.y);
    const int len = p.kv_lengths[b];
    const int begin = split * p.chunk;
    if (begin >= len) return;  // uniform across the block
    const int end = min(len, begin + p.chunk);
    const int n_tiles = (end - begin + tile - 1) / tile;
    const int seq = p.sequences[b];
    const int NQ = p.n_heads;
    const int S = p.stages;
    const auto& cache = p.cache;
    const int slot_k = cache.slot(p.layer, 0, kv_kind::key);
    const int slot_v = cache.slot(p.layer, 0, kv_kind::value);
    const Codec ck = cache.codecs[slot_k];
    const Codec cv = cache.codecs[slot_v];
    const page_view pk = cache.slots[slot_k];
    const page_view pv = cache.slots[slot_v];
    const int dk = int(ck.latent_width()), dv = int(cv.latent_width());
    const int dk16 = (dk + 15) / 16, dv16 = (dv + 15) / 16, dv8 = 2 * dv16;
    const int header_k = scale_offset_bytes(ck), header_v = scale_offset_bytes(cv);
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;

    const smem_layout L = make_layout(NQP, p.lat_pad, S, p.raw_ld, QUANT, KSL);
    __half* qz_s = reinterpret_cast<__half*>(smem + L.qz);
    unsigned char* ring = smem + L.ring;
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    __half* probs = reinterpret_cast<__half*>(smem + L.probs);
    float* bias_s = reinterpret_cast<float*>(smem + L.vectors);
    float* qsum_s = bias_s + NQP;
    float* alpha_s = qsum_s + NQP;
    float* unit_s = alpha_s + NQP;  // quantized V: the unit of each head's accumulators

    // --- set-up: Qz (fp16, zero rows beyond NQ), running statistics, zeroed tiles ------------
    {
        if constexpr (QUANT) {
            // Columns in the order quantized K fragments arrive in (raw_k_column): per 16
            // columns, the column pairs 0, 2, 4, 6, then 1, 3, 5, 7.
            const int blocks = p.lat_pad / 16;
            for (int idx = tid; idx < NQP * blocks; idx += NT) {
                const int h = idx / blocks, c = (idx - (idx / blocks) * blocks) * 16;
                uint4 lo = make_uint4(0u, 0u, 0u, 0u), hi = lo;
                if (h < NQ) {
                    const __half* src = p.qz + (std::size_t(b) * NQ + h) * p.qz_ld + c;
                    lo = *reinterpret_cast<const uint4*>(src);
                    hi = *reinterpret_cast<const uint4*>(src + 8);
                }
                *reinterpret_cast<uint4*>(qz_s + h * L.q_ld + c) = make_uint4(lo.x, lo.z, hi.x, hi.z);
                *reinterpret_cast<uint4*>(qz_s + h * L.q_ld + c + 8) =
                    make_uint4(lo.y, lo.w, hi.y, hi.w);
            }
        } else {
            const int pieces = p.lat_pad / 8;  // 16-byte pieces per row
            for (int idx = tid; idx < NQP * pieces; idx += NT) {
                const int h = idx / pieces, c = idx - (idx / pieces) * pieces;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (h < NQ)
                    v = *reinterpret_cast<const uint4*>(
                        p.qz + (std::size_t(b) * NQ + h) * p.qz_ld + std::size_t(c) * 8);
                *reinterpret_cast<uint4*>(qz_s + h * L.q_ld + c * 8) = v;
            }
        }
        for (int h = tid; h < NQP; h += NT) {
            bias_s[h] = h < NQ ? p.qbias[std::size_t(b) * NQ + h] : 0.0f;
            alpha_s[h] = 0.0f;
            unit_s[h] = 1.0f;
        }
        // Rows of padded heads stay zero: their MMA rows add nothing.
        for (int idx = tid; idx < NQP * L.p_ld / 2; idx += NT)
            reinterpret_cast<std::uint32_t*>(probs)[idx] = 0u;
        if constexpr (!QUANT) {
            // cp.async writes only the latent's columns of the rows a tile has: the padding
            // columns (multiplied by zero Qz columns, or dropped) and the rows past the end of a
            // split's last tile (multiplied by zero probabilities) must hold finite values.
            for (int idx = tid; idx < S * L.stage_bytes / 16; idx += NT)
                reinterpret_cast<uint4*>(ring)[idx] = make_uint4(0u, 0u, 0u, 0u);
        }
    }
    __syncthreads();
    if constexpr (QUANT) {
        // ΣQz of the fp16 Qz the score products use (zero rows and columns add nothing).
        for (int h = warp; h < NQP; h += NW) {
            float sum = 0.0f;
            for (int j = lane; j < p.lat_pad; j += 32) sum += __half2float(qz_s[h * L.q_ld + j]);
            sum = device::warp_sum(sum);
            if (lane == 0) qsum_s[h] = sum;
        }
        __syncthreads();
    }

    // The softmax warp w owns heads u · NW + w (u < HPW): its running max (uniform) and
    // per-lane partial sums stay in registers for the whole split.
    constexpr int HPW = NQP / NW;
    // Quantized V (see the softmax): c_run sums p · offset per lane.
    float m_run[HPW], l_run[HPW], c_run[HPW], bias_r[HPW], qsum_r[HPW];
#pragma unroll
    for (int u = 0; u < HPW; ++u) {
        m_run[u] = -INFINITY;
        l_run[u] = 0.0f;
        c_run[u] = 0.0f;
        bias_r[u] = bias_s[u * NW + warp];
        qsum_r[u] = QUANT ? qsum_s[u * NW + warp] : 0.0f;
    }

    // --- the tile stream: tile i's K rows, then its V rows, each one copy group ---------------
    // NT / 32 threads per row of the tile: one page lookup per row and thread (an integer
    // division and a dependent load — per 16-byte piece it cost as much as the copy), eight
    // consecutive 16-byte pieces per warp instruction and row.
    constexpr int row_threads = NT / tile;
    const int my_row = tid / row_threads, my_piece = tid % row_threads;
    // The walks of my_row's token through the K and V slots, one tile per issue.
    record_walk walk_k, walk_v;
    walk_k.start(pk, seq, begin + my_row, begin + my_row < end);
    walk_v.start(pv, seq, begin + my_row, begin + my_row < end);
    auto copy_rows = [&](const page_view& view, const record_walk& walk, int d, int t0, int n,
                         unsigned char* dst) {
        const int rb = int(view.record_bytes);
        if constexpr (QUANT) {
            // Whole records (elements, padding, scale, offset) in the widest aligned pieces.
            const int piece = rb % 16 == 0 ? 16 : rb % 8 == 0 ? 8 : 4;
            const int per_row = rb / piece;
            if (my_row < n) {
                const std::byte* src = walk.record(view);
                unsigned char* to = dst + my_row * p.raw_ld;
                for (int c = my_piece; c < per_row; c += row_threads) {
                    if (piece == 16) cp_async16(to + c * 16, src + c * 16);
                    else if (piece == 8) cp_async8(to + c * 8, src + c * 8);
                    else cp_async4(to + c * 4, src + c * 4);
                }
            }
        } else {
            __half* t = reinterpret_cast<__half*>(dst);
            if (d % 8 == 0 && rb % 16 == 0) {
                if (my_row < n) {
                    const std::byte* src = walk.record(view);
                    __half* to = t + my_row * L.t_ld;
                    for (int c = my_piece; c < d / 8; c += row_threads)
                        cp_async16(to + c * 8, src + std::size_t(c) * 16);
                }
            } else {
                // Unaligned widths: plain 2-byte loads (correct, not fast).
                for (int idx = tid; idx < n * d; idx += NT) {
                    const int r = idx / d, j = idx - (idx / d) * d;
                    const f16 e = reinterpret_cast<const f16*>(view.record(seq, t0 + r))[j];
                    t[r * L.t_ld + j] = __ushort_as_half(e.bits);
                }
            }
        }
    };
    // K and V tiles are issued in order, each once, each its own copy group, into the K and V
    // halves of ring stage i mod S. A half is reissued as soon as its last reader is done: V_i's
    // after the P·V of tile i (at the top of the next iteration), K_i's after the softmax of tile
    // i (quantized K's scales are read there), before P·V. So K_{i+S} is requested a P·V
    // earlier than a whole stage would allow; on one H100 a CTA of this kernel streamed one
    // 66 KB tile per ~3 µs (latent-chunk sweep, batch 1, 512 tokens in one split), latency-bound,
    // not bandwidth-bound. Every call commits one group, an empty one past the last tile, so that
    // the groups still pending always count the same: K_i is followed by 2S - 1 groups when
    // tile i starts, V_i by 2S - 2 when its P·V starts (the waits below).
    int k_stage = 0, v_stage = 0;
    auto issue_k = [&](int i) {
        if (i < n_tiles) {
            const int t0 = begin + i * tile;
            unsigned char* stage = ring + std::size_t(k_stage) * L.stage_bytes;
            k_stage = k_stage + 1 == S ? 0 : k_stage + 1;
            copy_rows(pk, walk_k, dk, t0, min(tile, end - t0), stage);
            walk_k.advance(pk, seq, tile, t0 + tile + my_row < end);
        }
        cp_async_commit();
    };
    auto issue_v = [&](int i) {
        if (i >= 0 && i < n_tiles) {
            const int t0 = begin + i * tile;
            unsigned char* stage = ring + std::size_t(v_stage) * L.stage_bytes + L.v_part;
            v_stage = v_stage + 1 == S ? 0 : v_stage + 1;
            copy_rows(pv, walk_v, dv, t0, min(tile, end - t0), stage);
            walk_v.advance(pv, seq, tile, t0 + tile + my_row < end);
        }
        cp_async_commit();
    };

    // Quantized records are read in place (the ring holds them raw): fragments take 4 bytes of
    // one record per lane and widen them to fp16 in registers, exactly (int8 q as q + ½, fp8 as
    // its value / 2^8, the 2^8 in `fold`) — no conversion pass, no fp16 copy of the tile, so
    // the ring has room for more stages. Scales and offsets stay per token in fp32.
    constexpr float fold = std::same_as<E, fp8_e4m3> ? 256.0f : 1.0f;

    float o[MT][NB][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NB; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[m][j][e] = 0.0f;

    // ldmatrix row addresses: A fragments (row-major [row][k]) take matrix i = lane / 8 at rows
    // 8·(i % 2) …, columns 8·(i / 2) …; K as Bᵀ (rows = tokens) takes tokens 8·(i / 2) … and
    // columns 8·(i % 2) …, giving b0, b1 of token blocks 0 and 1; V (rows = tokens, read
    // transposed) takes tokens 8·(i % 2) … of column block i / 2 of a pair.
    const int a_row = ((lane >> 3) & 1) * 8 + (lane & 7), a_col = (lane >> 4) * 8;
    const int kb_row = (lane >> 4) * 8 + (lane & 7), kb_col = ((lane >> 3) & 1) * 8;
    const int v_row = ((lane >> 3) & 1) * 8 + (lane & 7), v_pair = lane >> 4;

    // The order of the groups as if iterations -S … -1 had run: V_-1 (empty), K_0, V_0, K_1, …,
    // V_(S-2), K_(S-1).
    for (int j = 0; j < S; ++j) {
        issue_v(j - 1);
        issue_k(j);
    }
    int read_stage = 0;  // tile i's ring stage
    for (int i = 0; i < n_tiles; ++i) {
        __syncthreads();  // tile i - 1 is finished: its V half, the scores and probs are free
        issue_v(i + S - 1);
        const int t0 = begin + i * tile;
        const int n = min(tile, end - t0);
        const unsigned char* stage = ring + std::size_t(read_stage) * L.stage_bytes;
        read_stage = read_stage + 1 == S ? 0 : read_stage + 1;
        cp_async_wait_dyn(2 * S - 1);  // this thread's copies of K_i have landed
        __syncthreads();               // ... everyone's
        const __half* kt = reinterpret_cast<const __half*>(stage);
        const __half* vt = reinterpret_cast<const __half*>(stage + L.v_part);

        // S = Qz · K_tileᵀ, partial over this warp's slice of d.
        {
            const int nb = warp % token_blocks, ks = warp / token_blocks;
            float sacc[MT][2][4];
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int j = 0; j < 2; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) sacc[m][j][e] = 0.0f;
            for (int kk = ks; kk < dk16; kk += KSL) {
                std::uint32_t kb[4];
                if constexpr (QUANT) {
                    // Token nb·16 + g (+ 8), raw bytes 4·t4 … 4·t4 + 3 of this k-step: b0, b1
                    // of the fragment whose columns raw_k_column put there.
                    const unsigned char* r = stage + (nb * 16 + g) * p.raw_ld + kk * 16 + 4 * t4;
                    widen_elements4<E>(*reinterpret_cast<const std::uint32_t*>(r), kb[0], kb[1]);
                    widen_elements4<E>(*reinterpret_cast<const std::uint32_t*>(r + 8 * p.raw_ld),
                                       kb[2], kb[3]);
                } else {
                    ldmatrix_x4(kb, kt + (nb * 16 + kb_row) * L.t_ld + kk * 16 + kb_col);
                }
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    std::uint32_t a[4];
                    ldmatrix_x4(a, qz_s + (m * 16 + a_row) * L.q_ld + kk * 16 + a_col);
                    mma_16816(sacc[m][0], a[0], a[1], a[2], a[3], kb[0], kb[1]);
                    mma_16816(sacc[m][1], a[0], a[1], a[2], a[3], kb[2], kb[3]);
                }
            }
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    float* r0 = scores + (ks * NQP + m * 16 + g) * L.s_ld + nb * 16 + j * 8 + 2 * t4;
                    *reinterpret_cast<float2*>(r0) = make_float2(sacc[m][j][0], sacc[m][j][1]);
                    *reinterpret_cast<float2*>(r0 + 8 * L.s_ld) =
                        make_float2(sacc[m][j][2], sacc[m][j][3]);
                }
        }
        cp_async_wait_dyn(2 * S - 2);  // V_i has landed (this thread's copies)
        __syncthreads();               // scores complete; everyone's V_i has landed

        // Online softmax over the tile: lane per token, the warp's HPW heads side by side so
        // their reductions overlap. The running max lives in registers (uniform over the warp),
        // the running sum as per-lane partials reduced once at the end: per head and tile, one
        // warp reduction (redux.sync on the float's ordered-integer image) and one exponential.
        //
        // Quantized V (v = s_t·u + o_t per token, u exact in fp16): Σ p v = Σ (p s_t) u
        // + Σ p o_t, so the MMA takes w = p·s_t as its probability and the offsets become one
        // per-head sum: no dequantization pass over V. w is stored relative to the tile's largest
        // w of the head (its new unit), so the terms that matter are normal fp16 however small
        // the scales; the accumulators change unit with α' = α · unit_old / unit_new.
        {
            float x[HPW];
            float k_scale = 0.0f, k_offset = 0.0f, v_scale = 0.0f, v_offset = 0.0f;
            if constexpr (QUANT) {
                if (lane < n) {
                    const unsigned char* krow = stage + lane * p.raw_ld + header_k;
                    const unsigned char* vrow = stage + L.v_part + lane * p.raw_ld + header_v;
                    k_scale = *reinterpret_cast<const float*>(krow) * fold;
                    k_offset = *reinterpret_cast<const float*>(krow + 4);
                    v_scale = *reinterpret_cast<const float*>(vrow) * fold;  // >= 0
                    v_offset = *reinterpret_cast<const float*>(vrow + 4);
                }
            }
#pragma unroll
            for (int u = 0; u < HPW; ++u) {
                const int h = u * NW + warp;
                x[u] = -INFINITY;
                if (h < NQ && lane < n) {
                    float acc = 0.0f;
#pragma unroll
                    for (int ks = 0; ks < KSL; ++ks)
                        acc += scores[(ks * NQP + h) * L.s_ld + lane];
                    if constexpr (QUANT) acc = acc * k_scale + k_offset * qsum_r[u];
                    x[u] = (acc + bias_r[u]) * p.scale;
                }
            }
#pragma unroll
            for (int u = 0; u < HPW; ++u) {
                const int h = u * NW + warp;
                if (h >= NQ) continue;  // warp-uniform; padded heads' probabilities stay zero
                const float m_new = fmaxf(m_run[u], warp_max_float(x[u]));
                const float pe = lane < n ? __expf(x[u] - m_new) : 0.0f;
                const __half e = __float2half_rn(pe);
                const float alpha = __expf(m_run[u] - m_new);  // 0 on the first tile
                l_run[u] = l_run[u] * alpha + __half2float(e);  // the weights the MMA uses
                m_run[u] = m_new;
                if constexpr (QUANT) {
                    const float w = pe * v_scale;
                    const float w_max = warp_max_float(w);
                    const float old_unit = unit_s[h];  // only this warp writes it
                    const float unit = w_max > 0.0f ? w_max : old_unit;  // all-zero: keep
                    probs[h * L.p_ld + lane] = __float2half_rn(w * (1.0f / unit));
                    c_run[u] = c_run[u] * alpha + __half2float(e) * v_offset;
                    __syncwarp();
                    if (lane == 0) {
                        alpha_s[h] = alpha * (old_unit / unit);
                        unit_s[h] = unit;
                    }
                } else {
                    probs[h * L.p_ld + lane] = e;
                    if (lane == 0) alpha_s[h] = alpha;
                }
            }
        }
        __syncthreads();  // probabilities and α written; nobody reads K_i any more
        issue_k(i + S);

        // O = α·O + P · V_tile over this warp's column blocks.
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            const float a0 = alpha_s[m * 16 + g], a1 = alpha_s[m * 16 + g + 8];
#pragma unroll
            for (int j = 0; j < NB; ++j) {
                o[m][j][0] *= a0;
                o[m][j][1] *= a0;
                o[m][j][2] *= a1;
                o[m][j][3] *= a1;
            }
        }
#pragma unroll
        for (int kk = 0; kk < token_blocks; ++kk) {
            std::uint32_t a[MT][4];
#pragma unroll
            for (int m = 0; m < MT; ++m)
                ldmatrix_x4(a[m], probs + (m * 16 + a_row) * L.p_ld + kk * 16 + a_col);
            if constexpr (QUANT) {
                // Column group q = 16 raw columns: 4 bytes of tokens g and g + 8 per lane,
                // widened, are the rows of four 8×8 matrices (tokens × columns 4·t4 + {0, 1}
                // and 4·t4 + {2, 3}); movmatrix turns them into the B fragments of the two
                // 8-column blocks j, j + 1 (raw_v_column maps them back).
#pragma unroll
                for (int j = 0; j < NB; j += 2) {
                    const int q = warp + NW * (j / 2);
                    if (q >= dv16) break;  // warp-uniform
                    const unsigned char* r =
                        stage + L.v_part + (kk * 16 + g) * p.raw_ld + q * 16 + 4 * t4;
                    std::uint32_t lo0, hi0, lo1, hi1;
                    widen_elements4<E>(*reinterpret_cast<const std::uint32_t*>(r), lo0, hi0);
                    widen_elements4<E>(*reinterpret_cast<const std::uint32_t*>(r + 8 * p.raw_ld),
                                       lo1, hi1);
                    const std::uint32_t b_lo0 = transpose_8x8(lo0), b_lo1 = transpose_8x8(lo1);
                    const std::uint32_t b_hi0 = transpose_8x8(hi0), b_hi1 = transpose_8x8(hi1);
#pragma unroll
                    for (int m = 0; m < MT; ++m) {
                        mma_16816(o[m][j], a[m][0], a[m][1], a[m][2], a[m][3], b_lo0, b_lo1);
                        mma_16816(o[m][j + 1], a[m][0], a[m][1], a[m][2], a[m][3], b_hi0, b_hi1);
                    }
                }
            } else {
#pragma unroll
                for (int j = 0; j < NB; j += 2) {
                    const int c0 = warp + NW * j, c1 = c0 + NW;
                    if (c0 >= dv8) break;  // warp-uniform
                    const int c = v_pair ? (c1 < dv8 ? c1 : c0) : c0;
                    std::uint32_t vb[4];
                    ldmatrix_x4_trans(vb, vt + (kk * 16 + v_row) * L.t_ld + c * 8);
#pragma unroll
                    for (int m = 0; m < MT; ++m) {
                        mma_16816(o[m][j], a[m][0], a[m][1], a[m][2], a[m][3], vb[0], vb[1]);
                        if (c1 < dv8)
                            mma_16816(o[m][j + 1], a[m][0], a[m][1], a[m][2], a[m][3], vb[2],
                                      vb[3]);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();

    // --- the split's unnormalized accumulators, m and l, for the combine kernel --------------
    // Quantized V: back from each head's unit, plus its offset sum, which the softmax warps
    // hand over in shared memory (ΣQz's slots, read only at set-up).
    float* offset_sum_s = qsum_s;
    if constexpr (QUANT) {
#pragma unroll
        for (int u = 0; u < HPW; ++u) {
            const float c = device::warp_sum(c_run[u]);
            if (lane == 0) offset_sum_s[u * NW + warp] = c;
        }
        __syncthreads();
    }
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            // Quantized: column group warp + NW·(j / 2), block j % 2 held raw columns
            // 4·t4 + 2·(j % 2) and + 1 (see P·V).
            const int col = QUANT ? (warp + NW * (j / 2)) * 16 + 4 * t4 + 2 * (j % 2)
                                  : (warp + NW * j) * 8 + 2 * t4;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int h = m * 16 + g + 8 * half;
                if (h >= NQ) continue;
                float* dst = p.part_acc +
                             ((std::size_t(b) * NQ + h) * p.max_splits + split) * p.acc_stride;
                const float unit = QUANT ? unit_s[h] : 1.0f;
                const float add = QUANT ? offset_sum_s[h] : 0.0f;
                if (col < dv) dst[col] = o[m][j][2 * half] * unit + add;
                if (col + 1 < dv) dst[col + 1] = o[m][j][2 * half + 1] * unit + add;
            }
        }
#pragma unroll
    for (int u = 0; u < HPW; ++u) {
        const int h = u * NW + warp;
        if (h >= NQ) continue;
        const float l = device::warp_sum(l_run[u]);
        if (lane == 0) {
            const std::size_t row = std::size_t(b) * NQ + h;
            p.part_ml[(row * p.max_splits + split) * 2] = m_run[u];
            p.part_ml[(row * p.max_splits + split) * 2 + 1] = l;
        }
    }
}

}  // namespace kvcar::kernels::detail::latent_tc
