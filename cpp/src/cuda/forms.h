// The CUDA backend's per-form entry points, one file per form:
//   recurrent.cu  — recurrent_sequence_fwd (one launch; backend.cu picks it or the chunkwise form), step_fwd
//   chunkwise.cu  — chunkwise_fwd, chunkwise_bwd (limit_chunk and xl_chunk)
//   parallel.cu   — parallel_fwd, parallel_bwd
// backend.cu routes the size queries to the form's own function.
#pragma once

#include "common/params.h"

namespace mlstm::cuda {

mlstm_status recurrent_fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* sizes);
mlstm_status recurrent_sequence_fwd(const FwdParams& p);
mlstm_status chunkwise_fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* sizes);
mlstm_status chunkwise_bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* sizes);
mlstm_status parallel_fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* sizes);
mlstm_status parallel_bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* sizes);

}  // namespace mlstm::cuda
