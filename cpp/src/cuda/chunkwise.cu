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
#include <atomic>
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

struct DeviceInfo {
  int smem_optin = 0;  // largest dynamic shared memory per block after opting in
  int sm_count = 0;
};

// Device attributes, queried once per device.
mlstm_status device_info(int device, DeviceInfo* info) {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static DeviceInfo cache[kMaxDevices];
  const bool cacheable = device >= 0 && device < kMaxDevices;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(mutex);
    if (cache[device].sm_count > 0) {
      *info = cache[device];
      return MLSTM_OK;
    }
  }
  MLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&info->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  MLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&info->sm_count, cudaDevAttrMultiProcessorCount, device));
  if (cacheable) {
    std::lock_guard<std::mutex> lock(mutex);
    cache[device] = *info;
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

// One walk's work split: value slice width per block and the number of slices; reg.kw > 0 selects the
// register walk in layout `reg`.
struct WalkSplit {
  int DB_s = 0, n_slices = 0;
  RegWalkShape reg;
  size_t smem = 0;  // the shared-memory walk's
};

std::atomic<int> walk_policy{int(ChunkwiseWalkPolicy::kAuto)};

// The register walk for 16-bit inputs when a layout fits the shape. The walks over DHQK (qk: kFwd, kDv)
// and over DHHV (v: kDq, kDk) have their own layouts (the latter carry the state as hi + lo parts and an
// extra row). Layouts of chunkwise_walk_reg.cuh (value slice / parts x columns per part), by contraction DA:
//   DA <= 128:  128 / 1 x 64 or 128, 8 warps (the state already in at most 64 registers);
//   DA <= 256:  kWide: 128 / 1 x 256, one 8-warp block per SM (state in 128 registers);
//               kWarps16: 128 / 2 x 128, one 16-warp block per SM (state in 64 registers);
//               kBlocks2: qk walks 64 / 2 x 128, two 8-warp blocks per SM;
//   DA <= 512:  64 / 2 x 256, 8 warps; but for 256 < DA the v walks under kWarps16 and kBlocks2 take
//               64 / 4 x 128, 16 warps (for smaller DA most of its parts would walk zero columns).
// kAuto is a hybrid, each walk direction on what measured fastest for it: the qk walks as under
// kWarps16; the v walks on their own kernel (chunkwise_walk_reg_v.cuh: 8 warps of up to 255 registers,
// every part over all 64 tokens of a chunk, partial outputs added through shared memory) in 128 / 1 x 64,
// 128 or 256 for DA <= 64, 128, 256 and 64 / 2 x 256 for DA <= 512. That kernel is the register walk
// from before the kWide and kWarps16 layouts, kept for its v walks. ncu ms per walk, it in every walk
// against the layouts (H200, 2026-11-26; config A: B 8, NH 8, S 8192, DHQK 256, DHHV 512, bf16):
//                    fwd    dv     dq     dk
//   8-warp kernel    3.96   3.41   5.92   5.88
//   kWide            3.90   3.42   8.04   7.92
//   kWarps16         3.82   3.45   9.83   9.84
// End to end, the 8-warp kernel in every walk against kWarps16: forward 3.24 / 3.07 ms at config A and
// 5.62 / 3.16 ms at config A with S 512, B 128; forward + backward 16.20 / 22.39 ms at config A.
bool pick_reg_split(mlstm_dtype dtype, int DA, int DB, bool qk, int smem_limit, WalkSplit* split) {
  auto policy = static_cast<ChunkwiseWalkPolicy>(walk_policy.load());
  if (policy == ChunkwiseWalkPolicy::kSharedMemory) return false;
  if (dtype != MLSTM_FLOAT16 && dtype != MLSTM_BFLOAT16) return false;
  const bool v_kernel = policy == ChunkwiseWalkPolicy::kAuto && !qk;
  if (policy == ChunkwiseWalkPolicy::kAuto) policy = ChunkwiseWalkPolicy::kWarps16;
  const bool wide = policy == ChunkwiseWalkPolicy::kWide;
  RegWalkShape r;  // {DB_s, kp, kw, step_cols, blocks_per_sm, v_kernel}
  if (v_kernel) {
    if (DA <= 256 && DB % 128 == 0) {
      r = {128, 1, DA <= 64 ? 64 : DA <= 128 ? 128 : 256, kTK, 1, true};
    } else if (DA <= 512 && DB % 64 == 0) {
      r = {64, 2, 256, kTK, 1, true};
    } else {
      return false;
    }
  } else if (DA <= 128 && DB % 128 == 0) {
    r = {128, 1, DA <= 64 ? 64 : 128, 64, 1};
  } else if (DA <= 256 && DB % 128 == 0 && wide) {
    r = {128, 1, 256, 64, 1};
  } else if (DA <= 256 && DB % 64 == 0 && qk && policy == ChunkwiseWalkPolicy::kBlocks2) {
    r = {64, 2, 128, 32, 2};
  } else if (DA <= 256 && DB % 128 == 0) {
    r = qk ? RegWalkShape{128, 2, 128, 64, 1} : RegWalkShape{128, 2, 128, 32, 1};
  } else if (DA <= 512 && DB % 64 == 0) {
    r = wide || qk || DA <= 256 ? RegWalkShape{64, 2, 256, 64, 1} : RegWalkShape{64, 4, 128, 32, 1};
  } else {
    return false;
  }
  const WalkMode modes[2] = {qk ? WalkMode::kFwd : WalkMode::kDq, qk ? WalkMode::kDv : WalkMode::kDk};
  for (WalkMode m : modes)
    if (reg_walk_smem_bytes(r, m) > size_t(smem_limit)) return false;
  split->reg = r;
  split->DB_s = r.DB_s;
  split->n_slices = DB / r.DB_s;
  return true;
}

// The widest value slice (128, 64, 32 or 16 columns) that divides the value dimension and whose
// state and tiles fit in shared memory: wider slices re-read the A/Bk tiles fewer times.
mlstm_status pick_split(mlstm_dtype dtype, int DA, int DB, bool qk, int smem_limit, WalkSplit* split) {
  if (pick_reg_split(dtype, DA, DB, qk, smem_limit, split)) return MLSTM_OK;
  for (int DB_s = 128; DB_s >= 16; DB_s /= 2) {
    if (DB % DB_s != 0) continue;
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

// The walks of a problem: kFwd and kDv contract over DHQK with value slices of DHHV; kDq and kDk
// contract over DHHV with value slices of DHQK. When (b, h) x slices leave SMs idle, the sequence is
// cut into segments that walk in parallel: an update-only pass gives each segment's local state,
// chunkwise_combine_kernel chains them, then every segment walks from its own start state.
constexpr int kMinSegmentChunks = 4;  // below this the extra state pass costs more than it frees

struct Plan {
  int64_t BNH = 0, NC = 0;
  WalkSplit qk_by_v;  // kFwd, kDv
  WalkSplit v_by_qk;  // kDq, kDk
  int n_seg = 1, seg_chunks = 0;
};

// with_backward: the problem's backward will run (a forward with a saved buffer, or the backward
// itself). Its dq and dk walks may have fewer value slices than the forward's walk (config B: one
// against two), so the segmentation then follows the narrower split; forward and backward agree on it
// through this flag. A forward alone keeps the segments its own split needs.
template <typename P>
mlstm_status make_plan(const P& p, bool with_backward, Plan* plan) {
  if (p.m_starts_at_neg_inf)
    return fail(MLSTM_ERROR_INTERNAL, "chunkwise on CUDA: a stabiliser starting at -inf is not a chunkwise problem");
  DeviceInfo dev;
  MLSTM_RETURN_IF_ERROR(device_info(p.device_index, &dev));
  plan->BNH = p.B * p.NH;
  plan->NC = (p.S + kT - 1) / kT;
  const auto dtype = static_cast<mlstm_dtype>(p.q.dtype);
  MLSTM_RETURN_IF_ERROR(pick_split(dtype, int(p.DHQK), int(p.DHHV), true, dev.smem_optin, &plan->qk_by_v));
  int64_t slices = plan->qk_by_v.n_slices;
  if (with_backward) {
    MLSTM_RETURN_IF_ERROR(pick_split(dtype, int(p.DHHV), int(p.DHQK), false, dev.smem_optin, &plan->v_by_qk));
    slices = std::min<int64_t>(slices, plan->v_by_qk.n_slices);
  }
  const int64_t blocks = plan->BNH * slices;
  int64_t n_seg = 1;
  if (blocks < dev.sm_count) n_seg = std::min<int64_t>(dev.sm_count / blocks, plan->NC / kMinSegmentChunks);
  n_seg = std::max<int64_t>(n_seg, 1);
  plan->seg_chunks = int((plan->NC + n_seg - 1) / n_seg);
  plan->n_seg = int((plan->NC + plan->seg_chunks - 1) / plan->seg_chunks);
  return MLSTM_OK;
}

// Byte offsets of the buffers inside `saved` and the workspaces.
struct Carve {
  size_t at = 0;
  size_t take(size_t bytes) {
    const size_t o = at;
    at += align_up(bytes);
    return o;
  }
};

// Per-segment states: C and n always, m and g where asked.
struct SegmentLayout {
  size_t C = 0, n = 0, m = 0, g = 0;
  bool has_m = false, has_g = false;
  void carve(Carve* c, const Plan& plan, int64_t DHQK, int64_t DHHV, bool with_m, bool with_g) {
    const size_t per = size_t(plan.n_seg) * size_t(plan.BNH) * sizeof(float);
    C = c->take(per * size_t(DHQK * DHHV));
    n = c->take(per * size_t(DHQK));
    has_m = with_m, has_g = with_g;
    if (with_m) m = c->take(per);
    if (with_g) g = c->take(per);
  }
  SegmentStates at(unsigned char* base) const {
    SegmentStates s;
    s.C = reinterpret_cast<float*>(base + C);
    s.n = reinterpret_cast<float*>(base + n);
    if (has_m) s.m = reinterpret_cast<float*>(base + m);
    if (has_g) s.g = reinterpret_cast<float*>(base + g);
    return s;
  }
};

// saved: m_t, den_t, and (segmented) the state at every segment start for the backward's dq walk.
struct SavedLayout {
  size_t m = 0, den = 0, bytes = 0;
  SegmentLayout seg;
  SavedLayout(const Plan& plan, int64_t S, int64_t DHQK, int64_t DHHV) {
    Carve c;
    m = c.take(size_t(plan.BNH * S) * sizeof(float));
    den = c.take(size_t(plan.BNH * S) * sizeof(float));
    if (plan.n_seg > 1) seg.carve(&c, plan, DHQK, DHHV, false, false);
    bytes = c.at;
  }
};

struct FwdLayout {
  size_t tok = 0, tok_stride = 0, M = 0, seg_start_m = 0, bytes = 0;
  SegmentLayout delta;
  SegmentLayout start;  // segment start states when the caller keeps no saved buffer (no backward)
  FwdLayout(const Plan& plan, int64_t S, int64_t DHQK, int64_t DHHV, size_t esz) {
    Carve c;
    tok_stride = align_up(size_t(plan.BNH * S) * sizeof(double));
    tok = c.take(4 * tok_stride);
    M = c.take(size_t(plan.BNH * plan.NC) * kT * kT * esz);
    if (plan.n_seg > 1) {
      delta.carve(&c, plan, DHQK, DHHV, true, true);
      seg_start_m = c.take(size_t(plan.n_seg * plan.BNH) * sizeof(float));
      start.carve(&c, plan, DHQK, DHHV, false, false);
    }
    bytes = c.at;
  }
};

struct BwdLayout {
  size_t tok = 0, tok_stride = 0, M1 = 0, M2 = 0, qdq = 0, kdk = 0, lam = 0, c0 = 0, n0 = 0, bytes = 0;
  SegmentLayout delta, start;
  BwdLayout(const Plan& plan, int64_t S, int64_t DHQK, int64_t DHHV, size_t esz) {
    Carve c;
    tok_stride = align_up(size_t(plan.BNH * S) * sizeof(double));
    tok = c.take(5 * tok_stride);
    const size_t m_bytes = size_t(plan.BNH * plan.NC) * kT * kT * esz;
    M1 = c.take(m_bytes);
    M2 = c.take(m_bytes);
    qdq = c.take(size_t(plan.v_by_qk.n_slices) * tok_stride);
    kdk = c.take(size_t(plan.v_by_qk.n_slices) * tok_stride);
    const size_t part = size_t(plan.BNH) * sizeof(float);
    lam = c.take(size_t(plan.v_by_qk.n_slices) * part);
    c0 = c.take(size_t(plan.qk_by_v.n_slices) * part);
    n0 = c.take(size_t(plan.v_by_qk.n_slices) * part);
    if (plan.n_seg > 1) {
      delta.carve(&c, plan, DHQK, DHHV, false, true);
      start.carve(&c, plan, DHQK, DHHV, false, false);
    }
    bytes = c.at;
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

// The per-token arrays: b, u, c in fp64, then d (and e) in fp32, `stride` bytes apart (sized for fp64).
TokenArrays tokens(unsigned char* base, size_t stride, int n) {
  TokenArrays a;
  a.b = reinterpret_cast<double*>(base);
  a.u = reinterpret_cast<double*>(base + stride);
  a.c = reinterpret_cast<double*>(base + 2 * stride);
  a.d = reinterpret_cast<float*>(base + 3 * stride);
  if (n > 4) a.e = reinterpret_cast<float*>(base + 4 * stride);
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
  w.reg = split.reg;
  w.qk_scale = p.qk_scale;
  w.eps = p.eps;
  w.m_in = vec_view(p.m_initial);
  w.n_seg = plan.n_seg;
  w.seg_chunks = plan.seg_chunks;
  return w;
}

CombineParams combine_common(int64_t BNH, int64_t NH, int64_t S, int64_t DHQK, int64_t DHHV, const Plan& plan) {
  CombineParams c;
  c.BNH = BNH, c.NH = NH, c.S = S;
  c.DHQK = int(DHQK), c.DHHV = int(DHHV);
  c.n_seg = plan.n_seg;
  c.seg_tokens = plan.seg_chunks * kT;
  return c;
}

// ---- forward ----------------------------------------------------------------------------------------------

template <typename Elem>
mlstm_status run_fwd(const FwdParams& p, const Plan& plan) {
  const cudaStream_t stream = stream_of(p.stream);
  const FwdLayout ws(plan, p.S, p.DHQK, p.DHHV, sizeof(Elem));
  unsigned char* wsb = static_cast<unsigned char*>(p.workspace);

  FwdScoreParams sp;
  sp.BNH = plan.BNH, sp.NH = p.NH, sp.S = p.S, sp.NC = plan.NC;
  sp.DHQK = int(p.DHQK);
  sp.qk_scale = p.qk_scale;
  sp.q = seq4(p.q), sp.k = seq4(p.k);
  sp.i = seq3(p.i), sp.f = seq3(p.f);
  sp.gate_dtype = p.i.dtype;
  sp.tok = tokens(wsb + ws.tok, ws.tok_stride, 4);
  sp.M = wsb + ws.M;
  MLSTM_RETURN_IF_ERROR(launch_fwd_scores<Elem>(sp, stream));

  WalkParams w = walk_common(p, plan, WalkMode::kFwd, plan.qk_by_v);
  w.A = seq4(p.q), w.Bk = seq4(p.k), w.V = seq4(p.v), w.out = seq4(p.h);
  w.M = wsb + ws.M;
  w.tok = sp.tok;
  if (p.has_initial) {
    w.state_in = state_view(p.c_initial);
    w.aug_in = vec_view(p.n_initial);
  }
  if (plan.n_seg > 1) {
    // Segment states: the local state of every segment but the last, then their chaining. The
    // chained states go to `saved`, where the backward's dq walk starts its segments (to the
    // workspace when there is no saved buffer, i.e. no backward).
    const SavedLayout sv(plan, p.S, p.DHQK, p.DHHV);
    WalkParams pass = w;
    pass.state_only = true;
    pass.seg_delta = ws.delta.at(wsb);
    MLSTM_RETURN_IF_ERROR(launch_walk<Elem>(pass, plan.qk_by_v.n_slices, plan.n_seg - 1, plan.qk_by_v.smem, stream));
    CombineParams c = combine_common(plan.BNH, p.NH, p.S, p.DHQK, p.DHHV, plan);
    c.state_in = w.state_in, c.aug_in = w.aug_in, c.m_in = w.m_in;
    c.delta = pass.seg_delta;
    c.start = p.saved != nullptr ? sv.seg.at(static_cast<unsigned char*>(p.saved)) : ws.start.at(wsb);
    c.start.m = reinterpret_cast<float*>(wsb + ws.seg_start_m);
    MLSTM_RETURN_IF_ERROR(launch_combine(c, stream));
    w.seg_start = c.start;
  }
  if (p.saved != nullptr) {
    const SavedLayout sv(plan, p.S, p.DHQK, p.DHHV);
    unsigned char* s = static_cast<unsigned char*>(p.saved);
    w.m_out = reinterpret_cast<float*>(s + sv.m);
    w.den_out = reinterpret_cast<float*>(s + sv.den);
  }
  if (p.has_last) {
    w.state_out = state_view(p.c_last);
    w.aug_out = vec_view(p.n_last);
    w.m_last = vec_view(p.m_last);
  }
  return launch_walk<Elem>(w, plan.qk_by_v.n_slices, plan.n_seg, plan.qk_by_v.smem, stream);
}

// ---- backward ---------------------------------------------------------------------------------------------

template <typename Elem>
mlstm_status run_bwd(const BwdParams& p, const Plan& plan) {
  const cudaStream_t stream = stream_of(p.stream);
  const BwdLayout ws(plan, p.S, p.DHQK, p.DHHV, sizeof(Elem));
  const SavedLayout sv(plan, p.S, p.DHQK, p.DHHV);
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
  if (plan.n_seg > 1) dq.seg_start = sv.seg.at(const_cast<unsigned char*>(saved));
  MLSTM_RETURN_IF_ERROR(launch_walk<Elem>(dq, plan.v_by_qk.n_slices, plan.n_seg, plan.v_by_qk.smem, stream));

  // Segmented: dC and dn at every segment's end, from an update-only backward pass over all
  // segments but the first and their chaining.
  SegmentStates d_end;
  if (plan.n_seg > 1) {
    WalkParams pass = walk_common(p, plan, WalkMode::kDk, plan.v_by_qk);
    pass.Bk = seq4(p.dh), pass.V = seq4(p.q);
    pass.tok = tok;
    pass.m_saved = m_saved;
    pass.state_only = true;
    pass.seg_offset = 1;
    pass.seg_delta = ws.delta.at(wsb);
    MLSTM_RETURN_IF_ERROR(launch_walk<Elem>(pass, plan.v_by_qk.n_slices, plan.n_seg - 1, plan.v_by_qk.smem, stream));
    CombineParams c = combine_common(plan.BNH, p.NH, p.S, p.DHQK, p.DHHV, plan);
    c.backward = true;
    if (p.has_dlast) c.state_in = state_view(p.dc_last), c.aug_in = vec_view(p.dn_last);
    c.m_saved = m_saved;
    c.delta = pass.seg_delta;
    c.start = ws.start.at(wsb);
    MLSTM_RETURN_IF_ERROR(launch_combine(c, stream));
    d_end = c.start;
  }

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
  dv.seg_start = d_end;
  MLSTM_RETURN_IF_ERROR(launch_walk<Elem>(dv, plan.qk_by_v.n_slices, plan.n_seg, plan.qk_by_v.smem, stream));

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
  dk.seg_start = d_end;
  MLSTM_RETURN_IF_ERROR(launch_walk<Elem>(dk, plan.v_by_qk.n_slices, plan.n_seg, plan.v_by_qk.smem, stream));

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

// The buffers hold tiles copied with 16-byte asynchronous copies.
mlstm_status check_buffer_alignment(const char* what, const void* workspace, const void* saved) {
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0 || reinterpret_cast<uintptr_t>(saved) % 16 != 0)
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s on CUDA: workspace and saved buffers must be 16-byte aligned", what);
  return MLSTM_OK;
}

}  // namespace

void chunkwise_set_walk_policy(ChunkwiseWalkPolicy policy) { walk_policy.store(int(policy)); }

// The caller may run the forward with or without a saved buffer: the saved bytes are those of the
// plan with a backward, the workspace the larger of the two plans'.
mlstm_status chunkwise_fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* sizes) {
  Plan alone, with_bwd;
  MLSTM_RETURN_IF_ERROR(make_plan(p, /*with_backward=*/false, &alone));
  MLSTM_RETURN_IF_ERROR(make_plan(p, /*with_backward=*/true, &with_bwd));
  const size_t esz = elem_bytes(p.q.dtype);
  sizes->saved_bytes = SavedLayout(with_bwd, p.S, p.DHQK, p.DHHV).bytes;
  sizes->workspace_bytes = std::max(FwdLayout(alone, p.S, p.DHQK, p.DHHV, esz).bytes,
                                    FwdLayout(with_bwd, p.S, p.DHQK, p.DHHV, esz).bytes);
  return MLSTM_OK;
}

mlstm_status chunkwise_bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* sizes) {
  Plan plan;
  MLSTM_RETURN_IF_ERROR(make_plan(p, /*with_backward=*/true, &plan));
  sizes->saved_bytes = 0;
  sizes->workspace_bytes = BwdLayout(plan, p.S, p.DHQK, p.DHHV, elem_bytes(p.q.dtype)).bytes;
  return MLSTM_OK;
}

mlstm_status chunkwise_fwd(const FwdParams& p) {
  MLSTM_RETURN_IF_ERROR(check_buffer_alignment("chunkwise", p.workspace, p.saved));
  DeviceGuard guard(p.device_index);
  Plan plan;
  MLSTM_RETURN_IF_ERROR(make_plan(p, /*with_backward=*/p.saved != nullptr, &plan));
  switch (p.q.dtype) {
    case MLSTM_FLOAT32: return run_fwd<float>(p, plan);
    case MLSTM_FLOAT16: return run_fwd<__half>(p, plan);
    case MLSTM_BFLOAT16: return run_fwd<__nv_bfloat16>(p, plan);
    default: return fail(MLSTM_ERROR_UNSUPPORTED, "chunkwise on CUDA: q/k/v dtype must be float32, float16 or bfloat16");
  }
}

mlstm_status chunkwise_bwd(const BwdParams& p) {
  MLSTM_RETURN_IF_ERROR(check_buffer_alignment("chunkwise backward", p.workspace, p.saved));
  DeviceGuard guard(p.device_index);
  if (p.saved == nullptr)
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "chunkwise backward on CUDA: saved is NULL (run the forward with a saved buffer)");
  Plan plan;
  MLSTM_RETURN_IF_ERROR(make_plan(p, /*with_backward=*/true, &plan));
  switch (p.q.dtype) {
    case MLSTM_FLOAT32: return run_bwd<float>(p, plan);
    case MLSTM_FLOAT16: return run_bwd<__half>(p, plan);
    case MLSTM_BFLOAT16: return run_bwd<__nv_bfloat16>(p, plan);
    default: return fail(MLSTM_ERROR_UNSUPPORTED, "chunkwise on CUDA: q/k/v dtype must be float32, float16 or bfloat16");
  }
}

}  // namespace mlstm::cuda
