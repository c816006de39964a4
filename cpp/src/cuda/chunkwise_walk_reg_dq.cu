// The register walk's kernels for mode kDq (see chunkwise_walk_reg_launch.cuh).
#include "cuda/chunkwise_walk_reg_launch.cuh"

namespace mlstm::cuda::chunkwise {
MLSTM_REG_WALK_MODE(WalkMode::kDq)
}  // namespace mlstm::cuda::chunkwise
