// Backward of the chunkwise mLSTM on the CPU: the exact gradient of the function chunked_forward.cpp
// computes (docs/dev-notes.md, "Exact gradients"), one head per task. Also the parallel form's
// backward (L = S, no state, m_0 = -inf).
//
// With every stabiliser held fixed, the stabilised computation is an exact function of the true
// (unstabilised) quantities, so dq, dk, dv, dc_initial and dn_initial come from the usual chunkwise
// backward with the normaliser folded in. With d_t = max(|den_t|, exp(-m_t)) + eps,
//   dh'_t = dh_t / d_t,   sigma_t = -[|den_t| >= exp(-m_t)] sign(den_t) (dh_t . h_t) / d_t
// is the gradient of (num_t, den_t), so sigma_t rides in the column of ones appended to v.
// Per chunk k, with cn_k = (C, n)_k the state it starts from, dcn_{k+1} the gradient arriving at the
// state after it, and (gamma, w_j) the state weights of its last row (chunk.h, advance_state):
//   P_{t,s}   = (dh'_t, sigma_t) . (v_s, 1) dbar_{t,s}                  (gradient of q_hat_t . k_s)
//   (q_hat = q / sqrt(DHQK); the scale is applied in double where q enters)
//   dq_hat_t  = sum_{s<=t} P_{t,s} k_s + beta_t cn_k (dh'_t, sigma_t)
//   dk_s      = sum_{t>=s} P_{t,s} q_hat_t + w_s dcn_{k+1} (v_s, 1)
//   dv_s      = sum_{t>=s} (q_hat_t . k_s) dbar_{t,s} dh'_t + w_s dC_{k+1}^T k_s
//   dcn_k     = sum_t beta_t q_hat_t (dh'_t, sigma_t)^T + gamma dcn_{k+1}
// The gate gradients then follow from dq, dk and the stabiliser path (gates_backward.h).
//
// The chunk states are recomputed from the inputs with the forward's own routines (chunk.h), so the
// stabilisers -- and with them the branch taken by every max -- are bitwise those of the forward.
// They are kept for a segment of chunks at a time: all chunks when their states fit a per-thread
// budget, otherwise checkpoints every G ~ sqrt(NC) chunks and one segment recomputed at a time.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "cpu/chunk.h"
#include "cpu/common.h"
#include "cpu/forms.h"
#include "cpu/gates_backward.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"

MLSTM_CPU_ISA_BEGIN
namespace mlstm::cpu::MLSTM_CPU_ISA {
namespace {

// Bytes of chunk states one thread may keep before the backward switches to checkpoints.
constexpr double kStateBudgetBytes = 16.0 * 1024 * 1024;

template <typename T>
struct BwdScratch {
  bool ready = false;
  Chunk<T> chunk;
  RowSweep<T> sweep;
  State<T> work;                // the state being advanced through the chunks
  std::vector<T> ckpt_cn;       // (n_segments, DHQK * DV) the state at the start of every segment
  std::vector<double> ckpt_m;   // (n_segments)
  std::vector<T> seg_cn;        // (G, DHQK * DV) the state at the start of every chunk of a segment
  std::vector<double> seg_m;    // (G)
  std::vector<T> cnT;           // (DV, DHQK) the chunk's starting state, transposed
  std::vector<T> dcn;           // (DHQK, DV) gradient at the state after the current chunk
  std::vector<T> dcnT;          // (DV, DHQK)
  std::vector<T> dcn_local;     // (DHQK, DV) this chunk's outputs' share of the gradient at its start
  std::vector<T> vT;            // (DV, L)
  std::vector<double> dbar;     // (L) one row's weights
  std::vector<T> p;             // (L) one row's score gradients
  std::vector<double> ctil;     // (L) scores times weights
  std::vector<double> out;      // (DV) (num_t, den_t)
  std::vector<T> dh, dhp;       // (DV) dh_t and (dh'_t, sigma_t)
  std::vector<T> dqh;           // (DHQK)
  std::vector<T> dk, dv;        // (L, DHQK), (L, DHHV)
  std::vector<double> qdq, dm;  // (L) q_t . dq_t and the stabiliser gradient -eps (dh_t . h_t) / d_t
  std::vector<char> i_branch;   // (L) m_t == i_t
  std::vector<T> di, df;        // (L)
  std::vector<T> row;           // (max(DHQK, DHHV)) conversion scratch

