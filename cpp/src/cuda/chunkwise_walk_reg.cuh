// The register walk: the chunkwise walk (chunkwise_kernels.cuh, same four modes and the same math)
// with the state slice held in registers, in the mma.sync accumulator layout, for the whole walk. The
// library runs the forward and dv walks on it and the dq and dk walks on chunkwise_walk_reg_v.cuh's
// kernel, which is faster for them; the other layout policies run all four here (chunkwise.cu,
// pick_reg_split).
//
// Work mapping. Grid (value slices, B*NH, segments): a block walks every chunk of its segment for one
// (b, h) and one slice of DBs value rows. It has kRG * KP warps (8 or 16), kRG = DBs / 16:
//   warp w: row group rg = w % kRG, contraction part kp = w / kRG (KW columns of the contraction);
//   st[n][e] = S^T(row 16 rg + g + 8 (e >> 1), column kp KW + 8 n + 2 t + (e & 1)).
// Because an accumulator tile pair is exactly an A-operand fragment, the inter-chunk product is taken
// transposed, out^T = S^T A^T, with the state as the A operand; the update S^T = alpha S^T + V~^T Bk
// accumulates into the same registers, and no state element leaves them during the walk.
//
// Per chunk of kT = 64 tokens the contraction runs in steps of kStepCols columns of every part, each
// step one cp.async group of the A and Bk tiles, issued kStages - 1 steps ahead; the chunk's intra
// matrix and value rows (double buffered) and the next chunk's token values ride with its first step.
// Part kp finishes output tokens [kp 64 / KP, (kp + 1) 64 / KP): its warps take the inter product of
// those tokens over the whole contraction, reading the other parts' (old) state as the bf16 operand
// fragments each warp publishes in shared memory a step ahead (KP = 1: straight from registers). Then
// they add the intra-chunk part and stage the output tile in shared memory, stored with 16-byte writes.
// The forward's n-vector work rides on the same tensor-core products: q_t . n_k and sum_s w_s k_s are
// extra m16n8k16 products whose A operand holds n (or w) in row 0 and its rounding remainder in row 8.
//
// Registers: KW = 256 puts 128 state registers in every thread and one 8-warp block on an SM (up to
// 255 registers). With KW <= 128 the state takes 64 and the whole walk fits in 128 registers, so an SM
// holds 16 warps: one 16-warp block, or two 8-warp blocks (kBlocks = 2, at most 113 KB of shared
// memory each). The walks are latency bound; the extra warps hide the latency. Fitting 128 registers
// without spills takes care: one kernel per mode, block constants and lane constants re-read where used
// (RegWalkBlock, Lane), the state staged through shared memory at the walk's ends, per-token values
// copied to shared memory a chunk ahead, the epilogue a token tile at a time.
#pragma once

#include "cuda/chunkwise_kernels.cuh"  // the shared helpers (scale16) and stages

