// Runs the core through its C ABI on host tensors built from reference inputs: every tensor in the
// requested dtype, with padded strides, outputs NaN-poisoned before the call.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cpu/forms.h"
#include "mlstm/mlstm.h"
#include "reference.h"
#include "testing.h"

namespace harness {

// The CPU tests run on the build of the CPU kernels this machine gets (cpp/src/cpu/isa.h), or with
// the argument --isa=baseline on the baseline build; ctest runs them both ways where both exist.
// False for an argument it does not know.
inline bool select_cpu_isa(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--isa=baseline") != 0 || !mlstm::cpu::set_isa(mlstm::cpu::Isa::kBaseline))) {
    std::printf("FAIL unknown argument %s\n", argv[1]);
    return false;
  }
  std::printf("CPU kernels: %s\n", mlstm_cpu_isa());
  return true;
}

using testing::Tensor;

enum class Form { kParallel, kChunkwise, kSequence, kStep };

inline const char* form_name(Form form) {
  switch (form) {
    case Form::kParallel: return "parallel";
    case Form::kChunkwise: return "chunkwise";
    case Form::kSequence: return "sequence";
    case Form::kStep: return "step";
  }
  return "?";
}

struct Config {
  mlstm_dtype qkv = MLSTM_FLOAT64;     // q, k, v, h and their gradients
  mlstm_dtype gates = MLSTM_FLOAT64;   // i, f, di, df
  mlstm_dtype states = MLSTM_FLOAT64;  // c, n, m and their gradients
  bool padded = true;
  int32_t chunk_size = 16;
  int32_t algorithm = MLSTM_CHUNKWISE_LIMIT;
  bool want_last = false;
};

// The inputs as the kernel sees them: rounded to the configured dtypes (and eps to float).
inline ref::Inputs<double> as_seen(ref::Inputs<double> in, const Config& cfg) {
  using testing::rounded;
  in.q = rounded(cfg.qkv, in.q);
  in.k = rounded(cfg.qkv, in.k);
  in.v = rounded(cfg.qkv, in.v);
  in.i = rounded(cfg.gates, in.i);
  in.f = rounded(cfg.gates, in.f);
  if (in.has_initial) {
    in.c0 = rounded(cfg.states, in.c0);
    in.n0 = rounded(cfg.states, in.n0);
    in.m0 = rounded(cfg.states, in.m0);
  }
  in.eps = double(float(in.eps));
  return in;
}

inline mlstm_tensor absent() { return mlstm_tensor{}; }

struct FwdRun {
  int64_t B, NH, S, DHQK, DHHV;
  Config cfg;
  float eps;
  bool has_initial;
  Tensor q, k, v, i, f, c0, n0, m0, h, c_last, n_last, m_last;
  std::vector<unsigned char> saved, workspace;
  mlstm_buffer_sizes sizes{0, 0};

  FwdRun(const ref::Inputs<double>& in, const Config& c)
      : B(in.B), NH(in.NH), S(in.S), DHQK(in.DHQK), DHHV(in.DHHV), cfg(c), eps(float(in.eps)),
        has_initial(in.has_initial) {
    const bool pad = cfg.padded;
    q = Tensor(cfg.qkv, {B, NH, S, DHQK}, pad);
    k = Tensor(cfg.qkv, {B, NH, S, DHQK}, pad);
    v = Tensor(cfg.qkv, {B, NH, S, DHHV}, pad);
    i = Tensor(cfg.gates, {B, NH, S}, pad);
    f = Tensor(cfg.gates, {B, NH, S}, pad);
    h = Tensor(cfg.qkv, {B, NH, S, DHHV}, pad);
    q.set(in.q), k.set(in.k), v.set(in.v), i.set(in.i), f.set(in.f);
    if (has_initial) {
      c0 = Tensor(cfg.states, {B, NH, DHQK, DHHV}, pad);
      n0 = Tensor(cfg.states, {B, NH, DHQK}, pad);
      m0 = Tensor(cfg.states, {B, NH}, pad);
      c0.set(in.c0), n0.set(in.n0), m0.set(in.m0);
    }
    if (cfg.want_last) {
      c_last = Tensor(cfg.states, {B, NH, DHQK, DHHV}, pad);
      n_last = Tensor(cfg.states, {B, NH, DHQK}, pad);
      m_last = Tensor(cfg.states, {B, NH}, pad);
    }
  }