  void init(int64_t DHQK, int64_t DHHV, int64_t L, int64_t G, int64_t n_segments) {
    const int64_t DV = DHHV + 1;
    chunk.reserve(DHQK, DHHV, L);
    sweep.reserve(L);
    ckpt_cn.resize(n_segments * DHQK * DV);
    ckpt_m.resize(n_segments);
    seg_cn.resize(G * DHQK * DV);
    seg_m.resize(G);
    cnT.resize(DV * DHQK);
    dcn.resize(DHQK * DV);
    dcnT.resize(DV * DHQK);
    dcn_local.resize(DHQK * DV);
    vT.resize(DV * L);
    dbar.resize(L), ctil.resize(L), p.resize(L);
    out.resize(DV), dh.resize(DV), dhp.resize(DV);
    dqh.resize(DHQK);
    dk.resize(L * DHQK), dv.resize(L * DHHV);
    qdq.resize(L), dm.resize(L), i_branch.resize(L);
    di.resize(L), df.resize(L);
    row.resize(std::max(DHQK, DHHV));
    ready = true;
  }
};

template <typename T>
class HeadBackward {
 public:
  HeadBackward(const BwdParams& p, int64_t L, int64_t G, int64_t b, int64_t h, BwdScratch<T>& w)
      : p_(p), L_(L), G_(G), b_(b), h_(h), w_(w), DHQK_(p.DHQK), DHHV_(p.DHHV), DV_(p.DHHV + 1),
        eps_(static_cast<double>(p.eps)) {}

  void run() {
    const int64_t S = p_.S, NC = (S + L_ - 1) / L_, n_segments = (NC + G_ - 1) / G_;
    const int64_t state_size = DHQK_ * DV_;
    load_initial_state(p_.has_initial, p_.m_starts_at_neg_inf, p_.c_initial, p_.n_initial, p_.m_initial, b_, h_, DHQK_,
                       DHHV_, w_.work);
    save(w_.work, &w_.ckpt_cn[0], &w_.ckpt_m[0]);
    for (int64_t kc = 0; kc < (n_segments - 1) * G_; ++kc) {
      advance(kc);
      if ((kc + 1) % G_ == 0) save(w_.work, &w_.ckpt_cn[(kc + 1) / G_ * state_size], &w_.ckpt_m[(kc + 1) / G_]);
    }

    // Gradient arriving at the final state.
    std::fill(w_.dcn.begin(), w_.dcn.end(), T(0));
    double dm_last = 0.0;
    if (p_.has_dlast) {
      const int64_t oc = head_offset(p_.dc_last, b_, h_);
      for (int64_t d = 0; d < DHQK_; ++d) load_row(p_.dc_last, oc + d * p_.dc_last.stride[2], DHHV_, &w_.dcn[d * DV_]);
      load_row(p_.dn_last, head_offset(p_.dn_last, b_, h_), DHQK_, w_.row.data());
      for (int64_t d = 0; d < DHQK_; ++d) w_.dcn[d * DV_ + DHHV_] = w_.row[d];
      dm_last = load_element<double>(p_.dm_last.data, p_.dm_last.dtype, head_offset(p_.dm_last, b_, h_));
    }
    has_dcn_ = p_.has_dlast;

    for (int64_t seg = n_segments - 1; seg >= 0; --seg) {
      const int64_t k_begin = seg * G_, k_end = std::min(NC, k_begin + G_);
      const bool last_segment = seg == n_segments - 1;
      std::copy_n(&w_.ckpt_cn[seg * state_size], state_size, w_.work.cn.begin());
      w_.work.m = w_.ckpt_m[seg];
      for (int64_t kc = k_begin; kc < k_end; ++kc) {
        save(w_.work, &w_.seg_cn[(kc - k_begin) * state_size], &w_.seg_m[kc - k_begin]);
        // The last segment also runs through its last chunk when the final state is needed.
        if (kc + 1 < k_end || (last_segment && p_.has_dlast)) advance(kc);
      }
      if (last_segment) {
        const double last_dot = p_.has_dlast ? dot_wide(state_size, w_.dcn.data(), w_.work.cn.data()) : 0.0;
        scan_.begin(last_dot, dm_last);
      }
      for (int64_t kc = k_end - 1; kc >= k_begin; --kc)
        chunk_backward(kc, &w_.seg_cn[(kc - k_begin) * state_size], w_.seg_m[kc - k_begin]);
    }

    if (!p_.has_initial) return;
    // w_.dcn is now the gradient at the initial state; ckpt 0 holds that state.
    const int64_t oc = head_offset(p_.dc_initial, b_, h_);
    for (int64_t d = 0; d < DHQK_; ++d) store_row(p_.dc_initial, oc + d * p_.dc_initial.stride[2], DHHV_, &w_.dcn[d * DV_]);
    for (int64_t d = 0; d < DHQK_; ++d) w_.row[d] = w_.dcn[d * DV_ + DHHV_];
    store_row(p_.dn_initial, head_offset(p_.dn_initial, b_, h_), DHQK_, w_.row.data());
    const double dm0 = scan_.dm_initial(dot_wide(state_size, w_.dcn.data(), w_.ckpt_cn.data()));
    store_row(p_.dm_initial, head_offset(p_.dm_initial, b_, h_), 1, &dm0);
  }

