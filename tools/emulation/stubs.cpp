#include "common/backend.h"
#include "common/error.h"
#include "cuda/forms.h"
// The forms not under emulation fail; MLSTM_EMULATE_PARALLEL selects the parallel form, else the
// chunkwise form is emulated.
namespace mlstm {
namespace cuda {
int device_count() { return 1; }
#ifdef MLSTM_EMULATE_PARALLEL
mlstm_status fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* s) { return parallel_fwd_sizes(p, s); }
mlstm_status bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* s) { return parallel_bwd_sizes(p, s); }
mlstm_status chunkwise_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
mlstm_status chunkwise_bwd(const BwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
#else
mlstm_status fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* s) { return chunkwise_fwd_sizes(p, s); }
mlstm_status bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* s) { return chunkwise_bwd_sizes(p, s); }
mlstm_status parallel_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
mlstm_status parallel_bwd(const BwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
#endif
mlstm_status sequence_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
mlstm_status step_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
}  // namespace cuda
}  // namespace mlstm
