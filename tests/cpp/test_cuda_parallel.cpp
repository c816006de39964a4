// CUDA parallel form (parallel--tiled) through the C ABI against an fp64 reference: the forward and
// every gradient, fp32 / fp16 / bf16, odd sizes, DHQK != DHHV, strided and misaligned views, gates in
// another dtype, NaN-poisoned outputs, workspace and padding.
//
// The reference is the parallel form in double with the "stablef" gate matrix (each logD_{t,s}
// summed down its column) and its backward by the plain chain rule through every operation,
// including m_t = max_s logD_{t,s} and the max(|den|, exp(-m)) + eps denominator. That backward is
// itself checked against central finite differences of the reference forward before anything else.
//
// Tolerance of each output (L2 norm of the error): the larger of the project's targets (relative
// 1e-4 for fp32; for bf16 1e-2 on h and 2e-2 on gradients; fp16 the bf16 figures scaled by the ratio
// of unit roundoffs, 2^-11 / 2^-8) and 3x the error of a plain implementation of the same precision
// (fp32 arithmetic, product operands rounded to the input dtype, gate gradients from q.dq - k.dk as
// in the torch custom backward, outputs rounded to their dtypes). The second term covers the
// conditioning of the problem (e.g. |den| << Σ|C̃| with large input gates), which no implementation
// of that precision can beat. An output whose reference exceeds the float16 range is not compared
// in float16.
//
// Modes: MLSTM_TEST_SMALL=1 runs one small case per dtype and two bf16 shapes (for compute-sanitizer);
// `test_cuda_parallel --bench` checks sampled heads of the benchmark shapes and times them.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "mlstm/mlstm.h"

