// The fused step kernel: one time step of the recurrent mLSTM (SPEC §2) for every (b, h), in one pass
// over the state.
//
//   m_t = max(f~ + m_{t-1}, i),  F = exp(f~ + m_{t-1} - m_t),  I = exp(i - m_t)     (f~ = logsigmoid(f))
//   C_t = F C_{t-1} + I k v^T,   n_t = F n_{t-1} + I k,   q^ = q / sqrt(DHQK)
//   h   = C_t^T q^ / (max(|n_t . q^|, exp(-m_t)) + eps)
//
// The step is bound by memory traffic: C (DHQK x DHHV per head) is read once and written once, and
// everything else is a few kilobytes. So the kernel is built like a copy that streams C in address
// order with many bytes in flight and never drains its pipeline before the end.
//
// Work mapping. Block x of (b, h) owns a column slab of C, [x * W, (x + 1) * W) with W = DHHV / nslab,
// for all DHQK rows, so h of those columns is complete inside the block (nslab is chosen on the host:
// enough to fill the GPU at small batches, and slabs of at most ~64 KiB of state otherwise, so that
// the hardware's block scheduler balances the work across SMs). The slab is
// walked in tiles of TPR x NV 16-byte vectors per row (usually one tile is the whole slab): TPR threads
// share a row, each owning NV vectors TPR vectors apart, so one load instruction of a warp with TPR = 32
// reads 512 contiguous bytes, and its NV loads of a row read 512 B to 2 KiB of it. Thread t handles
// rows t / TPR + j * (256 / TPR): the 8 warps walk down neighbouring rows together, so a block reads its
// slab nearly in address order, as a copy does (not 256 B of every row, then the next 256 B).
//
// Latency. Each thread keeps step_loads(NV * VEC) 16-byte loads of C in flight in a ring of row items: item k is
// updated, stored, and its slot refilled with item k + depth. The ring runs on across tiles and never
// drains: there is no barrier inside the walk, and the partial sums of C_t^T q^ go to shared memory
// (per warp, after a shuffle sum over the rows inside the warp) once per tile and are added up once at
// the end. In flight: 256 threads x 8 or 16 x 16 B = 32 or 64 KiB per block, two or three blocks per
// SM, against about 24 KiB per SM that DRAM asks for (3 TB/s x ~1 us / 132 SMs).
//
// Every block recomputes the scalars, n_t and n_t . q^ for its (b, h) (DHQK elements: negligible
// next to its slab of C), and the block of slab 0 writes n_t and m_t.
//
// In place (c/n/m_last are the c/n/m_initial buffers): each element of C is read and written by the
// same thread, and read before it is written, so C needs nothing more. n and m are read by every block
// of a (b, h) but written by one; the blocks of one (b, h) then form a thread-block cluster, every block
// arrives on the cluster barrier (release) once it has read n and m, and the writer waits on it
// (acquire) before writing. Without clusters (before sm_90) the host runs one block per (b, h) in place.
//
// Programmatic dependent launch (sm_90, when the host asks for it): the kernel waits for the grid
// before it in the stream before its first global access, and lets the next grid start launching once
// this block has consumed all of its C; that grid in turn waits for this one to finish.
#pragma once

#include <type_traits>

#include "cuda/recurrent_common.cuh"

