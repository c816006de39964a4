// Gate stages of the parallel form: the per-tile gate tables that let the tile kernel build
// logD_{t,s} without differences of global cumulative sums, the stabiliser m_t, the backward's
// per-row normaliser terms, and the backward's gate gradients (reverse scans).
//
// Everything here is in log2 units (x2 = x * log2 e) so that the tile kernel needs at most one ex2
// per element (the forward's column factors 2^(c_s - Mc_J) spare even that below the diagonal).
// Tables are (B*NH, S_pad) with S_pad = NT * kTile, or (B*NH, NT) per tile ("granule").
//
// Construction of logD (per (b, h), granules of kTile = 32 positions, J(t) the granule of t):
//   f̃2_r = log2e * logsigmoid(f_r),   i2_s = log2e * i_s
//   Ar_t  = Σ_{r = start(J(t)) .. t} f̃2_r              (inclusive, local to the granule)
//   c_s   = Σ_{r = s+1 .. end(J(s))} f̃2_r + i2_s        (reverse exclusive, local; -inf past S)
//   g_J   = Σ_{r in J} f̃2_r                             (granule total)
//   logD2_{t,s} = Ar_t + E_{J(s),J(t)} + c_s   with the gap term
//   E_{j,J} = Σ_{r = end(j)+1 .. start(J)-1} f̃2_r = g_{j+1} + ... + g_{J-1}  (j < J),  E_{J,J} = -g_J.
// Every term is a sum over one granule or over the granules strictly between s and t, built by
// adding granule totals while walking away from the diagonal: no term is the difference of two long
// prefix sums, so the rounding error stays that of the terms actually summed (the "stablef" idea,
// per tile). On the diagonal granule Ar_t - g_J + c_s is a difference of sums over <= 32 terms.
//
// Stabiliser m2_t = max_s logD2_{t,s} = max(d_t, Ar_t + P_{J(t)}) where d_t is the recurrence
// d_t = max(d_{t-1} + f̃2_t, i2_t) restarted (at -inf) at each granule start, and
// P_J = max_{j<J} (E_{j,J} + max_{s in j} c_s) obeys P_0 = -inf, P_{J+1} = max(P_J + g_J, Mc_J).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "cuda/common.cuh"
#include "cuda/parallel_warp.cuh"
#include "mlstm/mlstm.h"

namespace mlstm::cuda::parallel {

// A (B, NH, S) gate tensor of any float dtype.
struct GateView {
  const void* data = nullptr;
  mlstm_dtype dtype = MLSTM_FLOAT32;
  int64_t stride_b = 0, stride_h = 0;

  __device__ __forceinline__ float load(int64_t b, int64_t h, int64_t t) const {
    const int64_t idx = b * stride_b + h * stride_h + t;
    switch (dtype) {
      case MLSTM_FLOAT16: return __half2float(static_cast<const __half*>(data)[idx]);
      case MLSTM_BFLOAT16: return __bfloat162float(static_cast<const __nv_bfloat16*>(data)[idx]);
      default: return static_cast<const float*>(data)[idx];
    }
  }
};

struct GateOut {
  void* data = nullptr;
  mlstm_dtype dtype = MLSTM_FLOAT32;
  int64_t stride_b = 0, stride_h = 0;