#ifdef MLSTM_WITH_CUDA
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace {

int g_failures = 0;
int g_checks = 0;

#define EXPECT(cond, ...)                                    \
  do {                                                       \
    ++g_checks;                                              \
    if (!(cond)) {                                           \
      ++g_failures;                                          \
      std::printf("FAILED %s:%d: ", __FILE__, __LINE__);     \
      std::printf(__VA_ARGS__);                              \
      std::printf("\n");                                     \
      std::fflush(stdout);                                   \
    }                                                        \
  } while (0)

// ---- fp64 reference of one (b, h) -----------------------------------------------------------------

struct HeadGrads {
  std::vector<double> h, dq, dk, dv, di, df;
  int n_den_branch = 0, n_floor_branch = 0;  // rows where |den| resp. exp(-m) won the max
};

double log_sigmoid(double x) { return std::min(x, 0.0) - std::log1p(std::exp(-std::fabs(x))); }

// q, k (S, DHQK), v, dh (S, DHHV), i, f (S), all contiguous.
void reference_head(int S, int DK, int DV, const double* q, const double* k, const double* v, const double* ig,
                    const double* fg, const double* dh, double eps, bool backward, HeadGrads* out) {
  const double scale = 1.0 / std::sqrt(double(DK));
  std::vector<double> fl(S);
  for (int t = 0; t < S; ++t) fl[t] = log_sigmoid(fg[t]);
  // logD_{t,s} = Σ_{r=s+1..t} f̃_r + i_s, summed down column s (stablef).
  std::vector<double> logd(size_t(S) * S, -INFINITY);
  for (int s = 0; s < S; ++s) {
    double acc = 0.0;
    logd[size_t(s) * S + s] = ig[s];
    for (int t = s + 1; t < S; ++t) {
      acc += fl[t];
      logd[size_t(t) * S + s] = acc + ig[s];
    }
  }
  std::vector<double> m(S), dprime(size_t(S) * S, 0.0), score(size_t(S) * S, 0.0), ct(size_t(S) * S, 0.0);
  std::vector<int> argmax(S);
  std::vector<double> den(S), d(S), floor_term(S);
  out->h.assign(size_t(S) * DV, 0.0);
  for (int t = 0; t < S; ++t) {
    double mx = -INFINITY;
    for (int s = 0; s <= t; ++s)
      if (logd[size_t(t) * S + s] > mx) {
        mx = logd[size_t(t) * S + s];
        argmax[t] = s;
      }
    m[t] = mx;
    double dsum = 0.0;
    for (int s = 0; s <= t; ++s) {
      const size_t ts = size_t(t) * S + s;
      dprime[ts] = std::exp(logd[ts] - mx);
      double dot = 0.0;
      for (int c = 0; c < DK; ++c) dot += q[size_t(t) * DK + c] * k[size_t(s) * DK + c];
      score[ts] = dot * scale;
      ct[ts] = score[ts] * dprime[ts];
      dsum += ct[ts];
    }
    den[t] = dsum;
    floor_term[t] = std::exp(-mx);
    d[t] = std::max(std::fabs(dsum), floor_term[t]) + eps;
    for (int s = 0; s <= t; ++s)
      for (int c = 0; c < DV; ++c) out->h[size_t(t) * DV + c] += ct[size_t(t) * S + s] * v[size_t(s) * DV + c];
    for (int c = 0; c < DV; ++c) out->h[size_t(t) * DV + c] /= d[t];
    if (std::fabs(dsum) >= floor_term[t]) ++out->n_den_branch; else ++out->n_floor_branch;
  }
  if (!backward) return;
  out->dq.assign(size_t(S) * DK, 0.0);
  out->dk.assign(size_t(S) * DK, 0.0);
  out->dv.assign(size_t(S) * DV, 0.0);
  out->di.assign(S, 0.0);
  out->df.assign(S, 0.0);
  std::vector<double> dlogd(size_t(S) * S, 0.0);
  for (int t = 0; t < S; ++t) {
    double dh_h = 0.0;
    for (int c = 0; c < DV; ++c) dh_h += dh[size_t(t) * DV + c] * out->h[size_t(t) * DV + c];
    const double dd = -dh_h / d[t];  // dL/dd_t
    double dden = 0.0, dm = 0.0;
    if (std::fabs(den[t]) >= floor_term[t]) {
      dden = dd * (den[t] > 0 ? 1.0 : (den[t] < 0 ? -1.0 : 0.0));
    } else {
      dm += dd * -floor_term[t];  // d exp(-m)/dm
    }
    for (int s = 0; s <= t; ++s) {
      const size_t ts = size_t(t) * S + s;
      double dct = dden;
      for (int c = 0; c < DV; ++c) dct += dh[size_t(t) * DV + c] * v[size_t(s) * DV + c] / d[t];
      for (int c = 0; c < DV; ++c) out->dv[size_t(s) * DV + c] += ct[ts] * dh[size_t(t) * DV + c] / d[t];
      const double dscore = dct * dprime[ts];
      const double ddprime = dct * score[ts];
      for (int c = 0; c < DK; ++c) {
        out->dq[size_t(t) * DK + c] += scale * dscore * k[size_t(s) * DK + c];
        out->dk[size_t(s) * DK + c] += scale * dscore * q[size_t(t) * DK + c];
      }
      const double dexp = ddprime * dprime[ts];  // through exp(logD - m)
      dlogd[ts] += dexp;
      dm -= dexp;
    }
    dlogd[size_t(t) * S + argmax[t]] += dm;  // m_t = max_s logD_{t,s}
  }
  // logD_{t,s} = Σ_{r=s+1..t} f̃_r + i_s
  std::vector<double> dfl(S, 0.0);
  for (int t = 0; t < S; ++t) {
    double prefix = 0.0;  // Σ_{s<r} dlogD_{t,s}
    for (int r = 0; r <= t; ++r) {
      dfl[r] += prefix;
      prefix += dlogd[size_t(t) * S + r];
      out->di[r] += dlogd[size_t(t) * S + r];
    }
  }
  for (int t = 0; t < S; ++t) out->df[t] = dfl[t] / (1.0 + std::exp(fg[t]));  // logsigmoid' = sigmoid(-f)
}

// The reference backward must be the gradient of the reference forward (loss Σ dh.h).
void check_reference_by_finite_differences() {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> nd(0.0, 1.0);
  int den_rows = 0, floor_rows = 0;
  for (double i_shift : {-4.0, 0.0, 4.0}) {
    const int S = 6, DK = 4, DV = 3;
    const double eps = 0.05;
    std::vector<double> q(S * DK), k(S * DK), v(S * DV), ig(S), fg(S), dh(S * DV);
    for (auto* vec : {&q, &k, &v, &dh}) for (auto& x : *vec) x = nd(rng);
    for (auto& x : ig) x = i_shift + 2.0 * nd(rng);
    for (auto& x : fg) x = 1.0 + nd(rng);
    HeadGrads ref;
    reference_head(S, DK, DV, q.data(), k.data(), v.data(), ig.data(), fg.data(), dh.data(), eps, true, &ref);
    den_rows += ref.n_den_branch;
    floor_rows += ref.n_floor_branch;
    auto loss = [&]() {
      HeadGrads o;
      reference_head(S, DK, DV, q.data(), k.data(), v.data(), ig.data(), fg.data(), dh.data(), eps, false, &o);
      double l = 0.0;
      for (size_t e = 0; e < o.h.size(); ++e) l += o.h[e] * dh[e];
      return l;
    };
    const struct {
      const char* name;
      std::vector<double>* x;
      const std::vector<double>* grad;
    } inputs[] = {{"q", &q, &ref.dq}, {"k", &k, &ref.dk}, {"v", &v, &ref.dv}, {"i", &ig, &ref.di}, {"f", &fg, &ref.df}};
    for (const auto& in : inputs) {
      double num = 0.0, den = 0.0;
      for (size_t e = 0; e < in.x->size(); ++e) {
        const double x0 = (*in.x)[e], step = 1e-5;
        (*in.x)[e] = x0 + step;
        const double lp = loss();
        (*in.x)[e] = x0 - step;
        const double lm = loss();
        (*in.x)[e] = x0;
        const double fd = (lp - lm) / (2 * step);
        num += (fd - (*in.grad)[e]) * (fd - (*in.grad)[e]);
        den += fd * fd;
      }
      const double rel = std::sqrt(num / std::max(den, 1e-300));
      EXPECT(rel < 1e-6, "reference d%s vs finite differences (i shift %g): rel %.3e", in.name, i_shift, rel);
    }
  }
  EXPECT(den_rows > 0 && floor_rows > 0, "finite-difference check must cover both denominator branches (%d, %d)",
         den_rows, floor_rows);
}

#ifdef MLSTM_WITH_CUDA

// ---- device tensors in any dtype and layout ------------------------------------------------------

double round_to(mlstm_dtype dt, double x) {
  switch (dt) {
    case MLSTM_FLOAT16: return double(__half2float(__float2half_rn(float(x))));
    case MLSTM_BFLOAT16: return double(__bfloat162float(__float2bfloat16_rn(float(x))));
    default: return double(float(x));
  }
}

size_t elem_size(mlstm_dtype dt) { return dt == MLSTM_FLOAT32 ? 4 : 2; }

// Layouts: 0 contiguous; 1 (B, S, NH, D) memory viewed as (B, NH, S, D); 2 padded with odd strides
// (not 16-byte aligned: exercises the unvectorised loads).
struct DeviceTensor {
  mlstm_dtype dtype = MLSTM_FLOAT32;
  int64_t dims[4] = {1, 1, 1, 1};
  int ndim = 4;
  int64_t stride[4] = {0, 0, 0, 0};
  size_t n_elems = 0;
  void* ptr = nullptr;

  DeviceTensor(mlstm_dtype dt, int nd, const int64_t* d, int layout) : dtype(dt), ndim(nd) {
    for (int e = 0; e < nd; ++e) dims[e] = d[e];
    if (nd == 4) {
      const int64_t B = d[0], NH = d[1], S = d[2], D = d[3];
      if (layout == 1) {
        stride[0] = S * NH * D, stride[1] = D, stride[2] = NH * D, stride[3] = 1;
      } else if (layout == 2) {
        stride[2] = D + 3, stride[1] = S * (D + 3) + 5, stride[0] = NH * stride[1] + 7, stride[3] = 1;
      } else {
        stride[0] = NH * S * D, stride[1] = S * D, stride[2] = D, stride[3] = 1;
      }
      n_elems = size_t((B - 1) * stride[0] + (NH - 1) * stride[1] + (S - 1) * stride[2] + D);
    } else {
      const int64_t B = d[0], NH = d[1], S = d[2];
      const int64_t pad = layout == 2 ? 3 : 0;
      stride[2] = 1, stride[1] = S + pad, stride[0] = NH * (S + pad) + pad;
      n_elems = size_t((B - 1) * stride[0] + (NH - 1) * stride[1] + S);
    }
    cudaMalloc(&ptr, n_elems * elem_size(dtype) + 16);
    poison();
  }
  ~DeviceTensor() { cudaFree(ptr); }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;

  void poison() { cudaMemset(ptr, 0xFF, n_elems * elem_size(dtype)); }  // NaN in every float dtype
  mlstm_tensor abi() const {
    mlstm_tensor t{};
    t.data = ptr;
    t.dtype = dtype;
    for (int e = 0; e < 4; ++e) t.stride[e] = stride[e];
    return t;
  }
  size_t offset(const int64_t* idx) const {
    size_t o = 0;
    for (int e = 0; e < ndim; ++e) o += size_t(idx[e] * stride[e]);
    return o;
  }
  // Visits every logical element in row-major order with its memory offset.
  template <typename Fn>
  void for_each(Fn&& fn) const {
    int64_t idx[4] = {0, 0, 0, 0};
    size_t flat = 0;
    for (idx[0] = 0; idx[0] < dims[0]; ++idx[0])
      for (idx[1] = 0; idx[1] < dims[1]; ++idx[1])
        for (idx[2] = 0; idx[2] < dims[2]; ++idx[2])
          for (idx[3] = 0; idx[3] < (ndim == 4 ? dims[3] : 1); ++idx[3]) fn(flat++, offset(idx));
  }
  // Uploads logical row-major values; padding keeps its NaN poison.
  void upload(const std::vector<double>& x) {
    std::vector<unsigned char> host(n_elems * elem_size(dtype));
    cudaMemcpy(host.data(), ptr, host.size(), cudaMemcpyDeviceToHost);
    for_each([&](size_t flat, size_t off) { store(host.data(), off, x[flat]); });
    cudaMemcpy(ptr, host.data(), host.size(), cudaMemcpyHostToDevice);
  }
  // Downloads logical values; *pad_ok tells whether every padding element is still poison.
  std::vector<double> download(bool* pad_ok) const {
    std::vector<unsigned char> host(n_elems * elem_size(dtype));
    cudaMemcpy(host.data(), ptr, host.size(), cudaMemcpyDeviceToHost);
    std::vector<double> x;
    std::vector<char> touched(n_elems, 0);
    for_each([&](size_t, size_t off) {
      x.push_back(load(host.data(), off));
      touched[off] = 1;
    });
    bool ok = true;
    const size_t es = elem_size(dtype);
    for (size_t e = 0; e < n_elems && ok; ++e)
      if (!touched[e])
        for (size_t b = 0; b < es; ++b) ok = ok && host[e * es + b] == 0xFF;
    if (pad_ok != nullptr) *pad_ok = ok;
    return x;
  }

 private:
  void store(unsigned char* host, size_t off, double v) const {
    if (dtype == MLSTM_FLOAT16) {
      __half h = __float2half_rn(float(v));
      std::memcpy(host + off * 2, &h, 2);
    } else if (dtype == MLSTM_BFLOAT16) {
      __nv_bfloat16 h = __float2bfloat16_rn(float(v));
      std::memcpy(host + off * 2, &h, 2);
    } else {
      float f = float(v);
      std::memcpy(host + off * 4, &f, 4);
    }
  }
  double load(const unsigned char* host, size_t off) const {
    if (dtype == MLSTM_FLOAT16) {
      __half h;
      std::memcpy(&h, host + off * 2, 2);
      return __half2float(h);
    } else if (dtype == MLSTM_BFLOAT16) {
      __nv_bfloat16 h;
      std::memcpy(&h, host + off * 2, 2);
      return __bfloat162float(h);
    }
    float f;
    std::memcpy(&f, host + off * 4, 4);
    return f;
  }
};

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) {
    if (bytes > 0) {
      cudaMalloc(&ptr, bytes);
      cudaMemset(ptr, 0xFF, bytes);  // stale NaN: every read of the workspace must follow a write
    }
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

const char* dtype_name(mlstm_dtype dt) {
  switch (dt) {
    case MLSTM_FLOAT32: return "float32";
    case MLSTM_FLOAT16: return "float16";
    case MLSTM_BFLOAT16: return "bfloat16";
    default: return "?";
  }
}

// The plain implementation of the given precision (see the file comment), one (b, h).
HeadGrads plain_head(int S, int DK, int DV, const double* qd, const double* kd, const double* vd, const double* igd,
                     const double* fgd, const double* dhd, float eps, mlstm_dtype dtype, mlstm_dtype gdtype) {
  auto rnd = [&](float x) { return dtype == MLSTM_FLOAT32 ? x : float(round_to(dtype, x)); };
  const float scale = 1.0f / std::sqrt(float(DK));
  std::vector<float> q(qd, qd + size_t(S) * DK), k(kd, kd + size_t(S) * DK), v(vd, vd + size_t(S) * DV);
  std::vector<float> dh(dhd, dhd + size_t(S) * DV), fl(S), ig(igd, igd + S);
  for (int t = 0; t < S; ++t) fl[t] = std::min(float(fgd[t]), 0.0f) - std::log1p(std::exp(-std::fabs(float(fgd[t]))));
  std::vector<float> logd(size_t(S) * S, -INFINITY), dp(size_t(S) * S, 0.0f), sc(size_t(S) * S, 0.0f);
  for (int s = 0; s < S; ++s) {
    float acc = 0.0f;
    logd[size_t(s) * S + s] = ig[s];
    for (int t = s + 1; t < S; ++t) {
      acc += fl[t];
      logd[size_t(t) * S + s] = acc + ig[s];
    }
  }
  std::vector<float> m(S), den(S), d(S), floor_term(S), h(size_t(S) * DV, 0.0f);
  for (int t = 0; t < S; ++t) {
    float mx = -INFINITY;
    for (int s = 0; s <= t; ++s) mx = std::max(mx, logd[size_t(t) * S + s]);
    m[t] = mx;
    float dsum = 0.0f;
    for (int s = 0; s <= t; ++s) {
      const size_t ts = size_t(t) * S + s;
      float dot = 0.0f;
      for (int c = 0; c < DK; ++c) dot += q[size_t(t) * DK + c] * k[size_t(s) * DK + c];
      sc[ts] = dot * scale;
      dp[ts] = std::exp(logd[ts] - mx);
      dsum += sc[ts] * dp[ts];
    }
    den[t] = dsum;
    floor_term[t] = std::exp(-mx);
    d[t] = std::max(std::fabs(dsum), floor_term[t]) + eps;
    for (int s = 0; s <= t; ++s) {
      const float ct = rnd(sc[size_t(t) * S + s] * dp[size_t(t) * S + s]);
      for (int c = 0; c < DV; ++c) h[size_t(t) * DV + c] += ct * v[size_t(s) * DV + c];
    }
    for (int c = 0; c < DV; ++c) h[size_t(t) * DV + c] /= d[t];
  }
  std::vector<float> dq(size_t(S) * DK, 0.0f), dk(size_t(S) * DK, 0.0f), dv(size_t(S) * DV, 0.0f), dm(S);
  for (int t = 0; t < S; ++t) {
    float dh_h = 0.0f;
    for (int c = 0; c < DV; ++c) dh_h += dh[size_t(t) * DV + c] * h[size_t(t) * DV + c];
    const float sigma = std::fabs(den[t]) >= floor_term[t] ? -(den[t] > 0 ? 1.0f : -1.0f) * dh_h / d[t] : 0.0f;
    dm[t] = -eps * dh_h / d[t];
    for (int s = 0; s <= t; ++s) {
      const size_t ts = size_t(t) * S + s;
      float dct = sigma;
      for (int c = 0; c < DV; ++c) dct += dh[size_t(t) * DV + c] / d[t] * v[size_t(s) * DV + c];
      const float ds = rnd(dct * dp[ts]);
      const float ct = rnd(sc[ts] * dp[ts]);
      for (int c = 0; c < DV; ++c) dv[size_t(s) * DV + c] += ct * rnd(dh[size_t(t) * DV + c] / d[t]);
      for (int c = 0; c < DK; ++c) {
        dq[size_t(t) * DK + c] += scale * ds * k[size_t(s) * DK + c];
        dk[size_t(s) * DK + c] += scale * ds * q[size_t(t) * DK + c];
      }
    }
  }
  HeadGrads out;
  out.h.resize(h.size());
  out.dq.resize(dq.size());
  out.dk.resize(dk.size());
  out.dv.resize(dv.size());
  out.di.resize(S);
  out.df.resize(S);
  float suffix = 0.0f, acc = 0.0f;
  for (int t = S - 1; t >= 0; --t) {
    float qdq = 0.0f, kdk = 0.0f;
    for (int c = 0; c < DK; ++c) {
      qdq += q[size_t(t) * DK + c] * dq[size_t(t) * DK + c];
      kdk += k[size_t(t) * DK + c] * dk[size_t(t) * DK + c];
    }
    suffix += qdq - kdk;
    acc += dm[t];
    float di = kdk, dft = suffix;
    if (m[t] == ig[t]) {
      di += acc;
      acc = 0.0f;
    } else {
      dft += acc;
    }
    out.di[t] = round_to(gdtype, di);
    out.df[t] = round_to(gdtype, dft / (1.0f + std::exp(float(fgd[t]))));
  }
  for (size_t e = 0; e < h.size(); ++e) out.h[e] = round_to(dtype, h[e]);
  for (size_t e = 0; e < dq.size(); ++e) out.dq[e] = round_to(dtype, dq[e]);
  for (size_t e = 0; e < dk.size(); ++e) out.dk[e] = round_to(dtype, dk[e]);
  for (size_t e = 0; e < dv.size(); ++e) out.dv[e] = round_to(dtype, dv[e]);
  return out;
}

struct Case {
  int64_t B, NH, S, DHQK, DHHV;
  mlstm_dtype dtype;   // q, k, v, h and gradients
  mlstm_dtype gdtype;  // i, f and gradients
  double f_bias, i_shift, i_scale;
  float eps;
  int layout;
};

struct Error {
  double err = 0.0, norm = 0.0, max_abs = 0.0, max_ref = 0.0;  // L2 of the error and of the reference
  bool finite = true;
};

Error compare(const std::vector<double>& got, const std::vector<double>& ref) {
  Error e;
  double num = 0.0, den = 0.0;
  for (size_t x = 0; x < ref.size(); ++x) {
    const double g = got[x];
    if (!std::isfinite(g)) e.finite = false;
    num += (g - ref[x]) * (g - ref[x]);
    den += ref[x] * ref[x];
    e.max_abs = std::max(e.max_abs, std::fabs(g - ref[x]));
    e.max_ref = std::max(e.max_ref, std::fabs(ref[x]));
  }
  e.err = std::sqrt(num);
  e.norm = std::sqrt(den);
  return e;
}

mlstm_device cuda_device() {
  mlstm_device d{};
  d.kind = MLSTM_DEVICE_CUDA;
  d.index = 0;
  d.stream = nullptr;
  return d;
}

// The inputs, the device tensors and one forward + backward through the ABI.
struct Run {
  Case c;
  std::vector<double> q, k, v, i, f, dh;  // rounded to what the kernel sees, logical row-major
  int64_t qd[4], vd[4], gd[4];            // dims of q/k, v/h, i/f
  DeviceTensor tq, tk, tv, ti, tf, th, tdh, tdq, tdk, tdv, tdi, tdf;
  mlstm_status fwd_status = MLSTM_OK, bwd_status = MLSTM_OK;

  static int64_t* d4(int64_t* buf, int64_t a, int64_t b, int64_t c, int64_t d) {
    buf[0] = a, buf[1] = b, buf[2] = c, buf[3] = d;
    return buf;
  }
  Run(const Case& cs, uint64_t seed)
      : c(cs),
        tq(cs.dtype, 4, d4(qd, cs.B, cs.NH, cs.S, cs.DHQK), cs.layout),
        tk(cs.dtype, 4, qd, (cs.layout + 1) % 3),
        tv(cs.dtype, 4, d4(vd, cs.B, cs.NH, cs.S, cs.DHHV), cs.layout),
        ti(cs.gdtype, 3, d4(gd, cs.B, cs.NH, cs.S, 1), cs.layout),
        tf(cs.gdtype, 3, gd, (cs.layout + 2) % 3),
        th(cs.dtype, 4, vd, cs.layout),
        tdh(cs.dtype, 4, vd, (cs.layout + 1) % 3),
        tdq(cs.dtype, 4, qd, (cs.layout + 2) % 3),
        tdk(cs.dtype, 4, qd, cs.layout),
        tdv(cs.dtype, 4, vd, (cs.layout + 1) % 3),
        tdi(cs.gdtype, 3, gd, (cs.layout + 1) % 3),
        tdf(cs.gdtype, 3, gd, cs.layout) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    auto fill = [&](std::vector<double>& x, size_t n, mlstm_dtype dt, double mean, double sd) {
      x.resize(n);
      for (auto& e : x) e = round_to(dt, mean + sd * nd(rng));
    };
    const size_t nq = size_t(c.B * c.NH * c.S * c.DHQK), nv = size_t(c.B * c.NH * c.S * c.DHHV);
    const size_t ng = size_t(c.B * c.NH * c.S);
    fill(q, nq, c.dtype, 0.0, 1.0);
    fill(k, nq, c.dtype, 0.0, 1.0);
    fill(v, nv, c.dtype, 0.0, 1.0);
    fill(i, ng, c.gdtype, c.i_shift, c.i_scale);
    fill(f, ng, c.gdtype, c.f_bias, 1.0);
    fill(dh, nv, c.dtype, 0.0, 1.0);
    tq.upload(q);
    tk.upload(k);
    tv.upload(v);
    ti.upload(i);
    tf.upload(f);
    tdh.upload(dh);
  }

  mlstm_fwd_args fwd_args() const {
    mlstm_fwd_args a{};
    a.device = cuda_device();
    a.shape = mlstm_shape{c.B, c.NH, c.S, c.DHQK, c.DHHV};
    a.eps = c.eps;
    a.q = tq.abi(), a.k = tk.abi(), a.v = tv.abi(), a.i = ti.abi(), a.f = tf.abi(), a.h = th.abi();
    return a;
  }

  void run(bool backward) {
    mlstm_fwd_args fa = fwd_args();
    mlstm_buffer_sizes fs{0, 0};
    fwd_status = mlstm_parallel_fwd_sizes(&fa, &fs);
    if (fwd_status != MLSTM_OK) return;
    DeviceBuffer ws(fs.workspace_bytes), saved(fs.saved_bytes);
    fa.workspace = ws.ptr;
    fa.saved = saved.ptr;
    fwd_status = mlstm_parallel_fwd(&fa);
    if (fwd_status != MLSTM_OK || !backward) {
      cudaDeviceSynchronize();
      return;
    }
    mlstm_bwd_args ba{};
    ba.device = fa.device;
    ba.shape = fa.shape;
    ba.eps = c.eps;
    ba.q = fa.q, ba.k = fa.k, ba.v = fa.v, ba.i = fa.i, ba.f = fa.f, ba.h = fa.h;
    ba.saved = saved.ptr;
    ba.dh = tdh.abi();
    ba.dq = tdq.abi(), ba.dk = tdk.abi(), ba.dv = tdv.abi(), ba.di = tdi.abi(), ba.df = tdf.abi();
    mlstm_buffer_sizes bs{0, 0};
    bwd_status = mlstm_parallel_bwd_sizes(&ba, &bs);
    if (bwd_status != MLSTM_OK) return;
    DeviceBuffer bws(bs.workspace_bytes);
    ba.workspace = bws.ptr;
    bwd_status = mlstm_parallel_bwd(&ba);
    cudaDeviceSynchronize();
  }
};

