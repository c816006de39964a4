// CUDA chunkwise kernels (limit_chunk and xl_chunk) through the C ABI against the fp64 recurrent
// reference (tests/cpp/reference.h, computed from the same rounded inputs): the output h, the last
// states and every gradient of the exact backward, for fp32 / fp16 / bf16, odd S, head dims that are
// not multiples of the kernels' tiles, initial states, losses on the last states, padded (strided)
// and contiguous tensors. Outputs and buffers are NaN-poisoned before each call. Also: a sequence
// split in two calls (state passing, forward and backward) equals one call, and repeated runs give
// bit-identical results.
//
//   test_cuda_chunkwise            all cases (MLSTM_TEST_SMALL=1: a few small ones, for the sanitizers;
//                                  MLSTM_TEST_POLICY=wide|warps16|blocks2|smem: every case with that
//                                  walk layout policy instead of the library's choice)
//   test_cuda_chunkwise --bench    timings (CUDA events, median of 30 after warm-up) of the SPEC §7
//                                  shapes, after a correctness check at a reduced size; then config A
//                                  and B under each walk layout policy (the hybrid against the others)
//   test_cuda_chunkwise --profile [A|B] [policy]   one shape, untimed, for a profiler
#include <algorithm>
#include <chrono>
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

#include "cuda/forms.h"  // chunkwise_set_walk_policy: the layout choice, for comparing layouts

namespace {

using testing::format;

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::printf("CUDA error in %s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}

// A host tensor (padded strides possible, NaN-poisoned) and its device copy.
struct DevTensor {
  testing::Tensor host;
  void* dev = nullptr;
  DevTensor(mlstm_dtype dtype, std::vector<int64_t> shape, bool padded) : host(dtype, std::move(shape), padded) {
    cuda_ok(cudaMalloc(&dev, host.bytes.size()), "cudaMalloc");
    upload();
  }
  ~DevTensor() { cudaFree(dev); }
  DevTensor(const DevTensor&) = delete;
  DevTensor& operator=(const DevTensor&) = delete;
  void upload() { cuda_ok(cudaMemcpy(dev, host.bytes.data(), host.bytes.size(), cudaMemcpyHostToDevice), "upload"); }
  void set(const std::vector<double>& values) {
    host.set(values);
    upload();
  }
  std::vector<double> get() {
    cuda_ok(cudaMemcpy(host.bytes.data(), dev, host.bytes.size(), cudaMemcpyDeviceToHost), "download");
    return host.get();
  }
  mlstm_tensor abi() {
    mlstm_tensor t = host.abi();
    t.data = dev;
    return t;
  }
};
using Dev = std::unique_ptr<DevTensor>;

struct DevBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DevBuffer(size_t n) : bytes(n) {
    if (n > 0) {
      cuda_ok(cudaMalloc(&ptr, n), "cudaMalloc");
      cuda_ok(cudaMemset(ptr, 0xff, n), "cudaMemset");  // NaN in every float: unwritten reads show
    }
  }
  ~DevBuffer() {
    if (ptr) cudaFree(ptr);
  }
  DevBuffer(const DevBuffer&) = delete;
  DevBuffer& operator=(const DevBuffer&) = delete;
};

mlstm_tensor absent() { return mlstm_tensor{}; }

struct Case {
  int64_t B, NH, S, DHQK, DHHV;
  mlstm_dtype dtype;
  mlstm_dtype gate_dtype = MLSTM_FLOAT32;
  bool initial = false, last = false, dlast = false;
  harness::GateStyle gates = {};
  int32_t L = 64;
  int32_t algorithm = MLSTM_CHUNKWISE_LIMIT;
  bool padded = false;
  mlstm::cuda::ChunkwiseWalkPolicy policy = mlstm::cuda::ChunkwiseWalkPolicy::kAuto;
};

using Policy = mlstm::cuda::ChunkwiseWalkPolicy;

const char* policy_name(Policy p) {
  switch (p) {
    case Policy::kWide: return "wide";
    case Policy::kWarps16: return "warps16";
    case Policy::kBlocks2: return "blocks2";
    case Policy::kSharedMemory: return "smem";
    default: return "auto";
  }
}

// The policy every case runs with unless it names one (MLSTM_TEST_POLICY, default: the library's).
Policy default_policy() {
  const char* e = std::getenv("MLSTM_TEST_POLICY");
  if (e == nullptr) return Policy::kAuto;
  for (Policy p : {Policy::kWide, Policy::kWarps16, Policy::kBlocks2, Policy::kSharedMemory})
    if (std::strcmp(e, policy_name(p)) == 0) return p;
  std::printf("unknown MLSTM_TEST_POLICY=%s (wide, warps16, blocks2, smem)\n", e);
  std::exit(2);
}

// Sets the walk layout policy for a scope (the library keeps it process-wide).
struct PolicyScope {
  explicit PolicyScope(Policy p) { mlstm::cuda::chunkwise_set_walk_policy(p == Policy::kAuto ? default_policy() : p); }
  ~PolicyScope() { mlstm::cuda::chunkwise_set_walk_policy(default_policy()); }
};

// Tolerances on ||out - ref|| / ||ref|| (SPEC §6). fp16 keeps 3 more significand bits than bf16;
// its bounds are those of bf16 divided by 4 (a factor 2 short of the precision ratio, for the
// roundings of the intermediate matrices).
double tol_out(mlstm_dtype d) { return d == MLSTM_FLOAT32 ? 1e-4 : d == MLSTM_BFLOAT16 ? 1e-2 : 2.5e-3; }
double tol_grad(mlstm_dtype d) { return d == MLSTM_FLOAT32 ? 1e-4 : d == MLSTM_BFLOAT16 ? 2e-2 : 5e-3; }

std::string describe(const Case& c) {
  const Policy policy = c.policy == Policy::kAuto ? default_policy() : c.policy;
  return format("S=%lld B=%lld NH=%lld DHQK=%lld DHHV=%lld %s gates=%s L=%d %s%s%s%s%s%s%s",
                (long long)c.S, (long long)c.B, (long long)c.NH, (long long)c.DHQK, (long long)c.DHHV,
                testing::dtype_name(c.dtype), testing::dtype_name(c.gate_dtype), c.L,
                c.algorithm == MLSTM_CHUNKWISE_XL ? "xl" : "limit", c.initial ? " init" : "", c.last ? " last" : "",
                c.dlast ? " dlast" : "", c.padded ? " padded" : "", policy == Policy::kAuto ? "" : " walks=",
                policy == Policy::kAuto ? "" : policy_name(policy));
}

// All device tensors of one forward + backward call.
struct Run {
  Case c;
  Dev q, k, v, i, f, c0, n0, m0, h, cl, nl, ml;
  Dev dh, dcl, dnl, dml, dq, dk, dv, di, df, dc0, dn0, dm0;
  std::unique_ptr<DevBuffer> saved, ws_fwd, ws_bwd;

