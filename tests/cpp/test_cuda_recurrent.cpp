// The CUDA recurrent kernels (mlstm_sequence_fwd, mlstm_step_fwd) through the C ABI against the fp64
// recurrent reference (reference.h): fresh random inputs per case, every dtype, odd shapes, padded
// (non-contiguous) and aligned layouts, initial states present and absent, large |i| and forget-gate
// biases, steps in place and out of place, chains of steps, and a CUDA-graph capture. Outputs are
// NaN-poisoned before each call, so unwritten elements fail.
//
// Tolerances (relative Frobenius error and max abs error over max |ref|, per output): the inputs the
// reference sees are the rounded ones, so the error is the kernel's fp32 arithmetic plus the rounding
// of the outputs to their dtype, about u/sqrt(3) relative for unit roundoff u. The bounds are the
// SPEC §6 targets: 1e-4 for fp32, 1e-2 for bf16 (u = 3.9e-3), and 2e-3 for fp16 (4u, u = 4.9e-4).
// The log-domain stabiliser m is compared with an absolute floor of 1 (its error is absolute).
//
// MLSTM_TEST_SMALL=1 (or --small) runs a few small cases, for compute-sanitizer.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "harness.h"
#include "mlstm/mlstm.h"
#include "reference.h"
#include "testing.h"

#ifdef MLSTM_WITH_CUDA
#include <cuda_runtime.h>