  // The argument struct pointing at this run's tensors (rebuilt for every call).
  mlstm_fwd_args args() {
    mlstm_fwd_args a{};
    a.device = mlstm_device{MLSTM_DEVICE_CPU, 0, nullptr};
    a.shape = mlstm_shape{B, NH, S, DHQK, DHHV};
    a.eps = eps;
    a.chunk_size = cfg.chunk_size;
    a.algorithm = cfg.algorithm;
    a.q = q.abi(), a.k = k.abi(), a.v = v.abi(), a.i = i.abi(), a.f = f.abi(), a.h = h.abi();
    a.c_initial = has_initial ? c0.abi() : absent();
    a.n_initial = has_initial ? n0.abi() : absent();
    a.m_initial = has_initial ? m0.abi() : absent();
    a.c_last = cfg.want_last ? c_last.abi() : absent();
    a.n_last = cfg.want_last ? n_last.abi() : absent();
    a.m_last = cfg.want_last ? m_last.abi() : absent();
    a.saved = saved.empty() ? nullptr : saved.data();
    a.workspace = workspace.empty() ? nullptr : workspace.data();
    return a;
  }

  // Sizes query, buffers, then the kernel.
  mlstm_status run(Form form) {
    mlstm_fwd_args a = args();
    using SizesFn = mlstm_status (*)(const mlstm_fwd_args*, mlstm_buffer_sizes*);
    using Fn = mlstm_status (*)(const mlstm_fwd_args*);
    SizesFn sizes_fn = form == Form::kParallel    ? mlstm_parallel_fwd_sizes
                       : form == Form::kChunkwise ? mlstm_chunkwise_fwd_sizes
                       : form == Form::kSequence  ? mlstm_sequence_fwd_sizes
                                                  : mlstm_step_fwd_sizes;
    Fn fn = form == Form::kParallel    ? mlstm_parallel_fwd
            : form == Form::kChunkwise ? mlstm_chunkwise_fwd
            : form == Form::kSequence  ? mlstm_sequence_fwd
                                       : mlstm_step_fwd;
    mlstm_status st = sizes_fn(&a, &sizes);
    if (st != MLSTM_OK) return st;
    saved.assign(sizes.saved_bytes, 0xff);
    workspace.assign(sizes.workspace_bytes, 0xff);
    a = args();
    return fn(&a);
  }

  ref::Outputs<double> outputs() const {
    ref::Outputs<double> o;
    o.h = h.get();
    if (cfg.want_last) o.c = c_last.get(), o.n = n_last.get(), o.m = m_last.get();
    return o;
  }
};

struct BwdRun {
  FwdRun fwd;
  Tensor dh, dc_last, dn_last, dm_last, dq, dk, dv, di, df, dc0, dn0, dm0;
  bool has_dlast = false;
  std::vector<unsigned char> workspace;

  BwdRun(const ref::Inputs<double>& in, const Config& cfg, const std::vector<double>& dh_values,
         const std::vector<double>& dc_last_values, const std::vector<double>& dn_last_values,
         const std::vector<double>& dm_last_values)
      : fwd(in, cfg), has_dlast(!dc_last_values.empty()) {
    const int64_t B = in.B, NH = in.NH, S = in.S, DHQK = in.DHQK, DHHV = in.DHHV;
    const bool pad = cfg.padded;
    dh = Tensor(cfg.qkv, {B, NH, S, DHHV}, pad);
    dh.set(dh_values);
    if (has_dlast) {
      dc_last = Tensor(cfg.states, {B, NH, DHQK, DHHV}, pad);
      dn_last = Tensor(cfg.states, {B, NH, DHQK}, pad);
      dm_last = Tensor(cfg.states, {B, NH}, pad);
      dc_last.set(dc_last_values), dn_last.set(dn_last_values), dm_last.set(dm_last_values);
    }
    dq = Tensor(cfg.qkv, {B, NH, S, DHQK}, pad);
    dk = Tensor(cfg.qkv, {B, NH, S, DHQK}, pad);
    dv = Tensor(cfg.qkv, {B, NH, S, DHHV}, pad);
    di = Tensor(cfg.gates, {B, NH, S}, pad);
    df = Tensor(cfg.gates, {B, NH, S}, pad);
    if (in.has_initial) {
      dc0 = Tensor(cfg.states, {B, NH, DHQK, DHHV}, pad);
      dn0 = Tensor(cfg.states, {B, NH, DHQK}, pad);
      dm0 = Tensor(cfg.states, {B, NH}, pad);
    }
  }

