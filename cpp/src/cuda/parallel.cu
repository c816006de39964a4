// CUDA parallel form (parallel--tiled): host adapter — buffer sizes, workspace layout, launches.
//
// Forward (3 launches):  gate tables -> stabiliser m_t -> tile kernel (h, den).
// Backward (6 launches): gate tables -> per-row normaliser terms -> tile kernel for dq, dk, dv
//                        (each pass recomputes its own scores; none needs an S x S matrix) ->
//                        gate gradients (reverse scans).
// The math and the layout of every stage are described in parallel_gates.cuh and
// parallel_tile.cuh. The forward saves m_t (log2 units) and den_t = Σ_s C̃_{t,s} per row in fp32.
#include <algorithm>
#include <climits>
#include <cmath>

#include "common/backend.h"
#include "cuda/common.cuh"
#include "cuda/forms.h"
#include "cuda/parallel_gates.cuh"
#include "cuda/parallel_tile.cuh"

namespace mlstm::cuda {
namespace {

using parallel::kChunk;
using parallel::kTile;
using parallel::Pass;
using parallel::TileConfig;
using parallel::TileParams;

struct Geometry {
  int64_t BH, S, S_pad;
  int32_t NT;
  Geometry(int64_t B, int64_t NH, int64_t S_) : BH(B * NH), S(S_), S_pad(0), NT(0) {
    NT = static_cast<int32_t>((S_ + kTile - 1) / kTile);
    S_pad = int64_t(NT) * kTile;
  }
};

int32_t slices_of(int64_t D) { return static_cast<int32_t>((D + kChunk - 1) / kChunk); }

// Hands out fp32 arrays from one buffer, each aligned to 256 bytes; with a null base it only counts.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<unsigned char*>(base)) {}
  float* take(int64_t count) {
    float* ptr = base_ != nullptr ? reinterpret_cast<float*>(base_ + offset_) : nullptr;
    offset_ += (static_cast<size_t>(count) * sizeof(float) + 255) / 256 * 256;
    return ptr;
  }
  size_t bytes() const { return offset_; }

