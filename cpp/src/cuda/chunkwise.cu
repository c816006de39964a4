// CUDA chunkwise form (limit_chunk and xl_chunk): the host adapter. It sizes the buffers, picks the
// value slice of each walk for the device's shared memory, turns the q/k/v dtype into the element
// type (the one dispatch point), fills the kernel params and launches on the caller's stream. Nothing
// here allocates or synchronises.
//
// Algorithm (chunkwise_kernels.cuh): both algorithms run the same two-level tiling. The state
// recurrence walks the sequence in tiles of kT = 64 tokens with the state slice kept in shared
// memory for the whole walk (no chunk state is ever written to memory); inside each tile the
// parallel form runs on tensor cores. The chunk size L is validated by the API layer; it does not
// change the function computed, and the kernels use their own tile, so every L gives the same
// result up to rounding.
//
// Buffers: saved = m_t and den_t per token (fp32); forward workspace = per-token gate sums and the
// kT x kT intra matrix of every chunk; backward workspace = the two intra matrices, per-token terms
// and per-slice partial dot products (summed in a fixed order, so results are deterministic).
#include <algorithm>
#include <cstdint>
#include <mutex>

#include "common/backend.h"
#include "cuda/chunkwise_launch.h"
#include "cuda/common.cuh"
#include "cuda/forms.h"

