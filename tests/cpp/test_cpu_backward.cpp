// CPU backward of the parallel and chunkwise forms, through the C ABI:
//  1. fp64 gradients vs central finite differences of the fp64 forward (through the ABI) of a random
//     linear loss on h and on the last states, for every input including c/n/m_initial, with a small
//     and a large eps (the large one makes the stabiliser/eps path visible), and gates that switch the
//     denominator between |den| and exp(-m).
//  2. fp64 gradients vs the plain chain-rule backward of the recurrence (reference.h), which is
//     independent of the derivation the kernels use, on odd shapes and several chunk sizes.
//  3. fp32 (and bf16/fp16) gradients vs the fp64 kernel gradients.
//  4. The checkpointed state recomputation (long sequences, large heads) vs the stored one.
//  5. Timing of the CI shape (B=2, NH=3, S=512, DHQK=64, DHHV=96), checked against fp64.
//
// Tolerances (relative, ||g - g_ref|| / ||g_ref|| per gradient tensor):
//  * finite differences: step 1e-6 in fp64 -> truncation ~1e-12 relative; tolerance 1e-6 relative
//    (room for the rare step that crosses a kink of a max) plus the rounding noise of the difference
//    quotient, 100 u sum|loss terms| / step per element (u = 1.1e-16; the loss is a sum of terms each
//    rounded to about u times the conditioning of h): a gradient that is tiny next to the loss (an
//    initial state that has been forgotten) is only known to that absolute accuracy.
//  * fp64 vs the reference backward: 1e-10. The chains are longer than in the forward (the forget-gate
//    gradient is a suffix sum over up to S steps of q.dq - k.dk whose terms exceed the result), so a
//    few more rounding units of 1.1e-16 per step than the forward's 1e-12 budget.
//  * fp32 inputs: 3x the error of the worse of two plain fp32 backwards on the same inputs (reference.h
//    in float: the chain rule through the recurrence, and the parallel form in matrix form -- they
//    round differently, see test_cpu_forward.cpp; the chunkwise form has a part of each), at least 20
//    fp32 units (1.2e-6), and never above the SPEC target 1e-4 -- except for large |i|, where near-zero
//    denominators (den_t ~ q_hat . k_s of one dominant key) make even the plain fp32 backwards miss it.
//  * bf16/fp16 inputs: that plus twice the unit roundoff of the gradient's dtype (it is rounded once),
//    never above the SPEC target 2e-2.
#include <chrono>
#include <cstdio>
#include <string>
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

constexpr double kTolFd = 1e-6;
constexpr double kTolFp64 = 1e-10;
constexpr double kFp32Unit = 5.96e-8;

testing::Worst g_worst;

double unit_roundoff(mlstm_dtype dtype) {
  switch (dtype) {
    case MLSTM_FLOAT64: return 1.11e-16;
    case MLSTM_FLOAT32: return kFp32Unit;
    case MLSTM_FLOAT16: return 4.88e-4;
    case MLSTM_BFLOAT16: return 3.91e-3;
  }
  return 1.0;
}

struct Cotangents {
  std::vector<double> dh, dc, dn, dm;  // dc/dn/dm empty: no loss on the last states
};

Cotangents random_cotangents(testing::Rng& rng, const ref::Inputs<double>& in, bool on_last_states) {
  Cotangents ct;
  ct.dh = rng.normals(size_t(in.B * in.NH * in.S * in.DHHV));
  if (on_last_states) {
    ct.dc = rng.normals(size_t(in.B * in.NH * in.DHQK * in.DHHV));
    ct.dn = rng.normals(size_t(in.B * in.NH * in.DHQK));
    ct.dm = rng.normals(size_t(in.B * in.NH));
  }
  return ct;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t j = 0; j < a.size(); ++j) s += a[j] * b[j];
  return s;
}

std::string describe(Form form, const Config& cfg, const ref::Inputs<double>& in, bool dlast, const char* gates) {
  std::string s = harness::form_name(form);
  if (form == Form::kChunkwise)
    s += format("--%s L=%d", cfg.algorithm == MLSTM_CHUNKWISE_LIMIT ? "limit_chunk" : "xl_chunk", cfg.chunk_size);
  s += format(" S=%lld B=%lld NH=%lld DHQK=%lld DHHV=%lld %s init=%d dlast=%d eps=%g gates=%s", (long long)in.S,
              (long long)in.B, (long long)in.NH, (long long)in.DHQK, (long long)in.DHHV, testing::dtype_name(cfg.qkv),
              int(in.has_initial), int(dlast), in.eps, gates);
  return s;
}

