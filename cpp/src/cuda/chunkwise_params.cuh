// Kernel parameters of the chunkwise kernels: tile sizes, strided views of the (B,NH,S,D) tensors,
// and one struct per kernel. Built on the host by chunkwise.cu from FwdParams/BwdParams.
#pragma once

#include <cstdint>

#include "cuda/common.cuh"

namespace mlstm::cuda::chunkwise {

constexpr int kT = 64;        // tokens per chunk tile (the intra-chunk parallel part)
constexpr int kTK = 64;       // head-dim tile of the loops over DHQK / DHHV
constexpr int kWarps = 8;     // the score kernels
constexpr int kThreads = kWarps * 32;
constexpr int kWalkWarps = 16;  // the walks: four warps per scheduler hide the latency of the tile loads
constexpr int kWalkThreads = kWalkWarps * 32;

// Shared-memory row padding: 16 bytes, so that ldmatrix rows and SIMT column walks avoid bank conflicts.
template <typename Elem>
constexpr int kPad = 16 / int(sizeof(Elem));

// A (B,NH,S,D) tensor (or (B,NH,D) / (B,NH) with st = 0) with unit innermost stride.
struct SeqView {
  const void* data = nullptr;
  int64_t sb = 0, sh = 0, st = 0;
  bool vec = false;  // 16-byte aligned base and row strides: cp.async allowed

