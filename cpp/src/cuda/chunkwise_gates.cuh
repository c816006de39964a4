// The last backward launch of the chunkwise form: the gate gradients from q.dq, k.dk (summed over
// the walks' slices), the last-state term and the reverse scan of the stabiliser path.
#pragma once

#include "cuda/chunkwise_stages.cuh"

namespace mlstm::cuda::chunkwise {

// One warp per (b, h) walks the tokens from the end in blocks of 32 (SPEC §2, docs/dev-notes.md):
//   di_t  = k_t.dk_t + [i-branch at t] A_t
//   df~_t = sum_{t'>=t} (q.dq - k.dk)_{t'} + <dc_last, c_last> + <dn_last, n_last> + [f-branch at t] A_t
//   A_t   = dm_t + [f-branch at t+1] A_{t+1}, dm_t = -eps (dh_t.h_t)/d_t (+ dm_last - <...> at t = S-1)
//   dm_initial = <dc_initial, c_initial> + <dn_initial, n_initial> + [f-branch at 0] A_0
__global__ void __launch_bounds__(256) chunkwise_bwd_gates_kernel(const GatesParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t bh = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (bh >= p.BNH) return;
  const int64_t b = bh / p.NH, h = bh % p.NH;
  float lam = 0.f, c0dot = 0.f, n0dot = 0.f;
  for (int s = 0; s < p.n_lam; ++s) lam += p.lam_part[s * p.BNH + bh];
  for (int s = 0; s < p.n_c0; ++s) c0dot += p.c0_part[s * p.BNH + bh];
  for (int s = 0; s < p.n_n0; ++s) n0dot += p.n0_part[s * p.BNH + bh];
  const float m0 = p.m_in.data != nullptr ? *p.m_in.row<float>(b, h, 0) : 0.f;
  const float dml = p.dm_last.data != nullptr ? *p.dm_last.row<float>(b, h, 0) : 0.f;

  float carry_sum = lam;  // df~ of the token after the block, minus its own stabiliser part
  float carry_a = 0.f;    // A of the token after the block
  bool next_ib = false;   // whether the token after the block took the i-branch
  for (int64_t base = ((p.S - 1) / 32) * 32; base >= 0; base -= 32) {
    const int64_t tt = base + lane;
    const bool valid = tt < p.S;
    float qdq = 0.f, kdk = 0.f, dm = 0.f, fv = 0.f;
    bool ib = false;
    if (valid) {
      for (int s = 0; s < p.n_qdq; ++s) qdq += p.qdq_part[(s * p.BNH + bh) * p.S + tt];
      for (int s = 0; s < p.n_kdk; ++s) kdk += p.kdk_part[(s * p.BNH + bh) * p.S + tt];
      dm = p.dm_tok[bh * p.S + tt];
      if (tt == p.S - 1) dm += dml - lam;
      fv = load_gate(p.f.data, p.gate_dtype, p.f.offset(b, h, tt));
      const float iv = load_gate(p.i.data, p.gate_dtype, p.i.offset(b, h, tt));
      const float m_prev = tt > 0 ? p.m_saved[bh * p.S + tt - 1] : m0;
      ib = iv > logsigmoid(fv) + m_prev;
    }
    // Suffix sums of q.dq - k.dk within the block.
    float s = valid ? qdq - kdk : 0.f;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const float o = __shfl_down_sync(0xffffffffu, s, d);
      if (lane + d < 32) s += o;
    }
    float dft = s + carry_sum;
    carry_sum += __shfl_sync(0xffffffffu, s, 0);
    // A_t by a segmented suffix scan: the chain stops after t when token t+1 took the i-branch.
    bool stop = __shfl_down_sync(0xffffffffu, int(ib), 1) != 0;
    if (lane == 31) stop = next_ib;
    float a = dm;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const float oa = __shfl_down_sync(0xffffffffu, a, d);
      const bool os = __shfl_down_sync(0xffffffffu, int(stop), d) != 0;
      if (lane + d < 32 && !stop) {
        a += oa;
        stop = os;
      }
    }
    if (!stop) a += carry_a;
    float di = kdk;
    if (ib)
      di += a;
    else
      dft += a;
    if (valid) {
      store_gate(const_cast<void*>(p.di.data), p.gate_dtype, p.di.offset(b, h, tt), di);
      store_gate(const_cast<void*>(p.df.data), p.gate_dtype, p.df.offset(b, h, tt), dft / (1.f + expf(fv)));
    }
    carry_a = __shfl_sync(0xffffffffu, a, 0);
    next_ib = __shfl_sync(0xffffffffu, int(ib), 0) != 0;
  }
  if (lane == 0 && p.dm_in.data != nullptr)
    *p.dm_in.mut_row<float>(b, h, 0) = c0dot + n0dot + (next_ib ? 0.f : carry_a);
}

}  // namespace mlstm::cuda::chunkwise
