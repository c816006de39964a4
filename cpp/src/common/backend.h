// The two backends behind the API layer. Each implements every form; the API layer picks one by
// the device kind. A CUDA function that a build does not provide reports MLSTM_ERROR_UNSUPPORTED
// through mlstm::fail with a message naming the form.
#pragma once

#include "common/params.h"

namespace mlstm {

#define MLSTM_DECLARE_BACKEND(ns)                                              \
  namespace ns {                                                               \
  mlstm_status fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* sizes);       \
  mlstm_status bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* sizes);       \
  mlstm_status parallel_fwd(const FwdParams& p);                               \
  mlstm_status parallel_bwd(const BwdParams& p);                               \
  mlstm_status chunkwise_fwd(const FwdParams& p);                              \
  mlstm_status chunkwise_bwd(const BwdParams& p);                              \
  mlstm_status sequence_fwd(const FwdParams& p);                               \
  mlstm_status step_fwd(const FwdParams& p);                                   \
  }

MLSTM_DECLARE_BACKEND(cpu)
namespace cpu {
const char* isa_name();  // the build of the CPU kernels in use: "avx2" or "baseline"
}
#ifdef MLSTM_WITH_CUDA
MLSTM_DECLARE_BACKEND(cuda)
namespace cuda {
int device_count();
}
#endif

#undef MLSTM_DECLARE_BACKEND

}  // namespace mlstm
