// Which build of the CPU kernels (isa.h) runs: the AVX2 build on x86-64 CPUs that have AVX2 (and an
// OS that saves the AVX registers, which __builtin_cpu_supports checks too), the baseline build
// everywhere else. Decided once, at the first call; set_isa overrides it for tests.
#include <atomic>

#include "common/backend.h"
#include "cpu/forms.h"

#ifdef MLSTM_CPU_DISPATCH
MLSTM_CPU_DECLARE_KERNELS(avx2)
#endif

namespace mlstm::cpu {
namespace {

bool supported(Isa isa) {
  if (isa == Isa::kBaseline) return true;
#ifdef MLSTM_CPU_DISPATCH
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

std::atomic<Isa>& active() {
  static std::atomic<Isa> isa{supported(Isa::kAvx2) ? Isa::kAvx2 : Isa::kBaseline};
  return isa;
}

}  // namespace

bool set_isa(Isa isa) {
  if (!supported(isa)) return false;
  active().store(isa);
  return true;
}

const char* isa_name() { return active().load() == Isa::kAvx2 ? "avx2" : "baseline"; }

#ifdef MLSTM_CPU_DISPATCH
#define MLSTM_CPU_ON_ACTIVE_BUILD(call) (active().load() == Isa::kAvx2 ? avx2::call : baseline::call)
#else
#define MLSTM_CPU_ON_ACTIVE_BUILD(call) baseline::call
#endif

mlstm_status chunked_fwd(const FwdParams& p, int64_t L) { return MLSTM_CPU_ON_ACTIVE_BUILD(chunked_fwd(p, L)); }

mlstm_status chunked_bwd(const BwdParams& p, int64_t L) { return MLSTM_CPU_ON_ACTIVE_BUILD(chunked_bwd(p, L)); }

mlstm_status recurrent_fwd(const FwdParams& p) { return MLSTM_CPU_ON_ACTIVE_BUILD(recurrent_fwd(p)); }

#undef MLSTM_CPU_ON_ACTIVE_BUILD

}  // namespace mlstm::cpu
