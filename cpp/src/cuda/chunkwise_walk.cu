// Launchers of the sequential walks of the chunkwise form (chunkwise_walk_kernel: the forward output
// pass and the three backward passes share it; the mode is a runtime field).
#include "cuda/chunkwise_kernels.cuh"
#include "cuda/chunkwise_launch.h"

namespace mlstm::cuda::chunkwise {

template <typename Elem>
size_t walk_smem_bytes(int DA, int DB_s) {
  return WalkSmem<Elem>(DA, DB_s).bytes;
}

namespace {
template <typename Elem, int DBs>
mlstm_status launch_walk_slice(const WalkParams& p, int n_slices, int n_segments, size_t smem_bytes,
                               cudaStream_t stream) {
  MLSTM_CUDA_CHECK(cudaFuncSetAttribute(chunkwise_walk_kernel<Elem, DBs>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)));
  const dim3 grid(unsigned(n_slices), unsigned(p.BNH), unsigned(n_segments));
  MLSTM_CHUNKWISE_LAUNCH((chunkwise_walk_kernel<Elem, DBs>), grid, kWalkThreads, smem_bytes, stream, p);
  MLSTM_CUDA_CHECK_LAUNCH("chunkwise_walk_kernel");
  return MLSTM_OK;
}

}  // namespace

template <typename Elem>
mlstm_status launch_walk(const WalkParams& p, int n_slices, int n_segments, size_t smem_bytes, cudaStream_t stream) {
  if constexpr (!std::is_same_v<Elem, float>) {
    if (p.reg.kw > 0) return launch_reg_walk<Elem>(p, n_slices, n_segments, stream);
  }
  switch (p.DB_s) {
    case 128: return launch_walk_slice<Elem, 128>(p, n_slices, n_segments, smem_bytes, stream);
    case 64: return launch_walk_slice<Elem, 64>(p, n_slices, n_segments, smem_bytes, stream);
    case 32: return launch_walk_slice<Elem, 32>(p, n_slices, n_segments, smem_bytes, stream);
    case 16: return launch_walk_slice<Elem, 16>(p, n_slices, n_segments, smem_bytes, stream);
    default: return fail(MLSTM_ERROR_INTERNAL, "chunkwise on CUDA: no walk kernel for a value slice of %d", p.DB_s);
  }
}

#define MLSTM_CHUNKWISE_WALK(Elem)                                                                \
  template size_t walk_smem_bytes<Elem>(int, int);                                              \
  template mlstm_status launch_walk<Elem>(const WalkParams&, int, int, size_t, cudaStream_t);
MLSTM_CHUNKWISE_WALK(float)
MLSTM_CHUNKWISE_WALK(__half)
MLSTM_CHUNKWISE_WALK(__nv_bfloat16)
#undef MLSTM_CHUNKWISE_WALK

}  // namespace mlstm::cuda::chunkwise
