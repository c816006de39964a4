// The tile kernel of the parallel form: one kernel template, four passes (a template parameter, so
// each instantiation carries only its own elementwise map and epilogue), FlashAttention-style tiling.
//
// Every pass has the same shape. A block owns kRows rows of a "row" operand X and walks the
// column tiles (kTile = 32 columns) on its side of the causal diagonal. Per column tile:
//   T   = X Yᵀ                               scores, (kRows, kTile), fp32 accumulation
//   Ds  = exp2(row_term + E + col_term)      the stabilised gate matrix D' (scale 1/sqrt(DHQK) folded
//                                            in), masked to s <= t on the diagonal granule
//   Pv  = pass-specific elementwise map of T and Ds
//   Acc += Pv Z                              (kRows, 128) output slice, fp32 accumulation
// and the epilogue writes Acc. With q̂ = q / sqrt(DHQK), d_t = max(|den_t|, exp(-m_t)) + eps:
//   forward  rows = queries t, cols = keys s:   X = q,  Y = k,  Z = v,   Pv = T Ds = C̃,
//            den_t = Σ_s C̃_{t,s},  h_t = Acc_t / d_t
//   grad q   rows = queries:   X = dh, Y = v,  Z = k,   Pv = (T + σ_t) Ds / d_t
//   grad k   rows = keys s, cols = queries t:   X = v,  Y = dh, Z = q,   Pv = (T + σ_t) Ds / d_t
//   grad v   rows = keys:      X = k,  Y = q,  Z = dh,  Pv = T Ds / d_t
// (σ_t = -[|den_t| >= exp(-m_t)] sign(den_t) (dh_t.h_t), the normaliser path of the exact gradient;
// 1/d_t is folded into the query's exponent term). The grad q and grad k passes also write the
// row dots q_t.dq_t and k_s.dk_s in fp32 for the gate gradients.
//
// The gate matrix is never formed: the exponent of element (t, s) is the sum of a per-row term,
// a per-column term and a per-(warp, tile) gap term E (see parallel_gates.cuh), and the stabiliser
// m_t is known before the walk, so no running max or rescaling is needed. Only a warp's diagonal
// tile is masked; the forward takes the tiles below it as an outer product of a row factor and a
// column factor (gate_tile_factored: one ex2 per row instead of one per element), the backward
// passes keep one ex2 per element (grad q and grad k must round identically).
//
// Data movement: the block's X rows stay in shared memory for the whole walk; Y and Z arrive in
// chunks of (kTile rows, 128 columns) through a ring of kStages cp.async buffers, together with the
// column's gate terms. 16-bit inputs: 4 warps of 32 rows (two 16-row blocks share every B
// fragment), mma.sync m16n8k16 with ldmatrix, the elementwise result repacked in registers as the
// A operand of the second product; a full 128-column chunk runs its 16-column steps without
// guards so that ldmatrix overlaps the mma of earlier steps (for the scores product from sm_90 on:
// sm_80 would spill). fp32 inputs: 4 warps of 16 rows, exact fp32 FFMA products laid out like the
// mma accumulators, the second product's operand staged through shared memory.
#pragma once

#include <math.h>
#include <stdint.h>

#include "cuda/common.cuh"
#include "cuda/parallel_warp.cuh"

