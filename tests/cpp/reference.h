// Plain references of the mLSTM forms (SPEC §2), written for clarity, not speed: the recurrent
// definition (forward, last states, and its backward by the chain rule, step by step), and the
// parallel form built from the S x S matrix logD (stablef: running sums down each column), with its
// backward in matrix form as docs/dev-notes.md derives it.
//
// Templated on the scalar so that the same code run in float gives the error of a plain
// low-precision implementation: the tests derive their fp32 tolerances from it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace ref {

// Contiguous arrays, row-major in the documented dimension order.
template <typename T>
struct Inputs {
  int64_t B = 1, NH = 1, S = 1, DHQK = 1, DHHV = 1;
  T eps = T(1e-6);
  std::vector<T> q, k;  // (B,NH,S,DHQK)
  std::vector<T> v;     // (B,NH,S,DHHV)
  std::vector<T> i, f;  // (B,NH,S)
  bool has_initial = false;
  std::vector<T> c0;    // (B,NH,DHQK,DHHV)
  std::vector<T> n0;    // (B,NH,DHQK)
  std::vector<T> m0;    // (B,NH)

  template <typename U>
  Inputs<U> cast() const {
    Inputs<U> o;
    o.B = B, o.NH = NH, o.S = S, o.DHQK = DHQK, o.DHHV = DHHV;
    o.eps = static_cast<U>(eps);
    auto c = [](const std::vector<T>& x) { return std::vector<U>(x.begin(), x.end()); };
    o.q = c(q), o.k = c(k), o.v = c(v), o.i = c(i), o.f = c(f);
    o.has_initial = has_initial;
    o.c0 = c(c0), o.n0 = c(n0), o.m0 = c(m0);
    return o;
  }
};

template <typename T>
struct Outputs {
  std::vector<T> h;           // (B,NH,S,DHHV)
  std::vector<T> c, n, m;     // last states (B,NH,DHQK,DHHV), (B,NH,DHQK), (B,NH)
};

template <typename T>
struct Grads {
  std::vector<T> dq, dk, dv, di, df;
  std::vector<T> dc0, dn0, dm0;
};

template <typename T>
T logsigmoid(T x) {
  return x >= T(0) ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}

template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// The recurrence, one step after another. m_starts_at_neg_inf: the parallel form's stabiliser
// (m_0 = -inf, no initial state).
template <typename T>
Outputs<T> recurrent_forward(const Inputs<T>& in, bool m_starts_at_neg_inf = false) {
  const int64_t S = in.S, DK = in.DHQK, DV = in.DHHV;
  const T scale = T(1) / std::sqrt(T(DK));
  Outputs<T> out;
  out.h.assign(in.B * in.NH * S * DV, T(0));
  out.c.assign(in.B * in.NH * DK * DV, T(0));
  out.n.assign(in.B * in.NH * DK, T(0));
  out.m.assign(in.B * in.NH, T(0));
  for (int64_t bh = 0; bh < in.B * in.NH; ++bh) {
    std::vector<T> C(DK * DV, T(0)), n(DK, T(0));
    T m = m_starts_at_neg_inf ? -std::numeric_limits<T>::infinity() : T(0);
    if (in.has_initial) {
      std::copy_n(&in.c0[bh * DK * DV], DK * DV, C.begin());
      std::copy_n(&in.n0[bh * DK], DK, n.begin());
      m = in.m0[bh];
    }
    for (int64_t t = 0; t < S; ++t) {
      const int64_t row = bh * S + t;
      const T* q = &in.q[row * DK];
      const T* k = &in.k[row * DK];
      const T* v = &in.v[row * DV];
      const T ft = logsigmoid(in.f[row]), it = in.i[row];
      const T m_new = std::max(ft + m, it);
      const T F = std::exp(ft + m - m_new), I = std::exp(it - m_new);
      for (int64_t a = 0; a < DK; ++a) {
        for (int64_t e = 0; e < DV; ++e) C[a * DV + e] = F * C[a * DV + e] + I * k[a] * v[e];
        n[a] = F * n[a] + I * k[a];
      }
      m = m_new;
      T den = T(0);
      for (int64_t a = 0; a < DK; ++a) den += n[a] * q[a] * scale;
      const T d = std::max(std::fabs(den), std::exp(-m)) + in.eps;
      for (int64_t e = 0; e < DV; ++e) {
        T num = T(0);
        for (int64_t a = 0; a < DK; ++a) num += C[a * DV + e] * q[a] * scale;
        out.h[row * DV + e] = num / d;
      }
    }
    std::copy(C.begin(), C.end(), &out.c[bh * DK * DV]);
    std::copy(n.begin(), n.end(), &out.n[bh * DK]);
    out.m[bh] = m;
  }
  return out;
}

