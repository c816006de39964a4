// The chunkwise kernels (work mapping: which block does which chunk, head and value slice).
//
// Forward (two launches):
//   chunkwise_fwd_scores_kernel  one block per (chunk, b*h): the local-stabilised intra matrix
//       P_loc_{t,s} = q_hat_t.k_s exp(u_s - max_{s'<=t} u_s') (s <= t), its row sums, b, u, m_intra.
//   chunkwise_walk_kernel<kFwd>  one block per (value slice, b*h): walks the chunks in order with the
//       state slice C^T (DB_s x DHQK, fp32) in shared memory, never storing it:
//         m_t = max(b_t + m_k, m_intra_t),  h_t = [s beta_t C_k^T q_t + lambda_t (P_loc V)_t] / d_t,
//         den_t = s beta_t q_t.n_k + lambda_t rowsum(P_loc)_t,  C_{k+1} = alpha C_k + sum_s w_s k_s v_s^T.
// Backward (five launches; exact gradients, docs/dev-notes.md "Exact gradients"):
//   chunkwise_bwd_scores_kernel  per chunk: M1 = (q.k) E', M2 = (dh.v + sigma~) E' with
//       E'_{t,s} = exp(logD_{t,s} - m_t - log d_t) (the 1/d_t of dh' folded into the stabiliser),
//       sigma~_t = -[|den_t| >= exp(-m_t)] sign(den_t) dh_t.h_t, and the per-token terms.
//   chunkwise_walk_kernel<kDq>   forward in time, state C:   dq = s beta'(C dh + sigma~ n) + s M2 K
//   chunkwise_walk_kernel<kDv>   backward in time, state dC^T: dv = w dC^T k + s M1^T dH
//   chunkwise_walk_kernel<kDk>   backward in time, state dC:   dk = w (dC v + dn) + s M2^T Q
//   chunkwise_bwd_gates_kernel   (chunkwise_gates.cuh) di, df and dm_initial.
#pragma once

#include "cuda/chunkwise_stages.cuh"

namespace mlstm::cuda::chunkwise {

// Shared memory of the score kernels: 2 stages x 3 tiles, then float scratch.
template <typename Elem>
constexpr size_t score_smem_bytes() {
  return size_t(6) * kT * (kTK + kPad<Elem>) * sizeof(Elem) + size_t(6) * kT * sizeof(double) + 64;
}

// The score kernels' scratch after the tile ring: per-token fp64 b, u, pmax, x; fp32 sums; 2 fp64 temps.
struct ScoreScratch {
  double *b, *u, *pm, *x, *tmp;
  float* f;  // 2 * kT floats
  template <typename Elem>
  __device__ static ScoreScratch carve() {
    double* d = reinterpret_cast<double*>(dynamic_smem() + size_t(6) * kT * (kTK + kPad<Elem>) * sizeof(Elem));
    return ScoreScratch{d, d + kT, d + 2 * kT, d + 3 * kT, d + 4 * kT, reinterpret_cast<float*>(d + 5 * kT)};
  }
};

template <typename Elem>
__global__ void __launch_bounds__(kThreads) chunkwise_fwd_scores_kernel(const FwdScoreParams p) {
  const int k = blockIdx.x;
  const int64_t bh = blockIdx.y, b = bh / p.NH, h = bh % p.NH;
  const int64_t t0 = int64_t(k) * kT;
  const int Tc = chunk_len(p.S, t0, kT);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3, rb = warp & 3, ch = warp >> 2;

  Elem* ring = reinterpret_cast<Elem*>(dynamic_smem());
  const ScoreScratch sc = ScoreScratch::carve<Elem>();
  double *s_b = sc.b, *s_u = sc.u, *s_pm = sc.pm;
  float* s_rs = sc.f;

  chunk_gate_scan(p.i, p.f, p.gate_dtype, b, h, t0, Tc, s_b, s_u, s_pm, sc.tmp);
  if (tid < Tc) {
    const int64_t o = bh * p.S + t0 + tid;
    p.tok.b[o] = s_b[tid];
    p.tok.u[o] = s_u[tid];
    p.tok.c[o] = s_b[tid] + s_pm[tid];
  }

  float acc[4][4];
  zero(acc);
  float unused = 0.f;
  score_products<Elem>(acc, p.q, p.k, nullptr, unused, b, h, t0, Tc, p.DHQK, ring);

  Elem* M = static_cast<Elem*>(p.M) + (bh * p.NC + k) * kT * kT;
  float row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e2 = 0; e2 < 2; ++e2) {
      const int row = 16 * rb + g + 8 * e2;
      const int col = 32 * ch + nt * 8 + 2 * t;
      float v[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int s = col + e;
        const bool valid = s <= row && row < Tc;
        v[e] = valid ? p.qk_scale * acc[nt][2 * e2 + e] * fast_exp(float(s_u[s] - s_pm[row])) : 0.f;
      }
      row_sum[e2] += v[0] + v[1];
      store2(M + row * kT + col, v[0], v[1]);
    }
  }
