// kvcar/kernels/mma.cuh — the warp-level primitives kvcar's tensor-core kernels share: the
// m16n8k16 MMA, shared-memory fragment loads (ldmatrix), fp16 packing and asynchronous copies.
//
// Fragment layouts are PTX's (lane = 4·g + t): an m16n8k16 A fragment holds rows g and g + 8,
// columns 2t, 2t + 1 and 2t + 8, 2t + 9; a B fragment holds column g, rows 2t, 2t + 1 and
// 2t + 8, 2t + 9; the fp32 accumulator holds rows g and g + 8, columns 2t and 2t + 1.
// ldmatrix hands lane l row l / 4, elements 2(l % 4) and + 1 of each 8×8 fp16 matrix whose eight
// row addresses lanes 8i … 8i + 7 supply (the .trans form hands the transposed matrix), so
// "row-major A" and "B stored as Bᵀ row-major" load without it and "B row-major" loads with it.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/mma.cuh needs nvcc"
#endif

#include <cstdint>

#include <cuda_fp16.h>

namespace kvcar::kernels::detail {

/// D = A · B + D for one m16n8k16 tile: fp16 A (row-major, 4 registers) and B (column-major,
/// 2 registers), fp32 accumulators (4 registers), in the PTX fragment layouts.
__device__ __forceinline__ void mma_16816(float (&d)[4], std::uint32_t a0, std::uint32_t a1,
                                          std::uint32_t a2, std::uint32_t a3, std::uint32_t b0,
                                          std::uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/// Transposes the warp's 8×8 fp16 matrix held one register (row lane/4, columns 2·(lane%4) and
/// +1) per lane.
__device__ __forceinline__ std::uint32_t transpose_8x8(std::uint32_t x) {
    std::uint32_t y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}

/// Two floats → one register of two fp16 (round to nearest), `lo` in the low half.
__device__ __forceinline__ std::uint32_t pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&h);
}

/// Four int8 elements (one register) → two half2 registers of u · scale + offset (scale and
/// offset already include the codec's + ½). 1024 + (u + 128) is exact in fp16 (its mantissa
/// step is 1 there), the subtraction of 1152 is exact too, then one rounding in the fma.
__device__ __forceinline__ void dequant_int8x4(std::uint32_t raw, __half2 scale, __half2 offset,
                                               std::uint32_t& lo, std::uint32_t& hi) {
    const std::uint32_t biased = raw ^ 0x80808080u;  // u + 128 as unsigned bytes
    const std::uint32_t w0 = __byte_perm(biased, 0x64646464u, 0x4140);
    const std::uint32_t w1 = __byte_perm(biased, 0x64646464u, 0x4342);
    const __half2 magic = __float2half2_rn(1152.0f);
    const __half2 h0 = __hfma2(__hsub2(*reinterpret_cast<const __half2*>(&w0), magic), scale, offset);
    const __half2 h1 = __hfma2(__hsub2(*reinterpret_cast<const __half2*>(&w1), magic), scale, offset);
    lo = *reinterpret_cast<const std::uint32_t*>(&h0);
    hi = *reinterpret_cast<const std::uint32_t*>(&h1);
}

/// Four fp8 e4m3 elements (one register) → two half2 registers of each element's value / 256,
/// exact: e4m3 and binary16 differ in exponent bias by 8, so the sign moves to bit 15 and the
/// seven exponent and mantissa bits slide into place below it (subnormals included); the 2^8
/// goes into the caller's scale. The NaN codes 0x7f / 0xff become finite: callers read finite
/// records only.
__device__ __forceinline__ void widen_fp8x4(std::uint32_t raw, std::uint32_t& lo,
                                            std::uint32_t& hi) {
    const std::uint32_t w0 = __byte_perm(raw, 0u, 0x1404);  // byte k of raw → bits 8..15 of half k
    const std::uint32_t w1 = __byte_perm(raw, 0u, 0x3424);
    lo = (w0 & 0x80008000u) | ((w0 & 0x7f007f00u) >> 1);
    hi = (w1 & 0x80008000u) | ((w1 & 0x7f007f00u) >> 1);
}

/// Four 8×8 fp16 matrices from shared memory; this lane supplies the address of row lane % 8
/// of matrix lane / 8 (16 bytes, 16-byte aligned).
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* row) {
    const unsigned s = unsigned(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

/// ldmatrix_x4, each matrix transposed on the way.
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row) {
    const unsigned s = unsigned(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

/// Asynchronous global → shared copy of 16 bytes (both 16-byte aligned), bypassing L1.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    const unsigned s = unsigned(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
}
/// Asynchronous copy of 8 bytes (both 8-byte aligned).
__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
    const unsigned s = unsigned(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(src));
}
/// Asynchronous copy of 4 bytes (both 4-byte aligned).
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    const unsigned s = unsigned(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src));
}
/// Closes this thread's group of asynchronous copies (an empty group counts too).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
/// Waits until at most N of this thread's groups are in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
/// cp_async_wait for a run-time count (ring depths are run-time values); counts above 7 wait
/// for 7.
__device__ __forceinline__ void cp_async_wait_dyn(int pending) {
    switch (pending) {
        case 0: cp_async_wait<0>(); break;
        case 1: cp_async_wait<1>(); break;
        case 2: cp_async_wait<2>(); break;
        case 3: cp_async_wait<3>(); break;
        case 4: cp_async_wait<4>(); break;
        case 5: cp_async_wait<5>(); break;
        case 6: cp_async_wait<6>(); break;
        default: cp_async_wait<7>(); break;
    }
}

}  // namespace kvcar::kernels::detail