// The (b, h) slice of a logical (B, NH, S, D) vector as a contiguous head.
std::vector<double> head_of(const std::vector<double>& x, int64_t bh, int64_t S, int64_t D) {
  return std::vector<double>(x.begin() + bh * S * D, x.begin() + (bh + 1) * S * D);
}

void check_run(Run& run, int max_heads_checked) {
  const Case& c = run.c;
  run.run(true);
  const std::string what = "S=" + std::to_string(c.S) + ", B=" + std::to_string(c.B) + ", NH=" + std::to_string(c.NH) +
                           ", DHQK=" + std::to_string(c.DHQK) + ", DHHV=" + std::to_string(c.DHHV) +
                           ", DTYPE=" + dtype_name(c.dtype) + ", gates " + dtype_name(c.gdtype) +
                           ", layout " + std::to_string(c.layout) + ", eps " + std::to_string(c.eps);
  EXPECT(run.fwd_status == MLSTM_OK, "%s: forward failed: %s", what.c_str(), mlstm_last_error());
  EXPECT(run.bwd_status == MLSTM_OK, "%s: backward failed: %s", what.c_str(), mlstm_last_error());
  const cudaError_t err = cudaGetLastError();
  EXPECT(err == cudaSuccess, "%s: CUDA error %s", what.c_str(), cudaGetErrorString(err));
  if (run.fwd_status != MLSTM_OK || run.bwd_status != MLSTM_OK || err != cudaSuccess) return;

  const bool fp32 = c.dtype == MLSTM_FLOAT32;
  const double unit_ratio = c.dtype == MLSTM_FLOAT16 ? 0.125 : 1.0;  // fp16 vs bf16 unit roundoff
  const double tol_out = fp32 ? 1e-4 : 1e-2 * unit_ratio;
  const double tol_grad = fp32 ? 1e-4 : 2e-2 * unit_ratio;

  bool pad_ok[6];
  const std::vector<double> h = run.th.download(&pad_ok[0]);
  const std::vector<double> dq = run.tdq.download(&pad_ok[1]);
  const std::vector<double> dk = run.tdk.download(&pad_ok[2]);
  const std::vector<double> dv = run.tdv.download(&pad_ok[3]);
  const std::vector<double> di = run.tdi.download(&pad_ok[4]);
  const std::vector<double> df = run.tdf.download(&pad_ok[5]);
  const char* names[6] = {"h", "dq", "dk", "dv", "di", "df"};
  for (int o = 0; o < 6; ++o) EXPECT(pad_ok[o], "%s: %s: an element outside the tensor was written", what.c_str(), names[o]);

  // Heads spread over the batch; each compared in full.
  const int64_t BH = c.B * c.NH;
  const int64_t n_heads = std::min<int64_t>(BH, max_heads_checked);
  std::vector<double> cat_ref[6], cat_got[6], cat_plain[6];
  int den_rows = 0, floor_rows = 0;
  for (int64_t n = 0; n < n_heads; ++n) {
    const int64_t bh = n_heads == BH ? n : (n * (BH - 1)) / std::max<int64_t>(n_heads - 1, 1);
    HeadGrads ref;
    const auto hq = head_of(run.q, bh, c.S, c.DHQK), hk = head_of(run.k, bh, c.S, c.DHQK);
    const auto hv = head_of(run.v, bh, c.S, c.DHHV), hdh = head_of(run.dh, bh, c.S, c.DHHV);
    const auto hi = head_of(run.i, bh, c.S, 1), hf = head_of(run.f, bh, c.S, 1);
    reference_head(int(c.S), int(c.DHQK), int(c.DHHV), hq.data(), hk.data(), hv.data(), hi.data(), hf.data(), hdh.data(),
                   double(c.eps), true, &ref);
    den_rows += ref.n_den_branch;
    floor_rows += ref.n_floor_branch;
    const HeadGrads plain = plain_head(int(c.S), int(c.DHQK), int(c.DHHV), hq.data(), hk.data(), hv.data(), hi.data(),
                                       hf.data(), hdh.data(), c.eps, c.dtype, c.gdtype);
    const std::vector<double>* plains[6] = {&plain.h, &plain.dq, &plain.dk, &plain.dv, &plain.di, &plain.df};
    const std::vector<double>* refs[6] = {&ref.h, &ref.dq, &ref.dk, &ref.dv, &ref.di, &ref.df};
    const std::vector<double>* gots[6] = {&h, &dq, &dk, &dv, &di, &df};
    const int64_t widths[6] = {c.DHHV, c.DHQK, c.DHQK, c.DHHV, 1, 1};
    for (int o = 0; o < 6; ++o) {
      cat_ref[o].insert(cat_ref[o].end(), refs[o]->begin(), refs[o]->end());
      cat_plain[o].insert(cat_plain[o].end(), plains[o]->begin(), plains[o]->end());
      const auto g = head_of(*gots[o], bh, c.S, widths[o]);
      cat_got[o].insert(cat_got[o].end(), g.begin(), g.end());
    }
  }
  std::printf("Test parallel--tiled target=cuda vs. baseline=fp64 reference with %s (rows: %d |den|, %d exp(-m))\n",
              what.c_str(), den_rows, floor_rows);
  for (int o = 0; o < 6; ++o) {
    const Error e = compare(cat_got[o], cat_ref[o]);
    const Error ep = compare(cat_plain[o], cat_ref[o]);
    const mlstm_dtype out_dtype = o < 4 ? c.dtype : c.gdtype;
    if (out_dtype == MLSTM_FLOAT16 && e.max_ref > 0.5 * 65504.0) {
      std::printf("    %-3s reference reaches %.3e: not representable in float16, not compared\n", names[o], e.max_ref);
      continue;
    }
    const double spec = o == 0 ? tol_out : tol_grad;
    const double allowed = std::max(spec * e.norm, 3.0 * ep.err);
    const double rel = e.err / std::max(e.norm, 1e-300);
    const bool ok = e.finite && e.err <= allowed;
    std::printf("    %-3s rel %.3e  max abs %.3e  (plain %s: rel %.3e; allowed rel %.3e)%s\n", names[o], rel, e.max_abs,
                dtype_name(out_dtype), ep.err / std::max(e.norm, 1e-300), allowed / std::max(e.norm, 1e-300),
                ok ? "" : "  <-- FAIL");
    EXPECT(e.finite, "%s: %s has non-finite (unwritten or NaN) elements", what.c_str(), names[o]);
    EXPECT(e.err <= allowed, "%s: %s error %.3e (rel %.3e) > allowed %.3e", what.c_str(), names[o], e.err, rel, allowed);
  }
  std::fflush(stdout);
}

