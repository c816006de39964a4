// Stages of the chunkwise kernels (the layer between the kernels and the device helpers):
//   * chunk_gate_scan   the gate prefix sums of one chunk (b, u = i - b, running max of u);
//   * score_products    X Y^T of one chunk over a head dimension (the intra-chunk scores);
//   * WalkSmem          the shared-memory plan of a walk block (used by the host to size it);
//   * walk_* functions  the pieces of one chunk step of a sequential walk: per-token scales, the
//                       inter-chunk product with the on-chip state and the state update, the
//                       intra-chunk product, the epilogue, and the state at the walk's ends.
// Notation (SPEC §2, docs/dev-notes.md): within a chunk b_t = sum_{r<=t} logsigmoid(f_r), g = b_last,
// u_t = i_t - b_t, logD_{t,s} = b_t + u_s; m_k / m_{k+1} are the stabilisers at the chunk's ends.
#pragma once

#include "cuda/chunkwise_mma.cuh"
#include "cuda/chunkwise_params.cuh"

namespace mlstm::cuda::chunkwise {

// ---- gates -----------------------------------------------------------------------------------------------

// Threads 0..kT-1 (warps 0 and 1) own one token each of the chunk starting at t0 (Tc valid tokens).
// Writes b, u and pmax (running max of u) for all kT slots; padding slots get f~ = 0 (so b stays g)
// and u = -inf (so they carry no weight). Every kernel that needs b calls this same function, so
// forward and backward see bit-identical values.
__device__ inline void chunk_gate_scan(const SeqView& i, const SeqView& f, mlstm_dtype dtype, int64_t b, int64_t h,
                                       int64_t t0, int Tc, double* s_b, double* s_u, double* s_pmax, double* s_tmp) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  double ft = 0.0, it = -INFINITY;
  if (tid < Tc) {
    ft = logsigmoid(load_gate(f.data, dtype, f.offset(b, h, t0 + tid)));
    it = load_gate(i.data, dtype, i.offset(b, h, t0 + tid));
  }
  double cum = ft;
  if (warp < 2) {
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const double o = __shfl_up_sync(0xffffffffu, cum, d);
      if (lane >= d) cum += o;
    }
  }
  if (tid == 31) s_tmp[0] = cum;
  __syncthreads();
  if (warp == 1) cum += s_tmp[0];
  const double u = it - cum;
  double pm = u;
  if (warp < 2) {
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const double o = __shfl_up_sync(0xffffffffu, pm, d);
      if (lane >= d) pm = fmax(pm, o);
    }
  }
  if (tid == 31) s_tmp[1] = pm;
  __syncthreads();
  if (warp == 1) pm = fmax(pm, s_tmp[1]);
  if (tid < kT) {
    s_b[tid] = cum;
    s_u[tid] = u;
    s_pmax[tid] = pm;
  }
  __syncthreads();
}

// ---- intra-chunk scores ---------------------------------------------------------------------------------

