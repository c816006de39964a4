// The CPU backend's algorithms, one file each:
//   chunked_forward.cpp   — the chunkwise form with chunk size L (chunkwise_fwd; parallel_fwd is the
//                           same computation with L = S and the stabiliser started at -inf)
//   chunked_backward.cpp  — its exact gradient (chunkwise_bwd, parallel_bwd)
//   recurrent.cpp         — sequence_fwd and step_fwd: the recurrence, one time step after another
// The entry points of common/backend.h (chunkwise.cpp, parallel.cpp, recurrent.cpp, backend.cpp) are
// thin adapters onto these.
#pragma once

#include <cstdint>

#include "common/params.h"

namespace mlstm::cpu {

mlstm_status chunked_fwd(const FwdParams& p, int64_t L);
mlstm_status chunked_bwd(const BwdParams& p, int64_t L);

}  // namespace mlstm::cpu
