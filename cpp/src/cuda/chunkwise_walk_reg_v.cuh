// The register walk of the v walks (kDq, kDk: contraction over DHHV, value slices of DHQK): the
// chunkwise walk (chunkwise_kernels.cuh, the same math) with the state slice held in registers, in the
// mma.sync accumulator layout, for the whole walk. The library runs these two walks on this kernel and
// the qk walks (kFwd, kDv) on chunkwise_walk_reg.cuh's: see chunkwise.cu (pick_reg_split) for the
// timings behind that choice.
//
// 8 warps of up to 255 registers, one block per SM. Each warp owns 16 rows of the state slice (value
// index) and KW columns of the contraction:
//   warp w: row group rg = w % (DBs/16), contraction part kp = w / (DBs/16);
//   st[n][e] = S(row 16 rg + g + 8 (e >> 1), column kp KW + 8 n + 2 t + (e & 1)).
// The state is C (kDq) or dC (kDk) in its natural (DHQK, DHHV) layout. Because an accumulator tile pair
// is exactly an A-operand fragment, the inter-chunk product is taken transposed, out^T = S A^T, with the
// state as the A operand straight from registers, as hi + lo parts (fp32 accuracy: the gate gradients
// dot these outputs); the update S = alpha S + V~^T Bk accumulates into the same registers. No state
// element moves through shared memory during the walk. Each part takes the inter product of all 64
// tokens over its own KW columns; parts (KP > 1) add their partial outputs through shared memory
// before the epilogue. The extra state row (kDq: n, kDk: dn) lives in shared memory. The output tile is
// staged in shared memory and stored with 16-byte writes.
//
// Loads: each contraction step (kTK columns of every part) is one cp.async group of the A and Bk
// tiles, issued kStages - 1 steps ahead; the chunk's intra matrix and value rows (double buffered)
// ride with its first step. The next chunk's token values are held in registers a chunk ahead.
#pragma once

#include "cuda/chunkwise_kernels.cuh"  // the shared helpers (scale16) and stages