// The parallel form: logD_{t,s} = sum_{r=s+1..t} logsigmoid(f_r) + i_s, the sum grown down each
// column; m_t = max_s logD_{t,s}; D' = exp(logD - m); C~ = (q_hat k^T) o D';
// h = C~ V / (max(|rowsum C~|, exp(-m)) + eps).
template <typename T>
std::vector<T> parallel_forward(const Inputs<T>& in) {
  const int64_t S = in.S, DK = in.DHQK, DV = in.DHHV;
  const T scale = T(1) / std::sqrt(T(DK));
  const T neg_inf = -std::numeric_limits<T>::infinity();
  std::vector<T> h(in.B * in.NH * S * DV, T(0));
  for (int64_t bh = 0; bh < in.B * in.NH; ++bh) {
    std::vector<T> fcum(S * S, neg_inf);  // (S, S): sum_{r=s+1..t} logsigmoid(f_r), s <= t
    for (int64_t s = 0; s < S; ++s) {
      fcum[s * S + s] = T(0);
      for (int64_t t = s + 1; t < S; ++t) fcum[t * S + s] = fcum[(t - 1) * S + s] + logsigmoid(in.f[bh * S + t]);
    }
    for (int64_t t = 0; t < S; ++t) {
      std::vector<T> logD(t + 1);
      T m = neg_inf;
      for (int64_t s = 0; s <= t; ++s) {
        logD[s] = fcum[t * S + s] + in.i[bh * S + s];
        m = std::max(m, logD[s]);
      }
      std::vector<T> ctil(t + 1);
      T rowsum = T(0);
      for (int64_t s = 0; s <= t; ++s) {
        T score = T(0);
        for (int64_t a = 0; a < DK; ++a) score += in.q[(bh * S + t) * DK + a] * scale * in.k[(bh * S + s) * DK + a];
        ctil[s] = score * std::exp(logD[s] - m);
        rowsum += ctil[s];
      }
      const T d = std::max(std::fabs(rowsum), std::exp(-m)) + in.eps;
      for (int64_t e = 0; e < DV; ++e) {
        T acc = T(0);
        for (int64_t s = 0; s <= t; ++s) acc += ctil[s] * in.v[(bh * S + s) * DV + e];
        h[(bh * S + t) * DV + e] = acc / d;
      }
    }
  }
  return h;
}