// acc += X Y^T over the head dimension D for rows t0..t0+Tc of (b, h): warp w owns rows
// 16*(w%4).. and columns 32*(w/4).. of the kT x kT result. With Z, each thread also accumulates
// sum_c X[row][c] Z[row][c] over its quarter of row tid/4 into `zdot` (the dh.h of the backward).
// `ring` holds 2 stages x 3 tiles of kT x (kTK + pad).
template <typename Elem>
__device__ void score_products(float (&acc)[4][4], const SeqView& X, const SeqView& Y, const SeqView* Z, float& zdot,
                               int64_t b, int64_t h, int64_t t0, int Tc, int D, Elem* ring) {
  constexpr int ldE = kTK + kPad<Elem>;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int rb = warp & 3, ch = warp >> 2;
  const int nj = (D + kTK - 1) / kTK;
  auto tile = [&](int stage, int which) { return ring + (stage * 3 + which) * kT * ldE; };
  auto issue = [&](int j) {
    const int cols_valid = min(kTK, D - j * kTK);
    const int s = j & 1;
    load_tile<Elem, kT, kTK, kThreads>(tile(s, 0), ldE, X.row<Elem>(b, h, t0) + j * kTK, X.st, Tc, cols_valid, X.vec, tid);
    load_tile<Elem, kT, kTK, kThreads>(tile(s, 1), ldE, Y.row<Elem>(b, h, t0) + j * kTK, Y.st, Tc, cols_valid, Y.vec, tid);
    if (Z != nullptr)
      load_tile<Elem, kT, kTK, kThreads>(tile(s, 2), ldE, Z->row<Elem>(b, h, t0) + j * kTK, Z->st, Tc, cols_valid,
                                         Z->vec, tid);
  };
  issue(0);
  cp_async_commit();
  for (int j = 0; j < nj; ++j) {
    if (j + 1 < nj) issue(j + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const Elem* xs = tile(j & 1, 0);
    const Elem* ys = tile(j & 1, 1);
    warp_mma<Elem, 4, kTK / 16, AKind::kRow, BKind::kNK>(acc, xs + 16 * rb * ldE, ldE, ys + 32 * ch * ldE, ldE);
    if (Z != nullptr) {
      const Elem* zs = tile(j & 1, 2);
      const int row = tid >> 2, c0 = (tid & 3) * 16;
#pragma unroll
      for (int c = 0; c < 16; ++c) zdot += to_float(xs[row * ldE + c0 + c]) * to_float(zs[row * ldE + c0 + c]);
    }
    __syncthreads();
  }
}

// ---- the walk ---------------------------------------------------------------------------------------------

// Per-token scalars of the current chunk, kT floats each.
enum WalkScalar {
  kRowInter,  // scale of the inter-chunk product per output row
  kRowIntra,  // scale of the intra-chunk product per output row
  kValueW,    // weight of each value row in the state update
  kAugIn,     // weight of each value row in the extra state row (kDq: n, kDk: dn)
  kAugOut,    // scale of the extra state row added to each output row
  kMRow,      // forward: m_t
  kRowSum,    // forward: row sum of the intra matrix
  kQN,        // forward: q_t . n_k
  kInv,       // forward: 1 / (max(|den_t|, exp(-m_t)) + eps)
  kDot0,      // kDq, kDk: the output . partner row sums of the (up to eight) column or row groups
  kDot1,
  kDot2,
  kDot3,
  kDot4,
  kDot5,
  kDot6,
  kDot7,
  kNumScalars
};

// Shared memory of one walk block, in bytes from the start of the dynamic buffer.
template <typename Elem>
struct WalkSmem {
  int DA_pad = 0, DB_s = 0;
  int ldE = 0, ldT = 0, ldV = 0, ldS = 0;  // row strides (elements) of A/Bk tiles, M, V, state
  size_t ring = 0, M = 0, V = 0, Vw = 0, St = 0, nvec = 0, srow = 0, scal = 0, bytes = 0;

  __host__ __device__ static size_t take(size_t* o, size_t n) {
    const size_t at = *o;
    *o += (n + 15) / 16 * 16;
    return at;
  }
  __host__ __device__ WalkSmem(int DA, int DB_slice) : DB_s(DB_slice) {
    DA_pad = (DA + kTK - 1) / kTK * kTK;
    ldE = kTK + kPad<Elem>;
    ldT = kT + kPad<Elem>;
    ldV = DB_s + kPad<Elem>;
    ldS = DA_pad + 8;  // = 8 (mod 32) floats: conflict-free 8-byte accesses by the accumulator layout
    size_t o = 0;
    ring = take(&o, size_t(4) * kT * ldE * sizeof(Elem));  // 2 stages x (A, Bk)
    M = take(&o, size_t(kT) * ldT * sizeof(Elem));
    V = take(&o, size_t(kT) * ldV * sizeof(Elem));
    Vw = take(&o, size_t(kT) * ldV * sizeof(Elem));
    St = take(&o, size_t(DB_s) * ldS * sizeof(float));
    nvec = take(&o, size_t(DA_pad) * sizeof(float));
    srow = take(&o, size_t(DB_s) * sizeof(float));
    scal = take(&o, size_t(kNumScalars) * kT * sizeof(float) + kWalkWarps * sizeof(float));
    bytes = o;
  }
};

// The work split of a walk block with value slice DBs (compile time), kWalkWarps warps:
//   output tile (kT x DBs): warp w owns rows 16*(w%4).. and column group w/4 (kOutCG groups);
//   state update (DBs x kTK per head-dim tile): row block w%kUpdRB, column group w/kUpdRB.
// Warps past the groups idle in that product (only for DBs = 16).
template <int DBs>
struct WalkGeom {
  static_assert(DBs == 16 || DBs == 32 || DBs == 64 || DBs == 128, "value slice");
  static constexpr int kOutCG = DBs >= 32 ? 4 : 2;
  static constexpr int kOutCols = DBs / kOutCG;
  static constexpr int kNTo = kOutCols / 8;
  static constexpr int kUpdRB = DBs / 16;
  static constexpr int kUpdCG = kWalkWarps / kUpdRB < kTK / 8 ? kWalkWarps / kUpdRB : kTK / 8;
  static constexpr int kUpdCols = kTK / kUpdCG;
  static constexpr int kNTu = kUpdCols / 8;
};

// Token values of one chunk held in registers until the chunk starts (loaded one chunk ahead).
struct ChunkTokens {
  double b = 0.0, u = 0.0, c = 0.0;  // this thread's token (threads < kT)
  float d = 0.f;
  double g = 0.0;       // b of the chunk's last token
  double c_last = 0.0;  // forward: m_intra of the last token
  float m_prev = 0.f;   // backward: saved m before the chunk (the previous chunk's last token)
  float m_end = 0.f;    // backward: saved m of the chunk's last token
};

__device__ inline ChunkTokens load_chunk_tokens(const WalkParams& p, int64_t bh, int k) {
  ChunkTokens r;
  const int64_t t0 = int64_t(k) * kT;
  const int Tc = chunk_len(p.S, t0, kT);
  const int64_t base = bh * p.S + t0;
  const int tid = threadIdx.x;
  if (tid < Tc) {
    r.b = p.tok.b[base + tid];
    r.u = p.tok.u[base + tid];
    r.c = p.tok.c[base + tid];
    r.d = p.tok.d[base + tid];
  }
  r.g = p.tok.b[base + Tc - 1];
  if (p.mode == WalkMode::kFwd) {
    r.c_last = p.tok.c[base + Tc - 1];
  } else {
    r.m_end = p.m_saved[base + Tc - 1];
    if (k > 0) r.m_prev = p.m_saved[base - 1];
  }
  return r;
}

// The token values of one chunk in shared memory: the register walk copies them asynchronously, a chunk
// ahead, instead of holding them in registers across the chunk before.
struct ChunkTokenTile {
  double b[kT], u[kT], c[kT];
  float d[kT];
  float m_prev, m_end;  // backward: as in ChunkTokens
};

// Issues the asynchronous copies of chunk k's token values into `dst` (the caller commits the group).
// Slots past the chunk's end are zero-filled, as load_chunk_tokens leaves them.
template <int kThreadCount>
__device__ inline void issue_chunk_tokens(const WalkParams& p, int64_t bh, int k, ChunkTokenTile* dst, int tid) {
  const int64_t t0 = int64_t(k) * kT;
  const int Tc = chunk_len(p.S, t0, kT);
  const int64_t base = bh * p.S + t0;
  const bool fwd = p.mode == WalkMode::kFwd;
  for (int idx = tid; idx < 4 * kT + (fwd ? 0 : 2); idx += kThreadCount) {
    const int a = idx / kT, j = idx % kT;
    const bool valid = j < Tc;
    const int64_t at = base + (valid ? j : 0);
    if (a == 0) cp_async8(&dst->b[j], p.tok.b + at, valid);
    else if (a == 1) cp_async8(&dst->u[j], p.tok.u + at, valid);
    else if (a == 2) cp_async8(&dst->c[j], p.tok.c + at, valid);
    else if (a == 3) cp_async4(&dst->d[j], p.tok.d + at, valid);
    else if (j == 0) cp_async4(&dst->m_prev, k > 0 ? p.m_saved + base - 1 : p.m_saved, k > 0);
    else cp_async4(&dst->m_end, p.m_saved + base + Tc - 1, true);
  }
}

// Thread tid's view of a chunk's token values from a landed ChunkTokenTile (see load_chunk_tokens).
__device__ inline ChunkTokens chunk_tokens_at(const WalkParams& p, const ChunkTokenTile& s, int Tc, int tid) {
  ChunkTokens r;
  if (tid < kT) {
    r.b = s.b[tid];
    r.u = s.u[tid];
    r.c = s.c[tid];
    r.d = s.d[tid];
  }
  r.g = s.b[Tc - 1];
  if (p.mode == WalkMode::kFwd) {
    r.c_last = s.c[Tc - 1];
  } else {
    r.m_end = s.m_end;
    r.m_prev = s.m_prev;
  }
  return r;
}

// The per-token scales of one chunk (threads < kT write the scalar arrays; every thread returns the
// chunk's decay alpha = exp(g + m_k - m_{k+1})). m_k is the stabiliser before the chunk; m_next
// receives the one after it. The exponents are formed in fp64 (see TokenArrays), then rounded.
// tid: this thread's index (a caller may pass one it read afresh; see the register walk).
__device__ inline float walk_chunk_scalars(const WalkParams& p, const ChunkTokens& tk, int Tc, double m_k,
                                           double* m_next, float* scal, int tid = threadIdx.x) {
  const float s = p.qk_scale;
  const double mk1 = p.mode == WalkMode::kFwd ? fmax(tk.g + m_k, tk.c_last) : double(tk.m_end);
  *m_next = mk1;
  if (tid < kT) {
    float r_inter = 0.f, r_intra = 0.f, vw = 0.f, aug_in = 0.f, aug_out = 0.f, m_row = 0.f, rs = 0.f;
    if (tid < Tc) {
      const float w = fast_exp(float(tk.g + tk.u - mk1));  // exp(a_s - m_{k+1}): weight into the next state
      switch (p.mode) {
        case WalkMode::kFwd: {
          const double m_t = fmax(tk.b + m_k, tk.c);  // m_t = max(b_t + m_k, m_intra_t)
          m_row = float(m_t);
          r_inter = s * fast_exp(float(tk.b + m_k - m_t));
          r_intra = fast_exp(float(tk.c - m_t));
          vw = w;
          rs = tk.d;
          break;
        }
        case WalkMode::kDq: {
          const float beta = fast_exp(float(tk.c + m_k));  // exp(b_t + m_k - m'_t) = beta_t / d_t
          r_inter = s * beta;
          r_intra = s;
          vw = w;
          aug_in = w;
          aug_out = s * beta * tk.d;
          break;
        }
        case WalkMode::kDv: {
          r_inter = w;
          r_intra = s;
          vw = s * fast_exp(float(tk.c + m_k));
          break;
        }
        case WalkMode::kDk: {
          r_inter = w;
          r_intra = s;
          vw = s * fast_exp(float(tk.c + m_k));
          aug_in = vw * tk.d;
          aug_out = w;
          break;
        }
      }
    }
    scal[kRowInter * kT + tid] = r_inter;
    scal[kRowIntra * kT + tid] = r_intra;
    scal[kValueW * kT + tid] = vw;
    scal[kAugIn * kT + tid] = aug_in;
    scal[kAugOut * kT + tid] = aug_out;
    scal[kMRow * kT + tid] = m_row;
    scal[kRowSum * kT + tid] = rs;
  }
  return fast_exp(float(tk.g + m_k - mk1));
}

// True when the state slice holds the state in its natural (DHQK, DHHV) layout (value dim = DHQK).
__device__ __forceinline__ bool state_is_natural(WalkMode mode) {
  return mode == WalkMode::kDq || mode == WalkMode::kDk;
}

// Where a walk block starts from: the state (DHQK, DHHV), the extra vector (n or dn) and, for kFwd, m.
struct WalkStart {
  StateView state;
  SeqView aug;
  SeqView m;
};

// Element (v, d) of a (DHQK, DHHV) state for a walk with value index v and contraction index d:
// natural (v = DHQK row) or transposed (v = DHHV column).
template <typename T>
__device__ __forceinline__ T& state_at(T* X, int64_t s_row, bool natural, int v, int d) {
  return natural ? X[int64_t(v) * s_row + d] : X[int64_t(d) * s_row + v];
}

// The walk's vectors at its start: the forward's n (n_len slots, zeros past DA) and the extra row
// (kDq: n, kDk: dn) of the value slice.
template <int kThreadCount>
__device__ inline void walk_load_vectors(const WalkParams& p, const WalkStart& from, int64_t b, int64_t h, int db0,
                                         int dbw, int n_len, float* nvec, float* srow) {
  const int tid = threadIdx.x;
  if (p.mode == WalkMode::kFwd) {
    for (int da = tid; da < n_len; da += kThreadCount)
      nvec[da] = (from.aug.data != nullptr && da < p.DA) ? from.aug.row<float>(b, h, 0)[da] : 0.f;
  }
  for (int db = tid; db < dbw; db += kThreadCount)
    srow[db] = (from.aug.data != nullptr && state_is_natural(p.mode)) ? from.aug.row<float>(b, h, 0)[db0 + db] : 0.f;
}

// Loads the initial state slice St[db][da] (zeros where absent or out of range) and the vectors.
__device__ inline void walk_load_state(const WalkParams& p, const WalkStart& from, int64_t b, int64_t h, int db0,
                                       int dbw, float* St, int ldS, int DA_pad, float* nvec, float* srow) {
  const int tid = threadIdx.x;
  const bool natural = state_is_natural(p.mode);
  for (int idx = tid; idx < dbw * DA_pad; idx += kWalkThreads) {
    // natural: da fastest (contiguous in global memory); transposed: db fastest.
    const int db = natural ? idx / DA_pad : idx % dbw;
    const int da = natural ? idx % DA_pad : idx / dbw;
    float x = 0.f;
    if (from.state.data != nullptr && da < p.DA)
      x = state_at(from.state.data + from.state.offset(b, h), from.state.s_row, natural, db0 + db, da);
    St[db * ldS + da] = x;
  }
  walk_load_vectors<kWalkThreads>(p, from, b, h, db0, dbw, DA_pad, nvec, srow);
}

// Views of segment `seg` of per-segment states (the natural layout, contiguous per (b, h)).
__device__ inline WalkStart segment_view(const SegmentStates& s, int seg, int64_t BNH, int64_t NH, int DHQK, int DHHV) {
  WalkStart v;
  const int64_t cs = int64_t(DHQK) * DHHV;
  v.state.data = s.C + seg * BNH * cs;
  v.state.sb = NH * cs, v.state.sh = cs, v.state.s_row = DHHV;
  if (s.n != nullptr) {
    v.aug.data = s.n + seg * BNH * DHQK;
    v.aug.sb = NH * DHQK, v.aug.sh = DHQK, v.aug.st = 0;
  }
  if (s.m != nullptr) {
    v.m.data = s.m + seg * BNH;
    v.m.sb = NH, v.m.sh = 1, v.m.st = 0;
  }
  return v;
}

// Block-wide sum over kW warps; every thread returns the total. `tmp` holds kW floats.
template <int kW = kWalkWarps>
__device__ inline float block_sum(float v, float* tmp) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) tmp[warp] = v;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kW; ++w) total += tmp[w];
  return total;
}

