// The CPU backend's algorithms, one file each:
//   chunked_forward.cpp   — the chunkwise form with chunk size L (chunkwise_fwd; parallel_fwd is the
//                           same computation with L = S and the stabiliser started at -inf)
//   chunked_backward.cpp  — its exact gradient (chunkwise_bwd, parallel_bwd)
//   recurrent.cpp         — the recurrence, one time step after another (sequence_fwd, step_fwd)
// These are compiled once per instruction set (isa.h), each build in its own namespace;
// dispatch.cpp forwards to the build this machine runs. The entry points of common/backend.h
// (chunkwise.cpp, parallel.cpp, sequence.cpp, backend.cpp) are thin adapters onto the forwarders.
#pragma once

#include <cstdint>

#include "common/params.h"
#include "cpu/isa.h"

// The algorithms of one build. A kernel file declares its own build's (inside the build's target
// region, like its definitions); dispatch.cpp declares every build's.
#define MLSTM_CPU_DECLARE_KERNELS(isa)                      \
  namespace mlstm::cpu::isa {                               \
  mlstm_status chunked_fwd(const FwdParams& p, int64_t L);  \
  mlstm_status chunked_bwd(const BwdParams& p, int64_t L);  \
  mlstm_status recurrent_fwd(const FwdParams& p);           \
  }

MLSTM_CPU_ISA_BEGIN
MLSTM_CPU_DECLARE_KERNELS(MLSTM_CPU_ISA)
MLSTM_CPU_ISA_END

namespace mlstm::cpu {

// The same algorithms on the build in use.
mlstm_status chunked_fwd(const FwdParams& p, int64_t L);
mlstm_status chunked_bwd(const BwdParams& p, int64_t L);
mlstm_status recurrent_fwd(const FwdParams& p);

enum class Isa { kBaseline, kAvx2 };

// Runs later calls on `isa` if this library has that build and this CPU can run it, and says
// whether it did: lets the tests check both builds in one process.
bool set_isa(Isa isa);

}  // namespace mlstm::cpu