namespace mlstm::cuda::recurrent {

constexpr int kStepThreads = 256;
constexpr int kStepWarps = kStepThreads / 32;
// 16-byte loads of C in flight per thread, and the blocks per SM the kernel's registers are sized for,
// by state elements per row item (NV x VEC). Wide items (16 elements: a 2-KiB fp32 row or a 1-KiB
// 16-bit row per warp) keep 16 loads in flight at two blocks per SM (128 registers); narrow items keep
// 8 at three blocks per SM (at most 80 registers, no spills), where more, smaller blocks balance better
// (H200, 2026-11-26: at B = 32 and 128, 8 slabs of 64 columns at three blocks per SM took 70.8 and
// 264.0 us against 75.0 and 275.4 for one slab at two).
__host__ __device__ constexpr int step_loads(int item_elems) { return item_elems >= 16 ? 16 : 8; }
__host__ __device__ constexpr int step_min_blocks(int item_elems) { return item_elems >= 16 ? 2 : 3; }

struct StepParams {
  int64_t NH = 0, DHQK = 0, DHHV = 0;
  int nslab = 1;         // blocks per (b, h); block x of (b, h) owns columns [x*slab_width, (x+1)*slab_width)
  int slab_width = 0;    // columns per slab: a multiple of tile_threads * NV * VEC, at most kMaxHeadDim
  int tile_threads = 1;  // threads along one row of a tile (a power of two <= 32)
  bool has_initial = false;
  bool cluster_in_place = false;  // n/m written in place: synchronise the slabs of a (b, h) by cluster
  bool prefetch_l2 = false;       // small states: ask L2 for the block's slab of C before the prologue
  float eps = 1e-6f, qk_scale = 1.0f;
  mlstm_dtype gate_dtype = MLSTM_FLOAT32;
  // (B,NH,1,DHQK) x2, (B,NH,1,DHHV), (B,NH,1) x2: strides of the batch and head dims, innermost 1.
  const void *q = nullptr, *k = nullptr, *v = nullptr, *i = nullptr, *f = nullptr;
  int64_t q_s0 = 0, q_s1 = 0, k_s0 = 0, k_s1 = 0, v_s0 = 0, v_s1 = 0, i_s0 = 0, i_s1 = 0, f_s0 = 0, f_s1 = 0;
  // States, all of one dtype: (B,NH,DHQK,DHHV), (B,NH,DHQK), (B,NH).
  const void *c_in = nullptr, *n_in = nullptr, *m_in = nullptr;
  int64_t c_in_s0 = 0, c_in_s1 = 0, c_in_s2 = 0, n_in_s0 = 0, n_in_s1 = 0, m_in_s0 = 0, m_in_s1 = 0;
  void *c_out = nullptr, *n_out = nullptr, *m_out = nullptr;
  int64_t c_out_s0 = 0, c_out_s1 = 0, c_out_s2 = 0, n_out_s0 = 0, n_out_s1 = 0, m_out_s0 = 0, m_out_s1 = 0;
  void* h = nullptr;  // (B,NH,1,DHHV)
  int64_t h_s0 = 0, h_s1 = 0;
};

// Dynamic shared memory of the kernel, fp32: partial C_t^T q^ of each warp (kStepWarps, slab_width)
// and v of the slab (slab_width). At most 36 KiB (slab_width <= 1024), within the default 48 KiB
// together with the static arrays (8 KiB).
inline int step_smem_bytes(int slab_width) { return (kStepWarps + 1) * slab_width * int(sizeof(float)); }

// VEC state elements as they come from memory: one 16-byte word, or one element (VEC = 1, unaligned
// rows). They stay raw in the ring and are converted when used, so that a load does not stall its
// thread until the data arrives.
template <typename TS, int VEC>
using StateWord = std::conditional_t<VEC == 1, TS, uint4>;

template <typename TS, int VEC>
__device__ __forceinline__ StateWord<TS, VEC> zero_word() {
  if constexpr (VEC == 1) {
    return from_float<TS>(0.0f);
  } else {
    return make_uint4(0u, 0u, 0u, 0u);  // +0 in fp32, fp16 and bf16
  }
}

template <typename TS, int VEC>
__device__ __forceinline__ void unpack_word(const StateWord<TS, VEC>& w, float (&x)[VEC]) {
  if constexpr (VEC == 1) {
    x[0] = to_float(w);
  } else if constexpr (sizeof(TS) == 4) {
    x[0] = __uint_as_float(w.x), x[1] = __uint_as_float(w.y), x[2] = __uint_as_float(w.z), x[3] = __uint_as_float(w.w);
  } else {
    const uint32_t bits[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      x[2 * j] = to_float(half_from_bits<TS>(static_cast<unsigned short>(bits[j] & 0xffffu)));
      x[2 * j + 1] = to_float(half_from_bits<TS>(static_cast<unsigned short>(bits[j] >> 16)));
    }
  }
}

// TS: state dtype, TQ: dtype of q, k, v, h; VEC: state elements per access (16 bytes, or 1 when the
// state's strides or pointers are not 16-byte aligned); NV: vectors per thread in a row of a tile;
// PROLOGUE_FIRST: the prologue's loads are issued before the ring's (below). A template parameter: as
// a runtime choice both orders live in one kernel and the fp32-state kernels spill.
template <typename TS, typename TQ, int VEC, int NV, bool PROLOGUE_FIRST>
__global__ void __launch_bounds__(kStepThreads, step_min_blocks(NV * VEC)) recurrent_step_fwd_kernel(const StepParams p) {
  static_assert(VEC == 1 || VEC * sizeof(TS) == 16, "a vector is 16 bytes or one element");
  using Word = StateWord<TS, VEC>;
  constexpr int kDepth = step_loads(NV * VEC) / NV;           // row items in flight per thread
  constexpr int kRowsPerThread = kMaxHeadDim / kStepThreads;  // of q, k, n (and columns of v) in the prologue
  extern __shared__ float step_smem[];
  float* h_red = step_smem;                            // (kStepWarps, slab_width) partial C_t^T q^
  float* v_s = step_smem + kStepWarps * p.slab_width;  // (slab_width) v of the slab
  __shared__ float2 kq_s[kMaxHeadDim];                 // (DHQK) (I k, q^)
  __shared__ float warp_scratch[kStepWarps];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t bh = blockIdx.x / p.nslab;
  const int slab = static_cast<int>(blockIdx.x % p.nslab);
  const int64_t b = bh / p.NH, hh = bh % p.NH;
  const int64_t slab_begin = int64_t(slab) * p.slab_width;
  const int DHQK = static_cast<int>(p.DHQK);

  // The thread's walk: item (tile, pass) is row row0 + pass * rows_per_pass, columns
  // slab_begin + tile * tile_width + col0 + j * vec_stride (j < NV, VEC columns each).
  const int tpr = p.tile_threads;
  const int rows_per_pass = kStepThreads / tpr;
  const int vec_stride = tpr * VEC;
  const int tile_width = vec_stride * NV;
  const int ntiles = p.slab_width / tile_width;
  const int passes = (DHQK + rows_per_pass - 1) / rows_per_pass;
  const int items = ntiles * passes;
  const int row0 = tid / tpr;
  const int col0 = (tid % tpr) * VEC;

  const TS* c_in = p.has_initial ? static_cast<const TS*>(p.c_in) + b * p.c_in_s0 + hh * p.c_in_s1 + slab_begin + col0
                                 : nullptr;
  TS* c_out = static_cast<TS*>(p.c_out) + b * p.c_out_s0 + hh * p.c_out_s1 + slab_begin + col0;

  // Zeros past DHQK, past the last tile, and without an initial state.
  auto load_item = [&](Word (&w)[NV], int tile, int pass) {
    const int r = row0 + pass * rows_per_pass;
    if (c_in != nullptr && tile < ntiles && r < DHQK) {
      const TS* src = c_in + r * p.c_in_s2 + tile * tile_width;
#pragma unroll
      for (int j = 0; j < NV; ++j) w[j] = *reinterpret_cast<const Word*>(src + j * vec_stride);
    } else {
#pragma unroll
      for (int j = 0; j < NV; ++j) w[j] = zero_word<TS, VEC>();
    }
  };
  auto next_item = [&](int& tile, int& pass) {
    if (++pass == passes) pass = 0, ++tile;
  };

  grid_dependency_wait();  // everything below may read what the previous grid wrote

  // Loads of C do not depend on the prologue. A state that L2 holds fills the ring before it; one
  // that streams from DRAM fills it right after the prologue's few loads, which then do not wait
  // behind the ring's in the memory pipeline (H100 and H200, B >= 8: up to 1 us per step less; at
  // B <= 2 the other order is 0.5 us faster).
  Word ring[kDepth][NV];
  int ld_tile = 0, ld_pass = 0;  // the next item to load
  auto fill_ring = [&] {
#pragma unroll
    for (int u = 0; u < kDepth; ++u) {
      load_item(ring[u], ld_tile, ld_pass);
      next_item(ld_tile, ld_pass);
    }
  };
  if constexpr (!PROLOGUE_FIRST) fill_ring();

  // When the whole state is small, start the rest of the slab on its way to L2 too (every 128-byte
  // line of every row): with few blocks in flight their latency is not hidden by other blocks.
  if (p.prefetch_l2 && p.has_initial) {
    const char* c_rows = reinterpret_cast<const char*>(static_cast<const TS*>(p.c_in) + b * p.c_in_s0 + hh * p.c_in_s1 +
                                                       slab_begin);
    const int row_bytes = p.slab_width * static_cast<int>(sizeof(TS));
    const int lines = (row_bytes + 127) / 128 + 1;  // +1: the row need not start on a line
    for (int x = tid; x < DHQK * lines; x += kStepThreads) {
      const int r = x / lines, l = x % lines;
      const char* addr = c_rows + r * p.c_in_s2 * int64_t(sizeof(TS)) + min(l * 128, row_bytes - 1);
      asm volatile("prefetch.global.L2 [%0];\n" ::"l"(addr));
    }
  }

  // The prologue's loads, all issued before any of them is used so that their latencies overlap (with
  // each other and with the ring's): the gates, m_{t-1} (read by every thread before the cluster arrive
  // below), and this thread's rows of q, k, n_{t-1} and columns of v.
  const TQ* q = static_cast<const TQ*>(p.q) + b * p.q_s0 + hh * p.q_s1;
  const TQ* k = static_cast<const TQ*>(p.k) + b * p.k_s0 + hh * p.k_s1;
  const TQ* v = static_cast<const TQ*>(p.v) + b * p.v_s0 + hh * p.v_s1 + slab_begin;
  const TS* n_in = p.has_initial ? static_cast<const TS*>(p.n_in) + b * p.n_in_s0 + hh * p.n_in_s1 : nullptr;
  const uint32_t i_bits = load_bits(p.i, b * p.i_s0 + hh * p.i_s1, p.gate_dtype);
  const uint32_t f_bits = load_bits(p.f, b * p.f_s0 + hh * p.f_s1, p.gate_dtype);
  const TS m_prev_raw =
      p.has_initial ? static_cast<const TS*>(p.m_in)[b * p.m_in_s0 + hh * p.m_in_s1] : from_float<TS>(0.0f);
  TQ q_raw[kRowsPerThread], k_raw[kRowsPerThread], v_raw[kRowsPerThread];
  TS n_raw[kRowsPerThread];
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {
    const int r = tid + j * kStepThreads;
    if (r < DHQK) {
      q_raw[j] = q[r], k_raw[j] = k[r];
      n_raw[j] = n_in != nullptr ? n_in[r] : from_float<TS>(0.0f);
    }
    if (r < p.slab_width) v_raw[j] = v[r];
  }
  if constexpr (PROLOGUE_FIRST) fill_ring();

  // Gates and stabiliser.
  const GateStep g = gate_step(bits_to_float(i_bits, p.gate_dtype), log_sigmoid(bits_to_float(f_bits, p.gate_dtype)),
                               to_float(m_prev_raw));
  const float F = expf(g.log_f), I = expf(g.log_i);

  // n_t = F n_{t-1} + I k, and n_t . q^ (kept in registers until the writer stores it); v of the slab.
  float n_new[kRowsPerThread];
  float nq_part = 0.0f;
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {
    const int r = tid + j * kStepThreads;
    n_new[j] = 0.0f;
    if (r < DHQK) {
      const float kr = to_float(k_raw[j]);
      const float qr = to_float(q_raw[j]) * p.qk_scale;
      n_new[j] = fmaf(F, to_float(n_raw[j]), I * kr);
      kq_s[r] = make_float2(I * kr, qr);
      nq_part = fmaf(n_new[j], qr, nq_part);
    }
    if (r < p.slab_width) v_s[r] = to_float(v_raw[j]);
  }
  const float nq = block_sum(nq_part, warp_scratch);  // its barrier also publishes kq_s and v_s
  if (p.cluster_in_place) cluster_arrive_release();   // this block is done reading n_{t-1} and m_{t-1}
  const float inv_denominator = 1.0f / (fmaxf(fabsf(nq), expf(-g.m)) + p.eps);

  // v of the thread's columns in a tile, and its share of C_t^T q^ there (its rows only).
  float v_col[NV][VEC], h_acc[NV][VEC];
  auto load_v = [&](int tile) {
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
      for (int e = 0; e < VEC; ++e) v_col[j][e] = v_s[tile * tile_width + col0 + j * vec_stride + e];
  };
  // Sum over the rows of the warp (lanes TPR apart share columns), then one slot per warp and column.
  auto flush_h = [&](int tile) {
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        float s = h_acc[j][e];
        for (int offset = tpr; offset < 32; offset *= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
        if (lane < tpr) h_red[warp * p.slab_width + tile * tile_width + col0 + j * vec_stride + e] = s;
        h_acc[j][e] = 0.0f;
      }
  };
  load_v(0);
#pragma unroll
  for (int j = 0; j < NV; ++j)
#pragma unroll
    for (int e = 0; e < VEC; ++e) h_acc[j][e] = 0.0f;

  // The walk: consume item k from slot k % kDepth, then refill the slot with item k + kDepth. Every
  // thread walks the same number of items, so the tile ends (and the shuffles in flush_h) line up.
  int cs_tile = 0, cs_pass = 0;  // the next item to consume
  for (int k0 = 0; k0 < items; k0 += kDepth) {
#pragma unroll
    for (int u = 0; u < kDepth; ++u) {
      if (k0 + u < items) {
        const int r = row0 + cs_pass * rows_per_pass;
        if (r < DHQK) {
          const float2 kq = kq_s[r];
          TS* dst = c_out + r * p.c_out_s2 + cs_tile * tile_width;
#pragma unroll
          for (int j = 0; j < NV; ++j) {
            float c[VEC];
            unpack_word<TS, VEC>(ring[u][j], c);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
              c[e] = fmaf(F, c[e], kq.x * v_col[j][e]);
              h_acc[j][e] = fmaf(c[e], kq.y, h_acc[j][e]);
            }
            store_vec<TS, VEC>(dst + j * vec_stride, c);
          }
        }
        if (cs_pass == passes - 1) {
          flush_h(cs_tile);
          if (cs_tile + 1 < ntiles) load_v(cs_tile + 1);
        }
        next_item(cs_tile, cs_pass);
        // Item k + kDepth has not been stored yet (each element is read once, before its own store),
        // so in place this still reads C_{t-1}.
        load_item(ring[u], ld_tile, ld_pass);
        next_item(ld_tile, ld_pass);
      }
    }
  }
  grid_launch_dependents();  // all of this block's C is read: the next grid may start launching

  __syncthreads();  // every warp's partial sums are in h_red
  TQ* h = static_cast<TQ*>(p.h) + b * p.h_s0 + hh * p.h_s1 + slab_begin;
  for (int x = tid; x < p.slab_width; x += kStepThreads) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kStepWarps; ++w) s += h_red[w * p.slab_width + x];
    h[x] = from_float<TQ>(s * inv_denominator);
  }

  // n_t and m_t: written once per (b, h), after every block of the (b, h) has read n_{t-1}, m_{t-1}.
  // Without a cluster, in place means nslab == 1 and the barriers above ordered this block's reads.
  if (p.cluster_in_place) cluster_wait_acquire();
  if (slab == 0) {
    TS* n_out = static_cast<TS*>(p.n_out) + b * p.n_out_s0 + hh * p.n_out_s1;
#pragma unroll
    for (int j = 0; j < kRowsPerThread; ++j) {
      const int r = tid + j * kStepThreads;
      if (r < DHQK) n_out[r] = from_float<TS>(n_new[j]);
    }
    if (tid == 0) static_cast<TS*>(p.m_out)[b * p.m_out_s0 + hh * p.m_out_s1] = from_float<TS>(g.m);
  }
}

}  // namespace mlstm::cuda::recurrent