// Runs forward + backward; grads in the harness's order.
bool run_backward(Form form, const ref::Inputs<double>& in, const Config& cfg, const Cotangents& ct,
                  ref::Grads<double>* out, double* seconds = nullptr) {
  harness::BwdRun run(in, cfg, ct.dh, ct.dc, ct.dn, ct.dm);
  const auto start = std::chrono::steady_clock::now();
  const mlstm_status st = run.run(form);
  if (seconds) *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(st == MLSTM_OK, "%s backward: status %d (%s)", harness::form_name(form), int(st), mlstm_last_error());
  if (st != MLSTM_OK) return false;
  *out = run.grads();
  return true;
}

struct Named {
  const char* name;
  const std::vector<double>* got;
  const std::vector<double>* want;
};

std::vector<Named> pairs(const ref::Grads<double>& g, const ref::Grads<double>& w, bool has_initial) {
  std::vector<Named> p = {{"dq", &g.dq, &w.dq}, {"dk", &g.dk, &w.dk}, {"dv", &g.dv, &w.dv}, {"di", &g.di, &w.di},
                          {"df", &g.df, &w.df}};
  if (has_initial) {
    p.push_back({"dc_initial", &g.dc0, &w.dc0});
    p.push_back({"dn_initial", &g.dn0, &w.dn0});
    p.push_back({"dm_initial", &g.dm0, &w.dm0});
  }
  return p;
}

// ---- 1. finite differences -------------------------------------------------------------------------

double abs_dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t j = 0; j < a.size(); ++j) s += std::fabs(a[j] * b[j]);
  return s;
}

// The loss, or with `scale` the sum of the absolute values of its terms.
double loss(Form form, const ref::Inputs<double>& in, const Config& cfg, const Cotangents& ct, bool scale = false) {
  harness::FwdRun run(in, cfg);
  const mlstm_status st = run.run(form);
  if (st != MLSTM_OK) return NAN;
  const ref::Outputs<double> o = run.outputs();
  auto term = scale ? abs_dot : dot;
  double l = term(ct.dh, o.h);
  if (!ct.dc.empty()) l += term(ct.dc, o.c) + term(ct.dn, o.n) + term(ct.dm, o.m);
  return l;
}

void check_finite_differences(Form form, const ref::Inputs<double>& in, Config cfg, const Cotangents& ct,
                              const char* gates) {
  cfg.qkv = cfg.gates = cfg.states = MLSTM_FLOAT64;
  cfg.want_last = !ct.dc.empty();
  ref::Grads<double> g;
  if (!run_backward(form, in, cfg, ct, &g)) return;
  ref::Grads<double> fd = g;
  const double step = 1e-6;
  auto differentiate = [&](std::vector<double> ref::Inputs<double>::*field, std::vector<double>* out) {
    ref::Inputs<double> x = in;
    std::vector<double>& values = x.*field;
    for (size_t j = 0; j < values.size(); ++j) {
      const double saved = values[j];
      values[j] = saved + step;
      const double up = loss(form, x, cfg, ct);
      values[j] = saved - step;
      const double down = loss(form, x, cfg, ct);
      values[j] = saved;
      (*out)[j] = (up - down) / (2 * step);
    }
  };
  differentiate(&ref::Inputs<double>::q, &fd.dq);
  differentiate(&ref::Inputs<double>::k, &fd.dk);
  differentiate(&ref::Inputs<double>::v, &fd.dv);
  differentiate(&ref::Inputs<double>::i, &fd.di);
  differentiate(&ref::Inputs<double>::f, &fd.df);
  if (in.has_initial) {
    differentiate(&ref::Inputs<double>::c0, &fd.dc0);
    differentiate(&ref::Inputs<double>::n0, &fd.dn0);
    differentiate(&ref::Inputs<double>::m0, &fd.dm0);
  }
  const std::string what = "finite differences vs " + describe(form, cfg, in, !ct.dc.empty(), gates);
  const double noise_per_element = 100 * 1.11e-16 * loss(form, in, cfg, ct, /*scale=*/true) / step;
  for (const Named& n : pairs(g, fd, in.has_initial)) {
    const double err = rel_error(*n.got, *n.want);
    const double noise = noise_per_element * std::sqrt(double(n.want->size())) / testing::norm(*n.want);
    g_worst.add(format("%s %s vs FD (fp64)", harness::form_name(form), n.name), err);
    expect_close(what + ": " + n.name, err, kTolFd + noise);
  }
}