// What a walk block leaves behind at its end.
struct WalkEnd {
  StateView state_out;  // the state (natural or transposed into (DHQK, DHHV) by the mode)
  SeqView aug_out;      // kFwd: n (slice 0 writes it); kDk: dn
  SeqView m_out;        // kFwd (slice 0)
  float* g_out = nullptr;  // the walked chunks' total log forget decay (slice 0), (B*NH)
  StateView state_dot;  // partial <state, state_dot> + <aug, aug_dot> into end_part
  SeqView aug_dot;
  float* end_part = nullptr;  // (n_slices, B*NH)
};

// Where a walk block stands: its segment of the sequence and that segment's place in the walk.
struct WalkPlace {
  int seg = 0, c_begin = 0, n_it = 0;
  bool starts_walk = false, ends_walk = false;
  WalkPlace() = default;
  __device__ WalkPlace(const WalkParams& p, bool reverse) {
    seg = int(blockIdx.z) + p.seg_offset;
    c_begin = seg * p.seg_chunks;
    n_it = min(int(p.NC), c_begin + p.seg_chunks) - c_begin;
    starts_walk = reverse ? seg == p.n_seg - 1 : seg == 0;
    ends_walk = reverse ? seg == 0 : seg == p.n_seg - 1;
  }
  // The chunk of iteration it (backward walks run from the segment's end).
  __device__ int chunk_at(int it, bool reverse) const { return reverse ? c_begin + n_it - 1 - it : c_begin + it; }
};

