// The register walk's kernels for mode kDv (see chunkwise_walk_reg_launch.cuh).
#include "cuda/chunkwise_walk_reg_launch.cuh"

namespace mlstm::cuda::chunkwise {
MLSTM_REG_WALK_MODE(WalkMode::kDv)
}  // namespace mlstm::cuda::chunkwise