void test_finite_differences() {
  testing::Rng rng(11);
  const struct {
    const char* name;
    GateStyle style;
  } gates[] = {{"plain", {0.0, 1.0, 0.0, 1.0}},
               {"weak-input(i-4)", {-4.0, 1.0, 1.0, 1.0}},  // both branches of max(|den|, exp(-m)) occur
               {"large|i|", {0.0, 6.0, 0.0, 2.0}}};
  for (auto& g : gates) {
    for (double eps : {double(1e-6f), 0.25}) {
      // chunkwise: several chunks with a partial last one, and a sequence shorter than one chunk
      for (int64_t S : {int64_t(37), int64_t(7)}) {
        for (int init = 0; init < 2; ++init) {
          for (int dlast = 0; dlast < 2; ++dlast) {
            const ref::Inputs<double> in = harness::random_inputs(rng, 2, 2, S, 3, 4, init, g.style, eps);
            const Cotangents ct = random_cotangents(rng, in, dlast);
            Config cfg;
            cfg.chunk_size = 16;
            check_finite_differences(Form::kChunkwise, in, cfg, ct, g.name);
          }
        }
      }
      const ref::Inputs<double> in = harness::random_inputs(rng, 2, 3, 13, 4, 3, false, g.style, eps);
      check_finite_differences(Form::kParallel, in, Config{}, random_cotangents(rng, in, false), g.name);
    }
  }
}

// ---- 2. against the chain-rule reference backward --------------------------------------------------

void test_against_reference() {
  testing::Rng rng(12);
  const struct {
    int64_t B, NH, S, DHQK, DHHV;
  } shapes[] = {{1, 1, 1, 4, 5}, {2, 3, 7, 8, 5}, {3, 1, 63, 16, 24}, {1, 3, 130, 12, 20}};
  const struct {
    const char* name;
    GateStyle style;
  } gates[] = {{"plain", {0.0, 1.0, 0.0, 1.0}},
               {"long-memory(f+3)", {0.0, 1.0, 3.0, 1.0}},
               {"large|i|", {0.0, 8.0, 0.0, 2.0}},
               {"weak-input(i-6)", {-6.0, 1.0, 1.0, 1.0}}};
  for (auto& sh : shapes) {
    for (auto& g : gates) {
      for (int init = 0; init < 2; ++init) {
        const bool dlast = init;  // losses on the last states with initial states, plain losses without
        ref::Inputs<double> in = harness::random_inputs(rng, sh.B, sh.NH, sh.S, sh.DHQK, sh.DHHV, init, g.style, 0.1);
        const Cotangents ct = random_cotangents(rng, in, dlast);
        const ref::Inputs<double> seen = harness::as_seen(in, Config{});
        if (!init) {
          const ref::Grads<double> want = ref::recurrent_backward(seen, true, ct.dh, {}, {}, {});
          // The matrix-form derivation (reference.h, parallel_backward) against the chain rule.
          const ref::Grads<double> derived = ref::parallel_backward(seen, ct.dh);
          for (const Named& n : pairs(derived, want, false))
            expect_close(format("reference parallel backward (dev-notes derivation) vs chain rule S=%lld B=%lld NH=%lld "
                                "DHQK=%lld DHHV=%lld gates=%s fp64: %s",
                                (long long)in.S, (long long)in.B, (long long)in.NH, (long long)in.DHQK,
                                (long long)in.DHHV, g.name, n.name),
                         rel_error(*n.got, *n.want), kTolFp64);
          ref::Grads<double> got;
          if (run_backward(Form::kParallel, in, Config{}, ct, &got))
            for (const Named& n : pairs(got, want, false)) {
              const double err = rel_error(*n.got, *n.want);
              g_worst.add(format("parallel %s (fp64)", n.name), err);
              expect_close("reference backward vs " + describe(Form::kParallel, Config{}, in, false, g.name) + ": " + n.name,
                           err, kTolFp64);
            }
        }
        const ref::Grads<double> want = ref::recurrent_backward(seen, false, ct.dh, ct.dc, ct.dn, ct.dm);
        for (auto [algorithm, L] : {std::pair{MLSTM_CHUNKWISE_LIMIT, 16}, std::pair{MLSTM_CHUNKWISE_LIMIT, 64},
                                    std::pair{MLSTM_CHUNKWISE_XL, 256}}) {
          Config cfg;
          cfg.algorithm = algorithm, cfg.chunk_size = L, cfg.want_last = dlast;
          ref::Grads<double> got;
          if (!run_backward(Form::kChunkwise, in, cfg, ct, &got)) continue;
          for (const Named& n : pairs(got, want, init)) {
            const double err = rel_error(*n.got, *n.want);
            g_worst.add(format("chunkwise %s (fp64)", n.name), err);
            expect_close("reference backward vs " + describe(Form::kChunkwise, cfg, in, dlast, g.name) + ": " + n.name, err,
                         kTolFp64);
          }
        }
      }
    }
  }
}

