// Buffer sizes of the CPU backend. Its kernels keep their per-thread scratch in std::vector (a few
// chunk-sized rows, one head's state, and in the backward the chunk states of one head: at most
// 16 MiB per thread, beyond which it checkpoints), and its backward recomputes what it needs from
// the forward's inputs -- so a CPU call asks the caller for neither workspace nor a saved buffer.
#include "common/backend.h"
#include "common/error.h"

namespace mlstm::cpu {

mlstm_status fwd_sizes(const FwdParams&, mlstm_buffer_sizes* sizes) {
  *sizes = mlstm_buffer_sizes{0, 0};
  return MLSTM_OK;
}

mlstm_status bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* sizes) {
  if (p.form != Form::kParallel && p.form != Form::kChunkwise)
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s has no backward", form_name(p.form));
  *sizes = mlstm_buffer_sizes{0, 0};
  return MLSTM_OK;
}

}  // namespace mlstm::cpu
