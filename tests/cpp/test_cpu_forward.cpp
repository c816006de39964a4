// CPU forward of every form against the fp64 references (reference.h), through the C ABI.
//
// Tolerances, relative ||out - ref|| / ||ref|| against the fp64 reference fed the very inputs the
// kernel saw (rounded to their dtypes, so input rounding is not counted):
//   fp64 inputs: 1e-12. Every output is a sum of at most S*max(DHQK, DHHV) products and exponentials
//     of arguments below ~60 in size; each costs a few units of 1.1e-16, so errors sit near 1e-14.
//   fp32/fp16/bf16 inputs (fp32 accumulation): 3x the error of the worse of two plain fp32
//     implementations on the same inputs -- the recurrence and the S x S parallel form (reference.h
//     run in float). The forms round differently: den_t is n_t . q_hat_t in the recurrence but a sum
//     over s of (q_hat_t . k_s) D_{t,s} in the parallel form, which cancels more when den_t is near
//     zero; the chunkwise form has both parts, so its rounding error is about their sum (2x), with
//     1.5x to spare. At least 10 fp32 units (6e-7); plus twice the unit roundoff of the output's own
//     dtype when it is fp16/bf16 (the output is rounded to it once); never above the SPEC targets
//     (1e-4 for fp32, 1e-2 for bf16/fp16 inputs).
//   Last states are compared as the true state exp(m) (c, n), i.e. c rescaled by exp(m - m_ref), for
//   the kernel and the plain baseline alike: an fp32 stabiliser m carries rounding that C does not
//   (the exponentials of the recurrence see the unrounded sums).
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "reference.h"
#include "testing.h"

using harness::Config;
using harness::Form;
using harness::GateStyle;
using testing::expect_close;
using testing::format;
using testing::rel_error;