// ---- 3. low precision vs fp64 --------------------------------------------------------------------------

void check_low_precision(Form form, const ref::Inputs<double>& in, Config cfg, const Cotangents& ct, const char* gates,
                         bool near_zero_denominators) {
  const bool dlast = !ct.dc.empty();
  cfg.want_last = dlast;
  // fp64 run on exactly the values the low-precision run sees (inputs and cotangents rounded).
  const ref::Inputs<double> seen = harness::as_seen(in, cfg);
  Cotangents ct_seen = ct;
  ct_seen.dh = testing::rounded(cfg.qkv, ct.dh);
  ct_seen.dc = testing::rounded(cfg.states, ct.dc);
  ct_seen.dn = testing::rounded(cfg.states, ct.dn);
  ct_seen.dm = testing::rounded(cfg.states, ct.dm);
  Config cfg64 = cfg;
  cfg64.qkv = cfg64.gates = cfg64.states = MLSTM_FLOAT64;
  ref::Grads<double> want, got;
  if (!run_backward(form, seen, cfg64, ct_seen, &want) || !run_backward(form, in, cfg, ct, &got)) return;

  // The plain fp32 backwards on the same values give the precision baseline: the chain rule through
  // the recurrence, and (for q, k, v, i, f) the parallel form in matrix form.
  const bool parallel = form == Form::kParallel;
  auto as_float = [](const std::vector<double>& x) { return std::vector<float>(x.begin(), x.end()); };
  auto to_double = [](const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); };
  auto widen = [&](const ref::Grads<float>& x) {
    ref::Grads<double> o;
    o.dq = to_double(x.dq), o.dk = to_double(x.dk), o.dv = to_double(x.dv), o.di = to_double(x.di), o.df = to_double(x.df);
    o.dc0 = to_double(x.dc0), o.dn0 = to_double(x.dn0), o.dm0 = to_double(x.dm0);
    return o;
  };
  const ref::Grads<double> plain_rec = widen(ref::recurrent_backward(
      seen.cast<float>(), parallel, as_float(ct_seen.dh), as_float(ct_seen.dc), as_float(ct_seen.dn), as_float(ct_seen.dm)));
  const ref::Grads<double> want_rec = ref::recurrent_backward(seen, parallel, ct_seen.dh, ct_seen.dc, ct_seen.dn, ct_seen.dm);
  ref::Inputs<double> stateless = seen;
  stateless.has_initial = false;
  const ref::Grads<double> plain_par = widen(ref::parallel_backward(stateless.cast<float>(), as_float(ct_seen.dh)));
  const ref::Grads<double> want_par = ref::parallel_backward(stateless, ct_seen.dh);
  const std::vector<Named> baseline_rec = pairs(plain_rec, want_rec, in.has_initial);
  const std::vector<Named> baseline_par = pairs(plain_par, want_par, false);

  const bool low = cfg.qkv == MLSTM_FLOAT16 || cfg.qkv == MLSTM_BFLOAT16;
  const std::string what = format("%s vs fp64 kernel, ", testing::dtype_name(cfg.qkv)) +
                           describe(form, cfg, in, dlast, gates);
  const std::vector<Named> got_want = pairs(got, want, in.has_initial);
  std::vector<double> baselines(got_want.size());
  for (size_t j = 0; j < got_want.size(); ++j) {
    baselines[j] = rel_error(*baseline_rec[j].got, *baseline_rec[j].want);
    if (j < baseline_par.size()) baselines[j] = std::max(baselines[j], rel_error(*baseline_par[j].got, *baseline_par[j].want));
  }
  // dm_initial = <dc_initial, c_initial> + <dn_initial, n_initial> + (the stabiliser path): it inherits
  // their relative error times the condition number of that sum, sum|terms| / |sum|, per head.
  double dm0_condition = 1.0;
  if (in.has_initial) {
    const int64_t heads = in.B * in.NH, cs = in.DHQK * in.DHHV, ns = in.DHQK;
    std::vector<double> abs_terms(size_t(heads), 0.0);
    for (int64_t hd = 0; hd < heads; ++hd) {
      for (int64_t j = 0; j < cs; ++j) abs_terms[size_t(hd)] += std::fabs(want.dc0[hd * cs + j] * seen.c0[hd * cs + j]);
      for (int64_t j = 0; j < ns; ++j) abs_terms[size_t(hd)] += std::fabs(want.dn0[hd * ns + j] * seen.n0[hd * ns + j]);
    }
    dm0_condition = std::max(1.0, testing::norm(abs_terms) / testing::norm(want.dm0));
    baselines[7] = std::max(baselines[7], std::max({baselines[5], baselines[6], 20 * kFp32Unit}) * dm0_condition);
  }
  for (size_t j = 0; j < got_want.size(); ++j) {
    const Named& n = got_want[j];
    const mlstm_dtype out_dtype = j < 3 ? cfg.qkv : j < 5 ? cfg.gates : cfg.states;
    if (out_dtype == MLSTM_FLOAT16) {
      // Near-zero denominators can push a gradient past the fp16 range: there the right answer is inf.
      size_t beyond = 0, overflowed = 0;
      for (size_t e = 0; e < n.want->size(); ++e)
        if (std::fabs((*n.want)[e]) > 65520.0) ++beyond, overflowed += std::isinf((*n.got)[e]) ? 1 : 0;
      if (beyond > 0) {
        CHECK(overflowed == beyond, "%s: %zu of %zu gradients beyond the fp16 range are not inf", n.name, beyond - overflowed,
              beyond);
        std::printf("ok   %s: %s: %zu values beyond the fp16 range are inf; not compared by norm\n", what.c_str(), n.name,
                    beyond);
        continue;
      }
    }
    double tol = std::max(3 * baselines[j], 20 * kFp32Unit);
    if (out_dtype == MLSTM_FLOAT16 || out_dtype == MLSTM_BFLOAT16) tol += 2 * unit_roundoff(out_dtype);
    const bool low_out = low || out_dtype == MLSTM_FLOAT16 || out_dtype == MLSTM_BFLOAT16;
    if (!near_zero_denominators) tol = std::min(tol, low_out ? 2e-2 : 1e-4);
    const double err = rel_error(*n.got, *n.want);
    g_worst.add(format("%s %s (%s)", harness::form_name(form), n.name, testing::dtype_name(cfg.qkv)), err);
    expect_close(what + ": " + n.name, err, tol);
  }
}