// Gradients of sum(dh o h) + <dc_last, c_last> + <dn_last, n_last> + dm_last . m_last through the
// recurrence by the plain chain rule, one step back at a time: every stabiliser m_t is a function of
// the inputs (the max picks a branch), every state is kept. Independent of the derivation the kernels
// use (docs/dev-notes.md), so it checks that derivation. The d* of the last states may be empty.
template <typename T>
Grads<T> recurrent_backward(const Inputs<T>& in, bool m_starts_at_neg_inf, const std::vector<T>& dh,
                            const std::vector<T>& dc_last, const std::vector<T>& dn_last,
                            const std::vector<T>& dm_last) {
  const int64_t S = in.S, DK = in.DHQK, DV = in.DHHV;
  const T scale = T(1) / std::sqrt(T(DK));
  Grads<T> g;
  g.dq.assign(in.q.size(), T(0));
  g.dk.assign(in.k.size(), T(0));
  g.dv.assign(in.v.size(), T(0));
  g.di.assign(in.i.size(), T(0));
  g.df.assign(in.f.size(), T(0));
  g.dc0.assign(in.B * in.NH * DK * DV, T(0));
  g.dn0.assign(in.B * in.NH * DK, T(0));
  g.dm0.assign(in.B * in.NH, T(0));
  for (int64_t bh = 0; bh < in.B * in.NH; ++bh) {
    // Forward, keeping every state: index t holds the state after t steps.
    std::vector<std::vector<T>> C(S + 1, std::vector<T>(DK * DV, T(0))), n(S + 1, std::vector<T>(DK, T(0)));
    std::vector<T> m(S + 1, m_starts_at_neg_inf ? -std::numeric_limits<T>::infinity() : T(0));
    if (in.has_initial) {
      std::copy_n(&in.c0[bh * DK * DV], DK * DV, C[0].begin());
      std::copy_n(&in.n0[bh * DK], DK, n[0].begin());
      m[0] = in.m0[bh];
    }
    for (int64_t t = 1; t <= S; ++t) {
      const int64_t row = bh * S + t - 1;
      const T ft = logsigmoid(in.f[row]), it = in.i[row];
      m[t] = std::max(ft + m[t - 1], it);
      const T F = std::exp(ft + m[t - 1] - m[t]), I = std::exp(it - m[t]);
      for (int64_t a = 0; a < DK; ++a) {
        for (int64_t e = 0; e < DV; ++e)
          C[t][a * DV + e] = F * C[t - 1][a * DV + e] + I * in.k[row * DK + a] * in.v[row * DV + e];
        n[t][a] = F * n[t - 1][a] + I * in.k[row * DK + a];
      }
    }
    // Backward. dC, dn, dm: gradient with respect to the state after step t.
    std::vector<T> dC(DK * DV, T(0)), dn(DK, T(0));
    T dm = T(0);
    if (!dc_last.empty()) {
      std::copy_n(&dc_last[bh * DK * DV], DK * DV, dC.begin());
      std::copy_n(&dn_last[bh * DK], DK, dn.begin());
      dm = dm_last[bh];
    }
    for (int64_t t = S; t >= 1; --t) {
      const int64_t row = bh * S + t - 1;
      const T* q = &in.q[row * DK];
      const T* k = &in.k[row * DK];
      const T* v = &in.v[row * DV];
      const T* dht = &dh[row * DV];
      // h_t = num / d, num = C_t^T q_hat, den = n_t . q_hat, d = max(|den|, exp(-m_t)) + eps.
      std::vector<T> num(DV, T(0));
      T den = T(0);
      for (int64_t a = 0; a < DK; ++a) {
        for (int64_t e = 0; e < DV; ++e) num[e] += C[t][a * DV + e] * q[a] * scale;
        den += n[t][a] * q[a] * scale;
      }
      const T floor = std::exp(-m[t]);
      const T d = std::max(std::fabs(den), floor) + in.eps;
      T dh_num = T(0);
      for (int64_t e = 0; e < DV; ++e) dh_num += dht[e] * num[e];
      const T dd = -dh_num / (d * d);
      T dden = T(0);
      if (std::fabs(den) >= floor)
        dden = den > T(0) ? dd : -dd;
      else
        dm += dd * -floor;  // d exp(-m)/dm
      // num and den depend on q_hat and on the state after step t.
      for (int64_t a = 0; a < DK; ++a) {
        T dqa = n[t][a] * dden;
        for (int64_t e = 0; e < DV; ++e) {
          dqa += C[t][a * DV + e] * dht[e] / d;
          dC[a * DV + e] += q[a] * scale * dht[e] / d;
        }
        dn[a] += q[a] * scale * dden;
        g.dq[row * DK + a] = dqa * scale;
      }
      // The step: C_t = F C_{t-1} + I k v^T, n_t = F n_{t-1} + I k,
      // F = exp(ft + m_{t-1} - m_t), I = exp(i - m_t), m_t = max(ft + m_{t-1}, i).
      const T ft = logsigmoid(in.f[row]), it = in.i[row];
      const T F = std::exp(ft + m[t - 1] - m[t]), I = std::exp(it - m[t]);
      T dF = T(0), dI = T(0);
      for (int64_t a = 0; a < DK; ++a) {
        T dC_v = T(0);
        for (int64_t e = 0; e < DV; ++e) {
          dF += dC[a * DV + e] * C[t - 1][a * DV + e];
          dC_v += dC[a * DV + e] * v[e];
        }
        dF += dn[a] * n[t - 1][a];
        dI += k[a] * (dC_v + dn[a]);
        g.dk[row * DK + a] = I * (dC_v + dn[a]);
      }
      for (int64_t e = 0; e < DV; ++e) {
        T acc = T(0);
        for (int64_t a = 0; a < DK; ++a) acc += dC[a * DV + e] * k[a];
        g.dv[row * DV + e] = I * acc;
      }
      const T dlogF = dF * F, dlogI = dI * I;
      T dft = dlogF, dit = dlogI, dm_prev = dlogF;
      const T dm_t = dm - dlogF - dlogI;  // everything that reaches m_t
      if (it > ft + m[t - 1]) {
        dit += dm_t;
      } else {
        dft += dm_t;
        dm_prev += dm_t;
      }
      g.di[row] = dit;
      g.df[row] = dft * sigmoid(-in.f[row]);
      for (auto& x : dC) x *= F;
      for (auto& x : dn) x *= F;
      dm = dm_prev;
    }
    std::copy(dC.begin(), dC.end(), &g.dc0[bh * DK * DV]);
    std::copy(dn.begin(), dn.end(), &g.dn0[bh * DK]);
    g.dm0[bh] = dm;
  }
  return g;
}

