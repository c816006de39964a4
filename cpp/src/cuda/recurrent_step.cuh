// The fused step kernel: one time step of the recurrent mLSTM (SPEC §2) for every (b, h), in one pass
// over the state.
//
//   m_t = max(f~ + m_{t-1}, i),  F = exp(f~ + m_{t-1} - m_t),  I = exp(i - m_t)     (f~ = logsigmoid(f))
//   C_t = F C_{t-1} + I k v^T,   n_t = F n_{t-1} + I k,   q^ = q / sqrt(DHQK)
//   h   = C_t^T q^ / (max(|n_t . q^|, exp(-m_t)) + eps)
//
// The step is bound by memory traffic: C (DHQK x DHHV per head) is read once and written once, and
// everything else is a few kilobytes. Work mapping: each block owns one column slab of C of one
// (b, h) (DHHV split into `nslab` slabs so that small batches still fill the GPU) and walks it in
// tiles of `tile_threads` x VEC columns; within a tile, thread (g, x) updates rows g, g + groups, ...
// of its VEC columns with 16-byte loads and stores, keeping kStepUnroll loads in flight, and accumulates
// its share of C_t^T q^; the partial sums meet in shared memory.
//
// Every block recomputes the scalars, n_t and n_t . q^ for its (b, h) (DHQK elements: negligible
// next to its slab of C), and the block of slab 0 writes n_t and m_t.
//
// In place (c/n/m_last are the c/n/m_initial buffers): each element of C is read and written by the
// same thread, so C needs nothing more. n and m are read by every block of a (b, h) but written by
// one; the blocks of one (b, h) then form a thread-block cluster, every block arrives on the cluster
// barrier (release) once it has read n and m, and the writer waits on it (acquire) before writing.
// Without clusters (before sm_90) the host runs one block per (b, h) in place.
#pragma once

#include "cuda/recurrent_common.cuh"