void test_low_precision() {
  testing::Rng rng(13);
  const struct {
    const char* name;
    GateStyle style;
    bool near_zero_denominators;
  } gates[] = {{"plain", {0.0, 1.0, 0.0, 1.0}, false},
               {"long-memory(f+3)", {0.0, 1.0, 3.0, 1.0}, false},
               {"large|i|", {0.0, 8.0, 0.0, 2.0}, true},
               {"weak-input(i-6)", {-6.0, 1.0, 1.0, 1.0}, false}};
  struct Combo {
    mlstm_dtype qkv, gates;
  };
  for (auto& g : gates) {
    for (int64_t S : {int64_t(7), int64_t(63), int64_t(130)}) {
      for (int init = 0; init < 2; ++init) {
        const ref::Inputs<double> in = harness::random_inputs(rng, 2, 3, S, 16, 24, init, g.style);
        const Cotangents ct = random_cotangents(rng, in, init);
        for (Combo c : {Combo{MLSTM_FLOAT32, MLSTM_FLOAT32}, Combo{MLSTM_BFLOAT16, MLSTM_FLOAT32},
                        Combo{MLSTM_FLOAT16, MLSTM_FLOAT32}}) {
          Config cfg;
          cfg.qkv = c.qkv, cfg.gates = c.gates, cfg.states = MLSTM_FLOAT32;
          if (!init) check_low_precision(Form::kParallel, in, cfg, ct, g.name, g.near_zero_denominators);
          cfg.chunk_size = 32;
          check_low_precision(Form::kChunkwise, in, cfg, ct, g.name, g.near_zero_denominators);
        }
      }
    }
  }
}