 private:
  void save(const State<T>& s, T* cn, double* m) {
    std::copy(s.cn.begin(), s.cn.end(), cn);
    *m = s.m;
  }

  void advance(int64_t kc) {
    const int64_t t0 = kc * L_, len = std::min(L_, p_.S - t0);
    w_.chunk.load(p_.q, p_.k, p_.v, p_.i, p_.f, b_, h_, t0, len, /*with_q=*/false);
    advance_state(w_.chunk, w_.sweep, w_.work, w_.dbar.data());
  }

  // Gradients of chunk kc, given the state it started from; turns w_.dcn into the gradient at that
  // state.
  void chunk_backward(int64_t kc, const T* cn, double m_k) {
    const int64_t t0 = kc * L_, len = std::min(L_, p_.S - t0);
    const int64_t DHQK = DHQK_, DHHV = DHHV_, DV = DV_;
    Chunk<T>& c = w_.chunk;
    c.load(p_.q, p_.k, p_.v, p_.i, p_.f, b_, h_, t0, len, /*with_q=*/true);
    transpose(len, DV, c.v.data(), w_.vT.data());
    transpose(DHQK, DV, cn, w_.cnT.data());
    if (has_dcn_) transpose(DHQK, DV, w_.dcn.data(), w_.dcnT.data());
    std::fill_n(w_.dk.begin(), len * DHQK, T(0));
    std::fill_n(w_.dv.begin(), len * DHHV, T(0));
    std::fill(w_.dcn_local.begin(), w_.dcn_local.end(), T(0));
    T* dhp = w_.dhp.data();
    T* pr = w_.p.data();
    T* dqh = w_.dqh.data();
    const int64_t odh = head_offset(p_.dh, b_, h_), odq = head_offset(p_.dq, b_, h_);

    w_.sweep.start(c, m_k);
    for (int64_t t = 0; t < len; ++t) {
      const double denom = next_row_outputs(c, w_.sweep, cn, eps_, w_.dbar.data(), w_.ctil.data(), w_.out.data());
      const double* dbar = w_.dbar.data();
      const double* ctil = w_.ctil.data();
      const double* out = w_.out.data();
      const T* qt = &c.q[t * DHQK];  // q_hat_t = scale q_t
      load_row(p_.dh, odh + (t0 + t) * p_.dh.stride[2], DHHV, w_.dh.data());
      // rho = (dh_t . h_t) / d_t = (dh_t . num_t) / d_t^2, and dh'_t = dh_t / d_t.
      double dh_num = 0.0;
      for (int64_t e = 0; e < DHHV; ++e) {
        dh_num += static_cast<double>(w_.dh[e]) * out[e];
        dhp[e] = static_cast<T>(static_cast<double>(w_.dh[e]) / denom);
      }
      const double rho = dh_num / (denom * denom);
      const double den = out[DHHV];
      const bool den_branch = std::fabs(den) >= std::exp(-w_.sweep.m());
      dhp[DHHV] = den_branch ? static_cast<T>(den > 0.0 ? -rho : rho) : T(0);
      w_.dm[t] = -eps_ * rho;
      w_.i_branch[t] = w_.sweep.m() == c.ig[t];

      std::fill(pr, pr + t + 1, T(0));
      for (int64_t e = 0; e < DV; ++e) axpy(t + 1, dhp[e], &w_.vT[e * len], pr);
      for (int64_t s = 0; s <= t; ++s) pr[s] = static_cast<T>(static_cast<double>(pr[s]) * dbar[s]);

      std::fill(dqh, dqh + DHQK, T(0));
      for (int64_t s = 0; s <= t; ++s) axpy(DHQK, pr[s], &c.k[s * DHQK], dqh);
      const double beta = w_.sweep.beta();
      if (beta != 0.0)
        for (int64_t e = 0; e < DV; ++e) axpy(DHQK, static_cast<T>(beta * static_cast<double>(dhp[e])), &w_.cnT[e * DHQK], dqh);
      // dq = scale dq_hat; q . dq = scale (q . dq_hat).
      w_.qdq[t] = c.scale * dot_wide(DHQK, qt, dqh);
      for (int64_t d = 0; d < DHQK; ++d) w_.row[d] = static_cast<T>(c.scale * static_cast<double>(dqh[d]));
      store_row(p_.dq, odq + (t0 + t) * p_.dq.stride[2], DHQK, w_.row.data());

      for (int64_t s = 0; s <= t; ++s) {
        axpy(DHQK, static_cast<T>(c.scale * static_cast<double>(pr[s])), qt, &w_.dk[s * DHQK]);
        axpy(DHHV, static_cast<T>(ctil[s]), dhp, &w_.dv[s * DHHV]);
      }
      if (beta != 0.0)
        for (int64_t d = 0; d < DHQK; ++d)
          axpy(DV, static_cast<T>(c.scale * beta * static_cast<double>(qt[d])), dhp, &w_.dcn_local[d * DV]);
    }

    // The state after this chunk was formed with the last row's weights: w_j = dbar[j], gamma = beta.
    const T gamma = static_cast<T>(w_.sweep.beta());
    const double* wlast = w_.dbar.data();
    if (has_dcn_) {
      for (int64_t j = 0; j < len; ++j) {
        const T* vj = &c.v[j * DV];
        const T* kj = &c.k[j * DHQK];
        for (int64_t e = 0; e < DV; ++e)
          axpy(DHQK, static_cast<T>(wlast[j] * static_cast<double>(vj[e])), &w_.dcnT[e * DHQK], &w_.dk[j * DHQK]);
        for (int64_t d = 0; d < DHQK; ++d)
          axpy(DHHV, static_cast<T>(wlast[j] * static_cast<double>(kj[d])), &w_.dcn[d * DV], &w_.dv[j * DHHV]);
      }
    }
    const int64_t odk = head_offset(p_.dk, b_, h_), odv = head_offset(p_.dv, b_, h_);
    for (int64_t t = 0; t < len; ++t) {
      store_row(p_.dk, odk + (t0 + t) * p_.dk.stride[2], DHQK, &w_.dk[t * DHQK]);
      store_row(p_.dv, odv + (t0 + t) * p_.dv.stride[2], DHHV, &w_.dv[t * DHHV]);
    }

    for (int64_t t = len - 1; t >= 0; --t) {
      const double kdk = dot_wide(DHQK, &c.k[t * DHQK], &w_.dk[t * DHQK]);
      double di = 0.0, dft = 0.0;
      scan_.step(w_.qdq[t], kdk, w_.dm[t], w_.i_branch[t] != 0, &di, &dft);
      w_.di[t] = static_cast<T>(di);
      w_.df[t] = static_cast<T>(dft * sigmoid_neg(c.fr[t]));
    }
    store_row(p_.di, head_offset(p_.di, b_, h_) + t0, len, w_.di.data());
    store_row(p_.df, head_offset(p_.df, b_, h_) + t0, len, w_.df.data());

    if (has_dcn_) {
      for (int64_t j = 0; j < DHQK * DV; ++j) w_.dcn[j] = w_.dcn_local[j] + gamma * w_.dcn[j];
    } else {
      std::copy(w_.dcn_local.begin(), w_.dcn_local.end(), w_.dcn.begin());
      has_dcn_ = true;
    }
  }

