// CUDA recurrent step and sequence kernels (not yet implemented).
#include "common/backend.h"
#include "cuda/common.cuh"
#include "cuda/forms.h"

namespace mlstm::cuda {

mlstm_status recurrent_fwd_sizes(const FwdParams&, mlstm_buffer_sizes* sizes) {
  *sizes = {0, 0};
  return MLSTM_OK;
}
mlstm_status sequence_fwd(const FwdParams&) {
  return fail(MLSTM_ERROR_UNSUPPORTED, "sequence: no CUDA kernel in this build yet");
}
mlstm_status step_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "step: no CUDA kernel in this build yet"); }

}  // namespace mlstm::cuda