#pragma unroll
  for (int e2 = 0; e2 < 2; ++e2) {
    const float r = quad_sum(row_sum[e2]);
    if (t == 0) s_rs[ch * kT + 16 * rb + g + 8 * e2] = r;
  }
  __syncthreads();
  if (tid < Tc) p.tok.d[bh * p.S + t0 + tid] = s_rs[tid] + s_rs[kT + tid];
}

template <typename Elem>
__global__ void __launch_bounds__(kThreads) chunkwise_bwd_scores_kernel(const BwdScoreParams p) {
  const int k = blockIdx.x;
  const int64_t bh = blockIdx.y, b = bh / p.NH, h = bh % p.NH;
  const int64_t t0 = int64_t(k) * kT;
  const int Tc = chunk_len(p.S, t0, kT);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3, rb = warp & 3, ch = warp >> 2;

  Elem* ring = reinterpret_cast<Elem*>(dynamic_smem());
  const ScoreScratch sc = ScoreScratch::carve<Elem>();
  double *s_b = sc.b, *s_u = sc.u, *s_x = sc.x;
  float* s_sig = sc.f;

  chunk_gate_scan(p.i, p.f, p.gate_dtype, b, h, t0, Tc, s_b, s_u, sc.pm, sc.tmp);

  float acc1[4][4], acc2[4][4];
  zero(acc1);
  zero(acc2);
  float zdot = 0.f;
  score_products<Elem>(acc1, p.q, p.k, nullptr, zdot, b, h, t0, Tc, p.DHQK, ring);
  score_products<Elem>(acc2, p.dh, p.v, &p.h, zdot, b, h, t0, Tc, p.DHHV, ring);
  zdot = quad_sum(zdot);  // the four threads of row tid/4

  const int row_of_thread = tid >> 2;
  if ((tid & 3) == 0) {
    double x = 0.0;
    float sig = 0.f;
    if (row_of_thread < Tc) {
      const int64_t o = bh * p.S + t0 + row_of_thread;
      const float m = p.m_saved[o], den = p.den_saved[o];
      const float floor_ = expf(-m);
      const float d = fmaxf(fabsf(den), floor_) + p.eps;
      sig = fabsf(den) >= floor_ ? (den > 0.f ? -zdot : zdot) : 0.f;
      x = s_b[row_of_thread] - (double(m) + double(logf(d)));
      p.tok.b[o] = s_b[row_of_thread];
      p.tok.u[o] = s_u[row_of_thread];
      p.tok.c[o] = x;
      p.tok.d[o] = sig;
      p.tok.e[o] = -p.eps * zdot / d;
    }
    s_x[row_of_thread] = x;
    s_sig[row_of_thread] = sig;
  }
  __syncthreads();

  const int64_t moff = (bh * p.NC + k) * kT * kT;
  Elem* M1 = static_cast<Elem*>(p.M1) + moff;
  Elem* M2 = static_cast<Elem*>(p.M2) + moff;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e2 = 0; e2 < 2; ++e2) {
      const int row = 16 * rb + g + 8 * e2;
      const int col = 32 * ch + nt * 8 + 2 * t;
      float v1[2], v2[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int s = col + e;
        const bool valid = s <= row && row < Tc;
        const float E = valid ? fast_exp(float(s_u[s] + s_x[row])) : 0.f;
        v1[e] = acc1[nt][2 * e2 + e] * E;
        v2[e] = (acc2[nt][2 * e2 + e] + s_sig[row]) * E;
      }
      store2(M1 + row * kT + col, v1[0], v1[1]);
      store2(M2 + row * kT + col, v2[0], v2[1]);
    }
  }
}