void check_case(const Case& c, uint64_t seed, int max_heads_checked) {
  Run run(c, seed);
  check_run(run, max_heads_checked);
}

// Times forward and forward + backward of one shape with CUDA events (median of repeats), after
// checking sampled heads of the same inputs against the reference.
void bench_shape(const Case& c) {
  Run run(c, 99);
  check_run(run, 1);
  if (g_failures > 0) {
    std::printf("bench: refusing to time a failing kernel\n");
    return;
  }
  mlstm_fwd_args fa = run.fwd_args();
  mlstm_buffer_sizes fs{0, 0};
  mlstm_parallel_fwd_sizes(&fa, &fs);
  DeviceBuffer ws(fs.workspace_bytes), saved(fs.saved_bytes);
  fa.workspace = ws.ptr;
  fa.saved = saved.ptr;
  mlstm_bwd_args ba{};
  ba.device = fa.device;
  ba.shape = fa.shape;
  ba.eps = c.eps;
  ba.q = fa.q, ba.k = fa.k, ba.v = fa.v, ba.i = fa.i, ba.f = fa.f, ba.h = fa.h;
  ba.saved = saved.ptr;
  ba.dh = run.tdh.abi();
  ba.dq = run.tdq.abi(), ba.dk = run.tdk.abi(), ba.dv = run.tdv.abi(), ba.di = run.tdi.abi(), ba.df = run.tdf.abi();
  mlstm_buffer_sizes bs{0, 0};
  mlstm_parallel_bwd_sizes(&ba, &bs);
  DeviceBuffer bws(bs.workspace_bytes);
  ba.workspace = bws.ptr;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  auto time_ms = [&](bool with_bwd) {
    std::vector<float> ms;
    for (int rep = 0; rep < 25; ++rep) {
      cudaEventRecord(e0);
      mlstm_parallel_fwd(&fa);
      if (with_bwd) mlstm_parallel_bwd(&ba);
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      float t = 0.0f;
      cudaEventElapsedTime(&t, e0, e1);
      if (rep >= 5) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  const float fwd = time_ms(false), fwdbwd = time_ms(true);
  const double flops_fwd = 2.0 * 2.0 * double(c.B * c.NH) * (double(c.S) * (c.S + 1) / 2) * (c.DHQK + c.DHHV) / 2.0;
  std::printf("BENCH parallel--tiled %s B=%lld NH=%lld S=%lld DHQK=%lld DHHV=%lld: fwd %.3f ms (%.0f TFLOP/s causal), "
              "fwd+bwd %.3f ms\n",
              dtype_name(c.dtype), (long long)c.B, (long long)c.NH, (long long)c.S, (long long)c.DHQK,
              (long long)c.DHHV, fwd, flops_fwd / (fwd * 1e9), fwdbwd);
  std::fflush(stdout);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

#endif  // MLSTM_WITH_CUDA

}  // namespace

int main(int argc, char** argv) {
  check_reference_by_finite_differences();
  if (!mlstm_cuda_compiled() || mlstm_cuda_device_count() == 0) {
    std::printf("test_cuda_parallel: skipped: no CUDA device (reference self-check: %d checks, %d failed)\n", g_checks,
                g_failures);
    return g_failures == 0 ? 0 : 1;
  }
#ifdef MLSTM_WITH_CUDA
  const bool bench = argc > 1 && std::strcmp(argv[1], "--bench") == 0;
  const bool small = std::getenv("MLSTM_TEST_SMALL") != nullptr;
  const mlstm_dtype dtypes[3] = {MLSTM_FLOAT32, MLSTM_FLOAT16, MLSTM_BFLOAT16};
  if (bench) {
    bench_shape(Case{8, 32, 2048, 128, 128, MLSTM_BFLOAT16, MLSTM_FLOAT32, 3.0, 0.0, 1.0, 1e-6f, 0});
    bench_shape(Case{1, 8, 4096, 128, 128, MLSTM_BFLOAT16, MLSTM_FLOAT32, 3.0, 0.0, 1.0, 1e-6f, 0});
    bench_shape(Case{8, 32, 2048, 128, 128, MLSTM_FLOAT16, MLSTM_FLOAT32, 3.0, 0.0, 1.0, 1e-6f, 0});
    bench_shape(Case{8, 32, 2048, 128, 128, MLSTM_FLOAT32, MLSTM_FLOAT32, 3.0, 0.0, 1.0, 1e-6f, 0});
  } else if (small) {
    for (mlstm_dtype dt : dtypes) check_case(Case{2, 3, 70, 32, 48, dt, dt, 0.0, 0.0, 2.0, 1e-6f, 0}, 11, 6);
    check_case(Case{1, 2, 45, 16, 32, MLSTM_BFLOAT16, MLSTM_FLOAT32, 3.0, -4.0, 3.0, 1e-2f, 2}, 12, 2);
    // Head dims of one full 128-column chunk plus a partial one (both product loops of the 16-bit
    // tile kernel) and several row tiles (tiles below the diagonal).
    check_case(Case{1, 2, 300, 144, 160, MLSTM_BFLOAT16, MLSTM_FLOAT32, 3.0, 0.0, 1.0, 1e-6f, 0}, 13, 2);
  } else {
    uint64_t seed = 100;
    for (mlstm_dtype dt : dtypes) {
      const mlstm_dtype other_gate = dt == MLSTM_FLOAT32 ? MLSTM_BFLOAT16 : MLSTM_FLOAT32;
      const Case cases[] = {
          {1, 3, 1, 16, 32, dt, dt, 0.0, 0.0, 1.0, 1e-6f, 0},
          {2, 3, 7, 32, 48, dt, other_gate, 3.0, 0.0, 1.0, 1e-6f, 1},
          {1, 3, 63, 64, 16, dt, dt, 0.0, -4.0, 4.0, 1e-2f, 2},
          {2, 1, 500, 128, 144, dt, other_gate, 3.0, 0.0, 1.0, 1e-6f, 0},
          {1, 2, 989, 48, 80, dt, dt, 3.0, 4.0, 4.0, 1e-6f, 1},
          {1, 1, 300, 512, 272, dt, dt, 0.0, 0.0, 2.0, 1e-6f, 2},
          {1, 1, 130, 256, 512, dt, other_gate, 3.0, -6.0, 1.0, 1e-2f, 0},
      };
      for (const Case& c : cases) check_case(c, seed++, 4);
    }
  }
#endif
  std::printf("test_cuda_parallel: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