namespace mlstm::cuda::chunkwise {

template <int DBs, int KP, int KW>
struct VWalkGeom {
  static constexpr int kRG = DBs / 16;
  static constexpr int kWarpCount = kRG * KP;
  static constexpr int kThreadCount = kWarpCount * 32;
  static constexpr int kNT = KW / 8;       // state n-tiles per warp
  static constexpr int kSteps = KW / kTK;  // contraction steps per part and chunk
  static_assert(kWarpCount == 8, "the v-walk kernel runs 8 warps");
  static_assert(KW % kTK == 0 && KW <= 256, "contraction columns per warp");
};

// Shared memory of one v-walk block, in bytes from the start of the dynamic buffer.
template <typename Elem, int DBs, int KP, int KW>
struct VWalkSmem {
  static constexpr int ldE = kTK + kPad<Elem>, ldT = kT + kPad<Elem>, ldV = DBs + kPad<Elem>;
  // Contraction steps in flight: the ring holds kStages steps' tiles, so the loads of a step are
  // issued kStages - 1 steps ahead. The intra matrix and value rows of a chunk are double buffered
  // and ride with its first step, which bounds the depth by the steps per chunk plus one.
  static constexpr int kSteps = KW / kTK;
  static constexpr int kStages = (KP == 1 ? 4 : 3) < kSteps + 1 ? (KP == 1 ? 4 : 3) : kSteps + 1;
  size_t ring = 0, M = 0, V = 0, Vw = 0, O = 0, X = 0, srow = 0, scal = 0, bytes = 0;
  __host__ __device__ VWalkSmem() {
    size_t o = 0;
    ring = WalkSmem<Elem>::take(&o, size_t(kStages) * KP * 2 * kT * ldE * sizeof(Elem));  // stages x parts x (A, Bk)
    M = WalkSmem<Elem>::take(&o, size_t(2) * kT * ldT * sizeof(Elem));
    V = WalkSmem<Elem>::take(&o, size_t(2) * kT * ldV * sizeof(Elem));
    Vw = WalkSmem<Elem>::take(&o, size_t(kT) * ldV * sizeof(Elem));
    O = WalkSmem<Elem>::take(&o, size_t(kT) * ldV * sizeof(Elem));
    X = WalkSmem<Elem>::take(&o, size_t(KP - 1) * DBs * kT * sizeof(float));  // partial outputs of parts 1..
    srow = WalkSmem<Elem>::take(&o, size_t(DBs) * sizeof(float));
    scal = WalkSmem<Elem>::take(&o, size_t(kNumScalars) * kT * sizeof(float) + kWalkWarps * sizeof(float));
    bytes = o;
  }
};

// One kernel per walk: kDq walks forward in time, kDk backward.
template <typename Elem, int DBs, int KP, int KW, WalkMode kMode>
__global__ void __launch_bounds__(VWalkGeom<DBs, KP, KW>::kThreadCount, 1)
    chunkwise_walk_reg_v_kernel(const WalkParams p) {
  static_assert(kMode == WalkMode::kDq || kMode == WalkMode::kDk, "the v walks");
  using G = VWalkGeom<DBs, KP, KW>;
  using L = VWalkSmem<Elem, DBs, KP, KW>;
  constexpr int NT = G::kThreadCount;
  constexpr int kPer = 16 / int(sizeof(Elem));
  constexpr int ldE = L::ldE, ldT = L::ldT, ldV = L::ldV;
  constexpr bool reverse = kMode == WalkMode::kDk;
  const int slice = blockIdx.x;
  const int64_t bh = blockIdx.y, b = bh / p.NH, h = bh % p.NH;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3, q = lane >> 3, r = lane & 7;
  const int rg = warp % G::kRG, kp = warp / G::kRG;

  const L lay;
  unsigned char* smem = dynamic_smem();
  Elem* ring = reinterpret_cast<Elem*>(smem + lay.ring);
  Elem* const sM0 = reinterpret_cast<Elem*>(smem + lay.M);  // two buffers each, by chunk parity
  Elem* const sV0 = reinterpret_cast<Elem*>(smem + lay.V);
  Elem* sVw = reinterpret_cast<Elem*>(smem + lay.Vw);
  Elem* sO = reinterpret_cast<Elem*>(smem + lay.O);
  float* xch = reinterpret_cast<float*>(smem + lay.X);
  float* srow = reinterpret_cast<float*>(smem + lay.srow);
  float* scal = reinterpret_cast<float*>(smem + lay.scal);
  float* tmp = scal + kNumScalars * kT;

  const int db0 = slice * DBs;
  const int DHQK = p.DB, DHHV = p.DA;  // the natural layout: value index = DHQK row

  const WalkPlace at(p, reverse);
  const int n_it = at.n_it;
  const bool outputs = !p.state_only;

  // The state slice in registers, and the element each register holds.
  float st[G::kNT][4];
  auto st_row = [&](int e) { return db0 + 16 * rg + g + 8 * (e >> 1); };          // value index
  auto st_col = [&](int n, int e) { return kp * KW + 8 * n + 2 * t4 + (e & 1); };  // contraction index

  const WalkStart from = walk_start(p, at, DHQK, DHHV);
  {
    const float* X = from.state.data != nullptr ? from.state.data + from.state.offset(b, h) : nullptr;
#pragma unroll
    for (int n = 0; n < G::kNT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int v = st_row(e), d = st_col(n, e);
        float x = 0.f;
        if (X != nullptr && d < p.DA) x = state_at(X, from.state.s_row, true, v, d);
        st[n][e] = x;
      }
    }
    walk_load_vectors<NT>(p, from, b, h, db0, DBs, /*n_len=*/0, /*nvec=*/nullptr, srow);  // no n: not a forward
  }
  const double m_initial = p.m_in.data != nullptr ? *p.m_in.row<float>(b, h, 0) : 0.0;
  double g_total = 0.0;