// dst[0..kPer) = w * src[0..kPer) for one 16-byte run of elements (kPer = 16 / sizeof(Elem)).
template <typename Elem>
__device__ __forceinline__ void scale16(Elem* dst, const Elem* src, float w) {
  if constexpr (std::is_same_v<Elem, float>) {
    float4 x = *reinterpret_cast<const float4*>(src);
    x.x *= w, x.y *= w, x.z *= w, x.w *= w;
    *reinterpret_cast<float4*>(dst) = x;
  } else {
    uint4 x = *reinterpret_cast<const uint4*>(src);
    uint32_t* u = reinterpret_cast<uint32_t*>(&x);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 f = unpack2<Elem>(u[e]);
      u[e] = pack2<Elem>(w * f.x, w * f.y);
    }
    *reinterpret_cast<uint4*>(dst) = x;
  }
}

// sum_{e<8} a[e] * n[e] for 8 elements of a (16-byte aligned for 16-bit types) and 8 floats of n.
template <typename Elem>
__device__ __forceinline__ float dot8(const Elem* a, const float* n) {
  const float4 n0 = *reinterpret_cast<const float4*>(n), n1 = *reinterpret_cast<const float4*>(n + 4);
  if constexpr (std::is_same_v<Elem, float>) {
    const float4 a0 = *reinterpret_cast<const float4*>(a), a1 = *reinterpret_cast<const float4*>(a + 4);
    return a0.x * n0.x + a0.y * n0.y + a0.z * n0.z + a0.w * n0.w + a1.x * n1.x + a1.y * n1.y + a1.z * n1.z +
           a1.w * n1.w;
  } else {
    const uint4 x = *reinterpret_cast<const uint4*>(a);
    const float2 f0 = unpack2<Elem>(x.x), f1 = unpack2<Elem>(x.y), f2 = unpack2<Elem>(x.z), f3 = unpack2<Elem>(x.w);
    return f0.x * n0.x + f0.y * n0.y + f1.x * n0.z + f1.y * n0.w + f2.x * n1.x + f2.y * n1.y + f3.x * n1.z +
           f3.y * n1.w;
  }
}

// Sum over the eight lanes 8q..8q+7.
__device__ __forceinline__ float octet_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  return v;
}

