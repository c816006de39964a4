// One chunk of one head, and the per-row quantities of the chunkwise form (SPEC §2), shared by the
// forward and the backward so that both compute bitwise the same stabilisers and states.
//
// Within a chunk of len rows starting at state (C_k, n_k, m_k), row t sees the log weights
//   state column:  b_t + m_k                    b_t = sum_{r<=t} logsigmoid(f_r)   (within the chunk)
//   column s<=t:   logD_{t,s} = F_{t,s} + i_s   F_{t,s} = sum_{r=s+1..t} logsigmoid(f_r)
// and m_t = the largest of them (the recurrent running max). Every F_{t,s} (and b_t) is built as a
// running sum down its column, one logsigmoid(f) added per row ("stablef"): never the difference of
// two cumulative sums, which loses precision when the sums grow.
//
// C and n are kept together as one (DHQK, DV) matrix, DV = DHHV + 1, with n as its last column, and v
// gets a column of ones: then num_t and den_t come out of one product, and in the backward the
// normaliser gradient sigma_t rides along as the last column of dh'.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/common.h"
#include "cpu/isa.h"

MLSTM_CPU_ISA_BEGIN
namespace mlstm::cpu::MLSTM_CPU_ISA {

template <typename T>
struct Chunk {
  int64_t DHQK = 0, DHHV = 0, DV = 0;
  int64_t len = 0;       // rows of this chunk (L, fewer for the last one)
  std::vector<T> q;      // (len, DHQK) q as given; q_hat = scale q is formed in double where used
  std::vector<T> k;      // (len, DHQK)
  std::vector<T> kT;     // (DHQK, len)
  std::vector<T> v;      // (len, DV) v with a trailing 1
  std::vector<double> ig;  // (len) input gate pre-activation i
  std::vector<double> fr;  // (len) forget gate pre-activation f
  std::vector<double> fl;  // (len) logsigmoid(f)
  double scale = 1.0;    // 1 / sqrt(DHQK)

  void reserve(int64_t dhqk, int64_t dhhv, int64_t max_len) {
    DHQK = dhqk, DHHV = dhhv, DV = dhhv + 1;
    scale = 1.0 / std::sqrt(static_cast<double>(DHQK));
    q.resize(max_len * DHQK);
    k.resize(max_len * DHQK);
    kT.resize(max_len * DHQK);
    v.resize(max_len * DV);
    ig.resize(max_len);
    fr.resize(max_len);
    fl.resize(max_len);
  }

  // Loads rows [t0, t0 + n) of head (b, h). with_q: also q and k transposed (the outputs need them;
  // advancing the state does not).
  void load(const TensorView& tq, const TensorView& tk, const TensorView& tv, const TensorView& ti,
            const TensorView& tf, int64_t b, int64_t h, int64_t t0, int64_t n, bool with_q) {
    len = n;
    const int64_t oq = head_offset(tq, b, h), ok = head_offset(tk, b, h), ov = head_offset(tv, b, h);
    for (int64_t t = 0; t < len; ++t) {
      load_row(tk, ok + (t0 + t) * tk.stride[2], DHQK, &k[t * DHQK]);
      load_row(tv, ov + (t0 + t) * tv.stride[2], DHHV, &v[t * DV]);
      v[t * DV + DHHV] = T(1);
    }
    load_row(ti, head_offset(ti, b, h) + t0, len, ig.data());
    load_row(tf, head_offset(tf, b, h) + t0, len, fr.data());
    for (int64_t t = 0; t < len; ++t) fl[t] = logsigmoid(fr[t]);
    if (!with_q) return;
    for (int64_t t = 0; t < len; ++t) load_row(tq, oq + (t0 + t) * tq.stride[2], DHQK, &q[t * DHQK]);
    transpose(len, DHQK, k.data(), kT.data());
  }
};

// The stabilised state (C, n, m) of one head: cn (DHQK, DV) holds C in its first DHHV columns and n
// in the last; the true state is exp(m) * (C, n).
template <typename T>
struct State {
  std::vector<T> cn;  // (DHQK, DV)
  double m = 0.0;
};

// Walks the rows of a chunk in order, keeping the running column sums F (and b) of the row. All of
// it is scalar work per row, done in double for every T: the weights exp(logD - m) would otherwise
// carry the rounding of logD (|logD| * unit roundoff, with |i| up to ~30 about 2e-6 in float), which
// a nearly cancelling den_t amplifies.
template <typename T>
class RowSweep {
 public:
  void reserve(int64_t max_len) {
    fsum_.resize(max_len + 1);
    logw_.resize(max_len);
  }

