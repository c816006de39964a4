// Device helpers of the parallel kernels: shared-memory tile layouts, asynchronous copies,
// ldmatrix + mma.sync (m16n8k16, sm_80+) for 16-bit inputs, and fp32 SIMT products that produce
// the same per-thread accumulator layout so that the gate arithmetic is shared by both paths.
//
// Accumulator layout of a warp's 16 x 8 block (the mma.sync "C" fragment), lane = 4 g + tq:
//   c[0] = (row g, col 2 tq)   c[1] = (row g, col 2 tq + 1)
//   c[2] = (row g + 8, col 2 tq)   c[3] = (row g + 8, col 2 tq + 1)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

namespace mlstm::cuda::parallel {

constexpr int kTile = 32;    // columns (keys or queries) per tile; also the gate-table granule
constexpr int kChunk = 128;  // columns of a head dimension held per shared-memory chunk
constexpr float kLog2e = 1.4426950408889634f;

// Byte layout of one chunk row in shared memory: kChunk elements.
//  16-bit: 256 bytes, the 16-byte units XOR-swizzled by (row & 7) so that ldmatrix reads of eight
//          consecutive rows at one logical column hit eight different bank groups.
//  fp32:   528 bytes (16 bytes of padding) so that SIMT reads of rows g = 0..7 fall in
//          different banks.
template <typename T>
struct ChunkLayout {
  static constexpr int kRowBytes = sizeof(T) == 2 ? kChunk * 2 : kChunk * 4 + 16;
  static constexpr int kUnitElems = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte unit
  static constexpr int kUnitsPerRow = kChunk / kUnitElems;

  // Byte offset of element (r, c) inside a chunk; c is a column inside the chunk.
  __device__ __forceinline__ static uint32_t offset(int r, int c) {
    if constexpr (sizeof(T) == 2) {
      return static_cast<uint32_t>(r * kRowBytes + ((((c >> 3) ^ (r & 7)) << 4) | ((c & 7) << 1)));
    } else {
      return static_cast<uint32_t>(r * kRowBytes + c * 4);
    }
  }

  // 16-bit ldmatrix addressing split into a per-lane part, computed once, and a per-fragment part
  // that is one XOR and one add with constants (so the compiler keeps 4 offsets per operand in
  // registers instead of one per fragment):
  //   offset(row0 + row_lane, 16 k + 8 unit_lane) == at(lane_part(row_lane, unit_lane), row0, k)
  // for row0 a multiple of 8, k = 0..7, unit_lane in {0, 1}. With u = 2 k + unit_lane the swizzled
  // unit is u ^ (r & 7): bit 0 is unit_lane ^ r, bits 1-2 are (k & 3) ^ (r >> 1 & 3), bit 3 is k >> 2.
  __device__ __forceinline__ static uint32_t lane_part(int row_lane, int unit_lane) {
    return static_cast<uint32_t>(row_lane * kRowBytes + (((unit_lane ^ row_lane) & 1) << 4) + (((row_lane >> 1) & 3) << 5));
  }
  __device__ __forceinline__ static uint32_t at(uint32_t lane, int row0, int k) {
    return static_cast<uint32_t>(row0 * kRowBytes) + ((lane ^ static_cast<uint32_t>((k & 3) << 5)) + static_cast<uint32_t>((k >> 2) << 7));
  }
};

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- asynchronous copies ------------------------------------------------------------------------

// 16 bytes global -> shared; with valid == false the destination is zero-filled and src not read.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// The same 16 bytes by ordinary loads, for operands whose pointer or strides are not 16-byte
// aligned (views): element by element, zero-filled when invalid.
template <typename T>
__device__ __forceinline__ void copy_16_sync(uint32_t dst, const T* src, bool valid) {
  uint32_t w[4] = {0u, 0u, 0u, 0u};
  if (valid) {
    if constexpr (sizeof(T) == 2) {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
#pragma unroll
      for (int e = 0; e < 4; ++e) w[e] = uint32_t(s[2 * e]) | (uint32_t(s[2 * e + 1]) << 16);
    } else {
      const uint32_t* s = reinterpret_cast<const uint32_t*>(src);
#pragma unroll
      for (int e = 0; e < 4; ++e) w[e] = s[e];
    }
  }
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]));
}

// ---- tensor-core fragments (16-bit inputs) ------------------------------------------------------

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a b for one 16 x 8 x 16 block, fp32 accumulation.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two fp32 values as one register of two 16-bit values (lo in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// 2^x with the hardware approximation (relative error ~2^-22); 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace mlstm::cuda::parallel
