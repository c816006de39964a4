// Device helpers of the chunkwise kernels (the lowest layer): warp-level tile products on tensor
// cores, an exact-fp32 SIMT twin of the same products, asynchronous tile loads into shared memory,
// element conversions and warp reductions.
//
// Every product accumulates into the mma.sync m16n8k16 accumulator layout, also on the fp32 path,
// so the stages above never care which path ran. Lane = 4*g + t (g = lane/4, t = lane%4) holds, for
// each 16x8 tile nt of a warp's 16-row block:
//   acc[nt][0] = (row g,   col 8nt+2t)   acc[nt][1] = (row g,   col 8nt+2t+1)
//   acc[nt][2] = (row g+8, col 8nt+2t)   acc[nt][3] = (row g+8, col 8nt+2t+1)
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"

namespace mlstm::cuda::chunkwise {

// How an operand tile lies in shared memory (element (row, col) of the logical operand):
//   A (m x k): kARow  a(m,k) = p[m*ld + k]       kACol  a(m,k) = p[k*ld + m]
//   B (k x n): kBNK   b(k,n) = p[n*ld + k]       kBKN   b(k,n) = p[k*ld + n]
//              kNKf32: like kNK but read from fp32 storage (the state), rounded to the operand type;
//              kNKf32Split: the same, as the sum of two rounded parts (hi + lo), for fp32-level accuracy
//              at twice the tensor-core work.
enum class AKind { kRow, kCol };
enum class BKind { kNK, kKN, kNKf32, kNKf32Split };

// ---- conversions ---------------------------------------------------------------------------------

// Two floats as one 32-bit register of packed 16-bit values (low half = first).
template <typename Elem>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The two floats a packed register holds.
template <typename Elem>
__device__ __forceinline__ float2 unpack2(uint32_t v) {
  if constexpr (std::is_same_v<Elem, __nv_bfloat16>) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&v));
  } else {
    return __half22float2(*reinterpret_cast<__half2*>(&v));
  }
}

// x as the element type holds it.
template <typename Elem>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<Elem>(x));
}

// The A operand (m16n8k16) made of accumulator n-tiles n0, n0 + 1 of a 16-row block (a tile pair is
// exactly an A fragment), rounded to the element type; with kSplit also the rounding remainder as a
// second operand (hi + lo: the pair of products keeps fp32 accuracy). n0 must be a compile-time index
// after unrolling, or acc leaves registers.
template <typename Elem, bool kSplit, int N>
__device__ __forceinline__ void accumulator_fragment(const float (&acc)[N][4], int n0, uint32_t (&hi)[4],
                                                     uint32_t (&lo)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // register i: rows g (i even) or g + 8 of tile n0 + i / 2
    const float x0 = acc[n0 + i / 2][2 * (i % 2)], x1 = acc[n0 + i / 2][2 * (i % 2) + 1];
    hi[i] = pack2<Elem>(x0, x1);
    if constexpr (kSplit) {
      const float2 r = unpack2<Elem>(hi[i]);
      lo[i] = pack2<Elem>(x0 - r.x, x1 - r.y);
    }
  }
}

// Two adjacent elements, as one access when the address allows it (strided views may not).
template <typename Elem>
__device__ __forceinline__ bool pair_aligned(const Elem* p) {
  return (reinterpret_cast<uintptr_t>(p) & (2 * sizeof(Elem) - 1)) == 0;
}
template <typename Elem>
__device__ __forceinline__ void store2(Elem* dst, float lo, float hi) {
  if (!pair_aligned(dst)) {
    dst[0] = from_float<Elem>(lo);
    dst[1] = from_float<Elem>(hi);
  } else if constexpr (sizeof(Elem) == 2) {
    *reinterpret_cast<uint32_t*>(dst) = pack2<Elem>(lo, hi);
  } else {
    *reinterpret_cast<float2*>(dst) = make_float2(lo, hi);
  }
}
template <typename Elem>
__device__ __forceinline__ float2 load2(const Elem* src) {
  if constexpr (sizeof(Elem) == 4) {
    if (pair_aligned(src)) return *reinterpret_cast<const float2*>(src);
  }
  return make_float2(to_float(src[0]), to_float(src[1]));
}

// ---- PTX: ldmatrix, mma.sync, cp.async ------------------------------------------------------------
// (A host emulation of these few primitives can stand in for them when the macro is defined, so the
// kernels can be stepped through on a machine without a GPU during development.)
#if !defined(MLSTM_CHUNKWISE_HOST_EMULATION)

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane l gives the address of row l%8 of matrix l/8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
// Two matrices; lanes 0-15 give the row addresses.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(row)));
}