  void start(const Chunk<T>& c, double m_k) {
    c_ = &c;
    m_k_ = m_k;
    t_ = -1;
    fsum_[0] = 0.0;
  }

  // Moves to the next row t: adds logsigmoid(f_t) to the state column and to every column s < t,
  // and opens column t with F_{t,t} = 0.
  void advance() {
    ++t_;
    const double ft = c_->fl[t_];
    double* fsum = fsum_.data();  // [0]: b_t; [1 + s]: F_{t,s}
    for (int64_t j = 0; j <= t_; ++j) fsum[j] += ft;
    fsum[t_ + 1] = 0.0;
  }

  // Stabiliser m_t, state weight beta_t = exp(b_t + m_k - m_t) and intra weights
  // dbar[s] = exp(logD_{t,s} - m_t), s <= t, of the current row. m_t equals i_t bitwise exactly when
  // the input-gate branch of the recurrence m_t = max(logsigmoid(f_t) + m_{t-1}, i_t) wins, because
  // logD_{t,t} = 0 + i_t.
  void weights(double* dbar) {
    const double* fsum = fsum_.data();
    const double* ig = c_->ig.data();
    double* logw = logw_.data();
    const double state_logw = fsum[0] + m_k_;  // -inf when the state is absent (parallel form)
    double m = state_logw;
    for (int64_t s = 0; s <= t_; ++s) {
      logw[s] = fsum[s + 1] + ig[s];
      m = std::max(m, logw[s]);
    }
    m_ = m;
    beta_ = std::exp(state_logw - m);
    for (int64_t s = 0; s <= t_; ++s) dbar[s] = std::exp(logw[s] - m);
  }

  int64_t row() const { return t_; }
  double m() const { return m_; }
  double beta() const { return beta_; }