namespace mlstm::cuda::chunkwise {

template <int DBs, int KP, int KW, int kStepColumns, int kBlocksPerSM>
struct RegGeom {
  static constexpr int kDBs = DBs, kKP = KP, kKW = KW, kStepCols = kStepColumns, kBlocks = kBlocksPerSM;
  static constexpr int kRG = DBs / 16;
  static constexpr int kWarpCount = kRG * KP;
  static constexpr int kThreadCount = kWarpCount * 32;
  static constexpr int kNT = KW / 8;                // state n-tiles per warp
  static constexpr int kSteps = KW / kStepCols;     // contraction steps per part and chunk
  static constexpr int kStepNT = kStepCols / 8;     // state n-tiles per step
  static constexpr int kStepKB = kStepCols / 16;    // 16-column operand blocks per step
  static constexpr int kOwnNT = (kT / 8) / KP;      // output token tiles each part finishes
  static constexpr int kNUpdNT = (kStepNT + kRG - 1) / kRG;  // forward: n-vector tiles per warp and step
  static_assert(kWarpCount == 8 || kWarpCount == 16, "the register walk runs 8 or 16 warps");
  static_assert(kOwnNT <= kRG, "forward: q.n of each own token tile by one warp of the part");
  static_assert(KP == 1 || KP == 2 || KP == 4, "contraction parts");
  static_assert(kStepCols == 32 || kStepCols == 64, "contraction step");
  static_assert(KW % kStepCols == 0 && KW <= 256, "contraction columns per warp");
  static_assert(kBlocks == 1 || KW <= 128, "more than one block per SM needs the state in at most 64 registers");
  static_assert(kWarpCount * kBlocks <= 16 && (kWarpCount == 8 || KW <= 128),
                "at most 16 warps of at most 128 registers per SM");
};

// The block's constants: its (b, h), value slice and place in the walk. They live in shared memory and
// are read where used: a value read again after a barrier cannot be held in a register across the
// walk, which the compiler otherwise does with every block constant, in registers it lacks.
struct RegWalkBlock {
  int64_t bh, b, h;
  int slice;
  WalkPlace at;
};

// Shared memory of one register-walk block: byte offsets from the start of the dynamic buffer, for one
// mode (the forward's n buffers, the dq/dk walks' split state and partner-dot rows only where used).
// The stage count is the largest (up to 4, and at most the steps per chunk plus one, so that a chunk's
// intra matrix and value buffer is free when it is refilled) that fits the per-block budget of
// kBlocks blocks on an sm_90 SM (228 KB, 1 KB of it reserved per block).
template <typename Elem, typename G, WalkMode kMode>
struct RegSmem {
  static constexpr bool kAug = kMode == WalkMode::kDq || kMode == WalkMode::kDk;  // hi + lo state, extra row
  static constexpr bool kFwd = kMode == WalkMode::kFwd;
  static constexpr int ldE = G::kStepCols + kPad<Elem>, ldT = kT + kPad<Elem>, ldV = G::kDBs + kPad<Elem>;
  static constexpr size_t al(size_t n) { return (n + 15) / 16 * 16; }
  static constexpr size_t kStageBytes = al(size_t(G::kKP) * 2 * kT * ldE * sizeof(Elem));  // parts x (A, Bk)
  // With parts: the state as operand fragments (uint4 per lane), one contraction step of every warp,
  // two steps (by step parity); hi and lo parts for the walks with the split state.
  static constexpr size_t kPBytes =
      G::kKP > 1 ? size_t(2) * G::kKP * G::kRG * G::kStepKB * (kAug ? 2 : 1) * 32 * sizeof(uint4) : 0;
  static constexpr size_t kMBytes = al(size_t(2) * kT * ldT * sizeof(Elem));   // two buffers, by chunk parity
  static constexpr size_t kVBytes = al(size_t(2) * kT * ldV * sizeof(Elem));   // two buffers
  static constexpr size_t kVwBytes = al(size_t(kT) * ldV * sizeof(Elem));      // V~, then the output tile
  // Forward: n by chunk parity, as fp32 and as hi + lo operand fragments (uint4 per t4), and the update
  // weights w as fragments.
  static constexpr size_t kNvecBytes = kFwd ? al(size_t(2) * G::kKP * G::kKW * sizeof(float)) : 0;
  static constexpr size_t kNfrBytes = kFwd ? al(size_t(2) * (G::kKP * G::kKW / 16) * 4 * sizeof(uint4)) : 0;
  static constexpr size_t kWfrBytes = kFwd ? al(size_t(kT / 16) * 4 * sizeof(uint4)) : 0;
  static constexpr size_t kSrowBytes = al(size_t(G::kDBs) * sizeof(float));
  static constexpr int kScalRows = kAug ? kNumScalars : kDot0;  // the partner-dot rows only for kDq, kDk
  static constexpr size_t kScalBytes = al(size_t(kScalRows) * kT * sizeof(float) + G::kWarpCount * sizeof(float));
  static constexpr size_t kTokBytes = al(2 * sizeof(ChunkTokenTile));           // two, by chunk parity
  static constexpr size_t kCarryBytes = al(3 * sizeof(double));  // m after the chunk, by parity; total decay
  static constexpr size_t kBlkBytes = al(sizeof(RegWalkBlock));
  static constexpr size_t kRestBytes =
      kPBytes + kMBytes + kVBytes + kVwBytes + kNvecBytes + kNfrBytes + kWfrBytes + kSrowBytes + kScalBytes + kTokBytes +
      kCarryBytes + kBlkBytes;
  static constexpr size_t kBudget = G::kBlocks == 2 ? 113 * 1024 : 227 * 1024;
  static constexpr int kMaxStages = (G::kKP == 1 ? 4 : 3) < G::kSteps + 1 ? (G::kKP == 1 ? 4 : 3) : G::kSteps + 1;
  static constexpr int stages_fitting() {
    for (int s = kMaxStages; s >= 2; --s)
      if (s * kStageBytes + kRestBytes <= kBudget) return s;
    return 0;
  }
  static constexpr int kStages = stages_fitting();
  static_assert(kStages >= 2, "the register walk's buffers exceed the shared-memory budget");

  static constexpr size_t kRing = 0;
  static constexpr size_t kP = kRing + kStages * kStageBytes;
  static constexpr size_t kM = kP + kPBytes;
  static constexpr size_t kV = kM + kMBytes;
  static constexpr size_t kVw = kV + kVBytes;
  static constexpr size_t kNvec = kVw + kVwBytes;
  static constexpr size_t kNfr = kNvec + kNvecBytes;
  static constexpr size_t kWfr = kNfr + kNfrBytes;
  static constexpr size_t kSrow = kWfr + kWfrBytes;
  static constexpr size_t kScal = kSrow + kSrowBytes;
  static constexpr size_t kTok = kScal + kScalBytes;
  static constexpr size_t kCarry = kTok + kTokBytes;
  static constexpr size_t kBlk = kCarry + kCarryBytes;
  static constexpr size_t kBytes = kBlk + kBlkBytes;
};

// The thread index, read afresh: the compiler cannot reuse one such read for another.
__device__ __forceinline__ int fresh_tid() {
#if defined(MLSTM_CHUNKWISE_HOST_EMULATION)
  return int(threadIdx.x);
#else
  int t;
  asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(t));
  return t;
#endif
}