// One block walks all chunks of one (b, h) for one slice of DBs value columns (the slices divide the
// value dimension). Every tile count is a compile-time constant of DBs (WalkGeom).
template <typename Elem, int DBs>
__global__ void __launch_bounds__(kWalkThreads, 1) chunkwise_walk_kernel(const WalkParams p) {
  using G = WalkGeom<DBs>;
  constexpr int kPer = 16 / int(sizeof(Elem));
  const WalkMode mode = p.mode;
  const bool reverse = mode == WalkMode::kDv || mode == WalkMode::kDk;
  const bool is_fwd = mode == WalkMode::kFwd;
  const bool has_aug = mode == WalkMode::kDq || mode == WalkMode::kDk;
  const bool split_state = has_aug;
  const int slice = blockIdx.x;
  const int64_t bh = blockIdx.y, b = bh / p.NH, h = bh % p.NH;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;

  const WalkSmem<Elem> L(p.DA, DBs);
  unsigned char* smem = dynamic_smem();
  Elem* ring = reinterpret_cast<Elem*>(smem + L.ring);
  Elem* sM = reinterpret_cast<Elem*>(smem + L.M);
  Elem* sV = reinterpret_cast<Elem*>(smem + L.V);
  Elem* sVw = reinterpret_cast<Elem*>(smem + L.Vw);
  float* St = reinterpret_cast<float*>(smem + L.St);
  float* nvec = reinterpret_cast<float*>(smem + L.nvec);
  float* srow = reinterpret_cast<float*>(smem + L.srow);
  float* scal = reinterpret_cast<float*>(smem + L.scal);
  float* tmp = scal + kNumScalars * kT;
  const int ldE = L.ldE, ldT = L.ldT, ldV = L.ldV, ldS = L.ldS;
  const int nj = L.DA_pad / kTK;

  const int db0 = slice * DBs;
  const bool natural = state_is_natural(mode);
  const int DHQK = natural ? p.DB : p.DA, DHHV = natural ? p.DA : p.DB;

  // This block's segment of the sequence and its place in the walk.
  const WalkPlace at(p, reverse);
  const int n_it = at.n_it;
  const bool outputs = !p.state_only;

  // Output tile (kT x DBs): rows 16*rb.., columns ocol..ocol+kOutCols.
  const int rb = warp & 3, wc = warp >> 2;
  const bool out_warp = outputs && wc < G::kOutCG;
  const int ocol = wc * G::kOutCols;
  // State update tile (DBs x kTK).
  const int urb = warp % G::kUpdRB, ucg = warp / G::kUpdRB;
  const bool upd_warp = ucg < G::kUpdCG;
  const int urow = 16 * urb, ucol = ucg * G::kUpdCols;

  const WalkStart from = walk_start(p, at, DHQK, DHHV);
  walk_load_state(p, from, b, h, db0, DBs, St, ldS, L.DA_pad, nvec, srow);
  // m before the walk: the user's m_initial (0 when absent), a segment's start, or -inf for the
  // local state of a segment (kFwd; the backward walks take every m from the saved m_t).
  double m_k = from.m.data != nullptr ? *from.m.row<float>(b, h, 0) : (p.state_only ? -INFINITY : 0.0);
  const double m_initial = p.m_in.data != nullptr ? *p.m_in.row<float>(b, h, 0) : 0.0;
  double g_total = 0.0;

  auto chunk_at = [&](int it) { return at.chunk_at(it, reverse); };
  auto a_tile = [&](int slot) { return ring + (2 * slot) * kT * ldE; };
  auto b_tile = [&](int slot) { return ring + (2 * slot + 1) * kT * ldE; };
  auto issue_ab = [&](int k, int j, int slot) {
    const int64_t t0 = int64_t(k) * kT;
    const int Tc = chunk_len(p.S, t0, kT);
    const int cols_valid = min(kTK, p.DA - j * kTK);
    if (outputs)
      load_tile<Elem, kT, kTK, kWalkThreads>(a_tile(slot), ldE, p.A.row<Elem>(b, h, t0) + j * kTK, p.A.st, Tc,
                                             cols_valid, p.A.vec, tid);
    load_tile<Elem, kT, kTK, kWalkThreads>(b_tile(slot), ldE, p.Bk.row<Elem>(b, h, t0) + j * kTK, p.Bk.st, Tc,
                                           cols_valid, p.Bk.vec, tid);
  };
  auto issue_mv = [&](int k) {
    const int64_t t0 = int64_t(k) * kT;
    const int Tc = chunk_len(p.S, t0, kT);
    if (outputs)
      load_tile<Elem, kT, kT, kWalkThreads>(sM, ldT, static_cast<const Elem*>(p.M) + (bh * p.NC + k) * kT * kT, kT,
                                            kT, kT, true, tid);
    load_tile<Elem, kT, DBs, kWalkThreads>(sV, ldV, p.V.row<Elem>(b, h, t0) + db0, p.V.st, Tc, DBs, p.V.vec, tid);
  };

  int slot = 0;
  issue_mv(chunk_at(0));
  issue_ab(chunk_at(0), 0, slot);
  cp_async_commit();
  ChunkTokens next = load_chunk_tokens(p, bh, chunk_at(0));

  for (int it = 0; it < n_it; ++it) {
    const int k = chunk_at(it);
    const int64_t t0 = int64_t(k) * kT;
    const int Tc = chunk_len(p.S, t0, kT);
    const ChunkTokens tk = next;
    if (!is_fwd) m_k = k == 0 ? m_initial : double(tk.m_prev);
    double m_k1;
    const float alpha = walk_chunk_scalars(p, tk, Tc, m_k, &m_k1, scal);
    if (it + 1 < n_it) next = load_chunk_tokens(p, bh, chunk_at(it + 1));
    cp_async_wait<0>();
    __syncthreads();

    // V~ = value rows weighted for the state update.
    for (int idx = tid; idx < kT * DBs / kPer; idx += kWalkThreads) {
      const int r = idx / (DBs / kPer), c = (idx % (DBs / kPer)) * kPer;
      scale16<Elem>(sVw + r * ldV + c, sV + r * ldV + c, scal[kValueW * kT + r]);
    }

    float acc[G::kNTo][4];
    zero(acc);
    float qn = 0.f;  // forward: q_t . n_k, an eighth of row tid/8
    for (int j = 0; j < nj; ++j) {
      cp_async_wait<0>();
      __syncthreads();
      if (j + 1 < nj)
        issue_ab(k, j + 1, slot ^ 1);
      else if (it + 1 < n_it)
        issue_ab(chunk_at(it + 1), 0, slot ^ 1);
      cp_async_commit();
      const Elem* As = a_tile(slot);
      const Elem* Bs = b_tile(slot);
      // Inter-chunk part with the state before this chunk: acc += A_j St_j^T. The walks that feed
      // the gate gradients take the state at fp32 accuracy (hi + lo parts), see the epilogue.
      if (out_warp) {
        const float* Sj = St + ocol * ldS + j * kTK;
        if (split_state)
          warp_mma<Elem, G::kNTo, kTK / 16, AKind::kRow, BKind::kNKf32Split>(acc, As + 16 * rb * ldE, ldE, Sj, ldS);
        else
          warp_mma<Elem, G::kNTo, kTK / 16, AKind::kRow, BKind::kNKf32>(acc, As + 16 * rb * ldE, ldE, Sj, ldS);
      }
      if (is_fwd && outputs) {
        const int row = tid >> 3, c0 = (tid & 7) * 8;
        qn += dot8<Elem>(As + row * ldE + c0, nvec + j * kTK + c0);
      }
      // State update product: V~^T Bk_j for this warp's (value rows, head-dim columns).
      float accu[G::kNTu][4];
      zero(accu);
      if (upd_warp) warp_mma<Elem, G::kNTu, kT / 16, AKind::kCol, BKind::kKN>(accu, sVw + urow, ldV, Bs + ucol, ldE);
      __syncthreads();  // every read of St_j / n_j above is done
      if (upd_warp) {
#pragma unroll
        for (int nt = 0; nt < G::kNTu; ++nt) {
#pragma unroll
          for (int e2 = 0; e2 < 2; ++e2) {
            float* s = St + (urow + g + 8 * e2) * ldS + j * kTK + ucol + nt * 8 + 2 * t;
            float2 x = *reinterpret_cast<float2*>(s);
            x.x = fmaf(alpha, x.x, accu[nt][2 * e2]);
            x.y = fmaf(alpha, x.y, accu[nt][2 * e2 + 1]);
            *reinterpret_cast<float2*>(s) = x;
          }
        }
      }
      if (is_fwd) {
        const int col = tid >> 3, r0 = (tid & 7) * 8;
        float s = 0.f;
#pragma unroll
        for (int r = 0; r < 8; ++r) s += scal[kValueW * kT + r0 + r] * to_float(Bs[(r0 + r) * ldE + col]);
        s = octet_sum(s);
        if ((tid & 7) == 0) nvec[j * kTK + col] = fmaf(alpha, nvec[j * kTK + col], s);
      }
      slot ^= 1;
    }

    // Intra-chunk part: acc2 = M V (forward in time) or M^T V (backward in time).
    float acc2[G::kNTo][4];
    zero(acc2);
    if (out_warp) {
      if (!reverse)
        warp_mma<Elem, G::kNTo, kT / 16, AKind::kRow, BKind::kKN>(acc2, sM + 16 * rb * ldT, ldT, sV + ocol, ldV);
      else
        warp_mma<Elem, G::kNTo, kT / 16, AKind::kCol, BKind::kKN>(acc2, sM + 16 * rb, ldT, sV + ocol, ldV);
    }
    float aug_new = 0.f;  // this thread's column of sum_r aug_in_r V_r
    if (has_aug && tid < DBs) {
      for (int r = 0; r < kT; ++r) aug_new += scal[kAugIn * kT + r] * to_float(sV[r * ldV + tid]);
    }
    if (is_fwd) {
      qn = octet_sum(qn);
      if ((tid & 7) == 0) scal[kQN * kT + (tid >> 3)] = qn;
    }
    __syncthreads();  // sM / sV free; q.n visible
    if (it + 1 < n_it) issue_mv(chunk_at(it + 1));
    cp_async_commit();

    // Epilogue.
    float dot_rows[2] = {0.f, 0.f};
    if (out_warp) {
#pragma unroll
      for (int nt = 0; nt < G::kNTo; ++nt) {
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const int row = 16 * rb + g + 8 * e2;
          const int col = ocol + nt * 8 + 2 * t;
          const float ri = scal[kRowInter * kT + row], rl = scal[kRowIntra * kT + row];
          // o = ri * inter + rest
          float r0 = rl * acc2[nt][2 * e2], r1 = rl * acc2[nt][2 * e2 + 1];
          if (has_aug) {
            const float ao = scal[kAugOut * kT + row];
            r0 = fmaf(ao, srow[col], r0);
            r1 = fmaf(ao, srow[col + 1], r1);
          }
          float o0 = fmaf(ri, acc[nt][2 * e2], r0);
          float o1 = fmaf(ri, acc[nt][2 * e2 + 1], r1);
          if (is_fwd) {
            const float den = ri * scal[kQN * kT + row] + rl * scal[kRowSum * kT + row];
            const float inv = 1.f / (fmaxf(fabsf(den), expf(-scal[kMRow * kT + row])) + p.eps);
            o0 *= inv;
            o1 *= inv;
          }
          if (row < Tc) {
            store2(p.out.mut_row<Elem>(b, h, t0 + row) + db0 + col, o0, o1);
            if (p.partner.data != nullptr) {
              // q.dq (k.dk) for the gate gradients, whose suffix sums cancel across the dq and dk walks:
              // the inter part is dotted with the partner row scaled and rounded exactly as the other
              // walk rounded it into its state update (V~), so both walks see the same pair terms.
              const float2 pp = load2(p.partner.row<Elem>(b, h, t0 + row) + db0 + col);
              float d = dot_rows[e2];
              d = fmaf(round_to<Elem>(ri * pp.x), acc[nt][2 * e2], d);
              d = fmaf(round_to<Elem>(ri * pp.y), acc[nt][2 * e2 + 1], d);
              d = fmaf(pp.x, r0, fmaf(pp.y, r1, d));
              dot_rows[e2] = d;
            }
          }
        }
      }
      if (p.dot_part != nullptr) {
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const float r = quad_sum(dot_rows[e2]);
          if (t == 0) scal[(kDot0 + wc) * kT + 16 * rb + g + 8 * e2] = r;
        }
      }
    }
    if (outputs && is_fwd && slice == 0 && p.m_out != nullptr && tid < Tc) {
      const float den = scal[kRowInter * kT + tid] * scal[kQN * kT + tid] + scal[kRowIntra * kT + tid] * scal[kRowSum * kT + tid];
      p.m_out[bh * p.S + t0 + tid] = scal[kMRow * kT + tid];
      p.den_out[bh * p.S + t0 + tid] = den;
    }
    __syncthreads();  // srow and the row sums read
    if (has_aug && tid < DBs) srow[tid] = fmaf(alpha, srow[tid], aug_new);
    if (outputs && p.dot_part != nullptr && tid < Tc) {
      float d = 0.f;
#pragma unroll
      for (int c = 0; c < G::kOutCG; ++c) d += scal[(kDot0 + c) * kT + tid];
      p.dot_part[(int64_t(slice) * p.BNH + bh) * p.S + t0 + tid] = d;
    }
    if (is_fwd) m_k = m_k1;
    g_total += tk.g;
  }
  cp_async_wait<0>();
  __syncthreads();
  const WalkEnd end = walk_end(p, at, DHQK, DHHV);
  walk_finish(p, end, b, h, bh, slice, db0, DBs, St, ldS, nvec, srow, float(m_k), float(g_total), tmp);
}

}  // namespace mlstm::cuda::chunkwise