 private:
  unsigned char* base_;
  size_t offset_ = 0;
};

// The saved buffer: m2 (B*NH, S) then den (B*NH, S).
struct Saved {
  float* m2;
  float* den;
};
Saved carve_saved(const Geometry& geo, void* base, size_t* bytes) {
  Carver c(base);
  Saved s{c.take(geo.BH * geo.S), c.take(geo.BH * geo.S)};
  if (bytes != nullptr) *bytes = c.bytes();
  return s;
}

struct FwdWorkspace {
  float *ar, *d, *kterm, *cfactor, *qterm, *gsum, *cmax, *prefix;
  Saved rows;  // m2 and den when the caller keeps no saved buffer
};
FwdWorkspace carve_fwd(const Geometry& geo, void* base, size_t* bytes) {
  Carver c(base);
  FwdWorkspace w;
  w.ar = c.take(geo.BH * geo.S_pad);
  w.d = c.take(geo.BH * geo.S_pad);
  w.kterm = c.take(geo.BH * geo.S_pad);
  w.cfactor = c.take(geo.BH * geo.S_pad);
  w.qterm = c.take(geo.BH * geo.S_pad);
  w.gsum = c.take(geo.BH * geo.NT);
  w.cmax = c.take(geo.BH * geo.NT);
  w.prefix = c.take(geo.BH * geo.NT);
  w.rows.m2 = c.take(geo.BH * geo.S);
  w.rows.den = c.take(geo.BH * geo.S);
  if (bytes != nullptr) *bytes = c.bytes();
  return w;
}

struct BwdWorkspace {
  float *ar, *d, *kterm, *qterm_d, *sigma, *dm, *gsum, *cmax, *qdq, *kdk;
};
BwdWorkspace carve_bwd(const Geometry& geo, int64_t DHQK, void* base, size_t* bytes) {
  Carver c(base);
  BwdWorkspace w;
  w.ar = c.take(geo.BH * geo.S_pad);
  w.d = c.take(geo.BH * geo.S_pad);
  w.kterm = c.take(geo.BH * geo.S_pad);
  w.qterm_d = c.take(geo.BH * geo.S_pad);
  w.sigma = c.take(geo.BH * geo.S_pad);
  w.dm = c.take(geo.BH * geo.S_pad);
  w.gsum = c.take(geo.BH * geo.NT);
  w.cmax = c.take(geo.BH * geo.NT);
  w.qdq = c.take(slices_of(DHQK) * geo.BH * geo.S_pad);
  w.kdk = c.take(slices_of(DHQK) * geo.BH * geo.S_pad);
  if (bytes != nullptr) *bytes = c.bytes();
  return w;
}

parallel::GateView gate_view(const TensorView& t) {
  parallel::GateView g;
  g.data = t.data;
  g.dtype = t.dtype;
  g.stride_b = t.stride[0];
  g.stride_h = t.stride[1];
  return g;
}

parallel::GateOut gate_out(const TensorView& t) {
  parallel::GateOut g;
  g.data = t.data;
  g.dtype = t.dtype;
  g.stride_b = t.stride[0];
  g.stride_h = t.stride[1];
  return g;
}

parallel::Operand operand(const TensorView& t, int64_t D) {
  parallel::Operand o;
  o.data = t.data;
  o.stride_b = t.stride[0];
  o.stride_h = t.stride[1];
  o.stride_s = t.stride[2];
  o.D = static_cast<int32_t>(D);
  return o;
}

// cp.async moves 16 bytes: the base pointer and every stride must keep that alignment.
bool aligned_16(const parallel::Operand& o, size_t elem_bytes) {
  const auto ok = [&](int64_t stride) { return (stride * static_cast<int64_t>(elem_bytes)) % 16 == 0; };
  return reinterpret_cast<uintptr_t>(o.data) % 16 == 0 && ok(o.stride_b) && ok(o.stride_h) && ok(o.stride_s);
}

mlstm_status check_grid(int64_t blocks, const char* what) {
  if (blocks > INT_MAX)
    return fail(MLSTM_ERROR_UNSUPPORTED, "parallel on CUDA: %s needs %lld blocks, more than one launch allows", what,
                static_cast<long long>(blocks));
  return MLSTM_OK;
}

// cfactor: the forward's column factors of the gate matrix, or null (the backward does not use them).
mlstm_status launch_gate_tables(const Geometry& geo, int64_t NH, const TensorView& i, const TensorView& f, float* ar,
                                float* d, float* kterm, float* gsum, float* cmax, float* cfactor, cudaStream_t stream) {
  parallel::GateTableParams gp;
  gp.i = gate_view(i);
  gp.f = gate_view(f);
  gp.NH = NH;
  gp.S = geo.S;
  gp.S_pad = geo.S_pad;
  gp.NT = geo.NT;
  gp.ar = ar;
  gp.d = d;
  gp.kterm = kterm;
  gp.gsum = gsum;
  gp.cmax = cmax;
  gp.cfactor = cfactor;
  const int64_t blocks = geo.BH * geo.NT;
  MLSTM_RETURN_IF_ERROR(check_grid(blocks, "the gate tables"));
  parallel::parallel_gate_tables_kernel<<<static_cast<unsigned>(blocks), kTile, 0, stream>>>(gp);
  MLSTM_CUDA_CHECK_LAUNCH("parallel_gate_tables_kernel");
  return MLSTM_OK;
}

template <typename T, Pass kPass>
mlstm_status launch_tile(TileParams tp, int device, cudaStream_t stream) {
  using Cfg = TileConfig<T>;
  tp.n_row_tiles = static_cast<int32_t>((tp.S + Cfg::kRows - 1) / Cfg::kRows);
  tp.n_slices = slices_of(tp.z.D);
  tp.vec_ok = aligned_16(tp.x, sizeof(T)) && aligned_16(tp.y, sizeof(T)) && aligned_16(tp.z, sizeof(T));
  const size_t smem = Cfg::smem_bytes(tp.x.D);
  int max_smem = 0;
  MLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (smem > static_cast<size_t>(max_smem))
    return fail(MLSTM_ERROR_UNSUPPORTED,
                "parallel on CUDA: head dimension %d needs %zu bytes of shared memory per block; this device allows %d",
                tp.x.D, smem, max_smem);
  MLSTM_CUDA_CHECK(cudaFuncSetAttribute(parallel::parallel_tile_kernel<T, kPass>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const int64_t blocks = int64_t(tp.n_row_tiles) * tp.BH * tp.n_slices;
  MLSTM_RETURN_IF_ERROR(check_grid(blocks, "the tile kernel"));
  parallel::parallel_tile_kernel<T, kPass><<<static_cast<unsigned>(blocks), Cfg::kThreads, smem, stream>>>(tp);
  MLSTM_CUDA_CHECK_LAUNCH("parallel_tile_kernel");
  return MLSTM_OK;
}

TileParams tile_params(const Geometry& geo, int64_t NH, float eps) {
  TileParams tp;
  tp.NH = NH;
  tp.S = geo.S;
  tp.S_pad = geo.S_pad;
  tp.BH = geo.BH;
  tp.NT = geo.NT;
  tp.eps = eps;
  return tp;
}

void set_out(TileParams* tp, const TensorView& t) {
  tp->out = t.data;
  tp->out_stride_b = t.stride[0];
  tp->out_stride_h = t.stride[1];
  tp->out_stride_s = t.stride[2];
}

template <typename T>
mlstm_status forward(const FwdParams& p) {
  const cudaStream_t stream = stream_of(p.stream);
  const Geometry geo(p.B, p.NH, p.S);
  const FwdWorkspace w = carve_fwd(geo, p.workspace, nullptr);
  const Saved rows = p.saved != nullptr ? carve_saved(geo, p.saved, nullptr) : w.rows;

  MLSTM_RETURN_IF_ERROR(
      launch_gate_tables(geo, p.NH, p.i, p.f, w.ar, w.d, w.kterm, w.gsum, w.cmax, w.cfactor, stream));

  parallel::StabiliserParams sp;
  sp.S = geo.S;
  sp.S_pad = geo.S_pad;
  sp.NT = geo.NT;
  sp.log2_scale = std::log2(p.qk_scale);
  sp.ar = w.ar;
  sp.d = w.d;
  sp.gsum = w.gsum;
  sp.cmax = w.cmax;
  sp.prefix = w.prefix;
  sp.m2 = rows.m2;
  sp.qterm = w.qterm;
  MLSTM_RETURN_IF_ERROR(check_grid(geo.BH, "the stabiliser"));
  parallel::parallel_stabiliser_kernel<<<static_cast<unsigned>(geo.BH), parallel::kStabiliserThreads, 0, stream>>>(sp);
  MLSTM_CUDA_CHECK_LAUNCH("parallel_stabiliser_kernel");

  TileParams tp = tile_params(geo, p.NH, p.eps);
  tp.x = operand(p.q, p.DHQK);
  tp.y = operand(p.k, p.DHQK);
  tp.z = operand(p.v, p.DHHV);
  set_out(&tp, p.h);
  tp.row_term = w.qterm;
  tp.col_term = w.kterm;
  tp.col_factor = w.cfactor;
  tp.cmax = w.cmax;
  tp.gsum = w.gsum;
  tp.m2 = rows.m2;
  tp.den = rows.den;
  return launch_tile<T, Pass::kForward>(tp, p.device_index, stream);
}

template <typename T>
mlstm_status backward(const BwdParams& p) {
  const cudaStream_t stream = stream_of(p.stream);
  const Geometry geo(p.B, p.NH, p.S);
  const BwdWorkspace w = carve_bwd(geo, p.DHQK, p.workspace, nullptr);
  const Saved saved = carve_saved(geo, const_cast<void*>(p.saved), nullptr);

  MLSTM_RETURN_IF_ERROR(
      launch_gate_tables(geo, p.NH, p.i, p.f, w.ar, w.d, w.kterm, w.gsum, w.cmax, nullptr, stream));

  parallel::BwdRowParams<T> rp;
  rp.h = {p.h.ptr<const T>(), p.h.stride[0], p.h.stride[1], p.h.stride[2]};
  rp.dh = {p.dh.ptr<const T>(), p.dh.stride[0], p.dh.stride[1], p.dh.stride[2]};
  rp.DHHV = static_cast<int32_t>(p.DHHV);
  rp.NH = p.NH;
  rp.S = geo.S;
  rp.S_pad = geo.S_pad;
  rp.rows = geo.BH * geo.S_pad;
  rp.log2_scale = std::log2(p.qk_scale);
  rp.eps = p.eps;
  rp.m2 = saved.m2;
  rp.den = saved.den;
  rp.ar = w.ar;
  rp.qterm_d = w.qterm_d;
  rp.sigma = w.sigma;
  rp.dm = w.dm;
  const int64_t row_blocks = (rp.rows + parallel::kRowWarps - 1) / parallel::kRowWarps;
  MLSTM_RETURN_IF_ERROR(check_grid(row_blocks, "the row terms"));
  parallel::parallel_bwd_rows_kernel<T><<<static_cast<unsigned>(row_blocks), 32 * parallel::kRowWarps, 0, stream>>>(rp);
  MLSTM_CUDA_CHECK_LAUNCH("parallel_bwd_rows_kernel");

  // dq: rows = queries, scores dh vᵀ, update with k.
  TileParams tq = tile_params(geo, p.NH, p.eps);
  tq.x = operand(p.dh, p.DHHV);
  tq.y = operand(p.v, p.DHHV);
  tq.z = operand(p.k, p.DHQK);
  tq.dot = operand(p.q, p.DHQK);
  set_out(&tq, p.dq);
  tq.row_term = w.qterm_d;
  tq.row_add = w.sigma;
  tq.col_term = w.kterm;
  tq.gsum = w.gsum;
  tq.row_dot = w.qdq;
  MLSTM_RETURN_IF_ERROR((launch_tile<T, Pass::kGradQ>(tq, p.device_index, stream)));

  // dk: rows = keys, scores v dhᵀ, update with q.
  TileParams tk = tile_params(geo, p.NH, p.eps);
  tk.x = operand(p.v, p.DHHV);
  tk.y = operand(p.dh, p.DHHV);
  tk.z = operand(p.q, p.DHQK);
  tk.dot = operand(p.k, p.DHQK);
  set_out(&tk, p.dk);
  tk.row_term = w.kterm;
  tk.col_term = w.qterm_d;
  tk.col_add = w.sigma;
  tk.gsum = w.gsum;
  tk.row_dot = w.kdk;
  MLSTM_RETURN_IF_ERROR((launch_tile<T, Pass::kGradK>(tk, p.device_index, stream)));

  // dv: rows = keys, scores k qᵀ, update with dh.
  TileParams tv = tile_params(geo, p.NH, p.eps);
  tv.x = operand(p.k, p.DHQK);
  tv.y = operand(p.q, p.DHQK);
  tv.z = operand(p.dh, p.DHHV);
  set_out(&tv, p.dv);
  tv.row_term = w.kterm;
  tv.col_term = w.qterm_d;
  tv.gsum = w.gsum;
  MLSTM_RETURN_IF_ERROR((launch_tile<T, Pass::kGradV>(tv, p.device_index, stream)));

  parallel::GateGradParams gg;
  gg.i = gate_view(p.i);
  gg.f = gate_view(p.f);
  gg.di = gate_out(p.di);
  gg.df = gate_out(p.df);
  gg.NH = p.NH;
  gg.S = geo.S;
  gg.S_pad = geo.S_pad;
  gg.BH = geo.BH;
  gg.n_slices = slices_of(p.DHQK);
  gg.m2 = saved.m2;
  gg.dm = w.dm;
  gg.qdq = w.qdq;
  gg.kdk = w.kdk;
  parallel::parallel_gate_grads_kernel<<<static_cast<unsigned>(geo.BH), parallel::kGateGradThreads, 0, stream>>>(gg);
  MLSTM_CUDA_CHECK_LAUNCH("parallel_gate_grads_kernel");
  return MLSTM_OK;
}

// The one place where the q/k/v dtype becomes a template parameter.
template <typename Fn>
mlstm_status dispatch_dtype(mlstm_dtype dtype, Fn&& fn) {
  switch (dtype) {
    case MLSTM_FLOAT32: return fn(float{});
    case MLSTM_FLOAT16: return fn(__half{});
    case MLSTM_BFLOAT16: return fn(__nv_bfloat16{});
    default: return fail(MLSTM_ERROR_UNSUPPORTED, "parallel on CUDA: q/k/v dtype %d is not supported", int(dtype));
  }
}

}  // namespace

mlstm_status parallel_fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* sizes) {
  const Geometry geo(p.B, p.NH, p.S);
  carve_fwd(geo, nullptr, &sizes->workspace_bytes);
  carve_saved(geo, nullptr, &sizes->saved_bytes);
  return MLSTM_OK;
}

mlstm_status parallel_bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* sizes) {
  const Geometry geo(p.B, p.NH, p.S);
  carve_bwd(geo, p.DHQK, nullptr, &sizes->workspace_bytes);
  sizes->saved_bytes = 0;
  return MLSTM_OK;
}

mlstm_status parallel_fwd(const FwdParams& p) {
  DeviceGuard guard(p.device_index);
  return dispatch_dtype(p.q.dtype, [&](auto tag) { return forward<decltype(tag)>(p); });
}

mlstm_status parallel_bwd(const BwdParams& p) {
  DeviceGuard guard(p.device_index);
  return dispatch_dtype(p.q.dtype, [&](auto tag) { return backward<decltype(tag)>(p); });
}

}  // namespace mlstm::cuda
