// Prints the sequence configuration chosen for shapes given on the command line (B NH DHQK DHHV dtype-bytes),
// by running mlstm_sequence_fwd with S = 1 under emulation (EMU_PRINT_CONFIG build) on zero inputs.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "mlstm/mlstm.h"
int main(int argc, char** argv) {
  for (int a = 1; a + 4 < argc + 0 || a + 4 <= argc - 1; a += 5) {
    const int64_t B = atoll(argv[a]), NH = atoll(argv[a + 1]), DK = atoll(argv[a + 2]), DV = atoll(argv[a + 3]);
    const int bytes = atoi(argv[a + 4]);
    const mlstm_dtype dt = bytes == 4 ? MLSTM_FLOAT32 : MLSTM_BFLOAT16;
    std::printf("shape B=%lld NH=%lld DHQK=%lld DHHV=%lld bytes=%d\n", (long long)B, (long long)NH, (long long)DK, (long long)DV, bytes);
    std::fflush(stdout);
    std::vector<unsigned char> q(B * NH * DK * bytes), k(q.size()), v(B * NH * DV * bytes), h(v.size()), i(B * NH * 4), f(B * NH * 4);
    mlstm_fwd_args x{};
    x.device = mlstm_device{MLSTM_DEVICE_CUDA, 0, nullptr};
    x.shape = mlstm_shape{B, NH, 1, DK, DV};
    x.eps = 1e-6f;
    auto t = [&](void* p, mlstm_dtype d, std::vector<int64_t> shape) {
      mlstm_tensor r{}; r.data = p; r.dtype = d; int64_t st = 1;
      for (int j = int(shape.size()) - 1; j >= 0; --j) { r.stride[j] = st; st *= shape[j]; }
      return r;
    };
    x.q = t(q.data(), dt, {B, NH, 1, DK}); x.k = t(k.data(), dt, {B, NH, 1, DK}); x.v = t(v.data(), dt, {B, NH, 1, DV});
    x.h = t(h.data(), dt, {B, NH, 1, DV}); x.i = t(i.data(), MLSTM_FLOAT32, {B, NH, 1}); x.f = t(f.data(), MLSTM_FLOAT32, {B, NH, 1});
    if (std::getenv("SHAPES_DRY")) continue;
    mlstm_status st = mlstm_sequence_fwd(&x);
    if (st != MLSTM_OK) std::printf("error %d: %s\n", int(st), mlstm_last_error());
  }
}
