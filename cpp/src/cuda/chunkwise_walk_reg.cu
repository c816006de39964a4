// Launchers of the register walk (chunkwise_walk_reg.cuh), in their own translation unit so they
// build in parallel with the shared-memory walk.
#include <type_traits>

#include "cuda/chunkwise_launch.h"
#include "cuda/chunkwise_walk_reg.cuh"

namespace mlstm::cuda::chunkwise {
namespace {
template <typename Elem, int DBs, int KP, int KW>
mlstm_status launch_reg_walk(const WalkParams& p, int n_slices, int n_segments, size_t smem_bytes,
                             cudaStream_t stream) {
  const bool aug = p.mode == WalkMode::kDq || p.mode == WalkMode::kDk;
  const auto kernel = aug ? chunkwise_walk_reg_kernel<Elem, DBs, KP, KW, true>
                          : chunkwise_walk_reg_kernel<Elem, DBs, KP, KW, false>;
  MLSTM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)));
  const dim3 grid(unsigned(n_slices), unsigned(p.BNH), unsigned(n_segments));
  constexpr int kThreadCount = RegGeom<DBs, KP, KW>::kThreadCount;
  MLSTM_CHUNKWISE_LAUNCH(kernel, grid, kThreadCount, smem_bytes, stream, p);
  MLSTM_CUDA_CHECK_LAUNCH("chunkwise_walk_reg_kernel");
  return MLSTM_OK;
}
}  // namespace

size_t reg_walk_smem_bytes(int DB_s, int kp, int kw, int elem_bytes) {
  (void)elem_bytes;  // the 16-bit types share one layout
  if (DB_s == 128 && kp == 1 && kw == 64) return RegSmem<__nv_bfloat16, 128, 1, 64>().bytes;
  if (DB_s == 128 && kp == 1 && kw == 128) return RegSmem<__nv_bfloat16, 128, 1, 128>().bytes;
  if (DB_s == 128 && kp == 1 && kw == 256) return RegSmem<__nv_bfloat16, 128, 1, 256>().bytes;
  if (DB_s == 64 && kp == 2 && kw == 256) return RegSmem<__nv_bfloat16, 64, 2, 256>().bytes;
  return size_t(-1);
}

template <typename Elem>
mlstm_status launch_reg_walk(const WalkParams& p, int n_slices, int n_segments, size_t smem_bytes, cudaStream_t stream) {
  if (p.DB_s == 128 && p.reg_kw == 64) return launch_reg_walk<Elem, 128, 1, 64>(p, n_slices, n_segments, smem_bytes, stream);
  if (p.DB_s == 128 && p.reg_kw == 128) return launch_reg_walk<Elem, 128, 1, 128>(p, n_slices, n_segments, smem_bytes, stream);
  if (p.DB_s == 128 && p.reg_kw == 256) return launch_reg_walk<Elem, 128, 1, 256>(p, n_slices, n_segments, smem_bytes, stream);
  if (p.DB_s == 64 && p.reg_kw == 256) return launch_reg_walk<Elem, 64, 2, 256>(p, n_slices, n_segments, smem_bytes, stream);
  return fail(MLSTM_ERROR_INTERNAL, "chunkwise on CUDA: no register walk for slice %d, %d columns", p.DB_s, p.reg_kw);
}

template mlstm_status launch_reg_walk<__half>(const WalkParams&, int, int, size_t, cudaStream_t);
template mlstm_status launch_reg_walk<__nv_bfloat16>(const WalkParams&, int, int, size_t, cudaStream_t);

}  // namespace mlstm::cuda::chunkwise
