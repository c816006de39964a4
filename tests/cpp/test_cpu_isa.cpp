// The builds of the CPU kernels (cpp/src/cpu/isa.h) agree bitwise: every form's forward and the
// parallel and chunkwise backward, for each input dtype, on sizes with vector tails, run once on the
// baseline build and once on each other build this CPU can run. Where there is none, nothing to do.
// `test_cpu_isa --bench` times both builds instead (docs/dev-notes.md, "CPU instruction sets").
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/forms.h"
#include "harness.h"
#include "reference.h"
#include "testing.h"

using harness::Config;
using harness::Form;
using testing::format;

namespace {

using mlstm::cpu::Isa;

struct Case {
  int64_t B, NH, S, DHQK, DHHV;
  int32_t chunk_size;
};

// Outputs of one forward, and of the backward for the forms that have one, all as double (exact).
std::vector<std::vector<double>> run(Form form, const ref::Inputs<double>& in, const Config& cfg, const std::vector<double>& dh,
                                     const std::vector<double>& dc, const std::vector<double>& dn, const std::vector<double>& dm) {
  if (form == Form::kParallel || form == Form::kChunkwise) {
    harness::BwdRun r(in, cfg, dh, dc, dn, dm);
    const mlstm_status st = r.run(form);
    CHECK(st == MLSTM_OK, "%s backward: %s", harness::form_name(form), mlstm_last_error());
    const ref::Outputs<double> o = r.fwd.outputs();
    const ref::Grads<double> g = r.grads();
    return {o.h, o.c, o.n, o.m, g.dq, g.dk, g.dv, g.di, g.df, g.dc0, g.dn0, g.dm0};
  }
  harness::FwdRun r(in, cfg);
  const mlstm_status st = r.run(form);
  CHECK(st == MLSTM_OK, "%s forward: %s", harness::form_name(form), mlstm_last_error());
  const ref::Outputs<double> o = r.outputs();
  return {o.h, o.c, o.n, o.m};
}

void compare_builds(Isa other, const char* other_name) {
  testing::Rng rng(21);
  const Case cases[] = {{2, 3, 37, 19, 35, 16}, {1, 2, 130, 64, 96, 32}, {1, 1, 1, 256, 512, 16}};
  struct Dtypes {
    mlstm_dtype qkv, gates, states;
  };
  const Dtypes dtypes[] = {{MLSTM_FLOAT32, MLSTM_FLOAT32, MLSTM_FLOAT32},
                           {MLSTM_BFLOAT16, MLSTM_FLOAT32, MLSTM_FLOAT32},
                           {MLSTM_FLOAT16, MLSTM_BFLOAT16, MLSTM_FLOAT32},
                           {MLSTM_FLOAT64, MLSTM_FLOAT64, MLSTM_FLOAT64}};
  for (const Case& c : cases) {
    for (Form form : {Form::kParallel, Form::kChunkwise, Form::kSequence, Form::kStep}) {
      if ((form == Form::kStep) != (c.S == 1)) continue;
      const bool state = form != Form::kParallel;
      const ref::Inputs<double> in = harness::random_inputs(rng, c.B, c.NH, c.S, c.DHQK, c.DHHV, state);
      const std::vector<double> dh = rng.normals(size_t(c.B * c.NH * c.S * c.DHHV));
      std::vector<double> dc, dn, dm;
      if (state) {
        dc = rng.normals(size_t(c.B * c.NH * c.DHQK * c.DHHV));
        dn = rng.normals(size_t(c.B * c.NH * c.DHQK));
        dm = rng.normals(size_t(c.B * c.NH));
      }
      for (const Dtypes& d : dtypes) {
        Config cfg;
        cfg.qkv = d.qkv, cfg.gates = d.gates, cfg.states = d.states;
        cfg.chunk_size = c.chunk_size;
        cfg.want_last = state;
        mlstm::cpu::set_isa(Isa::kBaseline);
        const std::vector<std::vector<double>> want = run(form, in, cfg, dh, dc, dn, dm);
        mlstm::cpu::set_isa(other);
        const std::vector<std::vector<double>> got = run(form, in, cfg, dh, dc, dn, dm);
        int differing = 0;
        for (size_t j = 0; j < want.size(); ++j) differing += got[j] != want[j];
        const std::string what = format("%s vs baseline, %s S=%lld B=%lld NH=%lld DHQK=%lld DHHV=%lld %s", other_name,
                                        harness::form_name(form), (long long)c.S, (long long)c.B, (long long)c.NH,
                                        (long long)c.DHQK, (long long)c.DHHV, testing::dtype_name(d.qkv));
        std::printf("%s %s: %d of %zu outputs differ\n", differing == 0 ? "ok  " : "FAIL", what.c_str(), differing,
                    want.size());
        CHECK(differing == 0, "%s: outputs differ", what.c_str());
      }
    }
  }
}

// Best of `reps` calls of fn, in milliseconds.
template <typename Fn>
double best_ms(int reps, const Fn& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// Chunkwise forward+backward (L = 64) and an in-place step at B=1, NH=2, S=256, DHQK=256, DHHV=512,
// fp32, through the C ABI; the builds alternate within each round so that both see the same load.
int bench() {
  testing::Rng rng(22);
  Config cfg;
  cfg.qkv = cfg.gates = cfg.states = MLSTM_FLOAT32;
  cfg.padded = false;
  cfg.chunk_size = 64;
  const ref::Inputs<double> in = harness::random_inputs(rng, 1, 2, 256, 256, 512, false);
  harness::BwdRun chunkwise(in, cfg, rng.normals(size_t(2 * 256 * 512)), {}, {}, {});
  const ref::Inputs<double> one = harness::random_inputs(rng, 1, 2, 1, 256, 512, true);
  harness::FwdRun step(one, cfg);
  mlstm_fwd_args step_args = step.args();
  step_args.c_last = step_args.c_initial, step_args.n_last = step_args.n_initial, step_args.m_last = step_args.m_initial;
  const std::vector<std::pair<Isa, const char*>> builds = {{Isa::kBaseline, "baseline"}, {Isa::kAvx2, "avx2"}};
  std::vector<double> fwd_bwd(builds.size(), 1e30), step_ms(builds.size(), 1e30);
  for (int round = 0; round < 5; ++round) {
    for (size_t j = 0; j < builds.size(); ++j) {
      if (!mlstm::cpu::set_isa(builds[j].first)) continue;
      fwd_bwd[j] = std::min(fwd_bwd[j], best_ms(3, [&] { CHECK(chunkwise.run(Form::kChunkwise) == MLSTM_OK, "chunkwise"); }));
      step_ms[j] = std::min(step_ms[j], best_ms(200, [&] { CHECK(mlstm_step_fwd(&step_args) == MLSTM_OK, "step"); }));
    }
  }
  std::printf("B=1 NH=2 S=256 DHQK=256 DHHV=512 fp32, best of 5 rounds:\n");
  for (size_t j = 0; j < builds.size(); ++j)
    if (fwd_bwd[j] < 1e30)
      std::printf("  %-8s chunkwise L=64 fwd+bwd %7.2f ms   step (in place) %7.1f us\n", builds[j].second, fwd_bwd[j],
                  step_ms[j] * 1e3);
  return testing::finish("test_cpu_isa --bench");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) return bench();
  if (mlstm::cpu::set_isa(Isa::kAvx2))
    compare_builds(Isa::kAvx2, "avx2");
  else
    std::printf("only the baseline build runs here: nothing to compare\n");
  return testing::finish("test_cpu_isa");
}