namespace mlstm::cuda {
namespace {

using namespace chunkwise;

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Largest dynamic shared memory per block after opting in, per device (queried once).
mlstm_status smem_optin(int device, int* bytes) {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static int cache[kMaxDevices] = {};
  if (device >= 0 && device < kMaxDevices) {
    std::lock_guard<std::mutex> lock(mutex);
    if (cache[device] > 0) {
      *bytes = cache[device];
      return MLSTM_OK;
    }
  }
  MLSTM_CUDA_CHECK(cudaDeviceGetAttribute(bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (device >= 0 && device < kMaxDevices) {
    std::lock_guard<std::mutex> lock(mutex);
    cache[device] = *bytes;
  }
  return MLSTM_OK;
}

size_t elem_bytes(mlstm_dtype dtype) { return dtype == MLSTM_FLOAT32 ? 4 : 2; }

size_t walk_smem(mlstm_dtype dtype, int DA, int DB_s) {
  switch (dtype) {
    case MLSTM_FLOAT16: return walk_smem_bytes<__half>(DA, DB_s);
    case MLSTM_BFLOAT16: return walk_smem_bytes<__nv_bfloat16>(DA, DB_s);
    default: return walk_smem_bytes<float>(DA, DB_s);
  }
}

// One walk's work split: value slice width per block and the number of slices.
struct WalkSplit {
  int DB_s = 0, n_slices = 0;
  size_t smem = 0;
};

// The widest value slice (128, 64, 32 or 16 columns) whose state and tiles fit in shared memory:
// wider slices re-read the A/Bk tiles fewer times.
mlstm_status pick_split(mlstm_dtype dtype, int DA, int DB, int smem_limit, WalkSplit* split) {
  int cap = 16;
  while (cap < DB && cap < 128) cap *= 2;
  for (int DB_s = cap; DB_s >= 16; DB_s /= 2) {
    const size_t bytes = walk_smem(dtype, DA, DB_s);
    if (bytes <= size_t(smem_limit)) {
      split->DB_s = DB_s;
      split->n_slices = (DB + DB_s - 1) / DB_s;
      split->smem = bytes;
      return MLSTM_OK;
    }
  }
  return fail(MLSTM_ERROR_UNSUPPORTED,
              "chunkwise on CUDA: head dim %d needs more shared memory than this device offers (%d bytes)", DA,
              smem_limit);
}

// The walks of a problem: kFwd (DA = DHQK, DB = DHHV), kDq and kDk (DA = DHHV, DB = DHQK), kDv (as kFwd).
struct Plan {
  int64_t BNH = 0, NC = 0;
  WalkSplit qk_by_v;  // contraction over DHQK, value slices of DHHV (kFwd, kDv)
  WalkSplit v_by_qk;  // contraction over DHHV, value slices of DHQK (kDq, kDk)
};

template <typename P>
mlstm_status make_plan(const P& p, bool backward, Plan* plan) {
  if (p.m_starts_at_neg_inf)
    return fail(MLSTM_ERROR_INTERNAL, "chunkwise on CUDA: a stabiliser starting at -inf is not a chunkwise problem");
  int smem_limit = 0;
  MLSTM_RETURN_IF_ERROR(smem_optin(p.device_index, &smem_limit));
  plan->BNH = p.B * p.NH;
  plan->NC = (p.S + kT - 1) / kT;
  const auto dtype = static_cast<mlstm_dtype>(p.q.dtype);
  MLSTM_RETURN_IF_ERROR(pick_split(dtype, int(p.DHQK), int(p.DHHV), smem_limit, &plan->qk_by_v));
  if (backward) MLSTM_RETURN_IF_ERROR(pick_split(dtype, int(p.DHHV), int(p.DHQK), smem_limit, &plan->v_by_qk));
  return MLSTM_OK;
}

// Byte offsets of the buffers inside `saved` and the workspaces.
struct SavedLayout {
  size_t m = 0, den = 0, bytes = 0;
  explicit SavedLayout(const Plan& plan, int64_t S) {
    const size_t n = size_t(plan.BNH * S) * sizeof(float);
    m = 0;
    den = align_up(n);
    bytes = den + align_up(n);
  }
};

struct FwdLayout {
  size_t tok = 0, M = 0, bytes = 0;
  FwdLayout(const Plan& plan, int64_t S, size_t esz) {
    const size_t n = align_up(size_t(plan.BNH * S) * sizeof(float));
    tok = 0;
    M = 4 * n;
    bytes = M + align_up(size_t(plan.BNH * plan.NC) * kT * kT * esz);
  }
};

struct BwdLayout {
  size_t tok = 0, M1 = 0, M2 = 0, qdq = 0, kdk = 0, lam = 0, c0 = 0, n0 = 0, bytes = 0;
  size_t tok_stride = 0;
  BwdLayout(const Plan& plan, int64_t S, size_t esz) {
    tok_stride = align_up(size_t(plan.BNH * S) * sizeof(float));
    const size_t m_bytes = align_up(size_t(plan.BNH * plan.NC) * kT * kT * esz);
    tok = 0;
    M1 = 5 * tok_stride;
    M2 = M1 + m_bytes;
    qdq = M2 + m_bytes;
    kdk = qdq + size_t(plan.v_by_qk.n_slices) * tok_stride;
    lam = kdk + size_t(plan.v_by_qk.n_slices) * tok_stride;
    const size_t part = align_up(size_t(plan.BNH) * sizeof(float));
    c0 = lam + size_t(plan.v_by_qk.n_slices) * part;
    n0 = c0 + size_t(plan.qk_by_v.n_slices) * part;
    bytes = n0 + size_t(plan.v_by_qk.n_slices) * part;
  }
};

// ---- views -------------------------------------------------------------------------------------------

bool aligned16(const void* p, std::initializer_list<int64_t> byte_strides) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  for (int64_t s : byte_strides)
    if (s % 16 != 0) return false;
  return true;
}

// (B,NH,S,D) tensor.
SeqView seq4(const TensorView& t) {
  SeqView v;
  v.data = t.data;
  v.sb = t.stride[0], v.sh = t.stride[1], v.st = t.stride[2];
  const int64_t e = dtype_size(t.dtype);
  v.vec = aligned16(t.data, {v.sb * e, v.sh * e, v.st * e});
  return v;
}
// (B,NH,S) gates.
SeqView seq3(const TensorView& t) {
  SeqView v;
  v.data = t.data;
  v.sb = t.stride[0], v.sh = t.stride[1], v.st = t.stride[2];
  return v;
}
// (B,NH,D) vector or (B,NH) scalar: one "row" per (b, h).
SeqView vec_view(const TensorView& t) {
  SeqView v;
  if (!t.present()) return v;
  v.data = t.data;
  v.sb = t.stride[0], v.sh = t.stride[1], v.st = 0;
  return v;
}
StateView state_view(const TensorView& t) {
  StateView v;
  if (!t.present()) return v;
  v.data = static_cast<float*>(t.data);
  v.sb = t.stride[0], v.sh = t.stride[1], v.s_row = t.stride[2];
  return v;
}

TokenArrays tokens(unsigned char* base, size_t stride, int n) {
  TokenArrays a;
  float* arr[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  for (int j = 0; j < n; ++j) arr[j] = reinterpret_cast<float*>(base + j * stride);
  a.b = arr[0], a.u = arr[1], a.c = arr[2], a.d = arr[3], a.e = arr[4];
  return a;
}

template <typename P>
WalkParams walk_common(const P& p, const Plan& plan, WalkMode mode, const WalkSplit& split) {
  WalkParams w;
  w.mode = mode;
  w.BNH = plan.BNH, w.NH = p.NH, w.S = p.S, w.NC = plan.NC;
  const bool over_qk = mode == WalkMode::kFwd || mode == WalkMode::kDv;
  w.DA = int(over_qk ? p.DHQK : p.DHHV);
  w.DB = int(over_qk ? p.DHHV : p.DHQK);
  w.DB_s = split.DB_s;
  w.qk_scale = p.qk_scale;
  w.eps = p.eps;
  w.m_in = vec_view(p.m_initial);
  return w;
}

// ---- forward ----------------------------------------------------------------------------------------------

template <typename Elem>
mlstm_status run_fwd(const FwdParams& p, const Plan& plan) {
  const cudaStream_t stream = stream_of(p.stream);
  const FwdLayout ws(plan, p.S, sizeof(Elem));
  unsigned char* wsb = static_cast<unsigned char*>(p.workspace);
  const size_t tok_stride = align_up(size_t(plan.BNH * p.S) * sizeof(float));

  FwdScoreParams sp;
  sp.BNH = plan.BNH, sp.NH = p.NH, sp.S = p.S, sp.NC = plan.NC;
  sp.DHQK = int(p.DHQK);
  sp.qk_scale = p.qk_scale;
  sp.q = seq4(p.q), sp.k = seq4(p.k);
  sp.i = seq3(p.i), sp.f = seq3(p.f);
  sp.gate_dtype = p.i.dtype;
  sp.tok = tokens(wsb + ws.tok, tok_stride, 4);
  sp.M = wsb + ws.M;
  MLSTM_RETURN_IF_ERROR(launch_fwd_scores<Elem>(sp, stream));

  WalkParams w = walk_common(p, plan, WalkMode::kFwd, plan.qk_by_v);
  w.A = seq4(p.q), w.Bk = seq4(p.k), w.V = seq4(p.v), w.out = seq4(p.h);
  w.M = wsb + ws.M;
  w.tok = sp.tok;
  if (p.saved != nullptr) {
    const SavedLayout sv(plan, p.S);
    unsigned char* s = static_cast<unsigned char*>(p.saved);
    w.m_out = reinterpret_cast<float*>(s + sv.m);
    w.den_out = reinterpret_cast<float*>(s + sv.den);
  }
  if (p.has_initial) {
    w.state_in = state_view(p.c_initial);
    w.aug_in = vec_view(p.n_initial);
  }
  if (p.has_last) {
    w.state_out = state_view(p.c_last);
    w.aug_out = vec_view(p.n_last);
    w.m_last = vec_view(p.m_last);
  }
  return launch_walk<Elem>(w, plan.qk_by_v.n_slices, plan.qk_by_v.smem, stream);
}

// ---- backward ---------------------------------------------------------------------------------------------

template <typename Elem>
mlstm_status run_bwd(const BwdParams& p, const Plan& plan) {
  const cudaStream_t stream = stream_of(p.stream);
  const BwdLayout ws(plan, p.S, sizeof(Elem));
  const SavedLayout sv(plan, p.S);
  unsigned char* wsb = static_cast<unsigned char*>(p.workspace);
  const unsigned char* saved = static_cast<const unsigned char*>(p.saved);
  const float* m_saved = reinterpret_cast<const float*>(saved + sv.m);
  const float* den_saved = reinterpret_cast<const float*>(saved + sv.den);
  const TokenArrays tok = tokens(wsb + ws.tok, ws.tok_stride, 5);

  BwdScoreParams sp;
  sp.BNH = plan.BNH, sp.NH = p.NH, sp.S = p.S, sp.NC = plan.NC;
  sp.DHQK = int(p.DHQK), sp.DHHV = int(p.DHHV);
  sp.eps = p.eps;
  sp.q = seq4(p.q), sp.k = seq4(p.k), sp.v = seq4(p.v), sp.h = seq4(p.h), sp.dh = seq4(p.dh);
  sp.i = seq3(p.i), sp.f = seq3(p.f);
  sp.gate_dtype = p.i.dtype;
  sp.m_saved = m_saved;
  sp.den_saved = den_saved;
  sp.tok = tok;
  sp.M1 = wsb + ws.M1;
  sp.M2 = wsb + ws.M2;
  MLSTM_RETURN_IF_ERROR(launch_bwd_scores<Elem>(sp, stream));

  float* qdq = reinterpret_cast<float*>(wsb + ws.qdq);
  float* kdk = reinterpret_cast<float*>(wsb + ws.kdk);
  float* lam = reinterpret_cast<float*>(wsb + ws.lam);
  float* c0 = reinterpret_cast<float*>(wsb + ws.c0);
  float* n0 = reinterpret_cast<float*>(wsb + ws.n0);

  // dq: forward in time over the state C (DHQK x DHHV); also <dc_last, c_last> + <dn_last, n_last>.
  WalkParams dq = walk_common(p, plan, WalkMode::kDq, plan.v_by_qk);
  dq.A = seq4(p.dh), dq.Bk = seq4(p.v), dq.V = seq4(p.k), dq.out = seq4(p.dq), dq.partner = seq4(p.q);
  dq.M = wsb + ws.M2;
  dq.tok = tok;
  dq.m_saved = m_saved;
  if (p.has_initial) {
    dq.state_in = state_view(p.c_initial);
    dq.aug_in = vec_view(p.n_initial);
  }
  if (p.has_dlast) {
    dq.state_dot = state_view(p.dc_last);
    dq.aug_dot = vec_view(p.dn_last);
    dq.end_part = lam;
  }
  dq.dot_part = qdq;
  MLSTM_RETURN_IF_ERROR(launch_walk<Elem>(dq, plan.v_by_qk.n_slices, plan.v_by_qk.smem, stream));

  // dv: backward in time over dC^T; leaves dc_initial and <dc_initial, c_initial>.
  WalkParams dv = walk_common(p, plan, WalkMode::kDv, plan.qk_by_v);
  dv.A = seq4(p.k), dv.Bk = seq4(p.q), dv.V = seq4(p.dh), dv.out = seq4(p.dv);
  dv.M = wsb + ws.M1;
  dv.tok = tok;
  dv.m_saved = m_saved;
  if (p.has_dlast) dv.state_in = state_view(p.dc_last);
  if (p.has_initial) {
    dv.state_out = state_view(p.dc_initial);
    dv.state_dot = state_view(p.c_initial);
    dv.end_part = c0;
  }
  MLSTM_RETURN_IF_ERROR(launch_walk<Elem>(dv, plan.qk_by_v.n_slices, plan.qk_by_v.smem, stream));

  // dk: backward in time over dC with the extra row dn; leaves dn_initial and <dn_initial, n_initial>.
  WalkParams dk = walk_common(p, plan, WalkMode::kDk, plan.v_by_qk);
  dk.A = seq4(p.v), dk.Bk = seq4(p.dh), dk.V = seq4(p.q), dk.out = seq4(p.dk), dk.partner = seq4(p.k);
  dk.M = wsb + ws.M2;
  dk.tok = tok;
  dk.m_saved = m_saved;
  if (p.has_dlast) {
    dk.state_in = state_view(p.dc_last);
    dk.aug_in = vec_view(p.dn_last);
  }
  if (p.has_initial) {
    dk.aug_out = vec_view(p.dn_initial);
    dk.aug_dot = vec_view(p.n_initial);
    dk.end_part = n0;
  }
  dk.dot_part = kdk;
  MLSTM_RETURN_IF_ERROR(launch_walk<Elem>(dk, plan.v_by_qk.n_slices, plan.v_by_qk.smem, stream));

  GatesParams gp;
  gp.BNH = plan.BNH, gp.NH = p.NH, gp.S = p.S;
  gp.i = seq3(p.i), gp.f = seq3(p.f), gp.di = seq3(p.di), gp.df = seq3(p.df);
  gp.gate_dtype = p.i.dtype;
  gp.m_saved = m_saved;
  gp.dm_tok = tok.e;
  gp.qdq_part = qdq, gp.n_qdq = plan.v_by_qk.n_slices;
  gp.kdk_part = kdk, gp.n_kdk = plan.v_by_qk.n_slices;
  if (p.has_dlast) gp.lam_part = lam, gp.n_lam = plan.v_by_qk.n_slices;
  if (p.has_initial) {
    gp.c0_part = c0, gp.n_c0 = plan.qk_by_v.n_slices;
    gp.n0_part = n0, gp.n_n0 = plan.v_by_qk.n_slices;
    gp.dm_in = vec_view(p.dm_initial);
  }
  gp.m_in = vec_view(p.m_initial);
  gp.dm_last = vec_view(p.dm_last);
  return launch_bwd_gates(gp, stream);
}

}  // namespace

mlstm_status chunkwise_fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* sizes) {
  Plan plan;
  MLSTM_RETURN_IF_ERROR(make_plan(p, /*backward=*/false, &plan));
  sizes->saved_bytes = SavedLayout(plan, p.S).bytes;
  sizes->workspace_bytes = FwdLayout(plan, p.S, elem_bytes(p.q.dtype)).bytes;
  return MLSTM_OK;
}

mlstm_status chunkwise_bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* sizes) {
  Plan plan;
  MLSTM_RETURN_IF_ERROR(make_plan(p, /*backward=*/true, &plan));
  sizes->saved_bytes = 0;
  sizes->workspace_bytes = BwdLayout(plan, p.S, elem_bytes(p.q.dtype)).bytes;
  return MLSTM_OK;
}

mlstm_status chunkwise_fwd(const FwdParams& p) {
  DeviceGuard guard(p.device_index);
  Plan plan;
  MLSTM_RETURN_IF_ERROR(make_plan(p, /*backward=*/false, &plan));
  switch (p.q.dtype) {
    case MLSTM_FLOAT32: return run_fwd<float>(p, plan);
    case MLSTM_FLOAT16: return run_fwd<__half>(p, plan);
    case MLSTM_BFLOAT16: return run_fwd<__nv_bfloat16>(p, plan);
    default: return fail(MLSTM_ERROR_UNSUPPORTED, "chunkwise on CUDA: q/k/v dtype must be float32, float16 or bfloat16");
  }
}

mlstm_status chunkwise_bwd(const BwdParams& p) {
  DeviceGuard guard(p.device_index);
  if (p.saved == nullptr)
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "chunkwise backward on CUDA: saved is NULL (run the forward with a saved buffer)");
  Plan plan;
  MLSTM_RETURN_IF_ERROR(make_plan(p, /*backward=*/true, &plan));
  switch (p.q.dtype) {
    case MLSTM_FLOAT32: return run_bwd<float>(p, plan);
    case MLSTM_FLOAT16: return run_bwd<__half>(p, plan);
    case MLSTM_BFLOAT16: return run_bwd<__nv_bfloat16>(p, plan);
    default: return fail(MLSTM_ERROR_UNSUPPORTED, "chunkwise on CUDA: q/k/v dtype must be float32, float16 or bfloat16");
  }
}

}  // namespace mlstm::cuda
