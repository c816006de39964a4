// Backward of the chunked mLSTM on the CPU (being written; the forward lands first).
#include "common/error.h"
#include "cpu/forms.h"

namespace mlstm::cpu {

mlstm_status chunked_bwd(const BwdParams& p, int64_t) {
  return fail(MLSTM_ERROR_UNSUPPORTED, "%s backward: not implemented on CPU yet", form_name(p.form));
}

}  // namespace mlstm::cpu
