// Sequence and step forms on the CPU: both run the recurrence of recurrent.cpp (the step is S == 1).
#include "common/backend.h"
#include "cpu/forms.h"

namespace mlstm::cpu {

mlstm_status sequence_fwd(const FwdParams& p) { return recurrent_fwd(p); }

mlstm_status step_fwd(const FwdParams& p) { return recurrent_fwd(p); }

}  // namespace mlstm::cpu