// The state a walk block starts from: zeros for a state-only pass, else the user's initial state
// (first segment in walk order) or the segment's start state.
__device__ inline WalkStart walk_start(const WalkParams& p, const WalkPlace& at, int DHQK, int DHHV) {
  WalkStart from;
  if (p.state_only) return from;
  if (at.starts_walk) {
    from.state = p.state_in, from.aug = p.aug_in, from.m = p.m_in;
    return from;
  }
  return segment_view(p.seg_start, at.seg, p.BNH, p.NH, DHQK, DHHV);
}

// What a walk block leaves at its end: a state-only pass its segment's local state; the block that
// ends the walk the caller's outputs; any other block nothing.
__device__ inline WalkEnd walk_end(const WalkParams& p, const WalkPlace& at, int DHQK, int DHHV) {
  WalkEnd end;
  if (p.state_only) {
    const WalkStart d = segment_view(p.seg_delta, at.seg, p.BNH, p.NH, DHQK, DHHV);
    end.state_out = d.state, end.aug_out = d.aug, end.m_out = d.m;
    end.g_out = p.seg_delta.g + at.seg * p.BNH;
  } else if (at.ends_walk) {
    end.state_out = p.state_out, end.aug_out = p.aug_out, end.m_out = p.m_last;
    end.state_dot = p.state_dot, end.aug_dot = p.aug_dot, end.end_part = p.end_part;
  }
  return end;
}

