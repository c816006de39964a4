// Forward of the chunkwise mLSTM form on the CPU (SPEC §2), one head per task:
//
//   for each chunk k of L rows (the last may be shorter), starting from the state (C_k, n_k, m_k):
//     row t:  m_t   = max(b_t + m_k, max_s logD_{t,s})            (chunk.h: RowSweep)
//             num_t = beta_t C_k^T q_hat_t + sum_{s<=t} (q_hat_t . k_s) dbar_{t,s} v_s
//             den_t = beta_t n_k . q_hat_t + sum_{s<=t} (q_hat_t . k_s) dbar_{t,s}
//             h_t   = num_t / (max(|den_t|, exp(-m_t)) + eps)
//     state:  (C, n, m)_{k+1} from the weights of the chunk's last row  (chunk.h: advance_state)
//
// With L = S, no state and m_0 = -inf this is exactly the parallel form: logD built by running sums
// (stablef), m_t = max_s logD_{t,s}, n_t = max(|sum_s C~_{t,s}|, exp(-m_t)).
//
// Nothing is saved for the backward: it recomputes the rows and states with these same routines
// (chunk.h), which costs a fraction of its own work and keeps it independent of any saved buffer.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "cpu/chunk.h"
#include "cpu/common.h"
#include "cpu/forms.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"

MLSTM_CPU_ISA_BEGIN
namespace mlstm::cpu::MLSTM_CPU_ISA {
namespace {

template <typename T>
struct FwdScratch {
  bool ready = false;
  Chunk<T> chunk;
  RowSweep<T> sweep;
  State<T> state;
  std::vector<double> dbar;  // (L) intra weights of one row
  std::vector<double> ctil;  // (L) (q_hat_t . k_s) dbar_{t,s}
  std::vector<double> out;   // (DV) num_t and den_t
  std::vector<T> row;    // (max(DHQK, DHHV)) conversion scratch

  void init(int64_t DHQK, int64_t DHHV, int64_t L) {
    chunk.reserve(DHQK, DHHV, L);
    sweep.reserve(L);
    dbar.resize(L);
    ctil.resize(L);
    out.resize(DHHV + 1);
    row.resize(std::max(DHQK, DHHV));
    ready = true;
  }
};

template <typename T>
void forward_head(const FwdParams& p, int64_t L, int64_t b, int64_t hd, FwdScratch<T>& w) {
  const int64_t S = p.S, DHQK = p.DHQK, DHHV = p.DHHV;
  const double eps = static_cast<double>(p.eps);
  load_initial_state(p.has_initial, p.m_starts_at_neg_inf, p.c_initial, p.n_initial, p.m_initial, b, hd, DHQK,
                     DHHV, w.state);
  const int64_t NC = (S + L - 1) / L;
  const int64_t oh = head_offset(p.h, b, hd);
  for (int64_t kc = 0; kc < NC; ++kc) {
    const int64_t t0 = kc * L, len = std::min(L, S - t0);
    w.chunk.load(p.q, p.k, p.v, p.i, p.f, b, hd, t0, len, /*with_q=*/true);
    w.sweep.start(w.chunk, w.state.m);
    for (int64_t t = 0; t < len; ++t) {
      const double denom = next_row_outputs(w.chunk, w.sweep, w.state.cn.data(), eps, w.dbar.data(), w.ctil.data(),
                                            w.out.data());
      for (int64_t e = 0; e < DHHV; ++e) w.row[e] = static_cast<T>(w.out[e] / denom);
      store_row(p.h, oh + (t0 + t) * p.h.stride[2], DHHV, w.row.data());
    }
    if (kc + 1 < NC || p.has_last) advance_state(w.chunk, w.sweep, w.state, w.dbar.data());
  }
  if (p.has_last) store_state(w.state, p.c_last, p.n_last, p.m_last, b, hd, DHQK, DHHV, w.row.data());
}

template <typename T>
mlstm_status run(const FwdParams& p, int64_t L) {
  L = std::min(L, p.S);
  const int64_t n_heads = p.B * p.NH;
  // Multiply-adds per head: the intra-chunk products (~L/2 columns per row) and the state products.
  const double cost = double(p.S) * (double(L) * double(p.DHQK + p.DHHV) + 2.0 * double(p.DHQK) * double(p.DHHV + 1));
  const int n_workers = worker_count(n_heads, cost);
  std::vector<FwdScratch<T>> scratch(static_cast<size_t>(n_workers));
  parallel_for(n_heads, n_workers, [&](int worker, int64_t task) {
    FwdScratch<T>& w = scratch[static_cast<size_t>(worker)];
    if (!w.ready) w.init(p.DHQK, p.DHHV, L);
    forward_head<T>(p, L, task / p.NH, task % p.NH, w);
  });
  return MLSTM_OK;
}

}  // namespace

mlstm_status chunked_fwd(const FwdParams& p, int64_t L) {
  if (L < 1) return fail(MLSTM_ERROR_INTERNAL, "%s: chunk size %lld", form_name(p.form), static_cast<long long>(L));
  return p.q.dtype == MLSTM_FLOAT64 ? run<double>(p, L) : run<float>(p, L);
}

}  // namespace mlstm::cpu::MLSTM_CPU_ISA
MLSTM_CPU_ISA_END
