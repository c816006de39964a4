// The register walk's kernels for mode kDk (see chunkwise_walk_reg_launch.cuh).
#include "cuda/chunkwise_walk_reg_launch.cuh"

namespace mlstm::cuda::chunkwise {
MLSTM_REG_WALK_MODE(WalkMode::kDk)
}  // namespace mlstm::cuda::chunkwise