// What every walk leaves at its end besides the state: n and m (forward, slice 0), dn (kDk), the
// total decay (state-only pass) and, with the partial dot product of the state already in
// `state_part`, the end-of-walk dot products with given states.
template <int kThreadCount>
__device__ inline void walk_finish_vectors(const WalkParams& p, const WalkEnd& e, int64_t b, int64_t h, int64_t bh,
                                           int slice, int db0, int dbw, const float* nvec, const float* srow,
                                           float m_final, float g_total, float state_part, float* tmp) {
  const int tid = threadIdx.x;
  if (p.mode == WalkMode::kFwd && slice == 0) {
    if (e.aug_out.data != nullptr)
      for (int da = tid; da < p.DA; da += kThreadCount) e.aug_out.mut_row<float>(b, h, 0)[da] = nvec[da];
    if (e.m_out.data != nullptr && tid == 0) *e.m_out.mut_row<float>(b, h, 0) = m_final;
  }
  if (p.mode == WalkMode::kDk && e.aug_out.data != nullptr)
    for (int db = tid; db < dbw; db += kThreadCount) e.aug_out.mut_row<float>(b, h, 0)[db0 + db] = srow[db];
  if (e.g_out != nullptr && slice == 0 && tid == 0) e.g_out[bh] = g_total;
  if (e.end_part != nullptr) {
    float part = state_part;
    if (e.aug_dot.data != nullptr)
      for (int db = tid; db < dbw; db += kThreadCount) part += srow[db] * e.aug_dot.row<float>(b, h, 0)[db0 + db];
    const float total = block_sum<kThreadCount / 32>(part, tmp);
    if (tid == 0) e.end_part[int64_t(slice) * p.BNH + bh] = total;
  }
}