// ---- 4. checkpointed state recomputation -------------------------------------------------------------

// With large heads the backward keeps the chunk states only every G chunks and recomputes one segment
// at a time. The gradient does not depend on the chunk size, so L = 16 (many chunks: checkpoints)
// must agree with L = 128 (few chunks: all kept) to fp64 rounding.
void test_checkpointed_states() {
  testing::Rng rng(14);
  const ref::Inputs<double> in = harness::random_inputs(rng, 1, 2, 600, 256, 255, true, GateStyle{0.0, 1.0, 2.0, 1.0}, 0.1);
  const Cotangents ct = random_cotangents(rng, in, true);
  Config cfg;
  cfg.want_last = true;
  cfg.padded = false;
  ref::Grads<double> many, few;
  cfg.chunk_size = 16;
  if (!run_backward(Form::kChunkwise, in, cfg, ct, &many)) return;
  cfg.chunk_size = 128;
  if (!run_backward(Form::kChunkwise, in, cfg, ct, &few)) return;
  for (const Named& n : pairs(many, few, true))
    expect_close(format("checkpointed (L=16, 38 chunks) vs stored (L=128) chunkwise S=600 B=1 NH=2 DHQK=256 DHHV=255 "
                        "fp64 init=1 dlast=1: %s",
                        n.name),
                 rel_error(*n.got, *n.want), kTolFp64);
}

// xl_chunk sizes on several large chunks with a partial last one agree with small chunks.
void test_large_chunks() {
  testing::Rng rng(16);
  const ref::Inputs<double> in = harness::random_inputs(rng, 1, 2, 1100, 8, 12, true, GateStyle{0.0, 2.0, 2.0, 1.0}, 0.1);
  const Cotangents ct = random_cotangents(rng, in, true);
  Config cfg;
  cfg.want_last = true;
  ref::Grads<double> small;
  if (!run_backward(Form::kChunkwise, in, cfg, ct, &small)) return;
  for (int32_t L : {512, 4096}) {
    cfg.algorithm = MLSTM_CHUNKWISE_XL, cfg.chunk_size = L;
    ref::Grads<double> large;
    if (!run_backward(Form::kChunkwise, in, cfg, ct, &large)) continue;
    for (const Named& n : pairs(large, small, true))
      expect_close(format("chunkwise--xl_chunk L=%d vs limit_chunk L=16 S=1100 B=1 NH=2 DHQK=8 DHHV=12 fp64 init=1 "
                          "dlast=1: %s",
                          L, n.name),
                   rel_error(*n.got, *n.want), kTolFp64);
  }
}

// ---- 5. timing of the CI shape -------------------------------------------------------------------------

void test_ci_shape_timing() {
  testing::Rng rng(15);
  const ref::Inputs<double> in = harness::random_inputs(rng, 2, 3, 512, 64, 96, true);
  const Cotangents ct = random_cotangents(rng, in, true);
  Config cfg;
  cfg.want_last = true;
  cfg.padded = false;
  cfg.chunk_size = 64;
  ref::Grads<double> want, got;
  double seconds64 = 0, seconds32 = 0;
  if (!run_backward(Form::kChunkwise, in, cfg, ct, &want, &seconds64)) return;
  cfg.qkv = cfg.gates = cfg.states = MLSTM_FLOAT32;
  if (!run_backward(Form::kChunkwise, in, cfg, ct, &got, &seconds32)) return;
  std::printf("timing chunkwise--limit_chunk L=64 S=512 B=2 NH=3 DHQK=64 DHHV=96 forward+backward: fp32 %.1f ms, fp64 %.1f ms\n",
              seconds32 * 1e3, seconds64 * 1e3);
  // fp32 against fp64 at this size: the SPEC target for fp32.
  for (const Named& n : pairs(got, want, true))
    expect_close(format("fp32 vs fp64 chunkwise L=64 S=512 B=2 NH=3 DHQK=64 DHHV=96 init=1 dlast=1: %s", n.name),
                 rel_error(*n.got, *n.want), 1e-4);
}

}  // namespace

int main(int argc, char** argv) {
  if (!harness::select_cpu_isa(argc, argv)) return 1;
  test_finite_differences();
  test_against_reference();
  test_low_precision();
  test_checkpointed_states();
  test_large_chunks();
  test_ci_shape_timing();
  std::printf("summary (worst over all cases):\n");
  g_worst.print();
  return testing::finish("test_cpu_backward");
}