  auto chunk_at = [&](int it) { return at.chunk_at(it, reverse); };
  auto a_tile = [&](int slot, int part) { return ring + ((slot * KP + part) * 2) * kT * ldE; };
  auto b_tile = [&](int slot, int part) { return ring + ((slot * KP + part) * 2 + 1) * kT * ldE; };
  auto issue_ab = [&](int k, int jj, int slot) {
    const int64_t t0 = int64_t(k) * kT;
    const int Tc = chunk_len(p.S, t0, kT);
#pragma unroll
    for (int part = 0; part < KP; ++part) {
      const int col = part * KW + jj * kTK;
      const int cols_valid = min(kTK, p.DA - col);
      if (outputs)
        load_tile<Elem, kT, kTK, NT>(a_tile(slot, part), ldE, p.A.row<Elem>(b, h, t0) + col, p.A.st, Tc, cols_valid,
                                     p.A.vec, tid);
      load_tile<Elem, kT, kTK, NT>(b_tile(slot, part), ldE, p.Bk.row<Elem>(b, h, t0) + col, p.Bk.st, Tc, cols_valid,
                                   p.Bk.vec, tid);
    }
  };
  auto issue_mv = [&](int k, int par) {
    const int64_t t0 = int64_t(k) * kT;
    const int Tc = chunk_len(p.S, t0, kT);
    if (outputs)
      load_tile<Elem, kT, kT, NT>(sM0 + par * kT * ldT, ldT, static_cast<const Elem*>(p.M) + (bh * p.NC + k) * kT * kT,
                                  kT, kT, kT, true, tid);
    load_tile<Elem, kT, DBs, NT>(sV0 + par * kT * ldV, ldV, p.V.row<Elem>(b, h, t0) + db0, p.V.st, Tc, DBs, p.V.vec,
                                 tid);
  };
  // Step gs of the walk (chunk gs / kSteps, contraction tile gs % kSteps) as one cp.async group; past
  // the last step an empty group keeps the count.
  constexpr int kStages = L::kStages;
  const int n_steps = n_it * G::kSteps;
  auto issue_step = [&](int gs) {
    if (gs < n_steps) {
      const int it_ = gs / G::kSteps, jj_ = gs % G::kSteps;
      if (jj_ == 0) issue_mv(chunk_at(it_), it_ & 1);
      issue_ab(chunk_at(it_), jj_, gs % kStages);
    }
    cp_async_commit();
  };

#pragma unroll
  for (int gs = 0; gs < kStages - 1; ++gs) issue_step(gs);
  ChunkTokens next = load_chunk_tokens(p, bh, chunk_at(0));