// This thread's place in its warp (g = lane / 4, t4 = lane % 4 of the accumulator layout; q = lane / 8,
// r = lane % 8 of the ldmatrix addresses) and in the block's warp grid (row group rg, part kp). Every
// phase of the walk forms its own from a fresh thread index, so the lane-derived address terms of one
// phase are not shared with another: otherwise the compiler keeps a dozen of them live across the
// whole walk, in registers the 128-register layouts do not have (re-forming them costs a few
// integer instructions per phase).
template <int kRG>
struct Lane {
  int tid, lane, g, t4, q, r, rg, kp;
  __device__ __forceinline__ Lane() : tid(fresh_tid()) {
    lane = tid & 31;
    g = lane >> 2, t4 = lane & 3, q = lane >> 3, r = lane & 7;
    rg = (tid >> 5) % kRG, kp = (tid >> 5) / kRG;
  }
};

// One kernel per walk mode (the mode decides which buffers and products exist, and a runtime mode would
// leave every mode's code, and its registers, in each kernel).
template <typename Elem, int DBs, int KP, int KW, int kStepCols, int kBlocks, WalkMode kMode>
__global__ void __launch_bounds__(RegGeom<DBs, KP, KW, kStepCols, kBlocks>::kThreadCount, kBlocks)
    chunkwise_walk_reg_kernel(const WalkParams p) {
  using G = RegGeom<DBs, KP, KW, kStepCols, kBlocks>;
  using L = RegSmem<Elem, G, kMode>;
  constexpr int NT = G::kThreadCount;
  constexpr int kPer = 16 / int(sizeof(Elem));
  constexpr int ldE = L::ldE, ldT = L::ldT, ldV = L::ldV;
  constexpr int kStages = L::kStages;
  constexpr bool reverse = kMode == WalkMode::kDv || kMode == WalkMode::kDk;  // backward in time
  constexpr bool is_fwd = kMode == WalkMode::kFwd;
  constexpr bool has_aug = L::kAug;      // the extra state row (kDq: n, kDk: dn)
  constexpr bool split_state = L::kAug;  // the state as hi + lo parts in the inter product
  unsigned char* smem = dynamic_smem();
  Elem* const ring = reinterpret_cast<Elem*>(smem + L::kRing);
  Elem* const sM0 = reinterpret_cast<Elem*>(smem + L::kM);  // two buffers each, by chunk parity
  Elem* const sV0 = reinterpret_cast<Elem*>(smem + L::kV);
  Elem* const sVw = reinterpret_cast<Elem*>(smem + L::kVw);
  Elem* const sO = sVw;  // V~ is dead once the chunk's last update step is done
  uint4* const pst = reinterpret_cast<uint4*>(smem + L::kP);  // the state as operand fragments (KP > 1)
  float* const nvec = reinterpret_cast<float*>(smem + L::kNvec);  // n before the chunk, by chunk parity
  uint4* const nfr = reinterpret_cast<uint4*>(smem + L::kNfr);     // the same as operand fragments
  uint4* const wfr = reinterpret_cast<uint4*>(smem + L::kWfr);     // the chunk's weights w as fragments
  float* const srow = reinterpret_cast<float*>(smem + L::kSrow);
  float* const scal = reinterpret_cast<float*>(smem + L::kScal);
  float* const tmp = scal + L::kScalRows * kT;  // block_sum's scratch
  ChunkTokenTile* const tok = reinterpret_cast<ChunkTokenTile*>(smem + L::kTok);  // two, by chunk parity
  // Carried between chunks in shared memory rather than in (scarce) registers, written by thread 0:
  // m after walk iteration it at carry[it & 1] (forward), the total log decay at carry[2].
  double* const carry = reinterpret_cast<double*>(smem + L::kCarry);
  RegWalkBlock* const blk = reinterpret_cast<RegWalkBlock*>(smem + L::kBlk);
  if (threadIdx.x == 0) {
    // 32-bit: a 64-bit division is a subroutine call, around which live registers are spilled.
    const int bh32 = int(blockIdx.y), nh32 = int(p.NH);
    blk->bh = bh32, blk->b = bh32 / nh32, blk->h = bh32 % nh32;
    blk->slice = int(blockIdx.x);
    blk->at = WalkPlace(p, reverse);
  }
  __syncthreads();
  // Block constants, read where used (see RegWalkBlock).
  auto db0 = [&] { return blk->slice * DBs; };  // the slice's first value row
  auto chunk_at = [&](int it) { return blk->at.chunk_at(it, reverse); };
  constexpr bool natural = L::kAug;  // state_is_natural: the kDq and kDk walks hold C and dC, not transposed
  const int DHQK = natural ? p.DB : p.DA, DHHV = natural ? p.DA : p.DB;
  const bool outputs = !p.state_only;

  // The state slice in registers (see the top). It passes between global memory and registers through
  // shared memory (the ring, free before the first tile load and after the last read), the columns of
  // one contraction step of every part at a time: [value row][part, column] fp32, row stride = 8
  // (mod 32) floats so that the accumulator layout's float2 accesses are conflict-free. Global
  // accesses are coalesced (natural: along the contraction, transposed: along the value rows).
  float st[G::kNT][4];
  constexpr int kXCols = KP * kStepCols, ldX = kXCols + 8;
  static_assert(size_t(DBs) * ldX * sizeof(float) <= L::kStages * L::kStageBytes, "state staging fits the ring");
  float* const xs = reinterpret_cast<float*>(smem + L::kRing);
  auto staged = [&](int v, int c) { return xs + v * ldX + c; };
  auto stage_index = [&](int idx, int jj, int* v, int* c, int* d) {  // staging element idx of round jj
    *v = natural ? idx / kXCols : idx % DBs;
    *c = natural ? idx % kXCols : idx / DBs;
    *d = (*c / kStepCols) * KW + jj * kStepCols + *c % kStepCols;  // contraction index
  };
  auto reg_of = [&](const Lane<G::kRG>& ln, int n, int e2) {  // st[jj kStepNT + n][2 e2 ..] in round jj
    return staged(16 * ln.rg + ln.g + 8 * e2, ln.kp * kStepCols + 8 * n + 2 * ln.t4);
  };

  // Forward: the n-vector work rides on the tensor-core products. q_t . n_k is an extra product of the
  // A tiles the inter-chunk product already loads with an operand whose row 0 is n (rounded) and row 8
  // the rounding remainder; sum_s w_s Bk_s of the update likewise with w. The hi + lo split keeps
  // both at fp32 accuracy; lanes g = 0 hold the sums (accumulator rows 0 and 8). Fragments: entry
  // [16-column block][t4] = {hi(2 t4, 2 t4 + 1), lo(..), hi(8 + 2 t4, ..), lo(..)}.
  auto hi_lo_pair = [&](float x0, float x1) {  // {hi pair, lo pair} of two adjacent columns or tokens
    const uint32_t hi = pack2<Elem>(x0, x1);
    const float2 r = unpack2<Elem>(hi);
    return make_uint2(hi, pack2<Elem>(x0 - r.x, x1 - r.y));
  };
  auto frag_half = [&](uint4* frag, int c) {  // where columns c, c + 1 (c even) go
    return reinterpret_cast<uint2*>(frag + (c / 16) * 4 + (c % 8) / 2) + (c % 16) / 8;
  };
  auto n_frag = [&](int par) { return nfr + par * (KP * KW / 16) * 4; };
  // The chunk's weights w (scal, written by threads < kT) as fragments, by warps 0 and 1.
  auto publish_weights = [&](int tid) {
    if (tid < kT) {
      const float w = scal[kValueW * kT + tid];
      const float w1 = __shfl_down_sync(0xffffffffu, w, 1);
      if ((tid & 1) == 0) *frag_half(wfr, tid) = hi_lo_pair(w, w1);
    }
  };

  // Forward: the fragment of n (buffer par) for 16-column block ks of step jj of `part` (zero outside
  // lanes g = 0, so that rows other than 0 and 8 are zero).
  auto n_fragment = [&](int par, int jj, int part, int ks, const Lane<G::kRG>& ln, uint32_t(&nf)[4]) {
    nf[0] = nf[1] = nf[2] = nf[3] = 0u;
    if (ln.g == 0) {
      const uint4 x = n_frag(par)[((part * KW + jj * kStepCols) / 16 + ks) * 4 + ln.t4];
      nf[0] = x.x, nf[1] = x.y, nf[2] = x.z, nf[3] = x.w;
    }
  };

  const WalkStart from = walk_start(p, blk->at, DHQK, DHHV);
  if (from.state.data == nullptr) {
    zero(st);
  } else {
    const float* X = from.state.data + from.state.offset(blk->b, blk->h);
#pragma unroll
    for (int jj = 0; jj < G::kSteps; ++jj) {
      if (jj > 0) __syncthreads();  // the previous round's reads are done
      for (int idx = fresh_tid(); idx < DBs * kXCols; idx += NT) {
        int v, c, d;
        stage_index(idx, jj, &v, &c, &d);
        *staged(v, c) = d < p.DA ? state_at(X, from.state.s_row, natural, db0() + v, d) : 0.f;
      }
      __syncthreads();
      const Lane<G::kRG> ln;
#pragma unroll
      for (int n = 0; n < G::kStepNT; ++n) {
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const float2 x = *reinterpret_cast<const float2*>(reg_of(ln, n, e2));
          st[jj * G::kStepNT + n][2 * e2] = x.x;
          st[jj * G::kStepNT + n][2 * e2 + 1] = x.y;
        }
      }
    }
    __syncthreads();  // the ring is free for the tile loads
  }
  walk_load_vectors<NT>(p, from, blk->b, blk->h, db0(), DBs, KP * KW, nvec, srow);
  if constexpr (is_fwd) {
    __syncthreads();  // n written
    for (int c = 2 * fresh_tid(); c < KP * KW; c += 2 * NT) *frag_half(n_frag(0), c) = hi_lo_pair(nvec[c], nvec[c + 1]);
  }
  auto m_initial = [&] { return p.m_in.data != nullptr ? double(*p.m_in.row<float>(blk->b, blk->h, 0)) : 0.0; };

  // With parts (KP > 1) each part finishes its own tokens over the whole contraction, so every warp
  // publishes its old state, a step's columns at a time, as operand fragments: pst[step parity][part]
  // [row group][16-column block of the step][hi, lo][lane], one uint4 per lane (conflict-free).
  auto p_at = [&](int par, int part, int row_group, int ks, int lo) {
    return pst + ((((par * KP + part) * G::kRG + row_group) * G::kStepKB + ks) * (split_state ? 2 : 1) + lo) * 32;
  };
  auto pack_step = [&](int jj, const Lane<G::kRG>& ln) {
#pragma unroll
    for (int ks = 0; ks < G::kStepKB; ++ks) {
      uint32_t af[4], al[4];
      accumulator_fragment<Elem, split_state>(st, jj * G::kStepNT + 2 * ks, af, al);
      p_at(jj & 1, ln.kp, ln.rg, ks, 0)[ln.lane] = make_uint4(af[0], af[1], af[2], af[3]);
      if constexpr (split_state) p_at(jj & 1, ln.kp, ln.rg, ks, 1)[ln.lane] = make_uint4(al[0], al[1], al[2], al[3]);
    }
  };
  auto load_fragment = [&](int par, int part, const Lane<G::kRG>& ln, int ks, uint32_t(&af)[4], uint32_t(&al)[4]) {
    const uint4 x = p_at(par, part, ln.rg, ks, 0)[ln.lane];
    af[0] = x.x, af[1] = x.y, af[2] = x.z, af[3] = x.w;
    if constexpr (split_state) {
      const uint4 y = p_at(par, part, ln.rg, ks, 1)[ln.lane];
      al[0] = y.x, al[1] = y.y, al[2] = y.z, al[3] = y.w;
    }
  };


  auto a_tile = [&](int slot, int part) { return ring + ((slot * KP + part) * 2) * kT * ldE; };
  auto b_tile = [&](int slot, int part) { return ring + ((slot * KP + part) * 2 + 1) * kT * ldE; };
  auto issue_ab = [&](int k, int jj, int slot) {
    const int tid = fresh_tid();
    const int64_t t0 = int64_t(k) * kT;
    const int Tc = chunk_len(p.S, t0, kT);
#pragma unroll
    for (int part = 0; part < KP; ++part) {
      const int col = part * KW + jj * kStepCols;
      const int cols_valid = min(kStepCols, p.DA - col);
      if (outputs)
        load_tile<Elem, kT, kStepCols, NT>(a_tile(slot, part), ldE, p.A.row<Elem>(blk->b, blk->h, t0) + col, p.A.st, Tc,
                                           cols_valid, p.A.vec, tid);
      load_tile<Elem, kT, kStepCols, NT>(b_tile(slot, part), ldE, p.Bk.row<Elem>(blk->b, blk->h, t0) + col, p.Bk.st, Tc,
                                         cols_valid, p.Bk.vec, tid);
    }
  };
  // Walk iteration it's intra matrix and value rows, and the next iteration's token values.
  auto issue_chunk = [&](int it) {
    const int tid = fresh_tid();
    const int k = chunk_at(it), par = it & 1;
    const int64_t t0 = int64_t(k) * kT;
    const int Tc = chunk_len(p.S, t0, kT);
    if (outputs)
      load_tile<Elem, kT, kT, NT>(sM0 + par * kT * ldT, ldT, static_cast<const Elem*>(p.M) + (blk->bh * p.NC + k) * kT * kT,
                                  kT, kT, kT, true, tid);
    load_tile<Elem, kT, DBs, NT>(sV0 + par * kT * ldV, ldV, p.V.row<Elem>(blk->b, blk->h, t0) + db0(), p.V.st, Tc, DBs, p.V.vec,
                                 tid);
    if (it + 1 < blk->at.n_it) issue_chunk_tokens<NT>(p, blk->bh, chunk_at(it + 1), tok + ((it + 1) & 1), tid);
  };
  // Step gs of the walk (chunk gs / kSteps, contraction step gs % kSteps) as one cp.async group; past
  // the last step an empty group keeps the count.
  auto issue_step = [&](int gs) {
    if (gs < blk->at.n_it * G::kSteps) {
      const int it_ = gs / G::kSteps, jj_ = gs % G::kSteps;
      if (jj_ == 0) issue_chunk(it_);
      issue_ab(chunk_at(it_), jj_, gs % kStages);
    }
    cp_async_commit();
  };

  // The first chunk's token values straight from global memory; every later chunk's arrive one chunk
  // ahead (issue_chunk), and its scales are formed at the end of the chunk before it.
  float alpha;  // the decay of the current chunk
  {
    const int k = chunk_at(0);
    const int Tc = chunk_len(p.S, int64_t(k) * kT, kT);
    const ChunkTokens tk = load_chunk_tokens(p, blk->bh, k);
    // m before the walk: the user's m_initial (0 when absent), a segment's start, or -inf for the local
    // state of a segment (kFwd; the backward walks take every m from the saved m_t).
    double m_k = from.m.data != nullptr ? *from.m.row<float>(blk->b, blk->h, 0) : (p.state_only ? -INFINITY : 0.0);
    if (!is_fwd) m_k = k == 0 ? m_initial() : double(tk.m_prev);
    double m_k1;
    const int tid = fresh_tid();
    alpha = walk_chunk_scalars(p, tk, Tc, m_k, &m_k1, scal, tid);
    if (tid == 0) carry[0] = m_k1, carry[2] = tk.g;
    if constexpr (is_fwd) publish_weights(tid);
  }
