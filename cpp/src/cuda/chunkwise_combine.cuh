// Chains the local states of a segmented walk (CombineParams): one thread per element of the state
// (DHQK x DHHV) and of the extra vector (DHQK), sequential over the segments. Cheap: it touches each
// segment's state once.
#pragma once

#include "cuda/chunkwise_stages.cuh"

namespace mlstm::cuda::chunkwise {

__global__ void __launch_bounds__(256) chunkwise_combine_kernel(const CombineParams p) {
  const int64_t bh = blockIdx.y, b = bh / p.NH, h = bh % p.NH;
  const int64_t cs = int64_t(p.DHQK) * p.DHHV;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // [0, cs): state, [cs, cs + DHQK): vector
  if (e >= cs + p.DHQK) return;
  const bool is_vec = e >= cs;
  const int64_t row = is_vec ? e - cs : e / p.DHHV, col = is_vec ? 0 : e % p.DHHV;
  float x = 0.f;
  if (!is_vec && p.state_in.data != nullptr)
    x = p.state_in.data[p.state_in.offset(b, h) + row * p.state_in.s_row + col];
  if (is_vec && p.aug_in.data != nullptr) x = p.aug_in.row<float>(b, h, 0)[row];
  auto delta = [&](int j) {
    return is_vec ? p.delta.n[(j * p.BNH + bh) * p.DHQK + row] : p.delta.C[(j * p.BNH + bh) * cs + e];
  };
  auto store = [&](int j, float v) {
    if (is_vec)
      p.start.n[(j * p.BNH + bh) * p.DHQK + row] = v;
    else
      p.start.C[(j * p.BNH + bh) * cs + e] = v;
  };
  if (!p.backward) {
    float m = p.m_in.data != nullptr ? *p.m_in.row<float>(b, h, 0) : 0.f;
    for (int j = 0; j + 1 < p.n_seg; ++j) {
      const float g = p.delta.g[j * p.BNH + bh], m_local = p.delta.m[j * p.BNH + bh];
      const float m_next = fmaxf(g + m, m_local);
      x = expf(g + m - m_next) * x + expf(m_local - m_next) * delta(j);
      store(j + 1, x);
      if (e == 0) p.start.m[(j + 1) * p.BNH + bh] = m_next;
      m = m_next;
    }
  } else {
    for (int j = p.n_seg - 1; j >= 1; --j) {
      const int64_t t_begin = int64_t(j) * p.seg_tokens;
      const int64_t t_end = t_begin + p.seg_tokens < p.S ? t_begin + p.seg_tokens : p.S;
      const float m_start = p.m_saved[bh * p.S + t_begin - 1], m_end = p.m_saved[bh * p.S + t_end - 1];
      x = expf(p.delta.g[j * p.BNH + bh] + m_start - m_end) * x + delta(j);
      store(j - 1, x);
    }
  }
}

}  // namespace mlstm::cuda::chunkwise