  for (int it = 0; it < n_it; ++it) {
    const int k = chunk_at(it);
    const int64_t t0 = int64_t(k) * kT;
    const int Tc = chunk_len(p.S, t0, kT);
    const ChunkTokens tk = next;
    // m before the chunk: the initial m for the first chunk, else the saved m_t of the token before it.
    const double m_k = k == 0 ? m_initial : double(tk.m_prev);
    double m_k1;  // m after the chunk (the saved m_t of its last token), not needed here
    const float alpha = walk_chunk_scalars(p, tk, Tc, m_k, &m_k1, scal);
    if (it + 1 < n_it) next = load_chunk_tokens(p, bh, chunk_at(it + 1));
    const Elem* sM = sM0 + (it & 1) * kT * ldT;
    const Elem* sV = sV0 + (it & 1) * kT * ldV;
    cp_async_wait<kStages - 2>();  // this chunk's first step, with its M and V
    __syncthreads();

    // V~ = value rows weighted for the state update.
    for (int idx = tid; idx < kT * DBs / kPer; idx += NT) {
      const int rr = idx / (DBs / kPer), c = (idx % (DBs / kPer)) * kPer;
      scale16<Elem>(sVw + rr * ldV + c, sV + rr * ldV + c, scal[kValueW * kT + rr]);
    }

    float oacc[8][4];  // out^T: rows of this warp x the chunk's 64 tokens (inter-chunk part)
    zero(oacc);
    // Unrolled: the step selects which state registers it touches, which must be compile-time indices.
#pragma unroll
    for (int jj = 0; jj < G::kSteps; ++jj) {
      const int gs = it * G::kSteps + jj;
      const int slot = gs % kStages;
      cp_async_wait<kStages - 2>();
      __syncthreads();  // step gs landed; every read of the slot refilled below (step gs - 1) is done
      issue_step(gs + kStages - 1);
      const Elem* As = a_tile(slot, kp);
      const Elem* Bs = b_tile(slot, kp);
      if (outputs) {
        // out^T += S(:, this tile) A^T: the state (old, before this chunk's update) is the A operand.
#pragma unroll
        for (int ks = 0; ks < kTK / 16; ++ks) {
          uint32_t af[4], al[4];
          accumulator_fragment<Elem, /*kSplit=*/true>(st, jj * 8 + 2 * ks, af, al);
#pragma unroll
          for (int np = 0; np < 4; ++np) {
            uint32_t bf[4];
            ldmatrix_x4(bf, As + (16 * np + r + (q >> 1) * 8) * ldE + ks * 16 + (q & 1) * 8);
            mma16816<Elem>(oacc[2 * np], af, bf[0], bf[1]);
            mma16816<Elem>(oacc[2 * np + 1], af, bf[2], bf[3]);
            mma16816<Elem>(oacc[2 * np], al, bf[0], bf[1]);
            mma16816<Elem>(oacc[2 * np + 1], al, bf[2], bf[3]);
          }
        }
      }
      // S(:, this tile) = alpha S + V~^T Bk.
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) st[jj * 8 + n][e] *= alpha;
      }
#pragma unroll
      for (int ks = 0; ks < kT / 16; ++ks) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, sVw + (ks * 16 + r + (q >> 1) * 8) * ldV + 16 * rg + (q & 1) * 8);
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          uint32_t bf[4];
          ldmatrix_x4_trans(bf, Bs + (ks * 16 + r + (q & 1) * 8) * ldE + np * 16 + (q >> 1) * 8);
          mma16816<Elem>(st[jj * 8 + 2 * np], vf, bf[0], bf[1]);
          mma16816<Elem>(st[jj * 8 + 2 * np + 1], vf, bf[2], bf[3]);
        }
      }
    }

    // Partial inter products of the other contraction parts join part 0.
    if (KP > 1 && outputs) {
      if (kp > 0) {
        float* x = xch + ((kp - 1) * G::kRG + rg) * (32 * 32);
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) x[(n * 4 + e) * 32 + lane] = oacc[n][e];
      }
      __syncthreads();
      if (kp == 0) {
#pragma unroll
        for (int part = 1; part < KP; ++part) {
          const float* x = xch + ((part - 1) * G::kRG + rg) * (32 * 32);
#pragma unroll
          for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) oacc[n][e] += x[(n * 4 + e) * 32 + lane];
        }
      }
    }
    // The extra state row: column tid / kTPA of sum_r aug_in_r V_r, summed by kTPA neighbouring lanes.
    constexpr int kTPA = NT / DBs;
    float aug_new = 0.f;
#pragma unroll 8
    for (int i = 0; i < kT / kTPA; ++i) {
      const int row = tid % kTPA + kTPA * i;
      aug_new += scal[kAugIn * kT + row] * to_float(sV[row * ldV + tid / kTPA]);
    }
#pragma unroll
    for (int o = 1; o < kTPA; o <<= 1) aug_new += __shfl_xor_sync(0xffffffffu, aug_new, o);

    // Intra-chunk part and the epilogue, by the warps of part 0, in two halves of 32 tokens.
    if (outputs && kp == 0) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float iacc[4][4];
        zero(iacc);