#pragma unroll
  for (int gs = 0; gs < kStages - 1; ++gs) issue_step(gs);

  for (int it = 0; it < blk->at.n_it; ++it) {
    const int k = chunk_at(it);
    const int64_t t0 = int64_t(k) * kT;
    const int Tc = chunk_len(p.S, t0, kT);
    const Elem* sM = sM0 + (it & 1) * kT * ldT;
    const Elem* sV = sV0 + (it & 1) * kT * ldV;
    cp_async_wait<kStages - 2>();  // this chunk's first step, with its M and V
    __syncthreads();               // ... and its scales

    // V~ = value rows weighted for the state update.
    for (int idx = fresh_tid(); idx < kT * DBs / kPer; idx += NT) {
      const int rr = idx / (DBs / kPer), c = (idx % (DBs / kPer)) * kPer;
      scale16<Elem>(sVw + rr * ldV + c, sV + rr * ldV + c, scal[kValueW * kT + rr]);
    }

    const float* const nvec_cur = nvec + (it & 1) * (KP * KW);
    float* const nvec_nxt = nvec + ((it + 1) & 1) * (KP * KW);
    // Inter-chunk part out^T of this warp's rows and the tokens its part finishes (all 64 for KP = 1).
    float oacc[G::kOwnNT][4];
    zero(oacc);
    if (KP > 1 && outputs) pack_step(0, Lane<G::kRG>());  // read after the first step's barrier
    // Unrolled: the step selects which state registers it touches, which must be compile-time indices.
#pragma unroll
    for (int jj = 0; jj < G::kSteps; ++jj) {
      const int gs = it * G::kSteps + jj;
      const int slot = gs % kStages;
      cp_async_wait<kStages - 2>();
      __syncthreads();  // step gs landed; every read of the slot refilled below (step gs - 1) is done
      issue_step(gs + kStages - 1);
      const Lane<G::kRG> ln;
      const int q = ln.q, r = ln.r;
      const Elem* As = a_tile(slot, ln.kp);
      const Elem* Bs = b_tile(slot, ln.kp);
      if (outputs) {
        if constexpr (KP == 1) {
          // out^T += S^T(:, this step) A^T: the state (old, before this chunk's update) is the A operand,
          // packed from the registers that hold it.
#pragma unroll
          for (int ks = 0; ks < G::kStepKB; ++ks) {
            uint32_t af[4], al[4];
            accumulator_fragment<Elem, split_state>(st, jj * G::kStepNT + 2 * ks, af, al);
#pragma unroll
            for (int np = 0; np < 4; ++np) {
              uint32_t bf[4];
              ldmatrix_x4(bf, As + (16 * np + r + (q >> 1) * 8) * ldE + ks * 16 + (q & 1) * 8);
              mma16816<Elem>(oacc[2 * np], af, bf[0], bf[1]);
              mma16816<Elem>(oacc[2 * np + 1], af, bf[2], bf[3]);
              if constexpr (split_state) {
                mma16816<Elem>(oacc[2 * np], al, bf[0], bf[1]);
                mma16816<Elem>(oacc[2 * np + 1], al, bf[2], bf[3]);
              }
            }
          }
        } else {
          // The next step's columns of this warp's state, still old, for every part's warps; then
          // out^T(own tokens) += S^T(:, this step of every part) A^T(every part, own tokens), the other
          // parts' state read as the fragments they packed.
          if (jj + 1 < G::kSteps) pack_step(jj + 1, ln);
#pragma unroll
          for (int part = 0; part < KP; ++part) {
            const Elem* Ap = a_tile(slot, part);
#pragma unroll
            for (int ks = 0; ks < G::kStepKB; ++ks) {
              uint32_t af[4], al[4];
              load_fragment(jj & 1, part, ln, ks, af, al);
#pragma unroll
              for (int np = 0; np < G::kOwnNT / 2; ++np) {
                const int tb = 8 * G::kOwnNT * ln.kp + 16 * np;
                uint32_t bf[4];
                ldmatrix_x4(bf, Ap + (tb + r + (q >> 1) * 8) * ldE + ks * 16 + (q & 1) * 8);
                mma16816<Elem>(oacc[2 * np], af, bf[0], bf[1]);
                mma16816<Elem>(oacc[2 * np + 1], af, bf[2], bf[3]);
                if constexpr (split_state) {
                  mma16816<Elem>(oacc[2 * np], al, bf[0], bf[1]);
                  mma16816<Elem>(oacc[2 * np + 1], al, bf[2], bf[3]);
                }
              }
            }
          }
        }
        if (is_fwd && ln.rg < G::kOwnNT) {
          // q.n_k over this step's columns of every part, for own token tile rg (rows 0 and 8 of lanes
          // g = 0), summed over the steps in shared memory (the warp's own slots).
          const int tb = 8 * (ln.kp * G::kOwnNT + ln.rg);
          float qacc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int part = 0; part < KP; ++part) {
#pragma unroll
            for (int ks = 0; ks < G::kStepKB; ++ks) {
              uint32_t nf[4], bf[2];
              n_fragment(it & 1, jj, part, ks, ln, nf);
              ldmatrix_x2(bf, a_tile(slot, part) + (tb + r) * ldE + ks * 16 + (q & 1) * 8);
              mma16816<Elem>(qacc, nf, bf[0], bf[1]);
            }
          }
          if (ln.g == 0) {
            float2* qn = reinterpret_cast<float2*>(scal + kQN * kT + tb + 2 * ln.t4);
            const float2 prev = jj == 0 ? make_float2(0.f, 0.f) : *qn;
            *qn = make_float2(prev.x + (qacc[0] + qacc[2]), prev.y + (qacc[1] + qacc[3]));
          }
        }
      }
      // S^T(:, this step) = alpha S^T + V~^T Bk.
#pragma unroll
      for (int n = 0; n < G::kStepNT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) st[jj * G::kStepNT + n][e] *= alpha;
      }
