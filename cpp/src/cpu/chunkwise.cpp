// Chunkwise form on the CPU. limit_chunk and xl_chunk compute the same function; here they share one
// algorithm (chunked_forward.cpp, chunked_backward.cpp) with the caller's chunk size L, which fixes
// where the states are formed and so the rounding, exactly as on the GPU.
#include "common/backend.h"
#include "cpu/forms.h"

namespace mlstm::cpu {

mlstm_status chunkwise_fwd(const FwdParams& p) { return chunked_fwd(p, p.L); }

mlstm_status chunkwise_bwd(const BwdParams& p) { return chunked_bwd(p, p.L); }

}  // namespace mlstm::cpu