namespace mlstm::cuda::parallel {

enum class Pass : int32_t { kForward = 0, kGradQ = 1, kGradK = 2, kGradV = 3 };

// A (B, NH, S, D) operand.
struct Operand {
  const void* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_s = 0;
  int32_t D = 0;
};

struct TileParams {
  int64_t NH = 0, S = 0, S_pad = 0, BH = 0;
  int32_t NT = 0;           // granules: ceil(S / kTile)
  int32_t n_row_tiles = 0;  // ceil(S / kRows)
  int32_t n_slices = 0;     // ceil(Z.D / kChunk): output column slices, one per block
  Operand x, y, z;
  Operand dot;              // grad q: q, grad k: k (the partner of the row dot); else absent
  void* out = nullptr;      // (B, NH, S, Z.D)
  int64_t out_stride_b = 0, out_stride_h = 0, out_stride_s = 0;
  const float* row_term = nullptr;   // (B*NH, S_pad)
  const float* row_add = nullptr;    // grad q: σ_t
  const float* col_term = nullptr;   // (B*NH, S_pad)
  const float* col_add = nullptr;    // grad k: σ_t
  const float* col_factor = nullptr; // forward: (B*NH, S_pad) 2^(c_s - Mc_J(s)), see gate_tile_factored
  const float* cmax = nullptr;       // forward: (B*NH, NT) Mc_J = max_{s in J} c_s
  const float* gsum = nullptr;       // (B*NH, NT) granule totals of log2 f̃
  const float* m2 = nullptr;         // forward: (B*NH, S) stabiliser, log2 units
  float* den = nullptr;              // forward: (B*NH, S) written by slice 0
  float* row_dot = nullptr;          // grad q / grad k: (n_slices, B*NH, S_pad)
  float eps = 0.0f;
  bool vec_ok = true;                // every X/Y/Z pointer and stride is 16-byte aligned
};

template <typename T>
struct TileConfig {
  using Layout = ChunkLayout<T>;
  static constexpr bool kTensorCores = sizeof(T) == 2;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowBlocks = kTensorCores ? 2 : 1;  // 16-row blocks per warp
  static constexpr int kWarpRows = 16 * kRowBlocks;
  static constexpr int kRows = kWarps * kWarpRows;
  static_assert(kTile % kWarpRows == 0, "a warp's rows lie in one granule: it has one diagonal tile");
  static constexpr int kStages = kTensorCores ? 4 : 2;
  // Full chunks run the scores product's 16-column steps without guards (warp_scores_mma). Not on
  // sm_80: there ptxas hoists the ldmatrix of every step and spills.
  // Ring chunks whose rows and columns all exist are copied without per-copy bounds checks
  // (load_tile_rows). Not on sm_80 either, nor in the grad q pass: the extra code path tips ptxas
  // into spilling there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  static constexpr bool kUnguardedScores = false;
  static constexpr bool kUncheckedRingLoads = false;
#else
  static constexpr bool kUnguardedScores = true;
  static constexpr bool kUncheckedRingLoads = true;
#endif
  static constexpr int kMinBlocks = kTensorCores ? 2 : 1;
  static constexpr int kTableBytes = 2 * kTile * 4;  // column term and column addend
  static constexpr int kSlotBytes = kTile * Layout::kRowBytes + kTableBytes;
  static constexpr int kStagingRowFloats = kTile + 4;
  static constexpr int kStagingBytes = kTensorCores ? 0 : kWarps * 16 * kStagingRowFloats * 4;