 private:
  const Chunk<T>* c_ = nullptr;
  double m_k_ = 0.0;
  int64_t t_ = -1;
  double m_ = 0.0, beta_ = 0.0;
  std::vector<double> fsum_;  // (len + 1)
  std::vector<double> logw_;  // (len)
};

// Moves the sweep to the next row t and computes that row's products with the state (C_k, n_k) the
// chunk started from (double accumulation, see common.h):
//   ctil[s] = (q_hat_t . k_s) dbar_{t,s}  (s <= t), with dbar[s] the row's weights,
//   out     = beta_t (C_k, n_k)^T q_hat_t + sum_s ctil[s] (v_s, 1) = (num_t, den_t).
// Returns the denominator max(|den_t|, exp(-m_t)) + eps.
template <typename T>
double next_row_outputs(const Chunk<T>& c, RowSweep<T>& sweep, const T* cn, double eps, double* dbar, double* ctil,
                        double* out) {
  const int64_t DHQK = c.DHQK, DHHV = c.DHHV, DV = c.DV, len = c.len;
  sweep.advance();
  sweep.weights(dbar);
  const int64_t t = sweep.row();
  const T* qt = &c.q[t * DHQK];
  // Scores q_t . k_s as row updates over k transposed.
  std::fill(ctil, ctil + t + 1, 0.0);
  for (int64_t d = 0; d < DHQK; ++d) axpy_wide(t + 1, static_cast<double>(qt[d]), &c.kT[d * len], ctil);
  for (int64_t s = 0; s <= t; ++s) ctil[s] *= c.scale * dbar[s];

  std::fill(out, out + DV, 0.0);
  const double beta_scale = sweep.beta() * c.scale;
  if (beta_scale != 0.0)  // beta is 0 only without a state (parallel form)
    for (int64_t d = 0; d < DHQK; ++d) axpy_wide(DV, beta_scale * static_cast<double>(qt[d]), cn + d * DV, out);
  for (int64_t s = 0; s <= t; ++s) axpy_wide(DV, ctil[s], &c.v[s * DV], out);
  return std::max(std::fabs(out[DHHV]), std::exp(-sweep.m())) + eps;
}

// (C, n, m) after the chunk: with the weights of its last row (m_{k+1} = m_last, gamma = beta_last,
// w_j = dbar_last[j]):  cn_{k+1} = gamma cn_k + sum_j w_j k_j v_j^T  (v with its trailing 1 gives n).
// `w` is scratch of at least len entries.
template <typename T>
void advance_state(const Chunk<T>& c, RowSweep<T>& sweep, State<T>& s, double* w) {
  sweep.start(c, s.m);
  for (int64_t t = 0; t < c.len; ++t) sweep.advance();
  sweep.weights(w);
  const T gamma = static_cast<T>(sweep.beta());
  const int64_t DHQK = c.DHQK, DV = c.DV;
  T* cn = s.cn.data();
  for (int64_t j = 0; j < DHQK * DV; ++j) cn[j] *= gamma;
  for (int64_t j = 0; j < c.len; ++j) {
    const T* kj = &c.k[j * DHQK];
    const T* vj = &c.v[j * DV];
    for (int64_t d = 0; d < DHQK; ++d) axpy(DV, static_cast<T>(w[j] * static_cast<double>(kj[d])), vj, cn + d * DV);
  }
  s.m = sweep.m();
}

// Loads the initial state of head (b, h), or the default one: zeros with m = 0 (recurrent and
// chunkwise forms) or m = -inf (parallel form, whose stabiliser is max_s logD_{t,s}).
template <typename T>
void load_initial_state(bool has_initial, bool m_starts_at_neg_inf, const TensorView& c0, const TensorView& n0,
                        const TensorView& m0, int64_t b, int64_t h, int64_t DHQK, int64_t DHHV, State<T>& s) {
  const int64_t DV = DHHV + 1;
  s.cn.assign(DHQK * DV, T(0));
  if (!has_initial) {
    s.m = m_starts_at_neg_inf ? -std::numeric_limits<double>::infinity() : 0.0;
    return;
  }
  const int64_t oc = head_offset(c0, b, h), on = head_offset(n0, b, h);
  for (int64_t d = 0; d < DHQK; ++d) load_row(c0, oc + d * c0.stride[2], DHHV, &s.cn[d * DV]);
  std::vector<T> n(DHQK);
  load_row(n0, on, DHQK, n.data());
  for (int64_t d = 0; d < DHQK; ++d) s.cn[d * DV + DHHV] = n[d];
  s.m = load_element<double>(m0.data, m0.dtype, head_offset(m0, b, h));
}

// Stores (C, n, m) of head (b, h) in the states' dtype. m is rounded first and C, n rescaled by
// exp(m - m_rounded), so that exp(m) * (C, n) -- the state that matters -- survives a low-precision m.
template <typename T>
void store_state(const State<T>& s, const TensorView& c, const TensorView& n, const TensorView& m, int64_t b,
                 int64_t h, int64_t DHQK, int64_t DHHV, T* row_scratch /* (max(DHQK, DHHV)) */) {
  const int64_t DV = DHHV + 1;
  const double m_rounded = round_to_dtype(s.m, m.dtype);
  const double factor = m_rounded == s.m ? 1.0 : std::exp(s.m - m_rounded);
  const int64_t oc = head_offset(c, b, h), on = head_offset(n, b, h);
  for (int64_t d = 0; d < DHQK; ++d) {
    for (int64_t e = 0; e < DHHV; ++e) row_scratch[e] = static_cast<T>(factor * static_cast<double>(s.cn[d * DV + e]));
    store_row(c, oc + d * c.stride[2], DHHV, row_scratch);
  }
  for (int64_t d = 0; d < DHQK; ++d) row_scratch[d] = static_cast<T>(factor * static_cast<double>(s.cn[d * DV + DHHV]));
  store_row(n, on, DHQK, row_scratch);
  store_row(m, head_offset(m, b, h), 1, &m_rounded);
}

}  // namespace mlstm::cpu::MLSTM_CPU_ISA
MLSTM_CPU_ISA_END
