// The register walk's dispatch: the walk mode picks the translation unit holding its kernels
// (chunkwise_walk_reg_<mode>.cu), and the shared memory of each layout.
#include "cuda/chunkwise_walk_reg_launch.cuh"

namespace mlstm::cuda::chunkwise {

size_t reg_walk_smem_bytes(const RegWalkShape& s, WalkMode mode) {
  // The 16-bit types share one layout.
#define MLSTM_REG_WALK_BYTES(M, DBs, KP, KW, kStep, kBlocks) \
  if (mode == M && same_shape(s, DBs, KP, KW, kStep, kBlocks)) \
    return RegSmem<__nv_bfloat16, RegGeom<DBs, KP, KW, kStep, kBlocks>, M>::kBytes;
#define MLSTM_REG_WALK_BYTES_FWD(...) MLSTM_REG_WALK_BYTES(WalkMode::kFwd, __VA_ARGS__)
#define MLSTM_REG_WALK_BYTES_DV(...) MLSTM_REG_WALK_BYTES(WalkMode::kDv, __VA_ARGS__)
#define MLSTM_REG_WALK_BYTES_DQ(...) MLSTM_REG_WALK_BYTES(WalkMode::kDq, __VA_ARGS__)
#define MLSTM_REG_WALK_BYTES_DK(...) MLSTM_REG_WALK_BYTES(WalkMode::kDk, __VA_ARGS__)
  MLSTM_REG_WALK_SHAPES_QK(MLSTM_REG_WALK_BYTES_FWD)
  MLSTM_REG_WALK_SHAPES_QK(MLSTM_REG_WALK_BYTES_DV)
  MLSTM_REG_WALK_SHAPES_V(MLSTM_REG_WALK_BYTES_DQ)
  MLSTM_REG_WALK_SHAPES_V(MLSTM_REG_WALK_BYTES_DK)
  // The v walks' own kernel: the same shared memory in both of its modes.
#define MLSTM_REG_V_WALK_BYTES(DBs, KP, KW) \
  if (!walks_qk(mode) && same_v_shape(s, DBs, KP, KW)) return VWalkSmem<__nv_bfloat16, DBs, KP, KW>().bytes;
  MLSTM_REG_V_WALK_SHAPES(MLSTM_REG_V_WALK_BYTES)
#undef MLSTM_REG_V_WALK_BYTES
#undef MLSTM_REG_WALK_BYTES_FWD
#undef MLSTM_REG_WALK_BYTES_DV
#undef MLSTM_REG_WALK_BYTES_DQ
#undef MLSTM_REG_WALK_BYTES_DK
#undef MLSTM_REG_WALK_BYTES
  return size_t(-1);
}

template <typename Elem>
mlstm_status launch_reg_walk(const WalkParams& p, int n_slices, int n_segments, cudaStream_t stream) {
  switch (p.mode) {
    case WalkMode::kFwd: return launch_reg_walk_mode<Elem, WalkMode::kFwd>(p, n_slices, n_segments, stream);
    case WalkMode::kDq: return launch_reg_walk_mode<Elem, WalkMode::kDq>(p, n_slices, n_segments, stream);
    case WalkMode::kDv: return launch_reg_walk_mode<Elem, WalkMode::kDv>(p, n_slices, n_segments, stream);
    case WalkMode::kDk: return launch_reg_walk_mode<Elem, WalkMode::kDk>(p, n_slices, n_segments, stream);
  }
  return fail(MLSTM_ERROR_INTERNAL, "chunkwise on CUDA: unknown walk mode");
}

template mlstm_status launch_reg_walk<__half>(const WalkParams&, int, int, cudaStream_t);
template mlstm_status launch_reg_walk<__nv_bfloat16>(const WalkParams&, int, int, cudaStream_t);

}  // namespace mlstm::cuda::chunkwise