namespace {

using testing::Tensor;

double tolerance(mlstm_dtype dtype) {
  switch (dtype) {
    case MLSTM_FLOAT32: return 1e-4;
    case MLSTM_FLOAT16: return 2e-3;
    default: return 1e-2;
  }
}

bool cuda_ok(cudaError_t e, const char* what) {
  CHECK(e == cudaSuccess, "%s: %s", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

// A host tensor (testing::Tensor, any dtype and padding) mirrored in device memory.
struct DeviceTensor {
  Tensor host;
  void* dev = nullptr;

  DeviceTensor() = default;
  DeviceTensor(mlstm_dtype dtype, std::vector<int64_t> shape, bool padded) : host(dtype, std::move(shape), padded) {
    cuda_ok(cudaMalloc(&dev, host.bytes.size()), "cudaMalloc");
    upload();
  }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  DeviceTensor(DeviceTensor&& o) noexcept : host(std::move(o.host)), dev(o.dev) { o.dev = nullptr; }
  DeviceTensor& operator=(DeviceTensor&& o) noexcept {
    std::swap(host, o.host);
    std::swap(dev, o.dev);
    return *this;
  }
  ~DeviceTensor() {
    if (dev) cudaFree(dev);
  }

  void upload() { cuda_ok(cudaMemcpy(dev, host.bytes.data(), host.bytes.size(), cudaMemcpyHostToDevice), "upload"); }
  std::vector<double> download() {
    cuda_ok(cudaMemcpy(host.bytes.data(), dev, host.bytes.size(), cudaMemcpyDeviceToHost), "download");
    return host.get();
  }
  void set(const std::vector<double>& values) {
    host.set(values);
    upload();
  }
  // 0xff bytes are NaN in fp32, fp16 and bf16.
  void poison() { cuda_ok(cudaMemset(dev, 0xff, host.bytes.size()), "poison"); }

  // The ABI view; `offset` elements from the start (a time step of a (B, NH, S, ...) tensor).
  mlstm_tensor abi(int64_t offset = 0) const {
    mlstm_tensor t{};
    t.data = static_cast<unsigned char*>(dev) + offset * testing::dtype_bytes(host.dtype);
    t.dtype = host.dtype;
    for (size_t d = 0; d < host.stride.size(); ++d) t.stride[d] = host.stride[d];
    return t;
  }
  bool present() const { return dev != nullptr; }
};

struct States {
  DeviceTensor c, n, m;
  States() = default;
  States(mlstm_dtype dtype, int64_t B, int64_t NH, int64_t DHQK, int64_t DHHV, bool padded)
      : c(dtype, {B, NH, DHQK, DHHV}, padded), n(dtype, {B, NH, DHQK}, padded), m(dtype, {B, NH}, padded) {}
  void poison() { c.poison(), n.poison(), m.poison(); }
};

// Relative Frobenius error and max abs error / max |ref| (both NaN if anything is NaN), with
// `floor` as the smallest per-element reference scale.
bool compare(const std::string& what, const std::vector<double>& out, const std::vector<double>& ref, double tol,
             double floor = 0.0) {
  double num = 0, den = 0, max_err = 0, max_ref = floor;
  bool finite = out.size() == ref.size();
  for (size_t j = 0; finite && j < out.size(); ++j) {
    if (!std::isfinite(out[j])) finite = false;
    const double e = out[j] - ref[j];
    num += e * e;
    den += std::max(ref[j] * ref[j], floor * floor);
    max_err = std::max(max_err, std::fabs(e));
    max_ref = std::max(max_ref, std::fabs(ref[j]));
  }
  const double rel = finite ? (den > 0 ? std::sqrt(num / den) : std::sqrt(num)) : NAN;
  const double rel_max = finite ? (max_ref > 0 ? max_err / max_ref : max_err) : NAN;
  const bool ok = rel <= tol && rel_max <= tol;
  std::printf("%s %-104s rel=%.2e max=%.2e tol=%.0e\n", ok ? "ok  " : "FAIL", what.c_str(), rel, rel_max, tol);
  CHECK(ok, "%s: rel %.3e, max %.3e > tol %.1e", what.c_str(), rel, rel_max, tol);
  return ok;
}

bool status_ok(mlstm_status st, const char* what) {
  CHECK(st == MLSTM_OK, "%s returned %d: %s", what, int(st), mlstm_last_error());
  return st == MLSTM_OK;
}

// ---- sequence --------------------------------------------------------------------------------------

struct SeqCase {
  int64_t B, NH, S, DHQK, DHHV;
  mlstm_dtype qkv, gates, states;
  bool initial, last, padded;
  harness::GateStyle gates_style;
};

std::string describe(const char* form, const SeqCase& c, const char* extra) {
  return testing::format("%s S=%lld B=%lld NH=%lld DHQK=%lld DHHV=%lld qkv=%s gates=%s states=%s%s%s%s", form,
                         (long long)c.S, (long long)c.B, (long long)c.NH, (long long)c.DHQK, (long long)c.DHHV,
                         testing::dtype_name(c.qkv), testing::dtype_name(c.gates), testing::dtype_name(c.states),
                         c.initial ? " init" : "", c.padded ? " padded" : "", extra);
}

struct Inputs {
  DeviceTensor q, k, v, i, f;
  Inputs(const ref::Inputs<double>& in, const SeqCase& c)
      : q(c.qkv, {c.B, c.NH, c.S, c.DHQK}, c.padded),
        k(c.qkv, {c.B, c.NH, c.S, c.DHQK}, c.padded),
        v(c.qkv, {c.B, c.NH, c.S, c.DHHV}, c.padded),
        i(c.gates, {c.B, c.NH, c.S}, c.padded),
        f(c.gates, {c.B, c.NH, c.S}, c.padded) {
    q.set(in.q), k.set(in.k), v.set(in.v), i.set(in.i), f.set(in.f);
  }
};

mlstm_fwd_args base_args(const SeqCase& c, int64_t S, float eps, cudaStream_t stream) {
  mlstm_fwd_args a{};
  a.device = mlstm_device{MLSTM_DEVICE_CUDA, 0, stream};
  a.shape = mlstm_shape{c.B, c.NH, S, c.DHQK, c.DHHV};
  a.eps = eps;
  return a;
}

harness::Config config_of(const SeqCase& c) {
  harness::Config cfg;
  cfg.qkv = c.qkv, cfg.gates = c.gates, cfg.states = c.states, cfg.padded = c.padded;
  return cfg;
}

// The documented rule of the CUDA backend: 16-bit q/k/v with fp32 states over at least 256 steps run as
// the chunkwise form, a 64-token tile at a time on tensor cores.
bool runs_tiled(const SeqCase& c) {
  return (c.qkv == MLSTM_FLOAT16 || c.qkv == MLSTM_BFLOAT16) && c.states == MLSTM_FLOAT32 && c.S >= 256;
}

void run_sequence_case(testing::Rng& rng, const SeqCase& c) {
  const ref::Inputs<double> raw = harness::random_inputs(rng, c.B, c.NH, c.S, c.DHQK, c.DHHV, c.initial, c.gates_style);
  const ref::Inputs<double> seen = harness::as_seen(raw, config_of(c));
  const ref::Outputs<double> want = ref::recurrent_forward(seen);

  Inputs x(raw, c);
  DeviceTensor h(c.qkv, {c.B, c.NH, c.S, c.DHHV}, c.padded);
  States init, last;
  if (c.initial) {
    init = States(c.states, c.B, c.NH, c.DHQK, c.DHHV, c.padded);
    init.c.set(raw.c0), init.n.set(raw.n0), init.m.set(raw.m0);
  }
  if (c.last) last = States(c.states, c.B, c.NH, c.DHQK, c.DHHV, c.padded), last.poison();
  h.poison();

  mlstm_fwd_args a = base_args(c, c.S, float(raw.eps), nullptr);
  a.q = x.q.abi(), a.k = x.k.abi(), a.v = x.v.abi(), a.i = x.i.abi(), a.f = x.f.abi(), a.h = h.abi();
  if (c.initial) a.c_initial = init.c.abi(), a.n_initial = init.n.abi(), a.m_initial = init.m.abi();
  if (c.last) a.c_last = last.c.abi(), a.n_last = last.n.abi(), a.m_last = last.m.abi();
  mlstm_buffer_sizes sizes{1, 1};
  if (!status_ok(mlstm_sequence_fwd_sizes(&a, &sizes), "mlstm_sequence_fwd_sizes")) return;
  const bool tiled = runs_tiled(c);
  CHECK(sizes.saved_bytes == 0 && (tiled || sizes.workspace_bytes == 0),
        "sequence: saved %zu bytes, workspace %zu bytes", sizes.saved_bytes, sizes.workspace_bytes);
  void* workspace = nullptr;
  if (sizes.workspace_bytes > 0 && !cuda_ok(cudaMalloc(&workspace, sizes.workspace_bytes), "cudaMalloc")) return;
  std::unique_ptr<void, cudaError_t (*)(void*)> workspace_owner(workspace, cudaFree);
  a.workspace = workspace;
  if (!status_ok(mlstm_sequence_fwd(&a), "mlstm_sequence_fwd")) return;
  if (!cuda_ok(cudaDeviceSynchronize(), "sequence kernel")) return;

  // The reference saw the same rounded q, k, v. In the one-launch kernel what remains is the fp32
  // recurrence and the final rounding to the state dtype; the tiled form also rounds the gated
  // value rows that feed the tensor cores to the input dtype.
  const double tol_h = tolerance(c.qkv);
  const double tol_state = tiled ? std::max(tolerance(c.states), tolerance(c.qkv)) : tolerance(c.states);
  const char* how = tiled ? " (tiled)" : "";
  compare(describe("sequence h", c, how), h.download(), want.h, tol_h);
  if (c.last) {
    compare(describe("sequence c_last", c, how), last.c.download(), want.c, tol_state);
    compare(describe("sequence n_last", c, how), last.n.download(), want.n, tol_state);
    compare(describe("sequence m_last", c, how), last.m.download(), want.m, tol_state, 1.0);
  }
}

// ---- step ------------------------------------------------------------------------------------------

struct StepCase {
  SeqCase shape;  // S = number of chained steps
  bool in_place;
};

// The reference of a chain of steps: every step starts from the previous step's states rounded to
// the state dtype (what the kernel stores and reads back).
ref::Outputs<double> step_chain_reference(const ref::Inputs<double>& seen, mlstm_dtype state_dtype) {
  const int64_t B = seen.B, NH = seen.NH, S = seen.S, DK = seen.DHQK, DV = seen.DHHV;
  ref::Outputs<double> out;
  out.h.assign(size_t(B * NH * S * DV), 0.0);
  ref::Inputs<double> one = seen;
  one.S = 1;
  for (int64_t t = 0; t < S; ++t) {
    one.q.assign(size_t(B * NH * DK), 0.0), one.k.assign(size_t(B * NH * DK), 0.0);
    one.v.assign(size_t(B * NH * DV), 0.0), one.i.assign(size_t(B * NH), 0.0), one.f.assign(size_t(B * NH), 0.0);
    for (int64_t bh = 0; bh < B * NH; ++bh) {
      for (int64_t a = 0; a < DK; ++a) {
        one.q[bh * DK + a] = seen.q[(bh * S + t) * DK + a];
        one.k[bh * DK + a] = seen.k[(bh * S + t) * DK + a];
      }
      for (int64_t e = 0; e < DV; ++e) one.v[bh * DV + e] = seen.v[(bh * S + t) * DV + e];
      one.i[bh] = seen.i[bh * S + t];
      one.f[bh] = seen.f[bh * S + t];
    }
    ref::Outputs<double> o = ref::recurrent_forward(one);
    for (int64_t bh = 0; bh < B * NH; ++bh)
      for (int64_t e = 0; e < DV; ++e) out.h[(bh * S + t) * DV + e] = o.h[bh * DV + e];
    out.c = o.c, out.n = o.n, out.m = o.m;
    one.has_initial = true;
    one.c0 = testing::rounded(state_dtype, o.c);
    one.n0 = testing::rounded(state_dtype, o.n);
    one.m0 = testing::rounded(state_dtype, o.m);
  }
  return out;
}

// Runs the chain of steps of `c` (in place or ping-pong), optionally captured in one CUDA graph.
void run_step_case(testing::Rng& rng, const StepCase& sc, bool graph = false) {
  const SeqCase& c = sc.shape;
  const ref::Inputs<double> raw = harness::random_inputs(rng, c.B, c.NH, c.S, c.DHQK, c.DHHV, c.initial, c.gates_style);
  const ref::Inputs<double> seen = harness::as_seen(raw, config_of(c));
  const ref::Outputs<double> want = step_chain_reference(seen, c.states);

  Inputs x(raw, c);
  DeviceTensor h(c.qkv, {c.B, c.NH, c.S, c.DHHV}, c.padded);
  h.poison();
  States bufs[2];
  bufs[0] = States(c.states, c.B, c.NH, c.DHQK, c.DHHV, c.padded);
  if (c.initial) {
    bufs[0].c.set(raw.c0), bufs[0].n.set(raw.n0), bufs[0].m.set(raw.m0);
  } else {
    bufs[0].poison();
  }
  if (!sc.in_place) bufs[1] = States(c.states, c.B, c.NH, c.DHQK, c.DHHV, c.padded), bufs[1].poison();

  cudaStream_t stream = nullptr;
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (graph) {
    cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  }
  int cur = 0;
  bool ok = true;
  for (int64_t t = 0; t < c.S && ok; ++t) {
    const bool has_initial = c.initial || t > 0;
    const int next = sc.in_place ? cur : 1 - cur;
    mlstm_fwd_args a = base_args(c, 1, float(raw.eps), stream);
    a.q = x.q.abi(t * x.q.host.stride[2]), a.k = x.k.abi(t * x.k.host.stride[2]);
    a.v = x.v.abi(t * x.v.host.stride[2]), a.h = h.abi(t * h.host.stride[2]);
    a.i = x.i.abi(t), a.f = x.f.abi(t);
    if (has_initial) a.c_initial = bufs[cur].c.abi(), a.n_initial = bufs[cur].n.abi(), a.m_initial = bufs[cur].m.abi();
    a.c_last = bufs[next].c.abi(), a.n_last = bufs[next].n.abi(), a.m_last = bufs[next].m.abi();
    ok = status_ok(mlstm_step_fwd(&a), "mlstm_step_fwd");
    cur = next;
  }
  if (graph) {
    ok = cuda_ok(cudaStreamEndCapture(stream, &g), "cudaStreamEndCapture") && ok;
    ok = ok && cuda_ok(cudaGraphInstantiate(&exec, g, 0), "cudaGraphInstantiate");
    ok = ok && cuda_ok(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    ok = ok && cuda_ok(cudaStreamSynchronize(stream), "graph replay");
    if (exec) cudaGraphExecDestroy(exec);
    if (g) cudaGraphDestroy(g);
    cudaStreamDestroy(stream);
  }
  if (!ok || !cuda_ok(cudaDeviceSynchronize(), "step kernel")) return;

  const char* extra = graph ? (sc.in_place ? " in-place graph" : " graph") : (sc.in_place ? " in-place" : "");
  // The reference rounds the states between steps as the kernel stores them, so h keeps the
  // tolerance of its own dtype.
  const double tol_h = tolerance(c.qkv), tol_state = tolerance(c.states);
  compare(describe("step h", c, extra), h.download(), want.h, tol_h);
  compare(describe("step c_new", c, extra), bufs[cur].c.download(), want.c, tol_state);
  compare(describe("step n_new", c, extra), bufs[cur].n.download(), want.n, tol_state);
  compare(describe("step m_new", c, extra), bufs[cur].m.download(), want.m, tol_state, 1.0);
}

}  // namespace
#endif  // MLSTM_WITH_CUDA

int main(int argc, char** argv) {
#ifndef MLSTM_WITH_CUDA
  (void)argc, (void)argv;
  std::printf("skipped: no CUDA device\n");
  return 0;
#else
  if (mlstm_cuda_device_count() == 0) {
    std::printf("skipped: no CUDA device\n");
    return 0;
  }
  const char* small_env = std::getenv("MLSTM_TEST_SMALL");
  const bool small = (small_env && std::strcmp(small_env, "0") != 0) || (argc > 1 && std::strcmp(argv[1], "--small") == 0);
  testing::Rng rng(20261125);

  const mlstm_dtype f32 = MLSTM_FLOAT32, f16 = MLSTM_FLOAT16, bf16 = MLSTM_BFLOAT16;
  harness::GateStyle plain{}, long_memory{}, wild_input{}, negative_input{};
  long_memory.f_bias = 3.0;
  wild_input.i_scale = 6.0;  // m jumps often: exercises the rescale of the lazily decayed state
  negative_input.i_mean = -6.0, negative_input.i_scale = 3.0;

  //                 B  NH    S  DHQK  DHHV  qkv   gates states init  last   padded
  std::vector<SeqCase> seq;
  std::vector<StepCase> steps;
  if (small) {
    seq = {{2, 3, 7, 48, 80, bf16, bf16, f32, true, true, true, plain},
           {1, 2, 70, 32, 64, f32, f32, f32, true, true, false, wild_input},
           {1, 2, 9, 256, 512, bf16, f32, bf16, false, true, false, plain},
           {1, 2, 300, 64, 128, bf16, bf16, f32, true, true, true, long_memory}};
    steps = {{{2, 2, 2, 64, 128, f32, f32, f32, true, true, false, plain}, true},
             {{1, 8, 2, 256, 512, bf16, bf16, f32, true, true, false, plain}, true},
             {{3, 5, 2, 48, 80, f16, f32, f16, true, true, true, plain}, true},
             {{2, 3, 2, 48, 80, bf16, bf16, bf16, false, true, false, plain}, false},
             // Out of place at 256 x 512: narrow slabs (at most 64 KiB of state per block).
             {{4, 8, 2, 256, 512, bf16, bf16, f32, true, true, false, plain}, false}};
  } else {
    seq = {
        {3, 5, 1, 48, 80, f32, f32, f32, true, true, false, plain},
        {3, 5, 7, 48, 80, bf16, bf16, f32, true, true, true, plain},
        {3, 5, 63, 48, 80, f16, f32, f32, false, true, false, plain},
        {3, 5, 63, 80, 48, bf16, f16, f32, true, true, true, long_memory},
        {2, 3, 200, 256, 512, bf16, bf16, f32, true, true, false, plain},
        {2, 3, 200, 256, 512, f32, f32, f32, true, true, false, wild_input},
        // B * NH = 64 at 256 x 512: the tiling the benchmark shape gets (whole columns per warp).
        {4, 16, 45, 256, 512, bf16, bf16, f32, true, true, false, wild_input},
        {1, 2, 989, 32, 64, f32, f32, f32, true, true, false, plain},
        {1, 3, 500, 96, 160, bf16, f32, f32, true, true, false, negative_input},
        {2, 2, 300, 128, 128, f32, f32, f32, true, true, true, long_memory},
        {1, 1, 5, 1024, 1024, f32, f32, f32, true, true, false, plain},
        {2, 1, 33, 16, 1024, bf16, f32, bf16, true, true, false, plain},
        {2, 1, 33, 1024, 16, f16, f16, f16, true, true, false, plain},
        {1, 1, 40, 1008, 48, f32, bf16, f32, true, true, true, wild_input},
        {3, 2, 70, 64, 48, bf16, bf16, f32, true, false, true, plain},
        {5, 3, 100, 64, 64, f16, f16, f32, false, false, false, wild_input},
        {2, 3, 1024, 256, 512, bf16, bf16, f32, true, true, false, plain},
        {1, 2, 257, 48, 80, f16, f16, f32, false, true, true, wild_input},
        {2, 1, 256, 128, 256, f16, f32, f32, true, true, false, negative_input},
    };
    steps = {
        {{1, 8, 3, 256, 512, bf16, bf16, f32, true, true, false, plain}, true},
        {{1, 8, 3, 256, 512, bf16, bf16, f32, true, true, false, plain}, false},
        {{16, 8, 2, 256, 512, f32, f32, f32, true, true, false, wild_input}, true},
        {{3, 5, 3, 48, 80, f16, f32, f16, true, true, true, plain}, true},
        {{3, 5, 3, 48, 80, bf16, bf16, bf16, true, true, false, long_memory}, false},
        {{3, 5, 3, 48, 80, f32, f32, f32, false, true, true, plain}, false},
        {{2, 3, 3, 1024, 16, f32, f32, f32, true, true, false, plain}, true},
        {{1, 1, 3, 16, 1024, bf16, f32, f32, false, true, false, negative_input}, false},
        {{1, 2, 2, 1024, 1024, f32, bf16, f32, true, true, false, plain}, true},
        {{5, 3, 4, 64, 64, bf16, bf16, bf16, true, true, false, wild_input}, true},
        {{7, 3, 2, 128, 256, f16, f16, f32, true, true, true, plain}, false},
        // B * NH = 132 (one per SM of an H100): one slab per (b, h), walked as two tiles of 512 columns.
        {{33, 4, 2, 16, 1024, bf16, bf16, f32, true, true, false, plain}, false},
        {{33, 4, 2, 16, 1024, f16, f32, bf16, true, true, false, long_memory}, true},
        // Out of place at 256 x 512: slabs narrowed to at most 64 KiB of state (8 per (b, h) for fp32
        // states, 4 for bf16), whatever the batch.
        {{4, 8, 3, 256, 512, bf16, bf16, f32, true, true, false, wild_input}, false},
        {{16, 8, 2, 256, 512, bf16, bf16, bf16, true, true, false, plain}, false},
        {{17, 8, 2, 256, 512, f32, f32, f32, true, true, true, plain}, false},
    };
  }
  for (const SeqCase& c : seq) run_sequence_case(rng, c);
  for (const StepCase& c : steps) run_step_case(rng, c);
  // CUDA graphs: the chain of steps captured once and replayed (in place and ping-pong).
  run_step_case(rng, {{2, 3, 3, 256, 512, bf16, bf16, f32, true, true, false, plain}, true}, /*graph=*/true);
  run_step_case(rng, {{2, 3, 3, 48, 80, f32, f32, f32, true, true, true, plain}, false}, /*graph=*/true);
  return testing::finish("test_cuda_recurrent");
#endif
}