  const BwdParams& p_;
  const int64_t L_, G_, b_, h_;
  BwdScratch<T>& w_;
  const int64_t DHQK_, DHHV_, DV_;
  const double eps_;
  bool has_dcn_ = false;  // false while the gradient at the state after the current chunk is zero
  GateScan scan_;
};

template <typename T>
mlstm_status run(const BwdParams& p, int64_t L) {
  L = std::min(L, p.S);
  const int64_t NC = (p.S + L - 1) / L;
  const double state_bytes = double(p.DHQK) * double(p.DHHV + 1) * sizeof(T);
  const int64_t by_budget = std::max<int64_t>(1, static_cast<int64_t>(kStateBudgetBytes / state_bytes));
  const int64_t by_sqrt = static_cast<int64_t>(std::ceil(std::sqrt(double(NC))));
  const int64_t G = std::min(NC, std::max(by_budget, by_sqrt));
  const int64_t n_segments = (NC + G - 1) / G;

  const int64_t n_heads = p.B * p.NH;
  // About three forwards' worth of multiply-adds per head.
  const double cost = 3.0 * double(p.S) * (double(L) * double(p.DHQK + p.DHHV) + 2.0 * double(p.DHQK) * double(p.DHHV + 1));
  const int n_workers = worker_count(n_heads, cost);
  std::vector<BwdScratch<T>> scratch(static_cast<size_t>(n_workers));
  parallel_for(n_heads, n_workers, [&](int worker, int64_t task) {
    BwdScratch<T>& w = scratch[static_cast<size_t>(worker)];
    if (!w.ready) w.init(p.DHQK, p.DHHV, L, G, n_segments);
    HeadBackward<T>(p, L, G, task / p.NH, task % p.NH, w).run();
  });
  return MLSTM_OK;
}

}  // namespace

mlstm_status chunked_bwd(const BwdParams& p, int64_t L) {
  if (L < 1) return fail(MLSTM_ERROR_INTERNAL, "%s backward: chunk size %lld", form_name(p.form), static_cast<long long>(L));
  return p.q.dtype == MLSTM_FLOAT64 ? run<double>(p, L) : run<float>(p, L);
}

}  // namespace mlstm::cpu::MLSTM_CPU_ISA
MLSTM_CPU_ISA_END