  static size_t smem_bytes(int Dx) {
    const size_t n_chunks = (Dx + kChunk - 1) / kChunk;
    return n_chunks * kRows * Layout::kRowBytes + size_t(kStages) * kSlotBytes + kStagingBytes;
  }
};

template <typename T>
using Scores = float[TileConfig<T>::kRowBlocks][kTile / 8][4];  // (warp rows, kTile) in 8-column blocks
template <typename T>
using Accumulator = float[TileConfig<T>::kRowBlocks][kChunk / 8][4];  // (warp rows, 128)
template <typename T>
using PFragments = uint32_t[TileConfig<T>::kRowBlocks][kTile / 16][4];  // Pv as A operands, 16-column blocks

// ---- the two products of a warp ----------------------------------------------------------------

// Tensor-core half of warp_scores. kFull: the chunk is full (k_valid == kChunk), so every 16-column
// step runs unconditionally and the steps form one branch-free block in which ptxas can issue the
// ldmatrix of later steps under the mma of earlier ones. With a run-time guard per step (partial
// chunks) each step is its own block and waits for its own ldmatrix.
template <typename T, bool kFull>
__device__ __forceinline__ void warp_scores_mma(Scores<T>& s, uint32_t x_base, uint32_t y_base, int warp_row, int lane,
                                                int k_valid) {
  using L = ChunkLayout<T>;
  constexpr int RB = TileConfig<T>::kRowBlocks;
  const uint32_t a_lane = L::lane_part(lane & 15, lane >> 4);
  const uint32_t b_lane = L::lane_part((lane >> 4) * 8 + (lane & 7), (lane >> 3) & 1);
#pragma unroll
  for (int kk = 0; kk < kChunk / 16; ++kk) {
    if (kFull || kk * 16 < k_valid) {
      uint32_t a[RB][4];
#pragma unroll
      for (int rb = 0; rb < RB; ++rb) ldmatrix_x4(a[rb], x_base + L::at(a_lane, warp_row + 16 * rb, kk));
#pragma unroll
      for (int pr = 0; pr < kTile / 16; ++pr) {
        uint32_t bq[4];
        ldmatrix_x4(bq, y_base + L::at(b_lane, 16 * pr, kk));
#pragma unroll
        for (int rb = 0; rb < RB; ++rb) {
          mma_16816<T>(s[rb][2 * pr], a[rb], bq[0], bq[1]);
          mma_16816<T>(s[rb][2 * pr + 1], a[rb], bq[2], bq[3]);
        }
      }
    }
  }
}

// scores(warp rows x kTile) += X(warp rows, k_valid columns of this chunk) Yᵀ(kTile x k_valid)
template <typename T>
__device__ __forceinline__ void warp_scores(Scores<T>& s, const unsigned char* smem, uint32_t smem_base,
                                            uint32_t x_off, uint32_t y_off, int warp_row, int lane, int k_valid) {
  using L = ChunkLayout<T>;
  if constexpr (TileConfig<T>::kTensorCores) {
    (void)smem;
    if constexpr (TileConfig<T>::kUnguardedScores) {
      if (k_valid == kChunk) {
        warp_scores_mma<T, true>(s, smem_base + x_off, smem_base + y_off, warp_row, lane, k_valid);
        return;
      }
    }
    warp_scores_mma<T, false>(s, smem_base + x_off, smem_base + y_off, warp_row, lane, k_valid);
  } else {
    (void)smem_base;
    const int g = lane >> 2, tq = lane & 3;
    const unsigned char* xs = smem + x_off;
    const unsigned char* ys = smem + y_off;
    for (int k = 0; k < k_valid; k += 4) {
      const float4 xa = *reinterpret_cast<const float4*>(xs + L::offset(warp_row + g, k));
      const float4 xb = *reinterpret_cast<const float4*>(xs + L::offset(warp_row + g + 8, k));
#pragma unroll
      for (int nb = 0; nb < kTile / 8; ++nb) {
        const float4 y0 = *reinterpret_cast<const float4*>(ys + L::offset(8 * nb + 2 * tq, k));
        const float4 y1 = *reinterpret_cast<const float4*>(ys + L::offset(8 * nb + 2 * tq + 1, k));
        s[0][nb][0] += xa.x * y0.x + xa.y * y0.y + xa.z * y0.z + xa.w * y0.w;
        s[0][nb][1] += xa.x * y1.x + xa.y * y1.y + xa.z * y1.z + xa.w * y1.w;
        s[0][nb][2] += xb.x * y0.x + xb.y * y0.y + xb.z * y0.z + xb.w * y0.w;
        s[0][nb][3] += xb.x * y1.x + xb.y * y1.y + xb.z * y1.z + xb.w * y1.w;
      }
    }
  }
}

// Tensor-core half of warp_update; kFull as in warp_scores_mma (z_valid == kChunk).
template <typename T, bool kFull>
__device__ __forceinline__ void warp_update_mma(Accumulator<T>& acc, const PFragments<T>& pfrag, uint32_t z_base,
                                                int lane, int z_valid) {
  using L = ChunkLayout<T>;
  constexpr int RB = TileConfig<T>::kRowBlocks;
  const uint32_t z_lane = L::lane_part(((lane >> 3) & 1) * 8 + (lane & 7), lane >> 4);
#pragma unroll
  for (int kk = 0; kk < kTile / 16; ++kk) {
#pragma unroll
    for (int pr = 0; pr < kChunk / 16; ++pr) {
      if (kFull || pr * 16 < z_valid) {
        uint32_t bq[4];
        ldmatrix_x4_trans(bq, z_base + L::at(z_lane, 16 * kk, pr));
#pragma unroll
        for (int rb = 0; rb < RB; ++rb) {
          mma_16816<T>(acc[rb][2 * pr], pfrag[rb][kk], bq[0], bq[1]);
          mma_16816<T>(acc[rb][2 * pr + 1], pfrag[rb][kk], bq[2], bq[3]);
        }
      }
    }
  }
}

// acc(warp rows x 128) += Pv(warp rows x kTile) Z(kTile x z_valid). 16-bit: Pv in registers as A
// fragments; fp32: Pv staged in the warp's shared-memory rows.
template <typename T>
__device__ __forceinline__ void warp_update(Accumulator<T>& acc, const PFragments<T>& pfrag, const float* staging,
                                            const unsigned char* smem, uint32_t smem_base, uint32_t z_off, int lane,
                                            int z_valid) {
  using L = ChunkLayout<T>;
  if constexpr (TileConfig<T>::kTensorCores) {
    (void)staging;
    (void)smem;
    if (z_valid == kChunk) {
      warp_update_mma<T, true>(acc, pfrag, smem_base + z_off, lane, z_valid);
    } else {
      warp_update_mma<T, false>(acc, pfrag, smem_base + z_off, lane, z_valid);
    }
  } else {
    (void)pfrag;
    (void)smem_base;
    constexpr int kRowFloats = TileConfig<T>::kStagingRowFloats;
    const int g = lane >> 2, tq = lane & 3;
    const unsigned char* zs = smem + z_off;
    for (int key = 0; key < kTile; key += 4) {
      const float4 pa = *reinterpret_cast<const float4*>(staging + g * kRowFloats + key);
      const float4 pb = *reinterpret_cast<const float4*>(staging + (g + 8) * kRowFloats + key);
      const float va[4] = {pa.x, pa.y, pa.z, pa.w};
      const float vb[4] = {pb.x, pb.y, pb.z, pb.w};
#pragma unroll
      for (int kq = 0; kq < 4; ++kq) {
#pragma unroll
        for (int nb = 0; nb < kChunk / 8; ++nb) {
          if (nb * 8 < z_valid) {
            const float2 zz = *reinterpret_cast<const float2*>(zs + L::offset(key + kq, 8 * nb + 2 * tq));
            acc[0][nb][0] += va[kq] * zz.x;
            acc[0][nb][1] += va[kq] * zz.y;
            acc[0][nb][2] += vb[kq] * zz.x;
            acc[0][nb][3] += vb[kq] * zz.y;
          }
        }
      }
    }
  }
}

// The elementwise map of one 16-row block of a tile, in place on its scores (see the pass table at
// the top), with one ex2 per element. row_term: the row terms of the accumulator rows (g, g + 8);
// gap: E; row_local: the position of row g inside the diagonal granule. kDiag: the tile is the
// warp's diagonal granule, masked to s <= t; every other tile lies wholly on the kept side.
// The grad q and grad k passes must produce bit-identical values for element (t, s), so that the
// gate gradient Σ_{t>=r} q_t.dq_t - Σ_{s>=r} k_s.dk_s telescopes over the same rounded products:
// both form the exponent as (key term + E) + query term, E being exact (see the walk below).
template <Pass kPass, bool kDiag>
__device__ __forceinline__ void gate_tile(float (&s)[kTile / 8][4], float (&rowsum)[2], const float* col_term,
                                          const float* col_add, const float (&row_term)[2], float gap,
                                          const float (&row_add)[2], int row_local, int tq) {
  constexpr bool kTransposed = kPass == Pass::kGradK || kPass == Pass::kGradV;
  const float row_exp[2] = {row_term[0] + gap, row_term[1] + gap};
#pragma unroll
  for (int nb = 0; nb < kTile / 8; ++nb) {
    const int c0 = 8 * nb + 2 * tq;
    const float2 ct = *reinterpret_cast<const float2*>(col_term + c0);
    float2 ca = make_float2(0.0f, 0.0f);
    if constexpr (kPass == Pass::kGradK) ca = *reinterpret_cast<const float2*>(col_add + c0);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >> 1;
      const float col = (e & 1) ? ct.y : ct.x;
      const float ds = fast_exp2(kPass == Pass::kGradQ ? (col + gap) + row_term[r] : row_exp[r] + col);
      float v;
      if constexpr (kPass == Pass::kForward || kPass == Pass::kGradV) {
        v = s[nb][e] * ds;
      } else if constexpr (kPass == Pass::kGradQ) {
        v = (s[nb][e] + row_add[r]) * ds;
      } else {
        v = (s[nb][e] + ((e & 1) ? ca.y : ca.x)) * ds;
      }
      if constexpr (kDiag) {
        const int col_index = c0 + (e & 1);
        const int row_index = row_local + 8 * r;
        const bool keep = kTransposed ? col_index >= row_index : col_index <= row_index;
        v = keep ? v : 0.0f;
      }
      s[nb][e] = v;
      if constexpr (kPass == Pass::kForward) rowsum[r] += v;
    }
  }
}

