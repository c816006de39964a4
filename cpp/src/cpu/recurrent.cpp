// The recurrence on the CPU (recurrent_fwd, behind sequence_fwd and step_fwd: S == 1), one head per
// task, exactly the reference semantics of SPEC §2:
//   m_t = max(logsigmoid(f_t) + m_{t-1}, i_t)
//   C_t = exp(logsigmoid(f_t) + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T   (n_t likewise with k_t)
//   h_t = C_t^T q_hat_t / (max(|n_t . q_hat_t|, exp(-m_t)) + eps)
// The state stays in the accumulation type for the whole sequence and is rounded once when stored.
// step_fwd may be called in place (c/n/m_last the same buffers as c/n/m_initial): each head's state
// is read completely before anything of that head is written.
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
struct RecurrentScratch {
  bool ready = false;
  State<T> state;      // cn (DHQK, DV): C with n as its last column
  std::vector<T> q;    // (DHQK) q_t
  std::vector<T> k;    // (DHQK)
  std::vector<T> v;    // (DV) v_t with a trailing 1
  std::vector<double> out;  // (DV) num_t and den_t, accumulated in double (common.h)
  std::vector<T> row;  // (max(DHQK, DHHV))

  void init(int64_t DHQK, int64_t DHHV) {
    q.resize(DHQK);
    k.resize(DHQK);
    v.resize(DHHV + 1);
    out.resize(DHHV + 1);
    row.resize(std::max(DHQK, DHHV));
    ready = true;
  }
};

template <typename T>
void recurrent_head(const FwdParams& p, int64_t b, int64_t hd, RecurrentScratch<T>& w) {
  const int64_t S = p.S, DHQK = p.DHQK, DHHV = p.DHHV, DV = DHHV + 1;
  const double eps = static_cast<double>(p.eps);
  const double scale = 1.0 / std::sqrt(static_cast<double>(DHQK));
  load_initial_state(p.has_initial, /*m_starts_at_neg_inf=*/false, p.c_initial, p.n_initial, p.m_initial, b, hd,
                     DHQK, DHHV, w.state);
  T* cn = w.state.cn.data();
  const int64_t oq = head_offset(p.q, b, hd), ok = head_offset(p.k, b, hd), ov = head_offset(p.v, b, hd);
  const int64_t oi = head_offset(p.i, b, hd), of = head_offset(p.f, b, hd), oh = head_offset(p.h, b, hd);
  w.v[DHHV] = T(1);
  for (int64_t t = 0; t < S; ++t) {
    load_row(p.q, oq + t * p.q.stride[2], DHQK, w.q.data());
    load_row(p.k, ok + t * p.k.stride[2], DHQK, w.k.data());
    load_row(p.v, ov + t * p.v.stride[2], DHHV, w.v.data());
    // The gates in double (see chunk.h, RowSweep), rounded once to T.
    const double ig = load_element<double>(p.i.data, p.i.dtype, oi + t);
    const double fl = logsigmoid(load_element<double>(p.f.data, p.f.dtype, of + t));
    const double m_new = std::max(fl + w.state.m, ig);
    const T fgate = static_cast<T>(std::exp(fl + w.state.m - m_new)), igate = static_cast<T>(std::exp(ig - m_new));
    // One pass over the state: update row d of (C, n), then add its share q[d] * row to (num, den).
    std::fill(w.out.begin(), w.out.end(), 0.0);
    double* __restrict out = w.out.data();
    const T* vt = w.v.data();
    for (int64_t d = 0; d < DHQK; ++d) {
      T* __restrict row = cn + d * DV;
      const T a = igate * w.k[d];
      const double qd = static_cast<double>(w.q[d]);
      for (int64_t e = 0; e < DV; ++e) {
        row[e] = fgate * row[e] + a * vt[e];
        out[e] += qd * static_cast<double>(row[e]);
      }
    }
    w.state.m = m_new;
    const double denom = std::max(scale * std::fabs(out[DHHV]), std::exp(-m_new)) + eps;
    for (int64_t e = 0; e < DHHV; ++e) w.row[e] = static_cast<T>(scale * out[e] / denom);
    store_row(p.h, oh + t * p.h.stride[2], DHHV, w.row.data());
  }
  if (p.has_last) store_state(w.state, p.c_last, p.n_last, p.m_last, b, hd, DHQK, DHHV, w.row.data());
}

template <typename T>
mlstm_status run(const FwdParams& p) {
  const int64_t n_heads = p.B * p.NH;
  const double cost = 2.0 * double(p.S) * double(p.DHQK) * double(p.DHHV + 1);
  const int n_workers = worker_count(n_heads, cost);
  std::vector<RecurrentScratch<T>> scratch(static_cast<size_t>(n_workers));
  parallel_for(n_heads, n_workers, [&](int worker, int64_t task) {
    RecurrentScratch<T>& w = scratch[static_cast<size_t>(worker)];
    if (!w.ready) w.init(p.DHQK, p.DHHV);
    recurrent_head<T>(p, task / p.NH, task % p.NH, w);
  });
  return MLSTM_OK;
}

}  // namespace

mlstm_status recurrent_fwd(const FwdParams& p) { return p.q.dtype == MLSTM_FLOAT64 ? run<double>(p) : run<float>(p); }

}  // namespace mlstm::cpu::MLSTM_CPU_ISA
MLSTM_CPU_ISA_END
