// CUDA backend: device count and the routing of buffer-size queries to each form's file.
#include "common/backend.h"
#include "cuda/common.cuh"
#include "cuda/forms.h"

namespace mlstm::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error so later calls start clean
    return 0;
  }
  return count;
}

mlstm_status fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* sizes) {
  switch (p.form) {
    case Form::kParallel: return parallel_fwd_sizes(p, sizes);
    case Form::kChunkwise: return chunkwise_fwd_sizes(p, sizes);
    case Form::kSequence:
    case Form::kStep: return recurrent_fwd_sizes(p, sizes);
  }
  return fail(MLSTM_ERROR_INTERNAL, "unknown form");
}

mlstm_status bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* sizes) {
  switch (p.form) {
    case Form::kParallel: return parallel_bwd_sizes(p, sizes);
    case Form::kChunkwise: return chunkwise_bwd_sizes(p, sizes);
    default: return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s has no backward", form_name(p.form));
  }
}

}  // namespace mlstm::cuda