#pragma unroll
        for (int ks = 0; ks < kT / 16; ++ks) {
          uint32_t vf[4];  // A = V^T (value rows of this warp x tokens s)
          ldmatrix_x4_trans(vf, sV + (ks * 16 + r + (q >> 1) * 8) * ldV + 16 * rg + (q & 1) * 8);
#pragma unroll
          for (int np = 0; np < 2; ++np) {
            const int tb = 16 * (2 * half + np);
            uint32_t bf[4];
            if (!reverse)  // b(s, t) = M[t][s]
              ldmatrix_x4(bf, sM + (tb + r + (q >> 1) * 8) * ldT + ks * 16 + (q & 1) * 8);
            else  // b(s, t) = M[s][t]
              ldmatrix_x4_trans(bf, sM + (ks * 16 + r + (q & 1) * 8) * ldT + tb + (q >> 1) * 8);
            mma16816<Elem>(iacc[2 * np], vf, bf[0], bf[1]);
            mma16816<Elem>(iacc[2 * np + 1], vf, bf[2], bf[3]);
          }
        }
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const int nt = 4 * half + n;
          float dsum[2] = {0.f, 0.f};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int v = 16 * rg + g + 8 * (e >> 1), tt = 8 * nt + 2 * t4 + (e & 1);
            const float ri = scal[kRowInter * kT + tt], rl = scal[kRowIntra * kT + tt];
            const float inter = oacc[nt][e];
            const float rest = fmaf(scal[kAugOut * kT + tt], srow[v], rl * iacc[n][e]);
            sO[tt * ldV + v] = from_float<Elem>(fmaf(ri, inter, rest));
            if (p.partner.data != nullptr && tt < Tc) {
              // q.dq (k.dk) for the gate gradients: the inter part is dotted with the partner scaled and
              // rounded exactly as the other walk rounded it into its state update (V~).
              const float pp = to_float(p.partner.row<Elem>(b, h, t0 + tt)[db0 + v]);
              dsum[e & 1] = fmaf(round_to<Elem>(ri * pp), inter, fmaf(pp, rest, dsum[e & 1]));
            }
          }
          if (p.partner.data != nullptr) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const float d = row_group_sum(dsum[c]);
              if (g == 0) scal[(kDot0 + rg) * kT + 8 * nt + 2 * t4 + c] = d;
            }
          }
        }
      }
    }
    __syncthreads();  // sO and the row sums written; srow read
    if (outputs) {
      for (int idx = tid; idx < kT * DBs / kPer; idx += NT) {
        const int rr = idx / (DBs / kPer), c = (idx % (DBs / kPer)) * kPer;
        if (rr >= Tc) continue;
        Elem* dst = p.out.mut_row<Elem>(b, h, t0 + rr) + db0 + c;
        if (p.out.vec) {
          *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(sO + rr * ldV + c);
        } else {
#pragma unroll
          for (int e = 0; e < kPer; ++e) dst[e] = sO[rr * ldV + c + e];
        }
      }
    }
    if (tid % kTPA == 0) srow[tid / kTPA] = fmaf(alpha, srow[tid / kTPA], aug_new);
    if (outputs && p.dot_part != nullptr && tid < Tc) {
      float d = 0.f;
#pragma unroll
      for (int c = 0; c < G::kRG; ++c) d += scal[(kDot0 + c) * kT + tid];
      p.dot_part[(int64_t(slice) * p.BNH + bh) * p.S + t0 + tid] = d;
    }
    g_total += tk.g;
  }
  cp_async_wait<0>();
  __syncthreads();

  // The walk's end: the state, the extra vector, and partial dot products with given states.
  const WalkEnd end = walk_end(p, at, DHQK, DHHV);
  float part = 0.f;
  {
    float* Xo = end.state_out.data != nullptr ? end.state_out.data + end.state_out.offset(b, h) : nullptr;
    const float* Xd = end.state_dot.data != nullptr ? end.state_dot.data + end.state_dot.offset(b, h) : nullptr;
#pragma unroll
    for (int n = 0; n < G::kNT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int v = st_row(e), d = st_col(n, e);
        if (d >= p.DA) continue;
        if (Xo != nullptr) state_at(Xo, end.state_out.s_row, true, v, d) = st[n][e];
        if (Xd != nullptr) part += st[n][e] * state_at(Xd, end.state_dot.s_row, true, v, d);
      }
    }
  }
  // m_final only matters to the forward.
  walk_finish_vectors<NT>(p, end, b, h, bh, slice, db0, DBs, /*nvec=*/nullptr, srow, /*m_final=*/0.f, float(g_total),
                          part, tmp);
}

}  // namespace mlstm::cuda::chunkwise