// The forward's map on a tile below the diagonal, with the gate matrix as an outer product:
//   2^(row_term_t + E + c_s) = 2^(row_term_t + E + Mc_J) * 2^(c_s - Mc_J),   Mc_J = max_{s in J} c_s.
// The column factor (col_factor, <= 1) comes as a table; the row factor costs one ex2 per row and
// tile, so an element costs two multiplies instead of an add and an ex2. Both factors are <= 1 up
// to rounding (row_term + E + Mc_J = max_{s in J} logD2_{t,s} - m2_t + log2(scale) <= 0 below the
// diagonal), so neither overflows, and a factor underflows only where the product is below 2^-126
// too, which the one-ex2 form flushes to 0 as well. row_gap: E + Mc_J.
__device__ __forceinline__ void gate_tile_factored(float (&s)[kTile / 8][4], float (&rowsum)[2],
                                                   const float* col_factor, const float (&row_term)[2], float row_gap,
                                                   int tq) {
  const float row_factor[2] = {fast_exp2(row_term[0] + row_gap), fast_exp2(row_term[1] + row_gap)};
#pragma unroll
  for (int nb = 0; nb < kTile / 8; ++nb) {
    const float2 cf = *reinterpret_cast<const float2*>(col_factor + 8 * nb + 2 * tq);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >> 1;
      const float v = (s[nb][e] * ((e & 1) ? cf.y : cf.x)) * row_factor[r];
      s[nb][e] = v;
      rowsum[r] += v;
    }
  }
}

