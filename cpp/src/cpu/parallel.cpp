// Parallel form on the CPU: the chunked computation with a single chunk (L = S), no state and the
// stabiliser started at -inf (FwdParams::m_starts_at_neg_inf), which is term for term the parallel
// form of SPEC §2 with logD built by running column sums (stablef). It serves as the reference the
// CUDA parallel kernel is compared against, so it deliberately is not re-chunked for speed.
#include "common/backend.h"
#include "cpu/forms.h"

namespace mlstm::cpu {

mlstm_status parallel_fwd(const FwdParams& p) { return chunked_fwd(p, p.S); }

mlstm_status parallel_bwd(const BwdParams& p) { return chunked_bwd(p, p.S); }

}  // namespace mlstm::cpu
