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
// The register walk (16-bit types; p.reg.kw > 0). Its kernels are compiled per walk mode, each mode in
// its own translation unit (chunkwise_walk_reg_<mode>.cu), so that they build in parallel.
template <typename Elem>
mlstm_status launch_reg_walk(const WalkParams& p, int n_slices, int n_segments, cudaStream_t stream);
template <typename Elem, WalkMode kMode>
mlstm_status launch_reg_walk_mode(const WalkParams& p, int n_slices, int n_segments, cudaStream_t stream);
// Shared memory of a register-walk layout in a mode; size_t(-1) where that layout is not compiled.
size_t reg_walk_smem_bytes(const RegWalkShape& shape, WalkMode mode);

}  // namespace mlstm::cuda::chunkwise