namespace mlstm::cuda::recurrent {

constexpr int kStepThreads = 256;
constexpr int kStepUnroll = 8;  // row loads in flight per thread

struct StepParams {
  int64_t NH = 0, DHQK = 0, DHHV = 0;
  int nslab = 1;         // blocks per (b, h); block x of (b, h) owns columns [x*slab_width, (x+1)*slab_width)
  int slab_width = 0;    // columns per slab: a multiple of tile_threads * VEC
  int tile_threads = 1;  // threads along one row of a tile (a power of two <= 16)
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

// Rows r_base, r_base + groups, ... (kStepUnroll of them) of VEC columns from `col`; zeros past DHQK
// or without an initial state.
template <typename TS, int VEC>
__device__ __forceinline__ void load_rows(float (&c)[kStepUnroll][VEC], const TS* c_in, int64_t row_stride, int64_t col,
                                          int r_base, int groups, int DHQK) {
#pragma unroll
  for (int u = 0; u < kStepUnroll; ++u) {
    const int r = r_base + u * groups;
    if (c_in != nullptr && r < DHQK) {
      load_vec<TS, VEC>(c_in + r * row_stride + col, c[u]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) c[u][j] = 0.0f;
    }
  }
}

// TS: state dtype, TQ: dtype of q, k, v, h; VEC: state elements per access (16 bytes, or 1 when the
// state's strides or pointers are not 16-byte aligned).
template <typename TS, typename TQ, int VEC>
__global__ void __launch_bounds__(kStepThreads) recurrent_step_fwd_kernel(const StepParams p) {
  constexpr int kRowsPerThread = kMaxHeadDim / kStepThreads;  // of n, in the prologue
  __shared__ float ik_s[kMaxHeadDim];  // I * k       (DHQK)
  __shared__ float q_s[kMaxHeadDim];   // q^          (DHQK)
  __shared__ float h_red[kStepThreads * VEC];  // partial C_t^T q^ of each row group (groups, tile width)
  __shared__ float warp_scratch[kStepThreads / 32];

  const int tid = threadIdx.x;
  const int64_t bh = blockIdx.x / p.nslab;
  const int slab = static_cast<int>(blockIdx.x % p.nslab);
  const int64_t b = bh / p.NH, hh = bh % p.NH;
  const int64_t slab_begin = int64_t(slab) * p.slab_width;

  const int tpr = p.tile_threads;
  const int groups = kStepThreads / tpr;
  const int tile_width = tpr * VEC;
  const int row0 = tid / tpr;
  const int col_in_tile = (tid % tpr) * VEC;
  const TS* c_in = p.has_initial ? static_cast<const TS*>(p.c_in) + b * p.c_in_s0 + hh * p.c_in_s1 : nullptr;

  // Loads of C do not depend on the prologue: put the first batch in flight before it.
  float c[kStepUnroll][VEC];
  load_rows<TS, VEC>(c, c_in, p.c_in_s2, slab_begin + col_in_tile, row0, groups, static_cast<int>(p.DHQK));

  // When the whole state is small, start the rest of the slab on its way to L2 too (every 128-byte
  // line of every row): with few blocks in flight their latency is not hidden by other blocks.
  if (p.prefetch_l2 && p.has_initial) {
    const char* c_rows = reinterpret_cast<const char*>(static_cast<const TS*>(p.c_in) + b * p.c_in_s0 + hh * p.c_in_s1 +
                                                       slab_begin);
    const int row_bytes = p.slab_width * static_cast<int>(sizeof(TS));
    const int lines = (row_bytes + 127) / 128 + 1;  // +1: the row need not start on a line
    for (int x = tid; x < p.DHQK * lines; x += kStepThreads) {
      const int r = x / lines, l = x % lines;
      const char* addr = c_rows + r * p.c_in_s2 * int64_t(sizeof(TS)) + min(l * 128, row_bytes - 1);
      asm volatile("prefetch.global.L2 [%0];\n" ::"l"(addr));
    }
  }

  // Gates and stabiliser; m_{t-1} is read by every thread before the cluster arrive below.
  const float i_gate = load_any(p.i, b * p.i_s0 + hh * p.i_s1, p.gate_dtype);
  const float f_gate = load_any(p.f, b * p.f_s0 + hh * p.f_s1, p.gate_dtype);
  const float m_prev = p.has_initial ? to_float(static_cast<const TS*>(p.m_in)[b * p.m_in_s0 + hh * p.m_in_s1]) : 0.0f;
  const GateStep g = gate_step(i_gate, log_sigmoid(f_gate), m_prev);
  const float F = expf(g.log_f), I = expf(g.log_i);

  // n_t = F n_{t-1} + I k, and n_t . q^ (kept in registers until the writer stores it).
  const TQ* q = static_cast<const TQ*>(p.q) + b * p.q_s0 + hh * p.q_s1;
  const TQ* k = static_cast<const TQ*>(p.k) + b * p.k_s0 + hh * p.k_s1;
  const TS* n_in = p.has_initial ? static_cast<const TS*>(p.n_in) + b * p.n_in_s0 + hh * p.n_in_s1 : nullptr;
  float n_new[kRowsPerThread];
  float nq_part = 0.0f;
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {
    const int r = tid + j * kStepThreads;
    n_new[j] = 0.0f;
    if (r < p.DHQK) {
      const float kr = to_float(k[r]);
      const float qr = to_float(q[r]) * p.qk_scale;
      const float n_prev = p.has_initial ? to_float(n_in[r]) : 0.0f;
      n_new[j] = fmaf(F, n_prev, I * kr);
      ik_s[r] = I * kr;
      q_s[r] = qr;
      nq_part = fmaf(n_new[j], qr, nq_part);
    }
  }
  const float nq = block_sum(nq_part, warp_scratch);  // its barrier also publishes ik_s and q_s
  if (p.cluster_in_place) cluster_arrive_release();   // this block is done reading n_{t-1} and m_{t-1}
  const float inv_denominator = 1.0f / (fmaxf(fabsf(nq), expf(-g.m)) + p.eps);

  const TQ* v = static_cast<const TQ*>(p.v) + b * p.v_s0 + hh * p.v_s1;
  TS* c_out = static_cast<TS*>(p.c_out) + b * p.c_out_s0 + hh * p.c_out_s1;
  TQ* h = static_cast<TQ*>(p.h) + b * p.h_s0 + hh * p.h_s1;

  for (int64_t tile = slab_begin; tile < slab_begin + p.slab_width; tile += tile_width) {
    const int64_t col = tile + col_in_tile;
    float v_col[VEC], h_acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) v_col[j] = to_float(v[col + j]), h_acc[j] = 0.0f;

    for (int r_base = row0; r_base < p.DHQK; r_base += groups * kStepUnroll) {
      // All loads of a batch before its stores: in place, the stores may alias them.
      if (tile != slab_begin || r_base != row0)
        load_rows<TS, VEC>(c, c_in, p.c_in_s2, col, r_base, groups, static_cast<int>(p.DHQK));
#pragma unroll
      for (int u = 0; u < kStepUnroll; ++u) {
        const int r = r_base + u * groups;
        if (r < p.DHQK) {
          const float ikr = ik_s[r], qr = q_s[r];
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            c[u][j] = fmaf(F, c[u][j], ikr * v_col[j]);
            h_acc[j] = fmaf(c[u][j], qr, h_acc[j]);
          }
          store_vec<TS, VEC>(c_out + r * p.c_out_s2 + col, c[u]);
        }
      }
    }

#pragma unroll
    for (int j = 0; j < VEC; ++j) h_red[row0 * tile_width + col_in_tile + j] = h_acc[j];
    __syncthreads();
    for (int x = tid; x < tile_width; x += kStepThreads) {
      float s = 0.0f;
      for (int gr = 0; gr < groups; ++gr) s += h_red[gr * tile_width + x];
      h[tile + x] = from_float<TQ>(s * inv_denominator);
    }
    __syncthreads();  // h_red is reused by the next tile
  }

  // n_t and m_t: written once per (b, h), after every block of the (b, h) has read n_{t-1}, m_{t-1}.
  // Without a cluster, in place means nslab == 1 and the barriers above ordered this block's reads.
  if (p.cluster_in_place) cluster_wait_acquire();
  if (slab == 0) {
    TS* n_out = static_cast<TS*>(p.n_out) + b * p.n_out_s0 + hh * p.n_out_s1;
#pragma unroll
    for (int j = 0; j < kRowsPerThread; ++j) {
      const int r = tid + j * kStepThreads;
      if (r < p.DHQK) n_out[r] = from_float<TS>(n_new[j]);
    }
    if (tid == 0) static_cast<TS*>(p.m_out)[b * p.m_out_s0 + hh * p.m_out_s1] = from_float<TS>(g.m);
  }
}

}  // namespace mlstm::cuda::recurrent
