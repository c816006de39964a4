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

// Which walk layouts the chunkwise form uses for 16-bit inputs (chunkwise.cu, pick_reg_split). For tests
// and benchmarks that compare layouts in one process; not part of the C ABI, and process-wide: set it
// between problems, never between a size query and its call or between a forward and its backward
// (the layout of `saved` follows the split).
enum class ChunkwiseWalkPolicy : int {
  kAuto = 0,      // the library's choice: the forward and dv walks as kWarps16, the dq and dk walks on
                  // their own 8-warp kernel (chunkwise_walk_reg_v.cuh), which only kAuto selects
  kWide,          // state slices of 16 rows x up to 256 columns per warp, one 8-warp block per SM
  kWarps16,       // up to 128 columns per warp, 16 warps per SM in one block
  kBlocks2,       // as kWarps16, but the forward and dv walks in two 8-warp blocks per SM
  kSharedMemory,  // no register walk: the state slice in shared memory
};
void chunkwise_set_walk_policy(ChunkwiseWalkPolicy policy);

}  // namespace mlstm::cuda