#pragma unroll
      for (int ks = 0; ks < kT / 16; ++ks) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, sVw + (ks * 16 + r + (q >> 1) * 8) * ldV + 16 * ln.rg + (q & 1) * 8);
#pragma unroll
        for (int np = 0; np < kStepCols / 16; ++np) {
          uint32_t bf[4];
          ldmatrix_x4_trans(bf, Bs + (ks * 16 + r + (q & 1) * 8) * ldE + np * 16 + (q >> 1) * 8);
          mma16816<Elem>(st[jj * G::kStepNT + 2 * np], vf, bf[0], bf[1]);
          mma16816<Elem>(st[jj * G::kStepNT + 2 * np + 1], vf, bf[2], bf[3]);
        }
      }
      if constexpr (is_fwd) {
        // n_{k+1} = alpha n_k + sum_s w_s Bk_s over this step's column tiles rg, rg + kRG, .. of this part.
#pragma unroll
        for (int i = 0; i < G::kNUpdNT; ++i) {
          const int ct = ln.rg + i * G::kRG;
          if (ct >= G::kStepNT) continue;
          float nacc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int ks = 0; ks < kT / 16; ++ks) {
            uint32_t wf[4] = {0u, 0u, 0u, 0u}, bf[2];
            if (ln.g == 0) {
              const uint4 x = wfr[ks * 4 + ln.t4];
              wf[0] = x.x, wf[1] = x.y, wf[2] = x.z, wf[3] = x.w;
            }
            ldmatrix_x2_trans(bf, Bs + (ks * 16 + r + (q & 1) * 8) * ldE + 8 * ct);
            mma16816<Elem>(nacc, wf, bf[0], bf[1]);
          }
          if (ln.g == 0) {
            const int c = ln.kp * KW + jj * kStepCols + 8 * ct + 2 * ln.t4;
            const float n0 = fmaf(alpha, nvec_cur[c], nacc[0] + nacc[2]);
            const float n1 = fmaf(alpha, nvec_cur[c + 1], nacc[1] + nacc[3]);
            *reinterpret_cast<float2*>(nvec_nxt + c) = make_float2(n0, n1);
            *frag_half(n_frag((it + 1) & 1), c) = hi_lo_pair(n0, n1);
          }
        }
      }
    }

    // The extra state row: column tid / kTPA of sum_r aug_in_r V_r, summed by kTPA neighbouring lanes.
    constexpr int kTPA = NT / DBs;
    float aug_new = 0.f;
    if constexpr (has_aug) {
      const int tid = fresh_tid();
#pragma unroll 8
      for (int i = 0; i < kT / kTPA; ++i) {
        const int row = tid % kTPA + kTPA * i;
        aug_new += scal[kAugIn * kT + row] * to_float(sV[row * ldV + tid / kTPA]);
      }
#pragma unroll
      for (int o = 1; o < kTPA; o <<= 1) aug_new += __shfl_xor_sync(0xffffffffu, aug_new, o);
    }
    __syncthreads();  // q.n visible

    if (is_fwd && outputs) {
      const int tid = fresh_tid();
      if (tid < kT) {
        const float den = scal[kRowInter * kT + tid] * scal[kQN * kT + tid] + scal[kRowIntra * kT + tid] * scal[kRowSum * kT + tid];
        scal[kInv * kT + tid] = 1.f / (fmaxf(fabsf(den), expf(-scal[kMRow * kT + tid])) + p.eps);
        if (blk->slice == 0 && p.m_out != nullptr && tid < Tc) {
          p.m_out[blk->bh * p.S + t0 + tid] = scal[kMRow * kT + tid];
          p.den_out[blk->bh * p.S + t0 + tid] = den;
        }
      }
      __syncthreads();  // 1/d visible
    }

    // Intra-chunk part and the epilogue of this part's tokens, a token tile at a time (registers).
    if (outputs) {
      const Lane<G::kRG> ln;
      const int g = ln.g, t4 = ln.t4, q = ln.q, r = ln.r, rg = ln.rg;
#pragma unroll
      for (int n = 0; n < G::kOwnNT; ++n) {
        const int tb = 8 * (ln.kp * G::kOwnNT + n);  // the tile's first token
        float iacc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int ks = 0; ks < kT / 16; ++ks) {
          uint32_t vf[4];  // A = V^T (value rows of this warp x tokens s)
          ldmatrix_x4_trans(vf, sV + (ks * 16 + r + (q >> 1) * 8) * ldV + 16 * rg + (q & 1) * 8);
          uint32_t bf[2];
          if (!reverse)  // b(s, t) = M[t][s]
            ldmatrix_x2(bf, sM + (tb + r) * ldT + ks * 16 + (q & 1) * 8);
          else  // b(s, t) = M[s][t]
            ldmatrix_x2_trans(bf, sM + (ks * 16 + r + (q & 1) * 8) * ldT + tb);
          mma16816<Elem>(iacc, vf, bf[0], bf[1]);
        }
        float dsum[2] = {0.f, 0.f};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int v = 16 * rg + g + 8 * (e >> 1), tt = tb + 2 * t4 + (e & 1);
          const float ri = scal[kRowInter * kT + tt], rl = scal[kRowIntra * kT + tt];
          const float inter = oacc[n][e];
          float rest = rl * iacc[e];
          if (has_aug) rest = fmaf(scal[kAugOut * kT + tt], srow[v], rest);
          float o = fmaf(ri, inter, rest);
          if (is_fwd) o *= scal[kInv * kT + tt];
          sO[tt * ldV + v] = from_float<Elem>(o);
          if (has_aug && p.partner.data != nullptr && tt < Tc) {
            // q.dq (k.dk) for the gate gradients: the inter part is dotted with the partner scaled and
            // rounded exactly as the other walk rounded it into its state update (V~).
            const float pp = to_float(p.partner.row<Elem>(blk->b, blk->h, t0 + tt)[db0() + v]);
            dsum[e & 1] = fmaf(round_to<Elem>(ri * pp), inter, fmaf(pp, rest, dsum[e & 1]));
          }
        }
        if (has_aug && p.partner.data != nullptr) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float d = row_group_sum(dsum[c]);
            if (g == 0) scal[(kDot0 + rg) * kT + tb + 2 * t4 + c] = d;
          }
        }
      }
    }
    __syncthreads();  // sO and the row sums written
    const int tid = fresh_tid();
    if (outputs) {
      for (int idx = tid; idx < kT * DBs / kPer; idx += NT) {
        const int rr = idx / (DBs / kPer), c = (idx % (DBs / kPer)) * kPer;
        if (rr >= Tc) continue;
        Elem* dst = p.out.mut_row<Elem>(blk->b, blk->h, t0 + rr) + db0() + c;
        if (p.out.vec) {
          *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(sO + rr * ldV + c);
        } else {
#pragma unroll
          for (int e = 0; e < kPer; ++e) dst[e] = sO[rr * ldV + c + e];
        }
      }
    }
    if (has_aug && tid % kTPA == 0) srow[tid / kTPA] = fmaf(alpha, srow[tid / kTPA], aug_new);
    if (has_aug && outputs && p.dot_part != nullptr && tid < Tc) {
      float d = 0.f;
#pragma unroll
      for (int c = 0; c < G::kRG; ++c) d += scal[(kDot0 + c) * kT + tid];
      p.dot_part[(int64_t(blk->slice) * p.BNH + blk->bh) * p.S + t0 + tid] = d;
    }
    // The next chunk's scales (its token values landed with this chunk's first step); the scale rows
    // they overwrite were last read before the barrier above.
    if (it + 1 < blk->at.n_it) {
      const int kn = chunk_at(it + 1);
      const int Tcn = chunk_len(p.S, int64_t(kn) * kT, kT);
      const ChunkTokens tn = chunk_tokens_at(p, tok[(it + 1) & 1], Tcn, tid);
      const double m_k = is_fwd ? carry[it & 1] : kn == 0 ? m_initial() : double(tn.m_prev);
      double m_k1;
      alpha = walk_chunk_scalars(p, tn, Tcn, m_k, &m_k1, scal, tid);
      if (tid == 0) carry[(it + 1) & 1] = m_k1, carry[2] += tn.g;
      if constexpr (is_fwd) publish_weights(tid);
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // The walk's end: the state, the extra vector, m, and partial dot products with given states.
  const WalkEnd end = walk_end(p, blk->at, DHQK, DHHV);
  float part = 0.f;
  float* const Xo = end.state_out.data != nullptr ? end.state_out.data + end.state_out.offset(blk->b, blk->h) : nullptr;
  const float* const Xd =
      end.state_dot.data != nullptr ? end.state_dot.data + end.state_dot.offset(blk->b, blk->h) : nullptr;
  if (Xo != nullptr || Xd != nullptr) {
#pragma unroll
    for (int jj = 0; jj < G::kSteps; ++jj) {
      if (jj > 0) __syncthreads();  // the previous round's copies are done
      {
        const Lane<G::kRG> ln;
#pragma unroll
        for (int n = 0; n < G::kStepNT; ++n) {
#pragma unroll
          for (int e2 = 0; e2 < 2; ++e2)
            *reinterpret_cast<float2*>(reg_of(ln, n, e2)) =
                make_float2(st[jj * G::kStepNT + n][2 * e2], st[jj * G::kStepNT + n][2 * e2 + 1]);
        }
      }
      __syncthreads();
      for (int idx = fresh_tid(); idx < DBs * kXCols; idx += NT) {
        int v, c, d;
        stage_index(idx, jj, &v, &c, &d);
        if (d >= p.DA) continue;
        const float x = *staged(v, c);
        if (Xo != nullptr) state_at(Xo, end.state_out.s_row, natural, db0() + v, d) = x;
        if (Xd != nullptr) part += x * state_at(Xd, end.state_dot.s_row, natural, db0() + v, d);
      }
    }
  }
  walk_finish_vectors<NT>(p, end, blk->b, blk->h, blk->bh, blk->slice, db0(), DBs, nvec + (blk->at.n_it & 1) * (KP * KW), srow,
                          float(carry[(blk->at.n_it - 1) & 1]), float(carry[2]), part, tmp);
}

}  // namespace mlstm::cuda::chunkwise