  __host__ __device__ int64_t offset(int64_t b, int64_t h, int64_t t) const { return b * sb + h * sh + t * st; }
  template <typename T>
  __device__ const T* row(int64_t b, int64_t h, int64_t t) const {
    return static_cast<const T*>(data) + offset(b, h, t);
  }
  template <typename T>
  __device__ T* mut_row(int64_t b, int64_t h, int64_t t) const {
    return const_cast<T*>(static_cast<const T*>(data)) + offset(b, h, t);
  }
};

// A (B,NH,DHQK,DHHV) fp32 state: element (dk, dv) at offset(b, h) + dk*s_row + dv.
struct StateView {
  float* data = nullptr;
  int64_t sb = 0, sh = 0, s_row = 0;
  __host__ __device__ int64_t offset(int64_t b, int64_t h) const { return b * sb + h * sh; }
};

// Per-token arrays in the workspace, (B*NH, S) each. b, u and c are fp64: with a short memory b
// reaches hundreds within a chunk, and the exponents (b_t - b_s + i_s - m_t) and m_t = b_t + ... are
// differences of such numbers, which fp32 would leave with absolute errors of 1e-5.
struct TokenArrays {
  double* b = nullptr;     // within-chunk inclusive cumsum of logsigmoid(f)
  double* u = nullptr;     // i - b
  double* c = nullptr;     // forward: m_intra (b + running max of u); backward: x = b - m' with m' = m + log d
  float* d = nullptr;      // forward: row sums of the local-stabilised intra matrix; backward: sigma~
  float* e = nullptr;      // backward: the stabiliser-path term dm_t = -eps (dh.h)/d
};

// Forward intra-chunk scores: P_loc = (q_hat k^T) o exp(u_s - max_{s'<=t} u_s') (s <= t), one chunk per block.
struct FwdScoreParams {
  int64_t BNH = 0, NH = 0, S = 0, NC = 0;
  int DHQK = 0;
  float qk_scale = 1.f;
  SeqView q, k;
  SeqView i, f;  // (B,NH,S) gate pre-activations of dtype gate_dtype
  mlstm_dtype gate_dtype = MLSTM_FLOAT32;
  TokenArrays tok;
  void* M = nullptr;  // (B*NH, NC, kT, kT) Elem
};

// Backward intra-chunk matrices M1 = (q.k) E', M2 = (dh.v + sigma~) E' with E' = exp(logD - m'), plus
// the per-token backward quantities.
struct BwdScoreParams {
  int64_t BNH = 0, NH = 0, S = 0, NC = 0;
  int DHQK = 0, DHHV = 0;
  float eps = 1e-6f;
  SeqView q, k, v, h, dh;
  SeqView i, f;
  mlstm_dtype gate_dtype = MLSTM_FLOAT32;
  const float* m_saved = nullptr;    // (B*NH, S)
  const float* den_saved = nullptr;  // (B*NH, S)
  TokenArrays tok;
  void* M1 = nullptr;  // (B*NH, NC, kT, kT) Elem
  void* M2 = nullptr;
};

// The four sequential walks over the chunks; each keeps a (DB_s x DA) fp32 state slice in shared memory.
//   kFwd: h        A=q  Bk=k  V=v   state C^T   forward in time
//   kDq:  dq       A=dh Bk=v  V=k   state C     forward
//   kDv:  dv       A=k  Bk=q  V=dh  state dC^T  backward
//   kDk:  dk       A=v  Bk=dh V=q   state dC    backward
enum class WalkMode : int { kFwd = 0, kDq = 1, kDv = 2, kDk = 3 };

// Per-segment states of a segmented walk, fp32: C (n_seg, B*NH, DHQK, DHHV) in the natural layout,
// n (n_seg, B*NH, DHQK), m and the segment's total log forget decay g (n_seg, B*NH).
struct SegmentStates {
  float* C = nullptr;
  float* n = nullptr;
  float* m = nullptr;
  float* g = nullptr;
};

// A register-walk layout: value slice DB_s (16 state rows per warp), kp contraction parts of kw columns
// each, contraction steps of step_cols columns, and blocks_per_sm, the number of blocks its registers
// and shared memory are sized to share an SM with. kw = 0: none. v_kernel: a v walk (kDq, kDk) on the
// v walks' own kernel (chunkwise_walk_reg_v.cuh: 64-column steps, one block per SM), else the kernel of
// chunkwise_walk_reg.cuh.
struct RegWalkShape {
  int DB_s = 0, kp = 1, kw = 0, step_cols = 64, blocks_per_sm = 1;
  bool v_kernel = false;
};

struct WalkParams {
  WalkMode mode = WalkMode::kFwd;
  int64_t BNH = 0, NH = 0, S = 0, NC = 0;
  // Segments: blockIdx.z + seg_offset walks chunks [seg * seg_chunks, (seg + 1) * seg_chunks). A
  // segment that does not start the walk (the first in time for kFwd/kDq, the last for kDv/kDk)
  // starts from seg_start; with state_only the walk starts from zero (m = -inf for kFwd), only
  // updates the state, and leaves it in seg_delta.
  int n_seg = 1, seg_chunks = 0, seg_offset = 0;
  bool state_only = false;
  SegmentStates seg_start, seg_delta;
  int DA = 0, DB = 0, DB_s = 0;  // contraction dim, value dim, value slice per block
  RegWalkShape reg;  // reg.kw > 0: the walk keeps its state in registers, in this layout
  float qk_scale = 1.f, eps = 1e-6f;
  SeqView A, Bk, V, out, partner;  // partner: the tensor dotted with the output (q for dq, k for dk)
  const void* M = nullptr;         // (B*NH, NC, kT, kT) Elem
  TokenArrays tok;
  const float* m_saved = nullptr;  // backward walks: (B*NH, S)
  float* m_out = nullptr;          // forward: saved m_t and den_t, (B*NH, S)
  float* den_out = nullptr;
  // Initial state of the walk: state (DHQK, DHHV), transposed into the slice when DB = DHHV.
  StateView state_in;
  SeqView aug_in;    // (B,NH,DHQK) vector: n (forward, kDq) or dn (kDk)
  SeqView m_in;      // (B,NH)
  // What the walk leaves at its end (absent pointers: nothing).
  StateView state_out;  // kFwd: c_last; kDv: dc_initial
  SeqView aug_out;      // kFwd: n_last; kDk: dn_initial
  SeqView m_last;       // kFwd
  StateView state_dot;  // kDq: dc_last (gives <dc_last, c_last>); kDv: c_initial
  SeqView aug_dot;      // kDq: dn_last; kDk: n_initial
  float* end_part = nullptr;  // (n_slices, B*NH): partial sums of the end-of-walk dot products
  float* dot_part = nullptr;  // (n_slices, B*NH, S): partial q.dq (kDq) or k.dk (kDk)
};

// Gate gradients from q.dq, k.dk and the stabiliser path (one warp per (b, h)).
struct GatesParams {
  int64_t BNH = 0, NH = 0, S = 0;
  SeqView i, f, di, df;  // (B,NH,S), all of dtype gate_dtype
  mlstm_dtype gate_dtype = MLSTM_FLOAT32;
  const float* m_saved = nullptr;
  const float* dm_tok = nullptr;  // (B*NH, S)
  const float* qdq_part = nullptr;
  int n_qdq = 0;
  const float* kdk_part = nullptr;
  int n_kdk = 0;
  const float* lam_part = nullptr;  // <dc_last, c_last> + <dn_last, n_last>, (n_lam, B*NH)
  int n_lam = 0;
  const float* c0_part = nullptr;   // <dc_initial, c_initial>, (n_c0, B*NH)
  int n_c0 = 0;
  const float* n0_part = nullptr;   // <dn_initial, n_initial>, (n_n0, B*NH)
  int n_n0 = 0;
  SeqView m_in;     // (B,NH) or absent
  SeqView dm_last;  // (B,NH) or absent
  SeqView dm_in;    // dm_initial output (B,NH) or absent
};

// Chains the segments' local states into the states at segment boundaries (one thread per state
// element; sequential over segments).
//   forward:  m_{j+1} = max(g_j + m_j, m~_j),  C_{j+1} = exp(g_j + m_j - m_{j+1}) C_j + exp(m~_j - m_{j+1}) dC_j
//   backward: dC_end_{j-1} = exp(g_j + m_start_j - m_end_j) dC_end_j + dC~_j   (m from the saved m_t)
struct CombineParams {
  int64_t BNH = 0, NH = 0, S = 0;
  int DHQK = 0, DHHV = 0;
  int n_seg = 1, seg_tokens = 0;
  bool backward = false;
  StateView state_in;  // forward: c_initial; backward: dc_last (absent: zeros)
  SeqView aug_in;      // forward: n_initial; backward: dn_last
  SeqView m_in;        // forward: m_initial
  const float* m_saved = nullptr;
  SegmentStates delta, start;
};

}  // namespace mlstm::cuda::chunkwise