  Run(const Case& cs, const ref::Inputs<double>& in) : c(cs) {
    const bool pad = c.padded;
    auto mk = [&](mlstm_dtype dt, std::vector<int64_t> shape) { return std::make_unique<DevTensor>(dt, shape, pad); };
    q = mk(c.dtype, {c.B, c.NH, c.S, c.DHQK});
    k = mk(c.dtype, {c.B, c.NH, c.S, c.DHQK});
    v = mk(c.dtype, {c.B, c.NH, c.S, c.DHHV});
    i = mk(c.gate_dtype, {c.B, c.NH, c.S});
    f = mk(c.gate_dtype, {c.B, c.NH, c.S});
    h = mk(c.dtype, {c.B, c.NH, c.S, c.DHHV});
    q->set(in.q), k->set(in.k), v->set(in.v), i->set(in.i), f->set(in.f);
    if (c.initial) {
      c0 = mk(MLSTM_FLOAT32, {c.B, c.NH, c.DHQK, c.DHHV});
      n0 = mk(MLSTM_FLOAT32, {c.B, c.NH, c.DHQK});
      m0 = mk(MLSTM_FLOAT32, {c.B, c.NH});
      c0->set(in.c0), n0->set(in.n0), m0->set(in.m0);
    }
    if (c.last) {
      cl = mk(MLSTM_FLOAT32, {c.B, c.NH, c.DHQK, c.DHHV});
      nl = mk(MLSTM_FLOAT32, {c.B, c.NH, c.DHQK});
      ml = mk(MLSTM_FLOAT32, {c.B, c.NH});
    }
    dh = mk(c.dtype, {c.B, c.NH, c.S, c.DHHV});
    if (c.dlast) {
      dcl = mk(MLSTM_FLOAT32, {c.B, c.NH, c.DHQK, c.DHHV});
      dnl = mk(MLSTM_FLOAT32, {c.B, c.NH, c.DHQK});
      dml = mk(MLSTM_FLOAT32, {c.B, c.NH});
    }
    dq = mk(c.dtype, {c.B, c.NH, c.S, c.DHQK});
    dk = mk(c.dtype, {c.B, c.NH, c.S, c.DHQK});
    dv = mk(c.dtype, {c.B, c.NH, c.S, c.DHHV});
    di = mk(c.gate_dtype, {c.B, c.NH, c.S});
    df = mk(c.gate_dtype, {c.B, c.NH, c.S});
    if (c.initial) {
      dc0 = mk(MLSTM_FLOAT32, {c.B, c.NH, c.DHQK, c.DHHV});
      dn0 = mk(MLSTM_FLOAT32, {c.B, c.NH, c.DHQK});
      dm0 = mk(MLSTM_FLOAT32, {c.B, c.NH});
    }
  }

  static mlstm_tensor t(const Dev& d) { return d ? d->abi() : absent(); }

  mlstm_fwd_args fwd_args() {
    mlstm_fwd_args a{};
    a.device = mlstm_device{MLSTM_DEVICE_CUDA, 0, nullptr};
    a.shape = mlstm_shape{c.B, c.NH, c.S, c.DHQK, c.DHHV};
    a.eps = 1e-6f;
    a.chunk_size = c.L;
    a.algorithm = c.algorithm;
    a.q = t(q), a.k = t(k), a.v = t(v), a.i = t(i), a.f = t(f), a.h = t(h);
    a.c_initial = t(c0), a.n_initial = t(n0), a.m_initial = t(m0);
    a.c_last = t(cl), a.n_last = t(nl), a.m_last = t(ml);
    a.saved = saved ? saved->ptr : nullptr;
    a.workspace = ws_fwd ? ws_fwd->ptr : nullptr;
    return a;
  }

  mlstm_bwd_args bwd_args() {
    mlstm_bwd_args a{};
    a.device = mlstm_device{MLSTM_DEVICE_CUDA, 0, nullptr};
    a.shape = mlstm_shape{c.B, c.NH, c.S, c.DHQK, c.DHHV};
    a.eps = 1e-6f;
    a.chunk_size = c.L;
    a.algorithm = c.algorithm;
    a.q = t(q), a.k = t(k), a.v = t(v), a.i = t(i), a.f = t(f), a.h = t(h);
    a.c_initial = t(c0), a.n_initial = t(n0), a.m_initial = t(m0);
    a.saved = saved ? saved->ptr : nullptr;
    a.dh = t(dh), a.dc_last = t(dcl), a.dn_last = t(dnl), a.dm_last = t(dml);
    a.dq = t(dq), a.dk = t(dk), a.dv = t(dv), a.di = t(di), a.df = t(df);
    a.dc_initial = t(dc0), a.dn_initial = t(dn0), a.dm_initial = t(dm0);
    a.workspace = ws_bwd ? ws_bwd->ptr : nullptr;
    return a;
  }

  bool forward() {
    mlstm_fwd_args a = fwd_args();
    mlstm_buffer_sizes sz{0, 0};
    mlstm_status st = mlstm_chunkwise_fwd_sizes(&a, &sz);
    CHECK(st == MLSTM_OK, "fwd sizes: %s", mlstm_last_error());
    if (st != MLSTM_OK) return false;
    saved = std::make_unique<DevBuffer>(sz.saved_bytes);
    ws_fwd = std::make_unique<DevBuffer>(sz.workspace_bytes);
    a = fwd_args();
    st = mlstm_chunkwise_fwd(&a);
    CHECK(st == MLSTM_OK, "fwd: %s", mlstm_last_error());
    cuda_ok(cudaDeviceSynchronize(), "forward");
    return st == MLSTM_OK;
  }