  __device__ __forceinline__ void store(int64_t b, int64_t h, int64_t t, float x) const {
    const int64_t idx = b * stride_b + h * stride_h + t;
    switch (dtype) {
      case MLSTM_FLOAT16: static_cast<__half*>(data)[idx] = __float2half_rn(x); break;
      case MLSTM_BFLOAT16: static_cast<__nv_bfloat16*>(data)[idx] = __float2bfloat16_rn(x); break;
      default: static_cast<float*>(data)[idx] = x; break;
    }
  }
};

__device__ __forceinline__ float log_sigmoid(float x) { return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }

// ---- forward and backward: the gate tables ------------------------------------------------------

struct GateTableParams {
  GateView i, f;
  int64_t NH = 0, S = 0, S_pad = 0;
  int32_t NT = 0;
  float* ar = nullptr;     // (B*NH, S_pad)  Ar_t
  float* d = nullptr;      // (B*NH, S_pad)  d_t (granule-local stabiliser)
  float* kterm = nullptr;  // (B*NH, S_pad)  c_s, -inf for s >= S
  float* gsum = nullptr;   // (B*NH, NT)     g_J
  float* cmax = nullptr;   // (B*NH, NT)     Mc_J = max_{s in J} c_s
  float* cfactor = nullptr;  // (B*NH, S_pad) forward only: 2^(c_s - Mc_J(s)) (0 where c_s = -inf), or null
};

// One block of kTile threads per (granule, b*h). The three scans over kTile values run in one thread:
// sequential order keeps them deterministic and they cost nothing next to the tile kernel.
__global__ void __launch_bounds__(kTile) parallel_gate_tables_kernel(const GateTableParams p) {
  __shared__ float s_f[kTile], s_i[kTile], s_ar[kTile], s_d[kTile], s_c[kTile], s_cmax[1];
  const int64_t bh = blockIdx.x / p.NT;
  const int J = static_cast<int>(blockIdx.x % p.NT);
  const int64_t b = bh / p.NH, h = bh % p.NH;
  const int u = threadIdx.x;
  const int64_t t = int64_t(J) * kTile + u;
  const bool valid = t < p.S;
  s_f[u] = valid ? log_sigmoid(p.f.load(b, h, t)) * kLog2e : 0.0f;
  s_i[u] = valid ? p.i.load(b, h, t) * kLog2e : -INFINITY;
  __syncthreads();
  if (u == 0) {
    float acc = 0.0f, run = -INFINITY;
    for (int r = 0; r < kTile; ++r) {
      acc += s_f[r];
      s_ar[r] = acc;
      run = fmaxf(run + s_f[r], s_i[r]);
      s_d[r] = run;
    }
    float rev = 0.0f, cmax = -INFINITY;
    for (int r = kTile - 1; r >= 0; --r) {
      const float c = rev + s_i[r];
      s_c[r] = c;
      cmax = fmaxf(cmax, c);
      rev += s_f[r];
    }
    p.gsum[bh * p.NT + J] = acc;
    p.cmax[bh * p.NT + J] = cmax;
    s_cmax[0] = cmax;
  }
  __syncthreads();
  const int64_t idx = bh * p.S_pad + t;
  p.ar[idx] = s_ar[u];
  p.d[idx] = s_d[u];
  p.kterm[idx] = s_c[u];
  // Mc_J = -inf only when every c_s of the granule is -inf; their factors are then 0, not NaN.
  if (p.cfactor != nullptr) p.cfactor[idx] = s_c[u] == -INFINITY ? 0.0f : exp2f(s_c[u] - s_cmax[0]);
}

// ---- forward: the stabiliser and the query-side exponent term -----------------------------------

struct StabiliserParams {
  int64_t S = 0, S_pad = 0;
  int32_t NT = 0;
  float log2_scale = 0.0f;  // log2(1/sqrt(DHQK)): q̂ = q * scale, folded into the exponent
  const float* ar = nullptr;
  const float* d = nullptr;
  const float* gsum = nullptr;
  const float* cmax = nullptr;
  float* prefix = nullptr;  // (B*NH, NT)  P_J
  float* m2 = nullptr;      // (B*NH, S)   m_t in log2 units (saved for the backward)
  float* qterm = nullptr;   // (B*NH, S_pad)  Ar_t - m2_t + log2(scale), -inf for t >= S
};

constexpr int kStabiliserThreads = 256;

// One block per (b, h): the granule recurrence for P_J (sequential, one thread), then every m_t.
__global__ void __launch_bounds__(kStabiliserThreads) parallel_stabiliser_kernel(const StabiliserParams p) {
  const int64_t bh = blockIdx.x;
  float* prefix = p.prefix + bh * p.NT;
  if (threadIdx.x == 0) {
    const float* gsum = p.gsum + bh * p.NT;
    const float* cmax = p.cmax + bh * p.NT;
    float run = -INFINITY;
    for (int J = 0; J < p.NT; ++J) {
      prefix[J] = run;
      run = fmaxf(run + gsum[J], cmax[J]);
    }
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < p.S_pad; t += blockDim.x) {
    const int64_t idx = bh * p.S_pad + t;
    const float ar = p.ar[idx];
    const float m = fmaxf(p.d[idx], ar + prefix[t / kTile]);
    if (t < p.S) {
      p.m2[bh * p.S + t] = m;
      p.qterm[idx] = ar - m + p.log2_scale;
    } else {
      p.qterm[idx] = -INFINITY;
    }
  }
}

// ---- backward: per-row normaliser terms ---------------------------------------------------------

// (B, NH, S, DHHV) operand of the row kernel.
template <typename T>
struct RowOperand {
  const T* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_s = 0;
};

template <typename T>
struct BwdRowParams {
  RowOperand<T> h, dh;
  int32_t DHHV = 0;
  int64_t NH = 0, S = 0, S_pad = 0, rows = 0;  // rows = B*NH*S_pad
  float log2_scale = 0.0f, eps = 0.0f;
  const float* m2 = nullptr;   // (B*NH, S) saved
  const float* den = nullptr;  // (B*NH, S) saved
  const float* ar = nullptr;   // (B*NH, S_pad)
  float* qterm_d = nullptr;    // (B*NH, S_pad)  Ar - m2 + log2 scale - log2(d_t): carries 1/d_t into exp2
  float* sigma = nullptr;      // (B*NH, S_pad)  -[|den| >= exp(-m)] sign(den) (dh.h)
  float* dm = nullptr;         // (B*NH, S_pad)  dL/dm_t through eps: -eps (dh.h) / d_t
};

constexpr int kRowWarps = 8;

// One warp per row t: d_t = max(|den_t|, exp(-m_t)) + eps and the terms of the exact gradient
// (docs/dev-notes.md): dS_{t,s} = (dh_t.v_s + sigma_t) / d_t, dm_t = -eps (dh_t.h_t) / d_t.
template <typename T>
__global__ void __launch_bounds__(32 * kRowWarps) parallel_bwd_rows_kernel(const BwdRowParams<T> p) {
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.rows) return;
  const int64_t bh = row / p.S_pad, t = row % p.S_pad;
  const int64_t idx = bh * p.S_pad + t;
  if (t >= p.S) {
    if (lane == 0) {
      p.qterm_d[idx] = -INFINITY;
      p.sigma[idx] = 0.0f;
      p.dm[idx] = 0.0f;
    }
    return;
  }
  const int64_t b = bh / p.NH, hh = bh % p.NH;
  const T* hrow = p.h.data + b * p.h.stride_b + hh * p.h.stride_h + t * p.h.stride_s;
  const T* dhrow = p.dh.data + b * p.dh.stride_b + hh * p.dh.stride_h + t * p.dh.stride_s;
  float dot = 0.0f;
  for (int c = lane; c < p.DHHV; c += 32) dot += to_float(hrow[c]) * to_float(dhrow[c]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  if (lane == 0) {
    const float m = p.m2[bh * p.S + t];
    const float den = p.den[bh * p.S + t];
    const float floor_term = exp2f(-m);  // exp(-m_t)
    const float abs_den = fabsf(den);
    const float d = fmaxf(abs_den, floor_term) + p.eps;
    p.qterm_d[idx] = (p.ar[idx] - m + p.log2_scale) - log2f(d);
    p.sigma[idx] = abs_den >= floor_term ? -copysignf(1.0f, den) * dot : 0.0f;
    p.dm[idx] = -p.eps * dot / d;
  }
}

// ---- backward: gate gradients -------------------------------------------------------------------

struct GateGradParams {
  GateView i, f;
  GateOut di, df;
  int64_t NH = 0, S = 0, S_pad = 0, BH = 0;
  int32_t n_slices = 0;          // head-dim slices of the row dots below
  const float* m2 = nullptr;     // (B*NH, S)
  const float* dm = nullptr;     // (B*NH, S_pad)
  const float* qdq = nullptr;    // (n_slices, B*NH, S_pad) partial q_t . dq_t
  const float* kdk = nullptr;    // (n_slices, B*NH, S_pad) partial k_t . dk_t
};

constexpr int kGateGradThreads = 256;

// One block per (b, h). With delta_t = q_t.dq_t - k_t.dk_t (every path included):
//   di_s = k_s.dk_s + [i-branch won at s] acc_s
//   df̃_r = Σ_{t >= r} delta_t + [f-branch won at r] acc_r
// where acc is the reverse scan of dm through m_t = max(f̃_t + m_{t-1}, i_t) (m_{-1} = -inf): it
// accumulates dm_t from the right and is handed to i_t (and reset) where the i-branch won.
// Each thread owns a contiguous run of positions: pass 1 summarises its run, one thread chains the
// runs from the right, pass 2 writes the gradients.
__global__ void __launch_bounds__(kGateGradThreads) parallel_gate_grads_kernel(const GateGradParams p) {
  __shared__ float s_delta[kGateGradThreads], s_acc[kGateGradThreads];
  __shared__ float s_delta_in[kGateGradThreads], s_acc_in[kGateGradThreads];
  __shared__ int s_reset[kGateGradThreads];
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / p.NH, h = bh % p.NH;
  const int tid = threadIdx.x;
  const int64_t run = (p.S + kGateGradThreads - 1) / kGateGradThreads;
  const int64_t lo = tid * run, hi = lo + run < p.S ? lo + run : p.S;

  auto dots = [&](int64_t t, float* kd) {
    float q = 0.0f, k = 0.0f;
    for (int sl = 0; sl < p.n_slices; ++sl) {
      const int64_t idx = (sl * p.BH + bh) * p.S_pad + t;
      q += p.qdq[idx];
      k += p.kdk[idx];
    }
    *kd = k;
    return q - k;
  };
  // The i-branch won at t exactly when the stabiliser equals i2_t (it is one of the max operands).
  auto i_won = [&](int64_t t) { return p.m2[bh * p.S + t] == p.i.load(b, h, t) * kLog2e; };

  float delta_sum = 0.0f, acc = 0.0f;
  int reset = 0;
  for (int64_t t = hi - 1; t >= lo; --t) {
    float kd;
    delta_sum += dots(t, &kd);
    acc += p.dm[bh * p.S_pad + t];
    if (i_won(t)) {
      acc = 0.0f;
      reset = 1;
    }
  }
  s_delta[tid] = delta_sum;
  s_acc[tid] = acc;
  s_reset[tid] = reset;
  __syncthreads();
  if (tid == 0) {
    float delta_in = 0.0f, acc_in = 0.0f;
    for (int r = kGateGradThreads - 1; r >= 0; --r) {
      s_delta_in[r] = delta_in;
      s_acc_in[r] = acc_in;
      delta_in += s_delta[r];
      acc_in = s_reset[r] ? s_acc[r] : s_acc[r] + acc_in;
    }
  }
  __syncthreads();
  float suffix = s_delta_in[tid];
  acc = s_acc_in[tid];
  for (int64_t t = hi - 1; t >= lo; --t) {
    float kd;
    suffix += dots(t, &kd);
    acc += p.dm[bh * p.S_pad + t];
    float di = kd, dft = suffix;
    if (i_won(t)) {
      di += acc;
      acc = 0.0f;
    } else {
      dft += acc;
    }
    const float f = p.f.load(b, h, t);
    p.di.store(b, h, t, di);
    p.df.store(b, h, t, dft / (1.0f + expf(f)));  // df = df̃ * sigmoid(-f)
  }
}

}  // namespace mlstm::cuda::parallel