// d += a * b for one 16x8x16 tile, fp32 accumulators.
template <typename Elem>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<Elem, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// 16 bytes global -> shared without passing through registers; `valid == false` writes zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes));
}
// 8 or 4 bytes (per-token scalars, whose rows need not be 16-byte aligned); `valid == false` writes zeros.
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 8 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }

#define MLSTM_CHUNKWISE_LAUNCH(kernel, grid, block, smem, stream, params) \
  kernel<<<(grid), (block), (smem), (stream)>>>(params)

__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char chunkwise_smem[];
  return chunkwise_smem;
}

#endif  // !MLSTM_CHUNKWISE_HOST_EMULATION

// ---- warp reductions -------------------------------------------------------------------------------

// Sum over the four lanes of a quad (the lanes that share an accumulator row).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// Sum over lanes that differ only in the bits of g (lane / 4): the 8 rows of an accumulator tile.
__device__ __forceinline__ float row_group_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  v += __shfl_xor_sync(0xffffffffu, v, 8);
  v += __shfl_xor_sync(0xffffffffu, v, 16);
  return v;
}

// ---- warp tile products -------------------------------------------------------------------------------

// acc[nt] += A (16 x 16*KS) * B (16*KS x 8*NT). Every bound is a compile-time constant, so the
// loops unroll completely and no lane tests a tile count at run time.
// `a` points at the warp's block origin (m0, k0), `b` at (k0, n0), both in shared memory.
template <typename Elem, int NT, int KS, AKind kA, BKind kB>
__device__ __forceinline__ void warp_mma(float (&acc)[NT][4], const Elem* a, int lda, const void* b, int ldb) {
  const int lane = threadIdx.x & 31;
  if constexpr (std::is_same_v<Elem, float>) {
    // Exact fp32: each lane forms its own accumulator elements with FFMA.
    const float* bf = static_cast<const float*>(b);
    const int g = lane >> 2, t = lane & 3;
#pragma unroll 4
    for (int k = 0; k < 16 * KS; ++k) {
      const float a_lo = kA == AKind::kRow ? a[g * lda + k] : a[k * lda + g];
      const float a_hi = kA == AKind::kRow ? a[(g + 8) * lda + k] : a[k * lda + g + 8];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int n = nt * 8 + 2 * t;
        float b0, b1;
        if constexpr (kB == BKind::kKN) {
          b0 = bf[k * ldb + n];
          b1 = bf[k * ldb + n + 1];
        } else {
          b0 = bf[n * ldb + k];
          b1 = bf[(n + 1) * ldb + k];
        }
        acc[nt][0] = fmaf(a_lo, b0, acc[nt][0]);
        acc[nt][1] = fmaf(a_lo, b1, acc[nt][1]);
        acc[nt][2] = fmaf(a_hi, b0, acc[nt][2]);
        acc[nt][3] = fmaf(a_hi, b1, acc[nt][3]);
      }
    }
  } else {
    const int q = lane >> 3, r = lane & 7;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t af[4];
      if constexpr (kA == AKind::kRow) {
        ldmatrix_x4(af, a + (lane & 15) * lda + ks * 16 + (lane >> 4) * 8);
      } else {
        ldmatrix_x4_trans(af, a + (ks * 16 + r + (q >> 1) * 8) * lda + (q & 1) * 8);
      }
      if constexpr (kB == BKind::kNKf32 || kB == BKind::kNKf32Split) {
        const float* bs = static_cast<const float*>(b);
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float* row = bs + (nt * 8 + g) * ldb + ks * 16 + 2 * t;
          const float2 k0 = *reinterpret_cast<const float2*>(row);      // k = 2t, 2t+1
          const float2 k8 = *reinterpret_cast<const float2*>(row + 8);  // k = 2t+8, 2t+9
          const uint32_t b0 = pack2<Elem>(k0.x, k0.y), b1 = pack2<Elem>(k8.x, k8.y);
          mma16816<Elem>(acc[nt], af, b0, b1);
          if constexpr (kB == BKind::kNKf32Split) {
            const float2 r0 = unpack2<Elem>(b0), r8 = unpack2<Elem>(b1);
            mma16816<Elem>(acc[nt], af, pack2<Elem>(k0.x - r0.x, k0.y - r0.y), pack2<Elem>(k8.x - r8.x, k8.y - r8.y));
          }
        }
      } else {
        const Elem* bs = static_cast<const Elem*>(b);
#pragma unroll
        for (int nt = 0; nt + 1 < NT; nt += 2) {
          uint32_t bf[4];
          if constexpr (kB == BKind::kNK) {
            ldmatrix_x4(bf, bs + (nt * 8 + r + (q >> 1) * 8) * ldb + ks * 16 + (q & 1) * 8);
          } else {
            ldmatrix_x4_trans(bf, bs + (ks * 16 + r + (q & 1) * 8) * ldb + nt * 8 + (q >> 1) * 8);
          }
          mma16816<Elem>(acc[nt], af, bf[0], bf[1]);
          mma16816<Elem>(acc[nt + 1], af, bf[2], bf[3]);
        }
        if constexpr (NT % 2 == 1) {
          constexpr int nt = NT - 1;
          uint32_t bf[2];
          const int l = lane & 15, qq = l >> 3, rr = l & 7;
          if constexpr (kB == BKind::kNK) {
            ldmatrix_x2(bf, bs + (nt * 8 + rr) * ldb + ks * 16 + qq * 8);
          } else {
            ldmatrix_x2_trans(bf, bs + (ks * 16 + rr + qq * 8) * ldb + nt * 8);
          }
          mma16816<Elem>(acc[nt], af, bf[0], bf[1]);
        }
      }
    }
  }
}