  mlstm_bwd_args args() {
    FwdRun& r = fwd;
    mlstm_bwd_args a{};
    a.device = mlstm_device{MLSTM_DEVICE_CPU, 0, nullptr};
    a.shape = mlstm_shape{r.B, r.NH, r.S, r.DHQK, r.DHHV};
    a.eps = r.eps;
    a.chunk_size = r.cfg.chunk_size;
    a.algorithm = r.cfg.algorithm;
    a.q = r.q.abi(), a.k = r.k.abi(), a.v = r.v.abi(), a.i = r.i.abi(), a.f = r.f.abi(), a.h = r.h.abi();
    a.c_initial = r.has_initial ? r.c0.abi() : absent();
    a.n_initial = r.has_initial ? r.n0.abi() : absent();
    a.m_initial = r.has_initial ? r.m0.abi() : absent();
    a.saved = r.saved.empty() ? nullptr : r.saved.data();
    a.dh = dh.abi();
    a.dc_last = has_dlast ? dc_last.abi() : absent();
    a.dn_last = has_dlast ? dn_last.abi() : absent();
    a.dm_last = has_dlast ? dm_last.abi() : absent();
    a.dq = dq.abi(), a.dk = dk.abi(), a.dv = dv.abi(), a.di = di.abi(), a.df = df.abi();
    a.dc_initial = r.has_initial ? dc0.abi() : absent();
    a.dn_initial = r.has_initial ? dn0.abi() : absent();
    a.dm_initial = r.has_initial ? dm0.abi() : absent();
    a.workspace = workspace.empty() ? nullptr : workspace.data();
    return a;
  }

  // Forward (filling saved), then the backward.
  mlstm_status run(Form form) {
    mlstm_status st = fwd.run(form);
    if (st != MLSTM_OK) return st;
    mlstm_bwd_args a = args();
    mlstm_buffer_sizes sizes{0, 0};
    st = form == Form::kParallel ? mlstm_parallel_bwd_sizes(&a, &sizes) : mlstm_chunkwise_bwd_sizes(&a, &sizes);
    if (st != MLSTM_OK) return st;
    workspace.assign(sizes.workspace_bytes, 0xff);
    a = args();
    return form == Form::kParallel ? mlstm_parallel_bwd(&a) : mlstm_chunkwise_bwd(&a);
  }

  ref::Grads<double> grads() const {
    ref::Grads<double> g;
    g.dq = dq.get(), g.dk = dk.get(), g.dv = dv.get(), g.di = di.get(), g.df = df.get();
    if (fwd.has_initial) g.dc0 = dc0.get(), g.dn0 = dn0.get(), g.dm0 = dm0.get();
    return g;
  }
};

// Random inputs. f_bias shifts the forget gate (positive: long memory); i_scale widens the input
// gate (large |i| stresses the stabiliser).
struct GateStyle {
  double i_mean = 0.0, i_scale = 1.0, f_bias = 0.0, f_scale = 1.0;
};

inline ref::Inputs<double> random_inputs(testing::Rng& rng, int64_t B, int64_t NH, int64_t S, int64_t DHQK,
                                         int64_t DHHV, bool has_initial, GateStyle g = {}, double eps = 1e-6) {
  ref::Inputs<double> in;
  in.B = B, in.NH = NH, in.S = S, in.DHQK = DHQK, in.DHHV = DHHV;
  in.eps = eps;
  in.q = rng.normals(size_t(B * NH * S * DHQK));
  in.k = rng.normals(size_t(B * NH * S * DHQK));
  in.v = rng.normals(size_t(B * NH * S * DHHV));
  in.i = rng.normals(size_t(B * NH * S), g.i_mean, g.i_scale);
  in.f = rng.normals(size_t(B * NH * S), g.f_bias, g.f_scale);
  in.has_initial = has_initial;
  if (has_initial) {
    in.c0 = rng.normals(size_t(B * NH * DHQK * DHHV));
    in.n0 = rng.normals(size_t(B * NH * DHQK));
    in.m0 = rng.normals(size_t(B * NH), 0.0, 2.0);
  }
  return in;
}

}  // namespace harness
