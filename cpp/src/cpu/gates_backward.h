// Gate and stabiliser gradients of one head, from the per-step scalars of a reverse sweep over its
// time steps (docs/dev-notes.md, "Exact gradients", steps 2-4):
//
//   di_t  = k_t . dk_t                                        (+ the stabiliser path)
//   dft_t = sum_{t' >= t} (q_t' . dq_t' - k_t' . dk_t') + <dc_last, c_last> + <dn_last, n_last>
//           (dft = d/d logsigmoid(f); + the stabiliser path)
//   the stabiliser path: dm_t = -eps (dh_t . h_t) / d_t at every step, and
//   dm_S += dm_last - <dc_last, c_last> - <dn_last, n_last>, carried back through
//   m_t = max(logsigmoid(f_t) + m_{t-1}, i_t) to whichever branch won;
//   dm_initial = <dc_initial, c_initial> + <dn_initial, n_initial> + what reaches m_0.
//
// The scalars are summed in double: the suffix sums run over all S steps and cost nothing.
#pragma once

#include "cpu/isa.h"

MLSTM_CPU_ISA_BEGIN
namespace mlstm::cpu::MLSTM_CPU_ISA {

class GateScan {
 public:
  // last_state_dot = <dc_last, c_last> + <dn_last, n_last>, with the states as returned (stabilised).
  void begin(double last_state_dot, double dm_last) {
    f_suffix_ = last_state_dot;
    m_carry_ = dm_last - last_state_dot;
  }

  // One step t, visited from t = S-1 down to 0. qdq = q_t . dq_t and kdk = k_t . dk_t (dq, dk with
  // the stabilisers held fixed), dm = -eps (dh_t . h_t) / d_t, i_branch: m_t == i_t.
  void step(double qdq, double kdk, double dm, bool i_branch, double* di, double* dft) {
    f_suffix_ += qdq - kdk;
    *di = kdk;
    *dft = f_suffix_;
    m_carry_ += dm;
    if (i_branch) {
      *di += m_carry_;
      m_carry_ = 0.0;
    } else {
      *dft += m_carry_;
    }
  }

  // initial_state_dot = <dc_initial, c_initial> + <dn_initial, n_initial>.
  double dm_initial(double initial_state_dot) const { return initial_state_dot + m_carry_; }

 private:
  double f_suffix_ = 0.0;
  double m_carry_ = 0.0;
};

}  // namespace mlstm::cpu::MLSTM_CPU_ISA
MLSTM_CPU_ISA_END