// The parallel form's backward in matrix form, as docs/dev-notes.md derives it ("Exact gradients"):
// with the stabiliser held fixed, dS = dH' V^T + sigma 1^T (dH' = dH / d, sigma the normaliser
// gradient), P = dS o D' gives dQ_hat = P K, dK = P^T Q_hat, dV = C~^T dH'; the gates follow from
// di_s = k_s . dk_s and dft_r = sum_{t>=r} (q_t . dq_t - k_t . dk_t), and the stabiliser path
// dm_t = -eps (dh_t . h_t) / d_t is carried back through m_t = max(ft_t + m_{t-1}, i_t).
template <typename T>
Grads<T> parallel_backward(const Inputs<T>& in, const std::vector<T>& dh) {
  const int64_t S = in.S, DK = in.DHQK, DV = in.DHHV;
  const T scale = T(1) / std::sqrt(T(DK));
  const T neg_inf = -std::numeric_limits<T>::infinity();
  Grads<T> g;
  g.dq.assign(in.q.size(), T(0));
  g.dk.assign(in.k.size(), T(0));
  g.dv.assign(in.v.size(), T(0));
  g.di.assign(in.i.size(), T(0));
  g.df.assign(in.f.size(), T(0));
  for (int64_t bh = 0; bh < in.B * in.NH; ++bh) {
    auto q = [&](int64_t t, int64_t a) { return in.q[(bh * S + t) * DK + a] * scale; };  // q_hat
    auto k = [&](int64_t t, int64_t a) { return in.k[(bh * S + t) * DK + a]; };
    auto v = [&](int64_t t, int64_t e) { return in.v[(bh * S + t) * DV + e]; };
    // Forward quantities: logD (stablef), m, D', C~, den, d, h.
    std::vector<T> logD(S * S, neg_inf), Dp(S * S, T(0)), Ct(S * S, T(0)), m(S), den(S), d(S), h(S * DV);
    for (int64_t s = 0; s < S; ++s) {
      T fsum = T(0);
      for (int64_t t = s; t < S; ++t) {
        if (t > s) fsum += logsigmoid(in.f[bh * S + t]);
        logD[t * S + s] = fsum + in.i[bh * S + s];
      }
    }
    for (int64_t t = 0; t < S; ++t) {
      m[t] = neg_inf;
      for (int64_t s = 0; s <= t; ++s) m[t] = std::max(m[t], logD[t * S + s]);
      den[t] = T(0);
      for (int64_t s = 0; s <= t; ++s) {
        T score = T(0);
        for (int64_t a = 0; a < DK; ++a) score += q(t, a) * k(s, a);
        Dp[t * S + s] = std::exp(logD[t * S + s] - m[t]);
        Ct[t * S + s] = score * Dp[t * S + s];
        den[t] += Ct[t * S + s];
      }
      d[t] = std::max(std::fabs(den[t]), std::exp(-m[t])) + in.eps;
      for (int64_t e = 0; e < DV; ++e) {
        T num = T(0);
        for (int64_t s = 0; s <= t; ++s) num += Ct[t * S + s] * v(s, e);
        h[t * DV + e] = num / d[t];
      }
    }
    // dH' = dH / d, rho_t = (dh_t . h_t) / d_t, sigma_t = -[|den_t| >= exp(-m_t)] sign(den_t) rho_t.
    std::vector<T> dhp(S * DV), rho(S), sigma(S);
    for (int64_t t = 0; t < S; ++t) {
      rho[t] = T(0);
      for (int64_t e = 0; e < DV; ++e) {
        dhp[t * DV + e] = dh[(bh * S + t) * DV + e] / d[t];
        rho[t] += dh[(bh * S + t) * DV + e] * h[t * DV + e];
      }
      rho[t] /= d[t];
      const bool den_branch = std::fabs(den[t]) >= std::exp(-m[t]);
      sigma[t] = den_branch ? (den[t] > T(0) ? -rho[t] : rho[t]) : T(0);
    }
    // P = (dH' V^T + sigma) o D', then dQ_hat = P K, dK = P^T Q_hat, dV = C~^T dH'.
    for (int64_t t = 0; t < S; ++t) {
      for (int64_t s = 0; s <= t; ++s) {
        T dS = sigma[t];
        for (int64_t e = 0; e < DV; ++e) dS += dhp[t * DV + e] * v(s, e);
        const T P = dS * Dp[t * S + s];
        for (int64_t a = 0; a < DK; ++a) {
          g.dq[(bh * S + t) * DK + a] += P * k(s, a) * scale;
          g.dk[(bh * S + s) * DK + a] += P * q(t, a);
        }
        for (int64_t e = 0; e < DV; ++e) g.dv[(bh * S + s) * DV + e] += Ct[t * S + s] * dhp[t * DV + e];
      }
    }
    // Gates, and the stabiliser path in one reverse sweep.
    T f_suffix = T(0), m_carry = T(0);
    for (int64_t t = S - 1; t >= 0; --t) {
      T qdq = T(0), kdk = T(0);
      for (int64_t a = 0; a < DK; ++a) {
        qdq += in.q[(bh * S + t) * DK + a] * g.dq[(bh * S + t) * DK + a];
        kdk += in.k[(bh * S + t) * DK + a] * g.dk[(bh * S + t) * DK + a];
      }
      f_suffix += qdq - kdk;
      T di = kdk, dft = f_suffix;
      m_carry += -in.eps * rho[t];
      if (m[t] == in.i[bh * S + t]) {  // the input-gate branch won: m_t = i_t
        di += m_carry;
        m_carry = T(0);
      } else {
        dft += m_carry;
      }
      g.di[bh * S + t] = di;
      g.df[bh * S + t] = dft * sigmoid(-in.f[bh * S + t]);
    }
  }
  return g;
}

}  // namespace ref