template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
}

// ---- tile loads ----------------------------------------------------------------------------------------

// Issues the loads of a kRows x kCols tile into shared memory (row stride lds elements) by kThreads
// threads: element (r, c) = src[r*ld_src + c] for r < rows_valid and c < cols_valid, else 0. kCols
// and cols_valid are multiples of 16 bytes. With `vec` (16-byte aligned rows) the copies are
// asynchronous (cp.async, completed by cp_async_wait); otherwise they are plain loads and stores.
template <typename Elem, int kRows, int kCols, int kThreadCount>
__device__ __forceinline__ void load_tile(Elem* dst, int lds, const Elem* src, int64_t ld_src, int rows_valid,
                                          int cols_valid, bool vec, int tid) {
  constexpr int kPer = 16 / sizeof(Elem);
  constexpr int kChunksPerRow = kCols / kPer;
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kCols % kPer == 0, "tile rows are whole 16-byte chunks");
  if (vec) {
#pragma unroll
    for (int ci = tid; ci < kChunks; ci += kThreadCount) {
      const int r = ci / kChunksPerRow, c = (ci % kChunksPerRow) * kPer;
      const bool valid = r < rows_valid && c < cols_valid;
      cp_async16(dst + r * lds + c, valid ? src + r * ld_src + c : src, valid);
    }
  } else {
    for (int ci = tid; ci < kChunks; ci += kThreadCount) {
      const int r = ci / kChunksPerRow, c = (ci % kChunksPerRow) * kPer;
      const bool valid = r < rows_valid && c < cols_valid;
#pragma unroll
      for (int e = 0; e < kPer; ++e) dst[r * lds + c + e] = valid ? src[r * ld_src + c + e] : from_float<Elem>(0.f);
    }
  }
}

// A gate value of any float dtype as fp32.
__device__ __forceinline__ float load_gate(const void* p, mlstm_dtype dtype, int64_t offset) {
  switch (dtype) {
    case MLSTM_FLOAT16: return to_float(static_cast<const __half*>(p)[offset]);
    case MLSTM_BFLOAT16: return to_float(static_cast<const __nv_bfloat16*>(p)[offset]);
    default: return static_cast<const float*>(p)[offset];
  }
}

__device__ __forceinline__ void store_gate(void* p, mlstm_dtype dtype, int64_t offset, float x) {
  switch (dtype) {
    case MLSTM_FLOAT16: static_cast<__half*>(p)[offset] = __float2half_rn(x); break;
    case MLSTM_BFLOAT16: static_cast<__nv_bfloat16*>(p)[offset] = __float2bfloat16_rn(x); break;
    default: static_cast<float*>(p)[offset] = x; break;
  }
}

// Tokens of the chunk starting at t0 (kT, or fewer in the last chunk).
__device__ __forceinline__ int chunk_len(int64_t S, int64_t t0, int T) {
  const int64_t r = S - t0;
  return r < T ? int(r) : T;
}

// log(sigmoid(x)) without overflow.
__device__ __forceinline__ float logsigmoid(float x) { return fminf(x, 0.f) - log1pf(expf(-fabsf(x))); }

}  // namespace mlstm::cuda::chunkwise
