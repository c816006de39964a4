// Launchers of the chunkwise kernels, one per kernel and element type (float, __half,
// __nv_bfloat16), compiled in chunkwise_scores.cu and chunkwise_walk.cu so the two halves build in
// parallel. chunkwise.cu (the host adapter) builds the params and calls these.
#pragma once

#include <cstddef>

#include "cuda/chunkwise_params.cuh"

namespace mlstm::cuda::chunkwise {

template <typename Elem>
mlstm_status launch_fwd_scores(const FwdScoreParams& p, cudaStream_t stream);
template <typename Elem>
mlstm_status launch_bwd_scores(const BwdScoreParams& p, cudaStream_t stream);
mlstm_status launch_bwd_gates(const GatesParams& p, cudaStream_t stream);

mlstm_status launch_combine(const CombineParams& p, cudaStream_t stream);

// grid = (value slices, B*NH, segments); smem_bytes from walk_smem_bytes.
template <typename Elem>
mlstm_status launch_walk(const WalkParams& p, int n_slices, int n_segments, size_t smem_bytes, cudaStream_t stream);
template <typename Elem>
size_t walk_smem_bytes(int DA, int DB_s);
// The register walk (16-bit types; p.reg_kw > 0).
template <typename Elem>
mlstm_status launch_reg_walk(const WalkParams& p, int n_slices, int n_segments, size_t smem_bytes, cudaStream_t stream);
// Shared memory of the register walk with value slice DB_s, kp contraction parts of kw columns.
size_t reg_walk_smem_bytes(int DB_s, int kp, int kw, int elem_bytes);

}  // namespace mlstm::cuda::chunkwise