// Writes the state (c_last, dc_initial or a segment's local state) from the shared-memory slice,
// its partial dot product with a given state, and the vectors (walk_finish_vectors).
__device__ inline void walk_finish(const WalkParams& p, const WalkEnd& e, int64_t b, int64_t h, int64_t bh, int slice,
                                   int db0, int dbw, const float* St, int ldS, const float* nvec, const float* srow,
                                   float m_final, float g_total, float* tmp) {
  const int tid = threadIdx.x;
  const bool natural = state_is_natural(p.mode);
  float* Xo = e.state_out.data != nullptr ? e.state_out.data + e.state_out.offset(b, h) : nullptr;
  const float* Xd =
      e.end_part != nullptr && e.state_dot.data != nullptr ? e.state_dot.data + e.state_dot.offset(b, h) : nullptr;
  float part = 0.f;
  if (Xo != nullptr || Xd != nullptr) {
    for (int idx = tid; idx < dbw * p.DA; idx += kWalkThreads) {
      const int db = natural ? idx / p.DA : idx % dbw;
      const int da = natural ? idx % p.DA : idx / dbw;
      const float x = St[db * ldS + da];
      if (Xo != nullptr) state_at(Xo, e.state_out.s_row, natural, db0 + db, da) = x;
      if (Xd != nullptr) part += x * state_at(Xd, e.state_dot.s_row, natural, db0 + db, da);
    }
  }
  walk_finish_vectors<kWalkThreads>(p, e, b, h, bh, slice, db0, dbw, nvec, srow, m_final, g_total, part, tmp);
}

}  // namespace mlstm::cuda::chunkwise