  bool backward() {
    mlstm_bwd_args a = bwd_args();
    mlstm_buffer_sizes sz{0, 0};
    mlstm_status st = mlstm_chunkwise_bwd_sizes(&a, &sz);
    CHECK(st == MLSTM_OK, "bwd sizes: %s", mlstm_last_error());
    if (st != MLSTM_OK) return false;
    ws_bwd = std::make_unique<DevBuffer>(sz.workspace_bytes);
    a = bwd_args();
    st = mlstm_chunkwise_bwd(&a);
    CHECK(st == MLSTM_OK, "bwd: %s", mlstm_last_error());
    cuda_ok(cudaDeviceSynchronize(), "backward");
    return st == MLSTM_OK;
  }
};

// Values as a tensor of `dtype` holds them.
std::vector<double> as(mlstm_dtype dtype, const std::vector<double>& x) { return testing::rounded(dtype, x); }

bool compare(const std::string& label, const std::string& what, const std::vector<double>& out,
             const std::vector<double>& ref, double tol, testing::Worst& worst) {
  const double err = testing::rel_error(out, ref);
  worst.add(label, err);
  return testing::expect_close(what + " " + label, err, tol);
}

// The forget-gate gradient is formed from suffix sums of q.dq - k.dk, terms that cancel. Where the
// true gradient is zero up to that cancellation (f cannot act: S = 1 without initial states), a
// relative error is meaningless; the error is then measured against the size of the cancelling terms.
bool compare_df(const std::string& what, const std::vector<double>& out, const std::vector<double>& ref,
                const ref::Inputs<double>& in, const ref::Grads<double>& g, double tol, testing::Worst& worst) {
  std::vector<double> scale(ref.size(), 0.0);
  for (int64_t bh = 0; bh < in.B * in.NH; ++bh) {
    double acc = 0.0;
    for (int64_t t = in.S - 1; t >= 0; --t) {
      const int64_t row = bh * in.S + t;
      double qdq = 0.0, kdk = 0.0;
      for (int64_t d = 0; d < in.DHQK; ++d) {
        qdq += in.q[row * in.DHQK + d] * g.dq[row * in.DHQK + d];
        kdk += in.k[row * in.DHQK + d] * g.dk[row * in.DHQK + d];
      }
      acc += std::fabs(qdq) + std::fabs(kdk);
      scale[row] = acc * ref::sigmoid(-in.f[row]);
    }
  }
  if (testing::norm(ref) >= 1e-3 * testing::norm(scale)) return compare("df", what, out, ref, tol, worst);
  std::vector<double> diff(ref.size());
  for (size_t j = 0; j < ref.size(); ++j) diff[j] = out[j] - ref[j];
  const double err = testing::norm(diff) / testing::norm(scale);
  worst.add("df (vs. cancelling terms)", err);
  return testing::expect_close(what + " df (zero up to cancellation; vs. the cancelling terms)", err, tol);
}

// dm_initial is one number per (b, h): <dc_initial, c_initial> + <dn_initial, n_initial> plus the
// stabiliser path, sums whose terms cancel, so with one (b, h) its relative error is a coin flip.
// The bound for such a sum is (precision of the terms) x (sum of the terms' magnitudes): the error
// is measured against that sum, with a tolerance of twice the unit roundoff of the q/k/v dtype
// (and 1e-6 for fp32, where the kernels round like the fp32 reference) -- a missing term shows.
double tol_terms(mlstm_dtype d) { return d == MLSTM_FLOAT32 ? 1e-6 : d == MLSTM_BFLOAT16 ? 7.8e-3 : 9.8e-4; }

bool compare_dm_initial(const std::string& what, const std::vector<double>& out, const ref::Inputs<double>& in,
                        const ref::Grads<double>& g, double tol, testing::Worst& worst) {
  const int64_t n_c = in.DHQK * in.DHHV;
  std::vector<double> diff(out.size()), scale(out.size());
  for (size_t bh = 0; bh < out.size(); ++bh) {
    double s = std::fabs(g.dm0[bh]);
    for (int64_t j = 0; j < n_c; ++j) s += std::fabs(g.dc0[bh * n_c + j] * in.c0[bh * n_c + j]);
    for (int64_t j = 0; j < in.DHQK; ++j) s += std::fabs(g.dn0[bh * in.DHQK + j] * in.n0[bh * in.DHQK + j]);
    diff[bh] = out[bh] - g.dm0[bh];
    scale[bh] = s;
  }
  double err = testing::norm(diff) / testing::norm(scale);
  for (double x : out)
    if (std::isnan(x)) err = NAN;
  worst.add("dm_initial (vs. its terms)", err);
  return testing::expect_close(what + " dm_initial (vs. the magnitude of its terms)", err, tol);
}

// The CPU backend through the ABI in fp64 on the same (rounded) inputs: a second reference, for
// the outputs the recurrent reference also checks.
struct CpuReference {
  ref::Outputs<double> out;
  ref::Grads<double> grads;
  bool ok = false;
};

CpuReference cpu_reference(const Case& c, const ref::Inputs<double>& seen, const std::vector<double>& dh,
                           const std::vector<double>& dcl, const std::vector<double>& dnl,
                           const std::vector<double>& dml) {
  harness::Config cfg;
  cfg.qkv = cfg.gates = cfg.states = MLSTM_FLOAT64;
  cfg.padded = false;
  cfg.chunk_size = c.L;
  cfg.algorithm = c.algorithm;
  cfg.want_last = c.last;
  harness::BwdRun run(seen, cfg, dh, dcl, dnl, dml);
  CpuReference r;
  const mlstm_status st = run.run(harness::Form::kChunkwise);
  CHECK(st == MLSTM_OK, "CPU backend reference: %s", mlstm_last_error());
  if (st != MLSTM_OK) return r;
  r.out = run.fwd.outputs();
  r.grads = run.grads();
  r.ok = true;
  return r;
}

void run_case(const Case& c, uint64_t seed, testing::Worst& worst, bool check_repeat) {
  const PolicyScope policy(c.policy);
  testing::Rng rng(seed);
  ref::Inputs<double> in = harness::random_inputs(rng, c.B, c.NH, c.S, c.DHQK, c.DHHV, c.initial, c.gates);
  harness::Config cfg;
  cfg.qkv = c.dtype, cfg.gates = c.gate_dtype, cfg.states = MLSTM_FLOAT32;
  const ref::Inputs<double> seen = harness::as_seen(in, cfg);
  const std::string what = "chunkwise cuda " + describe(c);

  const std::vector<double> dh = as(c.dtype, rng.normals(size_t(c.B * c.NH * c.S * c.DHHV)));
  std::vector<double> dcl, dnl, dml;
  if (c.dlast) {
    dcl = as(MLSTM_FLOAT32, rng.normals(size_t(c.B * c.NH * c.DHQK * c.DHHV)));
    dnl = as(MLSTM_FLOAT32, rng.normals(size_t(c.B * c.NH * c.DHQK)));
    dml = as(MLSTM_FLOAT32, rng.normals(size_t(c.B * c.NH)));
  }
  const ref::Outputs<double> ro = ref::recurrent_forward(seen);
  const ref::Grads<double> rg = ref::recurrent_backward(seen, false, dh, dcl, dnl, dml);

  const CpuReference cpu = cpu_reference(c, seen, dh, dcl, dnl, dml);

  Run r(c, in);
  if (!r.forward()) return;
  const double to = tol_out(c.dtype), tg = std::max(tol_grad(c.dtype), tol_grad(c.gate_dtype));
  compare("h", what, r.h->get(), ro.h, to, worst);
  if (cpu.ok) compare("h (vs. CPU backend fp64)", what, r.h->get(), cpu.out.h, to, worst);
  if (c.last) {
    compare("c_last", what, r.cl->get(), ro.c, to, worst);
    compare("n_last", what, r.nl->get(), ro.n, to, worst);
    const double merr = testing::max_abs_error(r.ml->get(), ro.m);
    worst.add("m_last (max abs)", merr);
    testing::expect_close(what + " m_last (max abs)", merr, 1e-4);
  }
  r.dh->set(dh);
  if (c.dlast) r.dcl->set(dcl), r.dnl->set(dnl), r.dml->set(dml);
  if (!r.backward()) return;
  const std::vector<double> dq = r.dq->get(), dk = r.dk->get(), dv = r.dv->get(), di = r.di->get(), df = r.df->get();
  compare("dq", what, dq, rg.dq, tg, worst);
  compare("dk", what, dk, rg.dk, tg, worst);
  compare("dv", what, dv, rg.dv, tg, worst);
  compare("di", what, di, rg.di, tg, worst);
  compare_df(what, df, rg.df, seen, rg, tg, worst);
  if (cpu.ok) {
    compare("dq (vs. CPU backend fp64)", what, dq, cpu.grads.dq, tg, worst);
    compare("dk (vs. CPU backend fp64)", what, dk, cpu.grads.dk, tg, worst);
    compare("dv (vs. CPU backend fp64)", what, dv, cpu.grads.dv, tg, worst);
    compare("di (vs. CPU backend fp64)", what, di, cpu.grads.di, tg, worst);
  }
  if (c.initial) {
    compare("dc_initial", what, r.dc0->get(), rg.dc0, tg, worst);
    compare("dn_initial", what, r.dn0->get(), rg.dn0, tg, worst);
    compare_dm_initial(what, r.dm0->get(), seen, rg, tol_terms(c.dtype), worst);
  }
  if (check_repeat) {
    const std::vector<double> h1 = r.h->get();
    r.h->host.poison(), r.h->upload();
    r.dq->host.poison(), r.dq->upload();
    r.df->host.poison(), r.df->upload();
    if (!r.forward() || !r.backward()) return;
    const bool same = r.h->get() == h1 && r.dq->get() == dq && r.df->get() == df;
    std::printf("%s %s repeated run bit-identical\n", same ? "ok  " : "FAIL", what.c_str());
    CHECK(same, "%s: a repeated run gave different results", what.c_str());
  }
}

// A sequence split at S1: forward piece 1 (last states) -> piece 2 (as initial states); backward piece
// 2 (its initial-state gradients) -> piece 1 (as last-state gradients). Compared with one call's
// reference.
void run_state_passing(Case c, int64_t S1, uint64_t seed, testing::Worst& worst) {
  const PolicyScope policy(c.policy);
  testing::Rng rng(seed);
  ref::Inputs<double> in = harness::random_inputs(rng, c.B, c.NH, c.S, c.DHQK, c.DHHV, c.initial, c.gates);
  harness::Config cfg;
  cfg.qkv = c.dtype, cfg.gates = c.gate_dtype, cfg.states = MLSTM_FLOAT32;
  const ref::Inputs<double> seen = harness::as_seen(in, cfg);
  const std::vector<double> dh = as(c.dtype, rng.normals(size_t(c.B * c.NH * c.S * c.DHHV)));
  const ref::Outputs<double> ro = ref::recurrent_forward(seen);
  const ref::Grads<double> rg = ref::recurrent_backward(seen, false, dh, {}, {}, {});
  const std::string what = format("chunkwise cuda state passing at %lld: ", (long long)S1) + describe(c);

  // Piece p holds tokens [lo, lo + n) of every (b, h).
  auto piece = [&](const std::vector<double>& x, int64_t D, int64_t lo, int64_t n) {
    std::vector<double> out(size_t(c.B * c.NH * n * D));
    for (int64_t bh = 0; bh < c.B * c.NH; ++bh)
      std::copy_n(&x[size_t((bh * c.S + lo) * D)], n * D, &out[size_t(bh * n * D)]);
    return out;
  };
  auto join = [&](const std::vector<double>& a, const std::vector<double>& b, int64_t D) {
    std::vector<double> out(size_t(c.B * c.NH * c.S * D));
    const int64_t S2 = c.S - S1;
    for (int64_t bh = 0; bh < c.B * c.NH; ++bh) {
      std::copy_n(&a[size_t(bh * S1 * D)], S1 * D, &out[size_t(bh * c.S * D)]);
      std::copy_n(&b[size_t(bh * S2 * D)], S2 * D, &out[size_t((bh * c.S + S1) * D)]);
    }
    return out;
  };
  const int64_t S2 = c.S - S1;
  auto sub = [&](int64_t lo, int64_t n) {
    ref::Inputs<double> s = in;
    s.S = n;
    s.q = piece(in.q, c.DHQK, lo, n), s.k = piece(in.k, c.DHQK, lo, n), s.v = piece(in.v, c.DHHV, lo, n);
    s.i = piece(in.i, 1, lo, n), s.f = piece(in.f, 1, lo, n);
    return s;
  };
  Case c1 = c, c2 = c;
  c1.S = S1, c1.last = true, c1.dlast = true;
  c2.S = S2, c2.initial = true, c2.last = false, c2.dlast = false;
  ref::Inputs<double> in1 = sub(0, S1), in2 = sub(S1, S2);
  in2.has_initial = true;
  in2.c0.assign(size_t(c.B * c.NH * c.DHQK * c.DHHV), 0.0);
  in2.n0.assign(size_t(c.B * c.NH * c.DHQK), 0.0);
  in2.m0.assign(size_t(c.B * c.NH), 0.0);
  Run r1(c1, in1), r2(c2, in2);
  if (!r1.forward()) return;
  r2.c0->set(r1.cl->get()), r2.n0->set(r1.nl->get()), r2.m0->set(r1.ml->get());
  if (!r2.forward()) return;
  const double to = tol_out(c.dtype), tg = std::max(tol_grad(c.dtype), tol_grad(c.gate_dtype));
  compare("h (2 calls)", what, join(r1.h->get(), r2.h->get(), c.DHHV), ro.h, to, worst);
  r2.dh->set(piece(dh, c.DHHV, S1, S2));
  if (!r2.backward()) return;
  r1.dh->set(piece(dh, c.DHHV, 0, S1));
  r1.dcl->set(r2.dc0->get()), r1.dnl->set(r2.dn0->get()), r1.dml->set(r2.dm0->get());
  if (!r1.backward()) return;
  compare("dq (2 calls)", what, join(r1.dq->get(), r2.dq->get(), c.DHQK), rg.dq, tg, worst);
  compare("dk (2 calls)", what, join(r1.dk->get(), r2.dk->get(), c.DHQK), rg.dk, tg, worst);
  compare("dv (2 calls)", what, join(r1.dv->get(), r2.dv->get(), c.DHHV), rg.dv, tg, worst);
  compare("di (2 calls)", what, join(r1.di->get(), r2.di->get(), 1), rg.di, tg, worst);
  compare("df (2 calls)", what, join(r1.df->get(), r2.df->get(), 1), rg.df, tg, worst);
  if (c.initial) {
    compare("dc_initial (2 calls)", what, r1.dc0->get(), rg.dc0, tg, worst);
    compare_dm_initial(what + " (2 calls)", r1.dm0->get(), seen, rg, tol_terms(c.dtype), worst);
  }
}

std::vector<Case> small_cases() {
  std::vector<Case> cs;
  Case a{1, 2, 70, 32, 48, MLSTM_BFLOAT16};
  a.initial = a.last = a.dlast = true;
  cs.push_back(a);
  Case b{1, 1, 37, 16, 32, MLSTM_FLOAT32};
  b.padded = true;
  b.initial = true;
  cs.push_back(b);
  // Nine chunks for one (b, h): the sequence is cut into segments (state pass + combine).
  Case c{1, 1, 520, 16, 32, MLSTM_BFLOAT16};
  c.initial = c.dlast = true;
  cs.push_back(c);
  // The register walks (value dims divisible by 64 and 128, the backward's contraction in two parts),
  // segmented as well: ten chunks for one (b, h).
  Case d{1, 1, 600, 64, 128, MLSTM_BFLOAT16};
  d.initial = d.last = d.dlast = true;
  cs.push_back(d);
  // The forward and dv walks in two 8-warp blocks per SM (64 / 2 x 128 in 32-column steps), fp16.
  Case f{1, 1, 70, 256, 128, MLSTM_FLOAT16};
  f.initial = f.last = f.dlast = true;
  f.policy = Policy::kBlocks2;
  cs.push_back(f);
  // The 16-warp layouts for every walk (two chunks each; the full set has them segmented): contraction
  // 256 both ways in two parts (128 / 2 x 128), and the dq/dk walks over 512 columns in four parts
  // (64 / 4 x 128).
  Case e{1, 1, 70, 256, 256, MLSTM_BFLOAT16};
  e.initial = e.last = e.dlast = true;
  e.policy = Policy::kWarps16;
  cs.push_back(e);
  Case g{1, 1, 70, 64, 512, MLSTM_BFLOAT16};
  g.initial = g.last = g.dlast = true;
  g.policy = Policy::kWarps16;
  cs.push_back(g);
  // The library's hybrid at config-A and config-B head dims, segmented (eight chunks, two segments):
  // the forward and dv walks in 128 / 2 x 128 (A) and 128 / 1 x 128 (B), the dq and dk walks on their
  // own kernel in 64 / 2 x 256 (A) and 128 / 1 x 256 (B).
  Case hyb_a{1, 1, 450, 256, 512, MLSTM_BFLOAT16};
  hyb_a.initial = hyb_a.last = hyb_a.dlast = true;
  cs.push_back(hyb_a);
  Case hyb_b{1, 1, 450, 128, 256, MLSTM_FLOAT16};
  hyb_b.initial = hyb_b.last = hyb_b.dlast = true;
  cs.push_back(hyb_b);
  // The dq and dk walks' own kernel in its narrower layouts: 128 / 1 x 128 and 128 / 1 x 64.
  Case v128{1, 1, 70, 128, 128, MLSTM_BFLOAT16};
  v128.initial = v128.last = v128.dlast = true;
  cs.push_back(v128);
  Case v64{1, 1, 70, 128, 64, MLSTM_FLOAT16};
  v64.initial = v64.last = v64.dlast = true;
  cs.push_back(v64);
  return cs;
}

std::vector<Case> all_cases() {
  std::vector<Case> cs;
  const mlstm_dtype dtypes[] = {MLSTM_FLOAT32, MLSTM_BFLOAT16, MLSTM_FLOAT16};
  const int64_t seqs[] = {1, 7, 63, 500, 989, 4097};
  const int32_t chunk[] = {16, 64, 128, 256, 1024, 32};
  int n = 0;
  for (mlstm_dtype dt : dtypes) {
    for (int64_t S : seqs) {
      Case c{1, 3, S, 32, 48, dt};
      c.L = chunk[n % 6];
      c.algorithm = c.L > 128 ? MLSTM_CHUNKWISE_XL : MLSTM_CHUNKWISE_LIMIT;
      c.padded = n % 2 == 1;
      c.initial = n % 3 != 0;
      c.last = c.dlast = n % 2 == 0;
      if (S > 1000) c.NH = 1;
      cs.push_back(c);
      ++n;
    }
  }
  // Head dims across tile boundaries, several value slices and a partial last slice.
  for (mlstm_dtype dt : dtypes) {
    Case c{2, 1, 130, 80, 144, dt};
    c.initial = c.last = c.dlast = true;
    cs.push_back(c);
    Case d{1, 2, 99, 96, 32, dt};
    d.padded = true;
    d.gate_dtype = dt == MLSTM_FLOAT32 ? MLSTM_FLOAT32 : MLSTM_BFLOAT16;
    cs.push_back(d);
  }
  // The target head dims (state slice of 128 columns, several contraction tiles) and the largest.
  Case big{1, 1, 150, 256, 512, MLSTM_BFLOAT16};
  big.initial = big.last = big.dlast = true;
  cs.push_back(big);
  Case big32 = big;
  big32.dtype = MLSTM_FLOAT32;
  big32.S = 70;
  cs.push_back(big32);
  // Config-A head dims, segmented (18 chunks, 8 blocks): the register walks' state-only pass and
  // segment starts, forward and backward.
  Case big_seg{1, 2, 1100, 256, 512, MLSTM_BFLOAT16};
  big_seg.initial = big_seg.last = big_seg.dlast = true;
  cs.push_back(big_seg);
  // Config-B head dims: the register walks with 128 and 256 contraction columns.
  Case cfg_b{1, 1, 300, 128, 256, MLSTM_FLOAT16};
  cfg_b.initial = cfg_b.last = cfg_b.dlast = true;
  cs.push_back(cfg_b);
  Case wide{1, 1, 100, 1024, 48, MLSTM_BFLOAT16};
  wide.initial = true;
  cs.push_back(wide);
  Case wide2{1, 1, 90, 64, 1024, MLSTM_FLOAT16};
  wide2.dlast = true;
  cs.push_back(wide2);
  // The smallest head dims: one 16-column value slice (single 8-column mma tiles per warp).
  Case tiny{3, 1, 77, 16, 16, MLSTM_BFLOAT16};
  tiny.initial = tiny.last = tiny.dlast = true;
  cs.push_back(tiny);
  // Gate regimes: long memory, large |i| (the stabiliser and the exp(-m) branch), short memory.
  harness::GateStyle long_mem{0.0, 1.0, 3.0, 1.0}, big_i{0.0, 5.0, 0.0, 1.0}, short_mem{-1.0, 2.0, -2.0, 1.0};
  for (mlstm_dtype dt : {MLSTM_FLOAT32, MLSTM_BFLOAT16}) {
    for (auto gs : {long_mem, big_i, short_mem}) {
      Case c{2, 2, 300, 48, 64, dt};
      c.gates = gs;
      c.initial = c.last = c.dlast = true;
      c.padded = dt == MLSTM_FLOAT32;
      cs.push_back(c);
    }
  }
  // The target head dims under the other walk layouts (the cases above run the library's choice):
  // one 8-warp block per SM with 256-column parts, and the forward and dv walks in two blocks per SM.
  for (Policy policy : {Policy::kWide, Policy::kBlocks2}) {
    Case c = big;
    c.policy = policy;
    cs.push_back(c);
  }
  // The 16-warp layouts for every walk, segmented (nine chunks, two segments) at a size the host
  // emulation runs in minutes: 128 / 2 x 128 both ways, and the dq/dk walks in four parts (64 / 4 x 128).
  Case seg_a{1, 1, 520, 256, 256, MLSTM_BFLOAT16};
  seg_a.initial = seg_a.last = seg_a.dlast = true;
  seg_a.policy = Policy::kWarps16;
  cs.push_back(seg_a);
  Case seg_b{1, 1, 520, 64, 512, MLSTM_BFLOAT16};
  seg_b.initial = seg_b.last = seg_b.dlast = true;
  seg_b.policy = Policy::kWarps16;
  cs.push_back(seg_b);
  // The target head dims with 16 warps for every walk (64 / 4 x 128 for the dq and dk walks).
  Case big16 = big;
  big16.policy = Policy::kWarps16;
  cs.push_back(big16);
  return cs;
}

// ---- timing ------------------------------------------------------------------------------------------

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    cudaEventCreate(&a);
    cudaEventCreate(&b);
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

// Fills a device buffer with bf16 values of unit variance (uniform on [-sqrt 3, sqrt 3]).
void fill_bf16(void* dev, size_t n, uint64_t seed) {
  const size_t slice = size_t(1) << 24;
  std::vector<uint16_t> buf(std::min(n, slice));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t off = 0; off < n; off += slice) {
    const size_t m = std::min(slice, n - off);
    for (size_t j = 0; j < m; j += 2) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      for (size_t e = 0; e < 2 && j + e < m; ++e) {
        const float x = (float((s >> (32 * e)) & 0xffffffffu) * (1.0f / 4294967296.0f) - 0.5f) * 3.4641016f;
        uint32_t bits;
        std::memcpy(&bits, &x, 4);
        buf[j + e] = uint16_t((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
      }
    }
    cuda_ok(cudaMemcpy(static_cast<uint16_t*>(dev) + off, buf.data(), m * 2, cudaMemcpyHostToDevice), "fill");
  }
}

// Device buffers for the largest benchmark problem; every shape views a prefix of them.
struct BenchBuffers {
  void *q = nullptr, *k = nullptr, *v = nullptr, *h = nullptr, *dh = nullptr, *dq = nullptr, *dk = nullptr,
       *dv = nullptr, *i = nullptr, *f = nullptr, *di = nullptr, *df = nullptr;
  BenchBuffers(size_t nqk, size_t nv, size_t ng) {
    for (void** p : {&q, &k, &dq, &dk}) cuda_ok(cudaMalloc(p, nqk * 2), "malloc");
    for (void** p : {&v, &h, &dh, &dv}) cuda_ok(cudaMalloc(p, nv * 2), "malloc");
    for (void** p : {&i, &f, &di, &df}) cuda_ok(cudaMalloc(p, ng * 4), "malloc");
    fill_bf16(q, nqk, 1), fill_bf16(k, nqk, 2), fill_bf16(v, nv, 3), fill_bf16(dh, nv, 4);
    std::vector<float> g(ng);
    testing::Rng rng(5);
    for (auto& x : g) x = float(rng.normal());
    cuda_ok(cudaMemcpy(i, g.data(), ng * 4, cudaMemcpyHostToDevice), "gates");
    for (auto& x : g) x = float(rng.normal(3.0, 1.0));  // forget gates biased open, as in trained models
    cuda_ok(cudaMemcpy(f, g.data(), ng * 4, cudaMemcpyHostToDevice), "gates");
  }
  ~BenchBuffers() {
    for (void* p : {q, k, v, h, dh, dq, dk, dv, i, f, di, df}) cudaFree(p);
  }
};

struct BenchResult {
  double fwd_ms = 0, fwbw_ms = 0;
  size_t ws_fwd = 0, ws_bwd = 0, saved = 0;
};

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

BenchResult bench_shape(BenchBuffers& buf, int64_t B, int64_t NH, int64_t S, int64_t DHQK, int64_t DHHV, int reps) {
  auto tensor = [&](void* p, mlstm_dtype dt, int64_t D, int nd) {
    mlstm_tensor t{};
    t.data = p;
    t.dtype = dt;
    if (nd == 4) {
      t.stride[3] = 1, t.stride[2] = D, t.stride[1] = S * D, t.stride[0] = NH * S * D;
    } else {
      t.stride[2] = 1, t.stride[1] = S, t.stride[0] = NH * S;
    }
    return t;
  };
  mlstm_fwd_args fa{};
  fa.device = mlstm_device{MLSTM_DEVICE_CUDA, 0, nullptr};
  fa.shape = mlstm_shape{B, NH, S, DHQK, DHHV};
  fa.eps = 1e-6f;
  fa.chunk_size = 64;
  fa.q = tensor(buf.q, MLSTM_BFLOAT16, DHQK, 4), fa.k = tensor(buf.k, MLSTM_BFLOAT16, DHQK, 4);
  fa.v = tensor(buf.v, MLSTM_BFLOAT16, DHHV, 4), fa.h = tensor(buf.h, MLSTM_BFLOAT16, DHHV, 4);
  fa.i = tensor(buf.i, MLSTM_FLOAT32, 1, 3), fa.f = tensor(buf.f, MLSTM_FLOAT32, 1, 3);
  mlstm_buffer_sizes fs{0, 0}, bs{0, 0};
  CHECK(mlstm_chunkwise_fwd_sizes(&fa, &fs) == MLSTM_OK, "bench sizes: %s", mlstm_last_error());
  DevBuffer saved(fs.saved_bytes), wsf(fs.workspace_bytes);
  fa.saved = saved.ptr, fa.workspace = wsf.ptr;
  mlstm_bwd_args ba{};
  ba.device = fa.device, ba.shape = fa.shape, ba.eps = fa.eps, ba.chunk_size = fa.chunk_size;
  ba.q = fa.q, ba.k = fa.k, ba.v = fa.v, ba.i = fa.i, ba.f = fa.f, ba.h = fa.h;
  ba.saved = saved.ptr;
  ba.dh = tensor(buf.dh, MLSTM_BFLOAT16, DHHV, 4);
  ba.dq = tensor(buf.dq, MLSTM_BFLOAT16, DHQK, 4), ba.dk = tensor(buf.dk, MLSTM_BFLOAT16, DHQK, 4);
  ba.dv = tensor(buf.dv, MLSTM_BFLOAT16, DHHV, 4);
  ba.di = tensor(buf.di, MLSTM_FLOAT32, 1, 3), ba.df = tensor(buf.df, MLSTM_FLOAT32, 1, 3);
  CHECK(mlstm_chunkwise_bwd_sizes(&ba, &bs) == MLSTM_OK, "bench sizes: %s", mlstm_last_error());
  DevBuffer wsb(bs.workspace_bytes);
  ba.workspace = wsb.ptr;

  Timer tm;
  std::vector<double> tf, tb;
  for (int r = 0; r < reps + 3; ++r) {
    cudaEventRecord(tm.a);
    CHECK(mlstm_chunkwise_fwd(&fa) == MLSTM_OK, "bench fwd: %s", mlstm_last_error());
    cudaEventRecord(tm.b);
    cudaEventSynchronize(tm.b);
    float ms = 0;
    cudaEventElapsedTime(&ms, tm.a, tm.b);
    if (r >= 3) tf.push_back(ms);
  }
  for (int r = 0; r < reps + 3; ++r) {
    cudaEventRecord(tm.a);
    CHECK(mlstm_chunkwise_fwd(&fa) == MLSTM_OK, "bench fwd: %s", mlstm_last_error());
    CHECK(mlstm_chunkwise_bwd(&ba) == MLSTM_OK, "bench bwd: %s", mlstm_last_error());
    cudaEventRecord(tm.b);
    cudaEventSynchronize(tm.b);
    float ms = 0;
    cudaEventElapsedTime(&ms, tm.a, tm.b);
    if (r >= 3) tb.push_back(ms);
  }
  cuda_ok(cudaGetLastError(), "bench");
  BenchResult res;
  res.fwd_ms = median(tf), res.fwbw_ms = median(tb);
  res.ws_fwd = fs.workspace_bytes, res.ws_bwd = bs.workspace_bytes, res.saved = fs.saved_bytes;
  return res;
}

// The walk layout policies the benchmark compares (the library's hybrid first).
const Policy kBenchPolicies[] = {Policy::kAuto, Policy::kWide, Policy::kWarps16, Policy::kBlocks2};

int bench() {
  // Correctness gate at reduced sizes of both configurations, under every compared policy, before any
  // timing.
  testing::Worst worst;
  for (auto [dk, dv] : {std::pair<int64_t, int64_t>{256, 512}, {128, 256}}) {
    for (Policy policy : kBenchPolicies) {
      Case c{1, 2, 200, dk, dv, MLSTM_BFLOAT16};
      c.initial = c.last = c.dlast = true;
      c.policy = policy;
      run_case(c, 77, worst, false);
    }
  }
  if (testing::failure_count() > 0) {
    std::printf("bench: correctness check failed; not timing\n");
    return 1;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::printf("device: %s, driver %d, runtime %d\n", prop.name, driver, runtime);
  std::printf("| config | S | B | NH | DHQK | DHHV | fwd ms | fwd+bwd ms | fwd ws MB | bwd ws MB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  struct Shape {
    const char* name;
    int64_t B, NH, S, DHQK, DHHV;
  };
  const Shape shapes[] = {{"A", 8, 8, 8192, 256, 512},  {"B", 8, 16, 8192, 128, 256}, {"A", 128, 8, 512, 256, 512},
                          {"A", 32, 8, 2048, 256, 512}, {"A", 2, 8, 32768, 256, 512}, {"A", 1, 8, 65536, 256, 512},
                          {"B", 4, 16, 16384, 128, 256}, {"B", 2, 16, 32768, 128, 256}};
  // 65,536 tokens per head in every shape: one set of buffers (sized for the larger head dims) serves all.
  const size_t tokens = size_t(65536) * 16;
  BenchBuffers buf(tokens * 256 / 2, tokens * 512 / 2, tokens);
  for (const Shape& s : shapes) {
    const BenchResult r = bench_shape(buf, s.B, s.NH, s.S, s.DHQK, s.DHHV, 30);
    std::printf("| %s | %lld | %lld | %lld | %lld | %lld | %.3f | %.3f | %.1f | %.1f |\n", s.name, (long long)s.S,
                (long long)s.B, (long long)s.NH, (long long)s.DHQK, (long long)s.DHHV, r.fwd_ms, r.fwbw_ms,
                r.ws_fwd / 1e6, r.ws_bwd / 1e6);
    std::fflush(stdout);
  }
  // The walk layouts against each other (chunkwise_set_walk_policy; "auto" is the library's hybrid).
  std::printf("\n| walks | config | S | B | fwd ms | fwd+bwd ms |\n|---|---|---|---|---|---|\n");
  for (int j = 0; j < 3; ++j) {  // config A and B at S = 8192, config A at S = 512
    const Shape& s = shapes[j];
    for (Policy policy : kBenchPolicies) {
      const PolicyScope scope(policy);
      const BenchResult r = bench_shape(buf, s.B, s.NH, s.S, s.DHQK, s.DHHV, 30);
      std::printf("| %s | %s | %lld | %lld | %.3f | %.3f |\n", policy_name(policy), s.name, (long long)s.S,
                  (long long)s.B, r.fwd_ms, r.fwbw_ms);
      std::fflush(stdout);
    }
  }
  return testing::finish("test_cuda_chunkwise --bench");
}

// One shape for a profiler: 3 forward calls, then 3 forward + backward calls, untimed and unchecked
// (the kernel launches in order: per forward scores, walk; per backward scores, dq, dv, dk walks, gates),
// with the walk layouts of `policy` (wide, warps16, blocks2, smem; default: the library's).
int profile(const char* config, const char* policy) {
  Policy chosen = Policy::kAuto;
  for (Policy p : {Policy::kWide, Policy::kWarps16, Policy::kBlocks2, Policy::kSharedMemory})
    if (policy != nullptr && std::strcmp(policy, policy_name(p)) == 0) chosen = p;
  const PolicyScope scope(chosen);
  const bool a = std::strcmp(config, "B") != 0;
  const size_t tokens = size_t(65536) * 16;
  BenchBuffers buf(tokens * 256 / 2, tokens * 512 / 2, tokens);
  bench_shape(buf, 8, a ? 8 : 16, 8192, a ? 256 : 128, a ? 512 : 256, 0);
  return testing::finish("test_cuda_chunkwise --profile");
}

}  // namespace
#endif  // MLSTM_WITH_CUDA

int main(int argc, char** argv) {
#ifndef MLSTM_WITH_CUDA
  (void)argc, (void)argv;
  std::printf("skipped: no CUDA device (built without CUDA)\n");
  return 0;
#else
  if (mlstm_cuda_device_count() == 0) {
    std::printf("skipped: no CUDA device\n");
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) return bench();
  if (argc > 1 && std::strcmp(argv[1], "--profile") == 0)
    return profile(argc > 2 ? argv[2] : "A", argc > 3 ? argv[3] : nullptr);
  // MLSTM_TEST_SMALL set and not empty: the small set (tools/emulation/run.sh sets it unless given empty).
  const char* small_env = std::getenv("MLSTM_TEST_SMALL");
  const bool small = small_env != nullptr && *small_env != '\0';
  // MLSTM_TEST_CASE=<index> runs one case of the list, MLSTM_TEST_CASE=state the state passing only;
  // MLSTM_TEST_SEED=<n> replaces the case's seed (1000 + index).
  const char* only = std::getenv("MLSTM_TEST_CASE");
  const char* seed = std::getenv("MLSTM_TEST_SEED");
  const bool state_only = only != nullptr && std::strcmp(only, "state") == 0;
  testing::Worst worst;
  const std::vector<Case> cases = small ? small_cases() : all_cases();
  for (size_t j = 0; j < cases.size(); ++j) {
    if (only != nullptr && (state_only || std::atoi(only) != int(j))) continue;
    run_case(cases[j], seed != nullptr ? std::strtoull(seed, nullptr, 10) : 1000 + j, worst, j % 4 == 0);
  }
  if (!small && (only == nullptr || state_only)) {
    Case sp{2, 2, 333, 32, 48, MLSTM_FLOAT32};
    run_state_passing(sp, 130, 42, worst);
    sp.dtype = MLSTM_BFLOAT16;
    sp.initial = true;
    run_state_passing(sp, 200, 43, worst);
  }
  worst.print();
  return testing::finish("test_cuda_chunkwise");
#endif
}
