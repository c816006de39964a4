// CUDA chunkwise kernels (not yet implemented).
#include "common/backend.h"
#include "cuda/common.cuh"
#include "cuda/forms.h"

namespace mlstm::cuda {

mlstm_status chunkwise_fwd_sizes(const FwdParams&, mlstm_buffer_sizes* sizes) {
  *sizes = {0, 0};
  return MLSTM_OK;
}
mlstm_status chunkwise_bwd_sizes(const BwdParams&, mlstm_buffer_sizes* sizes) {
  *sizes = {0, 0};
  return MLSTM_OK;
}
mlstm_status chunkwise_fwd(const FwdParams&) {
  return fail(MLSTM_ERROR_UNSUPPORTED, "chunkwise: no CUDA kernel in this build yet");
}
mlstm_status chunkwise_bwd(const BwdParams&) {
  return fail(MLSTM_ERROR_UNSUPPORTED, "chunkwise backward: no CUDA kernel in this build yet");
}

}  // namespace mlstm::cuda