template <typename T, Pass kPass>
__global__ void __launch_bounds__(TileConfig<T>::kThreads, TileConfig<T>::kMinBlocks)
    parallel_tile_kernel(const TileParams p) {
  using Cfg = TileConfig<T>;
  using L = typename Cfg::Layout;
  constexpr int RB = Cfg::kRowBlocks;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_base = smem_address(smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, tq = lane & 3;

  // ---- work: heaviest row tiles first, then (b, h), then the output slice
  const int64_t per_rank = p.BH * p.n_slices;
  const int64_t rank = blockIdx.x / per_rank;
  const int64_t rem = blockIdx.x - rank * per_rank;
  const int64_t bh = rem / p.n_slices;
  const int slice = static_cast<int>(rem - bh * p.n_slices);
  constexpr bool transposed = kPass == Pass::kGradK || kPass == Pass::kGradV;
  const int64_t row_tile = transposed ? rank : p.n_row_tiles - 1 - rank;
  const int64_t R0 = row_tile * Cfg::kRows;
  const int64_t b = bh / p.NH, h = bh - b * p.NH;
  const int Dx = p.x.D, Dz = p.z.D, z0 = slice * kChunk;
  const int n_x_chunks = (Dx + kChunk - 1) / kChunk;
  const int steps_per_tile = n_x_chunks + 1;
  // Column granules: normal passes walk keys from the diagonal down to 0, transposed passes walk
  // queries from the diagonal up to the end (the gap term E grows as the walk leaves the diagonal).
  const int64_t last_row = (R0 + Cfg::kRows < p.S ? R0 + Cfg::kRows : p.S) - 1;
  const int first_granule = static_cast<int>((transposed ? R0 : last_row) / kTile);
  const int n_tiles = transposed ? p.NT - first_granule : first_granule + 1;
  const int total_steps = n_tiles * steps_per_tile;
  auto granule_of = [&](int it) { return transposed ? first_granule + it : first_granule - it; };

  const T* xb = static_cast<const T*>(p.x.data) + b * p.x.stride_b + h * p.x.stride_h;
  const T* yb = static_cast<const T*>(p.y.data) + b * p.y.stride_b + h * p.y.stride_h;
  const T* zb = static_cast<const T*>(p.z.data) + b * p.z.stride_b + h * p.z.stride_h;

  // ---- shared memory: X rows (resident) | ring of (kTile-row chunk + column tables) | fp32 staging
  const uint32_t x_off = 0;
  const uint32_t ring_off = static_cast<uint32_t>(n_x_chunks * Cfg::kRows * L::kRowBytes);
  const uint32_t staging_off = ring_off + Cfg::kStages * Cfg::kSlotBytes;
  float* staging = reinterpret_cast<float*>(smem + staging_off) + warp * 16 * Cfg::kStagingRowFloats;

  // X rows (prologue only).
  auto load_rows = [&](uint32_t dst_off, const T* base, int64_t stride_s, int64_t row0, int n_rows, int col0, int D) {
    for (int idx = tid; idx < n_rows * L::kUnitsPerRow; idx += Cfg::kThreads) {
      const int r = idx / L::kUnitsPerRow, u = idx % L::kUnitsPerRow;
      const int64_t row = row0 + r;
      const int col = col0 + u * L::kUnitElems;
      const bool valid = row < p.S && col < D;
      const T* src = valid ? base + row * stride_s + col : base;
      const uint32_t dst = smem_base + dst_off + L::offset(r, u * L::kUnitElems);
      if (p.vec_ok) {
        cp_async_16(dst, src, valid);
      } else {
        copy_16_sync<T>(dst, src, valid);
      }
    }
  };
  // Ring loads (kTile rows of one chunk): thread tid always moves 16-byte unit lu of rows
  // lr + j kRowsPerPass, so its shared-memory offsets are one per-thread value plus constants
  // (kRowsPerPass is a multiple of the swizzle period 8 on the 16-bit layout).
  constexpr int kRowsPerPass = Cfg::kThreads / L::kUnitsPerRow;
  static_assert(kTile % kRowsPerPass == 0 && (sizeof(T) == 4 || kRowsPerPass % 8 == 0), "ring load mapping");
  const int lr = tid / L::kUnitsPerRow, lu = tid % L::kUnitsPerRow;
  const uint32_t ring_lane = smem_base + L::offset(lr, lu * L::kUnitElems);
  auto load_tile_rows = [&](uint32_t slot, const T* base, int64_t stride_s, int64_t row0, int col0, int D) {
    const int col = col0 + lu * L::kUnitElems;
    const int64_t row = row0 + lr;
    const T* src = base + row * stride_s + col;
    const uint32_t dst = ring_lane + slot;
    constexpr bool kUnchecked = Cfg::kUncheckedRingLoads && kPass != Pass::kGradQ;
    if (kUnchecked && p.vec_ok && row0 + kTile <= p.S && col0 + kChunk <= D) {
      // Every row and column of the chunk exists (all but the last granule and a partial last
      // chunk): unconditional copies, the source advancing by one row step per copy, so the
      // common case costs a 64-bit add per copy instead of a bounds check, a select and a 64-bit
      // multiply.
      const int64_t src_step = int64_t(kRowsPerPass) * stride_s;
#pragma unroll
      for (int j = 0; j < kTile / kRowsPerPass; ++j) {
        cp_async_16(dst + j * kRowsPerPass * L::kRowBytes, src, true);
        src += src_step;
      }
      return;
    }
#pragma unroll
    for (int j = 0; j < kTile / kRowsPerPass; ++j) {
      const bool valid = row + j * kRowsPerPass < p.S && col < D;
      const T* s = valid ? src + j * kRowsPerPass * stride_s : base;
      if (p.vec_ok) {
        cp_async_16(dst + j * kRowsPerPass * L::kRowBytes, s, valid);
      } else {
        copy_16_sync<T>(dst + j * kRowsPerPass * L::kRowBytes, s, valid);
      }
    }
  };
  // The ring is filled in step order: (tile it, sub-step sub) into slot `issue_slot`.
  int issue_it = 0, issue_sub = 0, issue_slot = 0;
  auto issue_next = [&]() {
    const int64_t col0 = int64_t(granule_of(issue_it)) * kTile;
    const uint32_t slot = ring_off + issue_slot * Cfg::kSlotBytes;
    if (issue_sub < n_x_chunks) {
      load_tile_rows(slot, yb, p.y.stride_s, col0, issue_sub * kChunk, Dx);
      constexpr int kTableUnits = kTile / 4;  // 16-byte units of one column table
      // The tile's column terms and its addends (grad k) or factors (forward), by the first threads.
      constexpr bool kSecondTable = kPass == Pass::kForward || kPass == Pass::kGradK;
      if (issue_sub == n_x_chunks - 1 && tid < (kSecondTable ? 2 : 1) * kTableUnits) {
        const int a = tid / kTableUnits, u = tid % kTableUnits;
        const float* src = a == 0 ? p.col_term : kPass == Pass::kForward ? p.col_factor : p.col_add;
        cp_async_16(smem_base + slot + kTile * L::kRowBytes + a * kTile * 4 + u * 16, src + bh * p.S_pad + col0 + u * 4,
                    true);
      }
    } else {
      load_tile_rows(slot, zb, p.z.stride_s, col0, z0, Dz);
    }
    if (++issue_sub == steps_per_tile) {
      issue_sub = 0;
      ++issue_it;
    }
    if (++issue_slot == Cfg::kStages) issue_slot = 0;
  };
  // One ring step: wait for its chunk, let every thread see it, refill the slot freed by the
  // previous step, and return the step's slot. Steps are consumed in order.
  int use_slot = 0;
  auto advance = [&](int step) {
    cp_async_wait<Cfg::kStages - 2>();
    __syncthreads();
    if (step + Cfg::kStages - 1 < total_steps) issue_next();
    cp_async_commit();
    const uint32_t slot = ring_off + use_slot * Cfg::kSlotBytes;
    if (++use_slot == Cfg::kStages) use_slot = 0;
    return slot;
  };

  // ---- per-thread row data: rows 16 rb + g and 16 rb + g + 8 of the warp
  const int warp_row = Cfg::kWarpRows * warp;  // inside the block
  const int64_t warp_row0 = R0 + warp_row;
  const bool warp_valid = warp_row0 < p.S;
  const int diag_granule = static_cast<int>(warp_row0 / kTile);
  float row_term[RB][2], row_add[RB][2];
#pragma unroll
  for (int rb = 0; rb < RB; ++rb)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = warp_row0 + 16 * rb + g + 8 * r;
      const bool in = row < p.S_pad;
      row_term[rb][r] = in ? p.row_term[bh * p.S_pad + row] : -INFINITY;
      row_add[rb][r] = p.row_add != nullptr && in ? p.row_add[bh * p.S_pad + row] : 0.0f;
    }
  const float* gsum = p.gsum + bh * p.NT;
  const float* cmax = kPass == Pass::kForward ? p.cmax + bh * p.NT : nullptr;

  // ---- prologue: X rows and the first kStages - 1 ring steps
  for (int kc = 0; kc < n_x_chunks; ++kc)
    load_rows(x_off + kc * Cfg::kRows * L::kRowBytes, xb, p.x.stride_s, R0, Cfg::kRows, kc * kChunk, Dx);
#pragma unroll
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    if (s < total_steps) issue_next();
    cp_async_commit();
  }

  Accumulator<T> acc;
  float rowsum[RB][2];
