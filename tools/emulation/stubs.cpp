#include "common/backend.h"
#include "common/error.h"
#include "cuda/forms.h"
namespace mlstm {
namespace cuda {
int device_count() { return 1; }
mlstm_status fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* s) { return chunkwise_fwd_sizes(p, s); }
mlstm_status bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* s) { return chunkwise_bwd_sizes(p, s); }
mlstm_status parallel_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
mlstm_status parallel_bwd(const BwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
mlstm_status sequence_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
mlstm_status step_fwd(const FwdParams&) { return fail(MLSTM_ERROR_UNSUPPORTED, "stub"); }
}
}
