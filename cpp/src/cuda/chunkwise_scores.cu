// Launchers of the small kernels of the chunkwise form: the forward and backward intra-chunk
// matrices (chunkwise_kernels.cuh), the gate gradients (chunkwise_gates.cuh) and the chaining of
// segment states (chunkwise_combine.cuh).
#include "cuda/chunkwise_combine.cuh"
#include "cuda/chunkwise_gates.cuh"
#include "cuda/chunkwise_kernels.cuh"
#include "cuda/chunkwise_launch.h"

namespace mlstm::cuda::chunkwise {

template <typename Elem>
mlstm_status launch_fwd_scores(const FwdScoreParams& p, cudaStream_t stream) {
  const size_t smem = score_smem_bytes<Elem>();
  MLSTM_CUDA_CHECK(cudaFuncSetAttribute(chunkwise_fwd_scores_kernel<Elem>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(smem)));
  const dim3 grid(unsigned(p.NC), unsigned(p.BNH));
  MLSTM_CHUNKWISE_LAUNCH(chunkwise_fwd_scores_kernel<Elem>, grid, kThreads, smem, stream, p);
  MLSTM_CUDA_CHECK_LAUNCH("chunkwise_fwd_scores_kernel");
  return MLSTM_OK;
}

template <typename Elem>
mlstm_status launch_bwd_scores(const BwdScoreParams& p, cudaStream_t stream) {
  const size_t smem = score_smem_bytes<Elem>();
  MLSTM_CUDA_CHECK(cudaFuncSetAttribute(chunkwise_bwd_scores_kernel<Elem>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(smem)));
  const dim3 grid(unsigned(p.NC), unsigned(p.BNH));
  MLSTM_CHUNKWISE_LAUNCH(chunkwise_bwd_scores_kernel<Elem>, grid, kThreads, smem, stream, p);
  MLSTM_CUDA_CHECK_LAUNCH("chunkwise_bwd_scores_kernel");
  return MLSTM_OK;
}

mlstm_status launch_bwd_gates(const GatesParams& p, cudaStream_t stream) {
  const dim3 grid(unsigned(p.BNH));  // one block per (b, h)
  MLSTM_CHUNKWISE_LAUNCH(chunkwise_bwd_gates_kernel, grid, kGateWarps * 32, kGateSmemBytes, stream, p);
  MLSTM_CUDA_CHECK_LAUNCH("chunkwise_bwd_gates_kernel");
  return MLSTM_OK;
}

mlstm_status launch_combine(const CombineParams& p, cudaStream_t stream) {
  const int64_t elems = int64_t(p.DHQK) * p.DHHV + p.DHQK;
  const dim3 grid(unsigned((elems + 255) / 256), unsigned(p.BNH));
  MLSTM_CHUNKWISE_LAUNCH(chunkwise_combine_kernel, grid, 256, 0, stream, p);
  MLSTM_CUDA_CHECK_LAUNCH("chunkwise_combine_kernel");
  return MLSTM_OK;
}

#define MLSTM_CHUNKWISE_SCORES(Elem)                                                    \
  template mlstm_status launch_fwd_scores<Elem>(const FwdScoreParams&, cudaStream_t); \
  template mlstm_status launch_bwd_scores<Elem>(const BwdScoreParams&, cudaStream_t);
MLSTM_CHUNKWISE_SCORES(float)
MLSTM_CHUNKWISE_SCORES(__half)
MLSTM_CHUNKWISE_SCORES(__nv_bfloat16)
#undef MLSTM_CHUNKWISE_SCORES

}  // namespace mlstm::cuda::chunkwise
