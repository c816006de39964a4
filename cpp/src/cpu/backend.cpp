// CPU backend (placeholder until the CPU kernels land).
#include "common/backend.h"
#include "common/error.h"

namespace mlstm::cpu {

mlstm_status fwd_sizes(const FwdParams&, mlstm_buffer_sizes* sizes) {
  *sizes = {0, 0};
  return MLSTM_OK;
}
mlstm_status bwd_sizes(const BwdParams&, mlstm_buffer_sizes* sizes) {
  *sizes = {0, 0};
  return MLSTM_OK;
}
mlstm_status parallel_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "cpu parallel: not implemented"); }
mlstm_status parallel_bwd(const BwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "cpu parallel: not implemented"); }
mlstm_status chunkwise_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "cpu chunkwise: not implemented"); }
mlstm_status chunkwise_bwd(const BwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "cpu chunkwise: not implemented"); }
mlstm_status sequence_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "cpu sequence: not implemented"); }
mlstm_status step_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "cpu step: not implemented"); }

}  // namespace mlstm::cpu