#pragma unroll
  for (int rb = 0; rb < RB; ++rb) {
    rowsum[rb][0] = rowsum[rb][1] = 0.0f;
#pragma unroll
    for (int nb = 0; nb < kChunk / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[rb][nb][e] = 0.0f;
  }
  // E of this warp's rows and the current column granule. Summed in double, where sums of these
  // fp32 granule totals are exact, so that both walk directions give the same (rounded) E.
  double gap_exact = 0.0;

  int step = 0;
  for (int it = 0; it < n_tiles; ++it) {
    const int granule = granule_of(it);
    const bool diag = granule == diag_granule;
    // A warp whose rows lie entirely across the diagonal from this tile only keeps the ring going.
    const bool active = warp_valid && (transposed ? granule >= diag_granule : granule <= diag_granule);
    if (active) gap_exact = diag ? -double(gsum[granule]) : gap_exact + double(gsum[transposed ? granule - 1 : granule + 1]);
    const float gap = static_cast<float>(gap_exact);
    // Forward below the diagonal: E + Mc_J, the row factor's share of the factored gate matrix.
    float row_gap = 0.0f;
    if constexpr (kPass == Pass::kForward) {
      if (active && !diag) row_gap = static_cast<float>(gap_exact + double(cmax[granule]));
    }

    Scores<T> sc;
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
      for (int nb = 0; nb < kTile / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[rb][nb][e] = 0.0f;
    uint32_t slot = 0;
    for (int sub = 0; sub < n_x_chunks; ++sub, ++step) {
      slot = advance(step);
      const int k_valid = Dx - sub * kChunk < kChunk ? Dx - sub * kChunk : kChunk;
      if (active) warp_scores<T>(sc, smem, smem_base, x_off + sub * Cfg::kRows * L::kRowBytes, slot, warp_row, lane, k_valid);
    }
    PFragments<T> pfrag;
    if (active) {
      // The column tables travel with the tile's last Y chunk, in `slot`: the column term c_s, then
      // the column addend (grad k) or the column factor (forward).
      const float* tables = reinterpret_cast<const float*>(smem + slot + kTile * L::kRowBytes);
      if (diag) {
        const int row_local = static_cast<int>(warp_row0 - int64_t(granule) * kTile) + g;
#pragma unroll
        for (int rb = 0; rb < RB; ++rb)
          gate_tile<kPass, true>(sc[rb], rowsum[rb], tables, tables + kTile, row_term[rb], gap, row_add[rb],
                                 row_local + 16 * rb, tq);
      } else {
#pragma unroll
        for (int rb = 0; rb < RB; ++rb) {
          // fp32 keeps one exponential per element: its outputs are held to plain fp32 accuracy,
          // and with large input gates the denominator's cancellation amplifies the factored
          // form's extra rounding past that (measured 3.9e-4 against 2.8e-4 allowed).
          if constexpr (kPass == Pass::kForward && sizeof(T) == 2) {
            gate_tile_factored(sc[rb], rowsum[rb], tables + kTile, row_term[rb], row_gap, tq);
          } else {
            gate_tile<kPass, false>(sc[rb], rowsum[rb], tables, tables + kTile, row_term[rb], gap, row_add[rb], 0, tq);
          }
        }
      }
#pragma unroll
      for (int rb = 0; rb < RB; ++rb) {
        if constexpr (Cfg::kTensorCores) {
#pragma unroll
          for (int kk = 0; kk < kTile / 16; ++kk) {
            pfrag[rb][kk][0] = pack2<T>(sc[rb][2 * kk][0], sc[rb][2 * kk][1]);
            pfrag[rb][kk][1] = pack2<T>(sc[rb][2 * kk][2], sc[rb][2 * kk][3]);
            pfrag[rb][kk][2] = pack2<T>(sc[rb][2 * kk + 1][0], sc[rb][2 * kk + 1][1]);
            pfrag[rb][kk][3] = pack2<T>(sc[rb][2 * kk + 1][2], sc[rb][2 * kk + 1][3]);
          }
        } else {
          // Read back by this warp after the next step's barrier.
#pragma unroll
          for (int nb = 0; nb < kTile / 8; ++nb) {
            *reinterpret_cast<float2*>(staging + g * Cfg::kStagingRowFloats + 8 * nb + 2 * tq) =
                make_float2(sc[rb][nb][0], sc[rb][nb][1]);
            *reinterpret_cast<float2*>(staging + (g + 8) * Cfg::kStagingRowFloats + 8 * nb + 2 * tq) =
                make_float2(sc[rb][nb][2], sc[rb][nb][3]);
          }
        }
      }
    }
    slot = advance(step);
    ++step;
    if (active) {
      const int z_valid = Dz - z0 < kChunk ? Dz - z0 : kChunk;
      warp_update<T>(acc, pfrag, staging, smem, smem_base, slot, lane, z_valid);
    }
  }
  cp_async_wait<0>();

  // ---- epilogue
  if (!warp_valid) return;
  T* out = static_cast<T*>(p.out) + b * p.out_stride_b + h * p.out_stride_h;
  constexpr bool want_dot = kPass == Pass::kGradQ || kPass == Pass::kGradK;
  const T* dot_base = want_dot ? static_cast<const T*>(p.dot.data) + b * p.dot.stride_b + h * p.dot.stride_h : nullptr;
#pragma unroll
  for (int rb = 0; rb < RB; ++rb) {
    float row_scale[2] = {1.0f, 1.0f};
    if constexpr (kPass == Pass::kForward) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float den = rowsum[rb][r];
        den += __shfl_xor_sync(0xffffffffu, den, 1);
        den += __shfl_xor_sync(0xffffffffu, den, 2);
        const int64_t row = warp_row0 + 16 * rb + g + 8 * r;
        if (row < p.S) {
          const float m = p.m2[bh * p.S + row];
          row_scale[r] = 1.0f / (fmaxf(fabsf(den), exp2f(-m)) + p.eps);
          if (slice == 0 && tq == 0) p.den[bh * p.S + row] = den;
        }
      }
    }
    float dot[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nb = 0; nb < kChunk / 8; ++nb) {
      const int col = z0 + 8 * nb + 2 * tq;
      if (col >= Dz) continue;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t row = warp_row0 + 16 * rb + g + 8 * r;
        if (row >= p.S) continue;
        const float v0 = acc[rb][nb][2 * r] * row_scale[r];
        const float v1 = acc[rb][nb][2 * r + 1] * row_scale[r];
        T* o = out + row * p.out_stride_s + col;
        o[0] = from_float<T>(v0);
        o[1] = from_float<T>(v1);
        if constexpr (want_dot) {
          const T* dp = dot_base + row * p.dot.stride_s + col;
          dot[r] += v0 * to_float(dp[0]) + v1 * to_float(dp[1]);
        }
      }
    }
    if constexpr (want_dot) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float d = dot[r];
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        const int64_t row = warp_row0 + 16 * rb + g + 8 * r;
        if (tq == 0 && row < p.S) p.row_dot[(int64_t(slice) * p.BH + bh) * p.S_pad + row] = d;
      }
    }
  }
}

}  // namespace mlstm::cuda::parallel
