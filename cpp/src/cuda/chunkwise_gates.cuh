// The last backward launch of the chunkwise form: the gate gradients from q.dq, k.dk (summed over
// the walks' slices), the last-state term and the reverse scan of the stabiliser path.
#pragma once

#include "cuda/chunkwise_stages.cuh"

namespace mlstm::cuda::chunkwise {

// The reverse scans (SPEC §2, docs/dev-notes.md):
//   di_t  = k_t.dk_t + [i-branch at t] A_t
//   df~_t = sum_{t'>=t} (q.dq - k.dk)_{t'} + <dc_last, c_last> + <dn_last, n_last> + [f-branch at t] A_t
//   A_t   = dm_t + [f-branch at t+1] A_{t+1}, dm_t = -eps (dh_t.h_t)/d_t (+ dm_last - <...> at t = S-1)
//   dm_initial = <dc_initial, c_initial> + <dn_initial, n_initial> + [f-branch at 0] A_0
// One block per (b, h); each of its warps owns a contiguous range of tokens. A first pass gives every
// range its totals (sum of q.dq - k.dk, A at its first token without carry, whether a token past
// its first took the i-branch, the branch of its first token); they are chained from the last range,
// then every warp scans its range again with the carries of the ranges after it and writes di, df.
constexpr int kGateWarps = 16;

struct GateCarry {
  float sum;     // df~ of the token after the range, minus its own stabiliser part
  float a;       // A of the token after the range
  bool next_ib;  // whether the token after the range took the i-branch
};

// Scans tokens [begin, end) of (b, h) from the end in blocks of 32 (one warp), starting from `c`.
// Returns the carry at `begin`; `inner_ib` receives whether a token in (begin, end) took the i-branch.
__device__ inline GateCarry gate_scan_range(const GatesParams& p, int64_t bh, int64_t b, int64_t h, int64_t begin,
                                            int64_t end, GateCarry c, float lam, float m0, float dml, bool write,
                                            bool* inner_ib) {
  const int lane = threadIdx.x & 31;
  bool any_ib = false;
  for (int64_t base = begin + ((end - begin - 1) / 32) * 32; end > begin && base >= begin; base -= 32) {
    const int64_t tt = base + lane;
    const bool valid = tt < end;
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
    any_ib = any_ib || __any_sync(0xffffffffu, ib && tt > begin);
    // Suffix sums of q.dq - k.dk within the block.
    float s = valid ? qdq - kdk : 0.f;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const float o = __shfl_down_sync(0xffffffffu, s, d);
      if (lane + d < 32) s += o;
    }
    float dft = s + c.sum;
    c.sum += __shfl_sync(0xffffffffu, s, 0);
    // A_t by a segmented suffix scan: the chain stops after t when token t+1 took the i-branch.
    bool stop = __shfl_down_sync(0xffffffffu, int(ib), 1) != 0;
    if (lane == 31) stop = c.next_ib;
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
    if (!stop) a += c.a;
    if (write && valid) {
      float di = kdk;
      if (ib)
        di += a;
      else
        dft += a;
      store_gate(const_cast<void*>(p.di.data), p.gate_dtype, p.di.offset(b, h, tt), di);
      store_gate(const_cast<void*>(p.df.data), p.gate_dtype, p.df.offset(b, h, tt), dft / (1.f + expf(fv)));
    }
    c.a = __shfl_sync(0xffffffffu, a, 0);
    c.next_ib = __shfl_sync(0xffffffffu, int(ib), 0) != 0;
  }
  if (inner_ib != nullptr) *inner_ib = any_ib;
  return c;
}

// Dynamic shared memory of the gate kernel: the ranges' totals, their chained carries, their flags.
constexpr size_t kGateSmemBytes = 2 * kGateWarps * sizeof(GateCarry) + kGateWarps * sizeof(int);

__global__ void __launch_bounds__(kGateWarps * 32) chunkwise_bwd_gates_kernel(const GatesParams p) {
  GateCarry* local = reinterpret_cast<GateCarry*>(dynamic_smem());
  GateCarry* chained = local + kGateWarps;
  int* inner = reinterpret_cast<int*>(chained + kGateWarps);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / p.NH, h = bh % p.NH;
  float lam = 0.f, c0dot = 0.f, n0dot = 0.f;
  for (int s = 0; s < p.n_lam; ++s) lam += p.lam_part[s * p.BNH + bh];
  for (int s = 0; s < p.n_c0; ++s) c0dot += p.c0_part[s * p.BNH + bh];
  for (int s = 0; s < p.n_n0; ++s) n0dot += p.n0_part[s * p.BNH + bh];
  const float m0 = p.m_in.data != nullptr ? *p.m_in.row<float>(b, h, 0) : 0.f;
  const float dml = p.dm_last.data != nullptr ? *p.dm_last.row<float>(b, h, 0) : 0.f;

  const int64_t per = (p.S + 32 * kGateWarps - 1) / (32 * kGateWarps) * 32;  // tokens per warp, whole blocks
  const int64_t begin = min(p.S, warp * per), end = min(p.S, begin + per);
  bool inner_ib = false;
  const GateCarry mine = gate_scan_range(p, bh, b, h, begin, end, GateCarry{0.f, 0.f, false}, lam, m0, dml, false, &inner_ib);
  if (lane == 0) local[warp] = mine, inner[warp] = int(inner_ib);
  __syncthreads();
  if (threadIdx.x == 0) {
    // Chain from the last range: the carry into range w is the true state at range w+1's first token.
    GateCarry c{lam, 0.f, false};
    for (int w = kGateWarps - 1; w >= 0; --w) {
      chained[w] = c;
      const GateCarry& l = local[w];
      const bool reaches = inner[w] == 0 && !c.next_ib;  // does the carry reach the range's first token?
      const bool empty = w * per >= p.S;
      if (!empty) {
        c = GateCarry{c.sum + l.sum, l.a + (reaches ? c.a : 0.f), l.next_ib};
      }
    }
    if (p.dm_in.data != nullptr) *p.dm_in.mut_row<float>(b, h, 0) = c0dot + n0dot + (c.next_ib ? 0.f : c.a);
  }
  __syncthreads();
  gate_scan_range(p, bh, b, h, begin, end, chained[warp], lam, m0, dml, true, nullptr);
}

}  // namespace mlstm::cuda::chunkwise