namespace {

constexpr double kTolFp64 = 1e-12;
constexpr double kFp32Unit = 5.96e-8;  // 2^-24

testing::Worst g_worst;

double unit_roundoff(mlstm_dtype dtype) {
  switch (dtype) {
    case MLSTM_FLOAT64: return 1.11e-16;
    case MLSTM_FLOAT32: return kFp32Unit;
    case MLSTM_FLOAT16: return 4.88e-4;  // 2^-11
    case MLSTM_BFLOAT16: return 3.91e-3;  // 2^-8
  }
  return 1.0;
}

// SPEC targets: 1e-4 for fp32, 1e-2 where the inputs or the output are fp16/bf16.
double spec_target(mlstm_dtype qkv, mlstm_dtype out_dtype) {
  const bool low = [](mlstm_dtype d) { return d == MLSTM_FLOAT16 || d == MLSTM_BFLOAT16; }(qkv) ||
                   out_dtype == MLSTM_FLOAT16 || out_dtype == MLSTM_BFLOAT16;
  return low ? 1e-2 : 1e-4;
}

// Tolerance for an output of dtype `out_dtype` computed from inputs of dtype `qkv`, given the error
// the plain fp32 recurrence makes on the same quantity.
double tolerance(mlstm_dtype qkv, mlstm_dtype out_dtype, double plain_fp32_error) {
  if (qkv == MLSTM_FLOAT64) return out_dtype == MLSTM_FLOAT64 ? kTolFp64 : 2 * unit_roundoff(out_dtype);
  double tol = std::max(3 * plain_fp32_error, 10 * kFp32Unit);
  if (out_dtype != MLSTM_FLOAT64 && out_dtype != MLSTM_FLOAT32) tol += 2 * unit_roundoff(out_dtype);
  return std::min(tol, spec_target(qkv, out_dtype));
}

std::vector<double> to_double(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

// The true last state exp(m) * (c, n), expressed relative to the reference stabiliser, so that a
// kernel free to round m (low-precision states) is compared on what matters.
std::vector<double> rescaled(const std::vector<double>& x, const std::vector<double>& m, const std::vector<double>& m_ref,
                             int64_t per_head) {
  std::vector<double> out(x.size());
  for (size_t j = 0; j < x.size(); ++j) {
    const size_t head = j / size_t(per_head);
    out[j] = x[j] * std::exp(m[head] - m_ref[head]);
  }
  return out;
}

std::string describe(Form form, const Config& cfg, const ref::Inputs<double>& in, const char* gates) {
  std::string s = harness::form_name(form);
  if (form == Form::kChunkwise)
    s += format("--%s L=%d", cfg.algorithm == MLSTM_CHUNKWISE_LIMIT ? "limit_chunk" : "xl_chunk", cfg.chunk_size);
  s += format(" S=%lld B=%lld NH=%lld DHQK=%lld DHHV=%lld qkv=%s i/f=%s states=%s init=%d gates=%s",
              (long long)in.S, (long long)in.B, (long long)in.NH, (long long)in.DHQK, (long long)in.DHHV,
              testing::dtype_name(cfg.qkv), testing::dtype_name(cfg.gates), testing::dtype_name(cfg.states),
              int(in.has_initial), gates);
  return s;
}

// One forward call compared with the references: h always, the last states when requested.
void check_forward(Form form, const ref::Inputs<double>& raw, Config cfg, const char* gates) {
  const bool parallel = form == Form::kParallel;
  cfg.want_last = !parallel;
  const ref::Inputs<double> in = harness::as_seen(raw, cfg);
  const ref::Outputs<double> want = ref::recurrent_forward(in, parallel);

  harness::FwdRun run(raw, cfg);
  const mlstm_status st = run.run(form);
  const std::string what = describe(form, cfg, in, gates);
  CHECK(st == MLSTM_OK, "%s: status %d (%s)", what.c_str(), int(st), mlstm_last_error());
  if (st != MLSTM_OK) return;
  const ref::Outputs<double> got = run.outputs();

  const int64_t DK = in.DHQK, DV = in.DHHV;
  double plain_h = 0, plain_c = 0, plain_n = 0;
  if (cfg.qkv != MLSTM_FLOAT64) {
    const ref::Outputs<float> plain = ref::recurrent_forward(in.cast<float>(), parallel);
    const std::vector<double> plain_m = to_double(plain.m);
    plain_h = rel_error(to_double(plain.h), want.h);
    plain_c = rel_error(rescaled(to_double(plain.c), plain_m, want.m, DK * DV), want.c);
    plain_n = rel_error(rescaled(to_double(plain.n), plain_m, want.m, DK), want.n);
    const ref::Outputs<double> want_parallel = ref::recurrent_forward(in, true);
    plain_h = std::max(plain_h, rel_error(to_double(ref::parallel_forward(in.cast<float>())), want_parallel.h));
  }
  const double err_h = rel_error(got.h, want.h);
  g_worst.add(format("%s h (%s)", harness::form_name(form), testing::dtype_name(cfg.qkv)), err_h);
  expect_close(what + ": h", err_h, tolerance(cfg.qkv, cfg.qkv, plain_h));
  if (!cfg.want_last) return;
  const double err_c = rel_error(rescaled(got.c, got.m, want.m, DK * DV), want.c);
  const double err_n = rel_error(rescaled(got.n, got.m, want.m, DK), want.n);
  const double err_m = rel_error(got.m, want.m);
  g_worst.add(format("%s c/n_last (%s, %s states)", harness::form_name(form), testing::dtype_name(cfg.qkv),
                     testing::dtype_name(cfg.states)),
              std::max(err_c, err_n));
  expect_close(what + ": c_last", err_c, tolerance(cfg.qkv, cfg.states, plain_c));
  expect_close(what + ": n_last", err_n, tolerance(cfg.qkv, cfg.states, plain_n));
  // m_last is a max of sums of at most S logsigmoid terms: a few rounding units of the accumulation
  // type per term, plus the rounding to the states' dtype.
  const double m_tol = (cfg.qkv == MLSTM_FLOAT64 ? kTolFp64 : 10 * kFp32Unit * double(in.S + 1)) +
                       2 * unit_roundoff(cfg.states);
  expect_close(what + ": m_last", err_m, m_tol);
}

struct Shape {
  int64_t B, NH, S, DHQK, DHHV;
};

struct NamedGates {
  const char* name;
  GateStyle style;
};

const Shape kShapes[] = {{1, 1, 1, 4, 5}, {2, 3, 7, 8, 5}, {3, 1, 63, 16, 24}, {1, 3, 130, 12, 20}, {2, 5, 130, 5, 9}};

const NamedGates kGates[] = {
    {"plain", {0.0, 1.0, 0.0, 1.0}},
    {"long-memory(f+3)", {0.0, 1.0, 3.0, 1.0}},
    {"large|i|", {0.0, 8.0, 0.0, 2.0}},
    {"weak-input(i-6)", {-6.0, 1.0, 1.0, 1.0}},  // the exp(-m) branch of the denominator is active
};

void test_forms_against_reference() {
  testing::Rng rng(1);
  const int32_t limit_sizes[] = {16, 32, 64, 128};
  const int32_t xl_sizes[] = {16, 256};
  for (const Shape& sh : kShapes) {
    for (const NamedGates& g : kGates) {
      for (int init = 0; init < 2; ++init) {
        const ref::Inputs<double> in = harness::random_inputs(rng, sh.B, sh.NH, sh.S, sh.DHQK, sh.DHHV, init, g.style);
        for (mlstm_dtype dt : {MLSTM_FLOAT64, MLSTM_FLOAT32}) {
          Config cfg;
          cfg.qkv = cfg.gates = cfg.states = dt;
          if (!init) check_forward(Form::kParallel, in, cfg, g.name);
          check_forward(Form::kSequence, in, cfg, g.name);
          for (int32_t L : limit_sizes) {
            cfg.algorithm = MLSTM_CHUNKWISE_LIMIT, cfg.chunk_size = L;
            check_forward(Form::kChunkwise, in, cfg, g.name);
          }
          for (int32_t L : xl_sizes) {
            cfg.algorithm = MLSTM_CHUNKWISE_XL, cfg.chunk_size = L;
            check_forward(Form::kChunkwise, in, cfg, g.name);
          }
        }
      }
    }
  }
}

// Low-precision inputs and mixed dtypes (each group of tensors has its own dtype).
void test_mixed_dtypes() {
  testing::Rng rng(2);
  const ref::Inputs<double> in0 = harness::random_inputs(rng, 2, 3, 63, 16, 24, false);
  const ref::Inputs<double> in1 = harness::random_inputs(rng, 2, 3, 63, 16, 24, true);
  struct Combo {
    mlstm_dtype qkv, gates, states;
  };
  const Combo combos[] = {{MLSTM_FLOAT16, MLSTM_FLOAT32, MLSTM_FLOAT32}, {MLSTM_BFLOAT16, MLSTM_FLOAT32, MLSTM_FLOAT32},
                          {MLSTM_BFLOAT16, MLSTM_BFLOAT16, MLSTM_FLOAT32}, {MLSTM_FLOAT32, MLSTM_FLOAT64, MLSTM_FLOAT64},
                          {MLSTM_FLOAT64, MLSTM_FLOAT16, MLSTM_FLOAT32},   {MLSTM_FLOAT32, MLSTM_FLOAT16, MLSTM_FLOAT64}};
  for (const Combo& c : combos) {
    for (const ref::Inputs<double>* in : {&in0, &in1}) {
      Config cfg;
      cfg.qkv = c.qkv, cfg.gates = c.gates, cfg.states = c.states;
      cfg.chunk_size = 32;
      if (!in->has_initial) check_forward(Form::kParallel, *in, cfg, "plain");
      check_forward(Form::kChunkwise, *in, cfg, "plain");
      check_forward(Form::kSequence, *in, cfg, "plain");
    }
  }
  // Sequence and step also take fp16/bf16 states.
  for (mlstm_dtype st : {MLSTM_FLOAT16, MLSTM_BFLOAT16}) {
    Config cfg;
    cfg.qkv = cfg.gates = MLSTM_FLOAT32;
    cfg.states = st;
    check_forward(Form::kSequence, in1, cfg, "plain");
  }
}

// The two references agree: the parallel form (S x S stablef) is the recurrence started at m = -inf.
void test_references_agree() {
  testing::Rng rng(3);
  for (const NamedGates& g : kGates) {
    const ref::Inputs<double> in = harness::random_inputs(rng, 2, 2, 63, 7, 9, false, g.style);
    const double err = rel_error(ref::parallel_forward(in), ref::recurrent_forward(in, true).h);
    expect_close(format("reference parallel-stablef vs recurrent(m0=-inf) S=63 gates=%s fp64", g.name), err, kTolFp64);
  }
}

// A sequence cut in two chunkwise calls (last states -> initial states) equals one call.
void test_state_passing() {
  testing::Rng rng(4);
  const int64_t B = 2, NH = 3, DHQK = 6, DHHV = 10;
  const struct {
    int64_t S1, S2;
    int32_t L;
  } cuts[] = {{16, 47, 16}, {7, 56, 32}, {63, 1, 16}, {1, 129, 64}};
  for (auto cut : cuts) {
    for (int init = 0; init < 2; ++init) {
      for (mlstm_dtype dt : {MLSTM_FLOAT64, MLSTM_FLOAT32}) {
        const int64_t S = cut.S1 + cut.S2;
        const ref::Inputs<double> in = harness::random_inputs(rng, B, NH, S, DHQK, DHHV, init);
        Config cfg;
        cfg.qkv = cfg.gates = cfg.states = dt;
        cfg.chunk_size = cut.L;
        cfg.want_last = true;
        harness::FwdRun whole(in, cfg);
        CHECK(whole.run(Form::kChunkwise) == MLSTM_OK, "%s", mlstm_last_error());

        auto slice = [&](const std::vector<double>& x, int64_t t0, int64_t n, int64_t D) {
          std::vector<double> out;
          for (int64_t bh = 0; bh < B * NH; ++bh)
            out.insert(out.end(), x.begin() + (bh * S + t0) * D, x.begin() + (bh * S + t0 + n) * D);
          return out;
        };
        auto part = [&](int64_t t0, int64_t n) {
          ref::Inputs<double> p = in;
          p.S = n;
          p.q = slice(in.q, t0, n, DHQK), p.k = slice(in.k, t0, n, DHQK), p.v = slice(in.v, t0, n, DHHV);
          p.i = slice(in.i, t0, n, 1), p.f = slice(in.f, t0, n, 1);
          return p;
        };
        ref::Inputs<double> first = part(0, cut.S1), second = part(cut.S1, cut.S2);
        harness::FwdRun r1(first, cfg);
        CHECK(r1.run(Form::kChunkwise) == MLSTM_OK, "%s", mlstm_last_error());
        const ref::Outputs<double> o1 = r1.outputs();
        second.has_initial = true;
        second.c0 = o1.c, second.n0 = o1.n, second.m0 = o1.m;
        harness::FwdRun r2(second, cfg);
        CHECK(r2.run(Form::kChunkwise) == MLSTM_OK, "%s", mlstm_last_error());
        const ref::Outputs<double> o2 = r2.outputs(), ow = whole.outputs();

        std::vector<double> h_split;
        for (int64_t bh = 0; bh < B * NH; ++bh) {
          h_split.insert(h_split.end(), o1.h.begin() + bh * cut.S1 * DHHV, o1.h.begin() + (bh + 1) * cut.S1 * DHHV);
          h_split.insert(h_split.end(), o2.h.begin() + bh * cut.S2 * DHHV, o2.h.begin() + (bh + 1) * cut.S2 * DHHV);
        }
        // Both runs round their own way in fp32; the split one also rounds the states it passes on.
        const double tol = dt == MLSTM_FLOAT64 ? kTolFp64 : 2e-6;
        const std::string what = format("state passing chunkwise L=%d S=%lld+%lld B=%lld NH=%lld init=%d %s", cut.L,
                                        (long long)cut.S1, (long long)cut.S2, (long long)B, (long long)NH, init,
                                        testing::dtype_name(dt));
        expect_close(what + ": h", rel_error(h_split, ow.h), tol);
        expect_close(what + ": c_last", rel_error(o2.c, ow.c), tol);
        expect_close(what + ": n_last", rel_error(o2.n, ow.n), tol);
        expect_close(what + ": m_last", rel_error(o2.m, ow.m), tol);
      }
    }
  }
}

// The sequence kernel equals the chunkwise forward, and S single steps equal the sequence kernel --
// also in place (c/n/m_last the very buffers of c/n/m_initial).
void test_sequence_and_step() {
  testing::Rng rng(5);
  for (int init = 0; init < 2; ++init) {
    const int64_t B = 3, NH = 2, S = 37, DHQK = 9, DHHV = 14;
    const ref::Inputs<double> in = harness::random_inputs(rng, B, NH, S, DHQK, DHHV, init);
    Config cfg;
    cfg.want_last = true;
    cfg.chunk_size = 16;
    harness::FwdRun seq(in, cfg), chunk(in, cfg);
    CHECK(seq.run(Form::kSequence) == MLSTM_OK, "%s", mlstm_last_error());
    CHECK(chunk.run(Form::kChunkwise) == MLSTM_OK, "%s", mlstm_last_error());
    const ref::Outputs<double> os = seq.outputs(), oc = chunk.outputs();
    const std::string base = format("S=%lld B=%lld NH=%lld DHQK=%lld DHHV=%lld init=%d fp64", (long long)S, (long long)B,
                                    (long long)NH, (long long)DHQK, (long long)DHHV, init);
    expect_close("sequence vs chunkwise L=16 " + base + ": h", rel_error(os.h, oc.h), kTolFp64);
    expect_close("sequence vs chunkwise L=16 " + base + ": c_last", rel_error(os.c, oc.c), kTolFp64);
    expect_close("sequence vs chunkwise L=16 " + base + ": n_last", rel_error(os.n, oc.n), kTolFp64);
    expect_close("sequence vs chunkwise L=16 " + base + ": m_last", rel_error(os.m, oc.m), kTolFp64);

    for (int in_place = 0; in_place < 2; ++in_place) {
      // State carried between steps in its own tensors (updated in place when asked).
      ref::Inputs<double> step_in = in;
      step_in.S = 1;
      step_in.has_initial = true;
      if (init) {
        step_in.c0 = in.c0, step_in.n0 = in.n0, step_in.m0 = in.m0;
      } else {
        step_in.c0.assign(size_t(B * NH * DHQK * DHHV), 0.0);
        step_in.n0.assign(size_t(B * NH * DHQK), 0.0);
        step_in.m0.assign(size_t(B * NH), 0.0);
      }
      step_in.q.resize(size_t(B * NH * DHQK)), step_in.k.resize(size_t(B * NH * DHQK));
      step_in.v.resize(size_t(B * NH * DHHV)), step_in.i.resize(size_t(B * NH)), step_in.f.resize(size_t(B * NH));
      std::vector<double> h_steps(size_t(B * NH * S * DHHV));
      bool ok = true;
      for (int64_t t = 0; t < S && ok; ++t) {
        for (int64_t bh = 0; bh < B * NH; ++bh) {
          std::copy_n(&in.q[(bh * S + t) * DHQK], DHQK, &step_in.q[bh * DHQK]);
          std::copy_n(&in.k[(bh * S + t) * DHQK], DHQK, &step_in.k[bh * DHQK]);
          std::copy_n(&in.v[(bh * S + t) * DHHV], DHHV, &step_in.v[bh * DHHV]);
          step_in.i[bh] = in.i[bh * S + t];
          step_in.f[bh] = in.f[bh * S + t];
        }
        harness::FwdRun r(step_in, cfg);
        mlstm_fwd_args a = r.args();
        if (in_place) a.c_last = a.c_initial, a.n_last = a.n_initial, a.m_last = a.m_initial;
        const mlstm_status st = mlstm_step_fwd(&a);
        CHECK(st == MLSTM_OK, "step: %s", mlstm_last_error());
        ok = st == MLSTM_OK;
        const std::vector<double> h = r.h.get();
        for (int64_t bh = 0; bh < B * NH; ++bh) std::copy_n(&h[bh * DHHV], DHHV, &h_steps[(bh * S + t) * DHHV]);
        if (in_place) {
          step_in.c0 = r.c0.get(), step_in.n0 = r.n0.get(), step_in.m0 = r.m0.get();
        } else {
          step_in.c0 = r.c_last.get(), step_in.n0 = r.n_last.get(), step_in.m0 = r.m_last.get();
        }
      }
      const std::string what = format("step x%lld%s vs sequence %s", (long long)S, in_place ? " in place" : "", base.c_str());
      expect_close(what + ": h", rel_error(h_steps, os.h), kTolFp64);
      expect_close(what + ": c_last", rel_error(step_in.c0, os.c), kTolFp64);
      expect_close(what + ": n_last", rel_error(step_in.n0, os.n), kTolFp64);
      expect_close(what + ": m_last", rel_error(step_in.m0, os.m), kTolFp64);
    }
  }
}

// Contiguous tensors work as well as padded ones, and more heads than threads.
void test_contiguous_many_heads() {
  testing::Rng rng(6);
  const ref::Inputs<double> in = harness::random_inputs(rng, 5, 7, 45, 8, 6, true);
  for (mlstm_dtype dt : {MLSTM_FLOAT64, MLSTM_FLOAT32}) {
    Config cfg;
    cfg.padded = false;
    cfg.qkv = cfg.gates = cfg.states = dt;
    cfg.chunk_size = 16;
    check_forward(Form::kChunkwise, in, cfg, "plain,contiguous");
    check_forward(Form::kSequence, in, cfg, "plain,contiguous");
  }
}

// xl_chunk sizes on a sequence of several large chunks with a partial last one: equal to the sequence
// kernel (the recurrence itself) to fp64 rounding.
void test_large_chunks() {
  testing::Rng rng(7);
  const ref::Inputs<double> in = harness::random_inputs(rng, 1, 2, 1100, 8, 12, true, GateStyle{0.0, 2.0, 2.0, 1.0});
  Config cfg;
  cfg.want_last = true;
  harness::FwdRun seq(in, cfg);
  CHECK(seq.run(Form::kSequence) == MLSTM_OK, "%s", mlstm_last_error());
  const ref::Outputs<double> want = seq.outputs();
  for (int32_t L : {512, 1024, 4096}) {
    cfg.algorithm = MLSTM_CHUNKWISE_XL, cfg.chunk_size = L;
    harness::FwdRun run(in, cfg);
    CHECK(run.run(Form::kChunkwise) == MLSTM_OK, "%s", mlstm_last_error());
    const ref::Outputs<double> got = run.outputs();
    const std::string what = format("chunkwise--xl_chunk L=%d vs sequence S=1100 B=1 NH=2 DHQK=8 DHHV=12 init=1 fp64", L);
    expect_close(what + ": h", rel_error(got.h, want.h), kTolFp64);
    expect_close(what + ": c_last", rel_error(got.c, want.c), kTolFp64);
    expect_close(what + ": n_last", rel_error(got.n, want.n), kTolFp64);
    expect_close(what + ": m_last", rel_error(got.m, want.m), kTolFp64);
  }
}

// Reentrant and deterministic: calls from several threads at once (each also starting its own
// workers) give bitwise the results of a call made alone.
void test_concurrent_calls() {
  testing::Rng rng(8);
  const ref::Inputs<double> in = harness::random_inputs(rng, 3, 4, 150, 16, 20, true);
  Config cfg;
  cfg.qkv = cfg.gates = cfg.states = MLSTM_FLOAT32;
  cfg.want_last = true;
  cfg.chunk_size = 32;
  harness::FwdRun alone(in, cfg);
  CHECK(alone.run(Form::kChunkwise) == MLSTM_OK, "%s", mlstm_last_error());
  const ref::Outputs<double> want = alone.outputs();
  std::vector<harness::FwdRun> runs(6, harness::FwdRun(in, cfg));
  std::vector<mlstm_status> status(runs.size(), MLSTM_ERROR_INTERNAL);
  std::vector<std::thread> threads;
  for (size_t j = 0; j < runs.size(); ++j) threads.emplace_back([&, j] { status[j] = runs[j].run(Form::kChunkwise); });
  for (auto& t : threads) t.join();
  int identical = 0;
  for (size_t j = 0; j < runs.size(); ++j) {
    const ref::Outputs<double> got = runs[j].outputs();
    identical += status[j] == MLSTM_OK && got.h == want.h && got.c == want.c && got.n == want.n && got.m == want.m;
  }
  std::printf("%s %d of %zu concurrent chunkwise calls bitwise equal to a call alone\n",
              identical == int(runs.size()) ? "ok  " : "FAIL", identical, runs.size());
  CHECK(identical == int(runs.size()), "concurrent calls differ");
}

}  // namespace

int main(int argc, char** argv) {
  if (!harness::select_cpu_isa(argc, argv)) return 1;
  test_references_agree();
  test_forms_against_reference();
  test_mixed_dtypes();
  test_state_passing();
  test_sequence_and_step();
  test_contiguous_many_heads();
  test_large_chunks();
  test_concurrent_calls();
  std::printf("summary (worst over all cases):\n");
  g_worst.print();
  return testing::finish("test_cpu_forward");
}
