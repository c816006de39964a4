// The compiled register-walk layouts and their launchers (chunkwise_walk_reg.cuh, and for the v walks
// also chunkwise_walk_reg_v.cuh), shared by the per-mode translation units chunkwise_walk_reg_<mode>.cu
// and the dispatch in chunkwise_walk_reg.cu.
#pragma once

#include "cuda/chunkwise_launch.h"
#include "cuda/chunkwise_walk_reg.cuh"
#include "cuda/chunkwise_walk_reg_v.cuh"

namespace mlstm::cuda::chunkwise {

// The layouts of chunkwise_walk_reg.cuh, as X(value slice, contraction parts, columns per part, columns
// per step, blocks per SM), one list per walk direction: "qk" walks (kFwd, kDv) contract over DHQK and
// slice DHHV, "v" walks (kDq, kDk) contract over DHHV and slice DHQK. chunkwise.cu (pick_reg_split)
// chooses among them.
//   KW = 256, one 8-warp block per SM: the state in 128 registers (up to 255 per thread).
//   KW <= 128 with 16 warps per SM: the state in 64 registers and the walk in 128 -- one 16-warp block
//   (128/2/128, 64/4/128), or two 8-warp blocks (64/2/128 in 32-column steps, whose shared memory fits
//   twice in an SM; the forward and dv walks only: the split state of dq/dk needs more).
#define MLSTM_REG_WALK_SHAPES_QK(X) \
  X(128, 1, 64, 64, 1)              \
  X(128, 1, 128, 64, 1)             \
  X(128, 1, 256, 64, 1)             \
  X(64, 2, 256, 64, 1)              \
  X(128, 2, 128, 64, 1)             \
  X(64, 2, 128, 32, 2)
#define MLSTM_REG_WALK_SHAPES_V(X) \
  X(128, 1, 64, 64, 1)             \
  X(128, 1, 128, 64, 1)            \
  X(128, 1, 256, 64, 1)            \
  X(64, 2, 256, 64, 1)             \
  X(128, 2, 128, 32, 1)            \
  X(64, 4, 128, 32, 1)
// The layouts of the v walks' own kernel (chunkwise_walk_reg_v.cuh: 8 warps of up to 255 registers, one
// block per SM, kTK-column steps), as X(value slice, contraction parts, columns per part). The library
// runs the v walks on it: there it is faster than the layouts above (chunkwise.cu, pick_reg_split).
#define MLSTM_REG_V_WALK_SHAPES(X) \
  X(128, 1, 64)                    \
  X(128, 1, 128)                   \
  X(128, 1, 256)                   \
  X(64, 2, 256)

__host__ __device__ constexpr bool walks_qk(WalkMode m) { return m == WalkMode::kFwd || m == WalkMode::kDv; }

inline bool same_shape(const RegWalkShape& s, int DBs, int KP, int KW, int kStep, int kBlocks) {
  return !s.v_kernel && s.DB_s == DBs && s.kp == KP && s.kw == KW && s.step_cols == kStep &&
         s.blocks_per_sm == kBlocks;
}
inline bool same_v_shape(const RegWalkShape& s, int DBs, int KP, int KW) {
  return s.v_kernel && s.DB_s == DBs && s.kp == KP && s.kw == KW;
}

// One compiled kernel on grid (value slices, B*NH, segments), its dynamic shared memory opted in.
template <typename Kernel>
mlstm_status launch_reg_kernel(Kernel kernel, int thread_count, size_t smem_bytes, const WalkParams& p, int n_slices,
                               int n_segments, cudaStream_t stream) {
  MLSTM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)));
  const dim3 grid(unsigned(n_slices), unsigned(p.BNH), unsigned(n_segments));
  MLSTM_CHUNKWISE_LAUNCH(kernel, grid, thread_count, smem_bytes, stream, p);
  MLSTM_CUDA_CHECK_LAUNCH("chunkwise_walk_reg_kernel");
  return MLSTM_OK;
}

template <typename Elem, WalkMode kMode, int DBs, int KP, int KW, int kStep, int kBlocks>
mlstm_status launch_reg_walk_shape(const WalkParams& p, int n_slices, int n_segments, cudaStream_t stream) {
  using G = RegGeom<DBs, KP, KW, kStep, kBlocks>;
  return launch_reg_kernel(chunkwise_walk_reg_kernel<Elem, DBs, KP, KW, kStep, kBlocks, kMode>, G::kThreadCount,
                           RegSmem<Elem, G, kMode>::kBytes, p, n_slices, n_segments, stream);
}

template <typename Elem, WalkMode kMode, int DBs, int KP, int KW>
mlstm_status launch_reg_v_walk_shape(const WalkParams& p, int n_slices, int n_segments, cudaStream_t stream) {
  return launch_reg_kernel(chunkwise_walk_reg_v_kernel<Elem, DBs, KP, KW, kMode>, VWalkGeom<DBs, KP, KW>::kThreadCount,
                           VWalkSmem<Elem, DBs, KP, KW>().bytes, p, n_slices, n_segments, stream);
}

template <typename Elem, WalkMode kMode>
mlstm_status launch_reg_walk_mode(const WalkParams& p, int n_slices, int n_segments, cudaStream_t stream) {
#define MLSTM_REG_WALK_LAUNCH(DBs, KP, KW, kStep, kBlocks) \
  if (same_shape(p.reg, DBs, KP, KW, kStep, kBlocks))     \
    return launch_reg_walk_shape<Elem, kMode, DBs, KP, KW, kStep, kBlocks>(p, n_slices, n_segments, stream);
#define MLSTM_REG_V_WALK_LAUNCH(DBs, KP, KW) \
  if (same_v_shape(p.reg, DBs, KP, KW))     \
    return launch_reg_v_walk_shape<Elem, kMode, DBs, KP, KW>(p, n_slices, n_segments, stream);
  if constexpr (walks_qk(kMode)) {
    MLSTM_REG_WALK_SHAPES_QK(MLSTM_REG_WALK_LAUNCH)
  } else {
    MLSTM_REG_WALK_SHAPES_V(MLSTM_REG_WALK_LAUNCH)
    MLSTM_REG_V_WALK_SHAPES(MLSTM_REG_V_WALK_LAUNCH)
  }
#undef MLSTM_REG_V_WALK_LAUNCH
#undef MLSTM_REG_WALK_LAUNCH
  return fail(MLSTM_ERROR_INTERNAL, "chunkwise on CUDA: no register walk for slice %d, %d x %d columns%s", p.reg.DB_s,
              p.reg.kp, p.reg.kw, p.reg.v_kernel ? " (v-walk kernel)" : "");
}

// Instantiates the launchers of one mode for both 16-bit types (one per translation unit).
#define MLSTM_REG_WALK_MODE(kMode)                                                                      \
  template mlstm_status launch_reg_walk_mode<__half, kMode>(const WalkParams&, int, int, cudaStream_t); \
  template mlstm_status launch_reg_walk_mode<__nv_bfloat16, kMode>(const WalkParams&, int, int, cudaStream_t);

}  // namespace mlstm::cuda::chunkwise
