// The fused sequence kernel: the whole recurrence of SPEC §2 over S steps in one launch, the state on
// chip.
//
// Work mapping. DHHV is split into slabs of W columns; a block owns the DHQK x W slab of C of one
// (b, h) in registers for all S steps: thread (tr, tc) holds rows [tr*RT, tr*RT + RT) x columns
// [tc*4, tc*4 + 4) (TR = DHQK / RT row groups, TC = W / 4 column groups). Every block of a (b, h)
// keeps its own copy of n (DHQK floats in shared memory) and of the scalars; the block of slab 0
// writes n and m at the end.
//
// Lazy decay. Per element a step is C_t = F_t C_{t-1} + I_t k_r v_c, and h needs sum_r C_t q^_r:
// three operations. The kernel instead holds C^ = C / exp(sigma) with sigma = sum of log F since the
// last rescale, so that a step is C^ += (I_t / exp(sigma_t)) k_r v_c and h_t = exp(sigma_t) C^T q^:
// two fused multiply-adds per element. When sigma would drop below -kRescaleBelow (or a jump of m
// makes F tiny), C^ and n^ are rescaled by exp(sigma) and sigma restarts at 0, so that
// I_t / exp(sigma_t) <= exp(kRescaleBelow) and C^ stays within exp(kRescaleBelow) of C. sigma is
// summed in double; the stabiliser m_t is computed exactly as in the recurrence, and the returned
// states are the stabilised C_S = exp(sigma_S) C^, n_S, m_S.
//
// Pipeline. The steps go in chunks of kChunk; iteration c (c = -1 .. NCH) ends with the block's one
// __syncthreads and, between two of them:
//   * cp.async brings q, k and the slab of v of chunk c + kRing into a ring of raw slots;
//   * one thread (lane 0 of the last warp, which has no reduction work) scans the gates of chunk c+2:
//     m, rescale factor, coefficient I/exp(sigma), sigma (a small ring in shared memory);
//   * every thread converts part of chunk c+1: q^ and a = coef * k (fp32, padded per row group), v,
//     the update of n^ and per-warp partial sums of n^ . q^;
//   * every thread updates its tile for the kChunk steps of chunk c, writing partial sums of C^T q^;
//   * the reducer writes h of chunk c-1 from those partial sums.
// Several steps per barrier amortise the latency-bound phases over kChunk times the FMA work, and
// their kChunk independent chains overlap. The gates come in windows of 32 steps, loaded by warp 0
// several iterations before use.
#pragma once

#include "cuda/recurrent_common.cuh"

namespace mlstm::cuda::recurrent {

constexpr int kChunk = 4;            // steps per iteration (per barrier)
constexpr int kRing = 3;             // chunks of raw inputs in flight or landed
constexpr int kGateWindow = 32;      // steps per gate window (one per lane of warp 0)
constexpr int kWindowChunks = kGateWindow / kChunk;
constexpr int kScalarSlots = 4;      // chunks of scalars: written at iteration c-2, read up to c+1
constexpr float kRescaleBelow = 20.0f;
constexpr int kRowPad = 4;           // floats of padding after each row group of q^ and a (bank spread)
static_assert(kGateWindow % kChunk == 0 && kWindowChunks >= 4, "gate windows must span several chunks");

struct SequenceParams {
  int64_t NH = 0, S = 0, DHQK = 0, DHHV = 0;
  int nslab = 1, W = 0;  // slabs per (b, h) and their width
  int TR = 0, TC = 0;    // row groups (DHQK / RT) and column groups (W / 4)
  int copy_bytes = 16;   // cp.async granularity (16, 8 or 4; 2 = plain loads)
  bool has_initial = false, has_last = false;
  float eps = 1e-6f, qk_scale = 1.0f;
  mlstm_dtype gate_dtype = MLSTM_FLOAT32, state_dtype = MLSTM_FLOAT32;
  const void *q = nullptr, *k = nullptr, *v = nullptr;  // (B,NH,S,DHQK) x2, (B,NH,S,DHHV)
  int64_t q_s0 = 0, q_s1 = 0, q_s2 = 0, k_s0 = 0, k_s1 = 0, k_s2 = 0, v_s0 = 0, v_s1 = 0, v_s2 = 0;
  const void *i = nullptr, *f = nullptr;  // (B,NH,S)
  int64_t i_s0 = 0, i_s1 = 0, f_s0 = 0, f_s1 = 0;
  const void *c_in = nullptr, *n_in = nullptr, *m_in = nullptr;  // (B,NH,DHQK,DHHV), (B,NH,DHQK), (B,NH)
  int64_t c_in_s0 = 0, c_in_s1 = 0, c_in_s2 = 0, n_in_s0 = 0, n_in_s1 = 0, m_in_s0 = 0, m_in_s1 = 0;
  void *c_out = nullptr, *n_out = nullptr, *m_out = nullptr;
  int64_t c_out_s0 = 0, c_out_s1 = 0, c_out_s2 = 0, n_out_s0 = 0, n_out_s1 = 0, m_out_s0 = 0, m_out_s1 = 0;
  void* h = nullptr;  // (B,NH,S,DHHV)
  int64_t h_s0 = 0, h_s1 = 0, h_s2 = 0;
};

// Per step of a chunk, written by the scalar thread.
struct StepScalars {
  float coef;   // I_t / exp(sigma_t): a = coef * k
  float rho;    // rescale C^ and n^ by rho before the step (1 = none)
  float sigma;  // sigma_t, after the step
  float m;      // m_t
};

// Byte offsets of the shared-memory regions; computed the same way on host (size) and device.
struct SequenceSmem {
  int raw_q, raw_k, raw_v, raw_slot;  // one step: q, k (DHQK each) and v (W), in the input dtype
  int xq, xa, xv;                     // [2][kChunk][PQ], [2][kChunk][PQ], [2][kChunk][W] floats
  int hpart, npart, nhat, gates, scalars;  // [2][kChunk][TR][W], [3][kChunk][32], [DHQK] floats,
                                           // [2][2][32] floats, [kScalarSlots][kChunk] StepScalars
  int pq;                             // padded rows of q^ / a: TR * (RT + kRowPad)
  int total;

  __host__ __device__ static int align16(int x) { return (x + 15) & ~15; }

  __host__ __device__ SequenceSmem(int DHQK, int W, int TR, int RT, int elem_bytes) {
    raw_q = 0;
    raw_k = align16(DHQK * elem_bytes);
    raw_v = raw_k + align16(DHQK * elem_bytes);
    raw_slot = raw_v + align16(W * elem_bytes);
    pq = TR * (RT + kRowPad);
    xq = kRing * kChunk * raw_slot;
    xa = xq + align16(2 * kChunk * pq * 4);
    xv = xa + align16(2 * kChunk * pq * 4);
    hpart = xv + align16(2 * kChunk * W * 4);
    npart = hpart + align16(2 * kChunk * TR * W * 4);
    nhat = npart + 3 * kChunk * 32 * 4;
    gates = nhat + align16(DHQK * 4);
    scalars = gates + 2 * 2 * kGateWindow * 4;
    total = scalars + kScalarSlots * kChunk * static_cast<int>(sizeof(StepScalars));
  }
};

template <int RT>
constexpr int sequence_max_threads() {
  return RT == 32 ? 256 : 512;
}

// Copies q_s, k_s (DHQK each) and the slab of v_s (W) into raw slot `slot`, spread over the block.
template <typename TQ>
__device__ __forceinline__ void issue_step_copy(const SequenceParams& p, unsigned char* slot, const SequenceSmem& L,
                                                const unsigned char* q_bh, const unsigned char* k_bh,
                                                const unsigned char* v_bh, int64_t s) {
  constexpr int es = sizeof(TQ);
  const unsigned char* src_q = q_bh + s * p.q_s2 * es;
  const unsigned char* src_k = k_bh + s * p.k_s2 * es;
  const unsigned char* src_v = v_bh + s * p.v_s2 * es;
  const int g = p.copy_bytes;
  const int nq = static_cast<int>(p.DHQK) * es / g, nv = p.W * es / g;
  const int total = 2 * nq + nv;
  for (int x = threadIdx.x; x < total; x += blockDim.x) {
    const unsigned char* src;
    unsigned char* dst;
    if (x < nq) {
      src = src_q + x * g, dst = slot + L.raw_q + x * g;
    } else if (x < 2 * nq) {
      src = src_k + (x - nq) * g, dst = slot + L.raw_k + (x - nq) * g;
    } else {
      src = src_v + (x - 2 * nq) * g, dst = slot + L.raw_v + (x - 2 * nq) * g;
    }
    switch (g) {
      case 16: cp_async<16>(dst, src); break;
      case 8: cp_async<8>(dst, src); break;
      case 4: cp_async<4>(dst, src); break;
      default: *reinterpret_cast<uint16_t*>(dst) = *reinterpret_cast<const uint16_t*>(src);
    }
  }
}

// The gate scan of one chunk (steps c*kChunk ...), by one thread that carries m and sigma across
// chunks. Steps past S leave m and sigma alone and get coef = 0 (no update).
__device__ __forceinline__ void scan_chunk(int64_t c, int64_t S, const float* gate_i, const float* gate_f, float& m_run,
                                           double& sigma_run, StepScalars* out) {
#pragma unroll
  for (int k = 0; k < kChunk; ++k) {
    const int64_t s = c * kChunk + k;
    StepScalars sc{0.0f, 1.0f, static_cast<float>(sigma_run), m_run};
    if (s < S) {
      const int w = static_cast<int>((s / kGateWindow) & 1) * kGateWindow + static_cast<int>(s % kGateWindow);
      const GateStep g = gate_step(gate_i[w], gate_f[w], m_run);
      double sigma = sigma_run + static_cast<double>(g.log_f);
      if (sigma < -static_cast<double>(kRescaleBelow)) {
        sc.rho = expf(static_cast<float>(sigma));
        sigma = 0.0;
      }
      sc.coef = expf(static_cast<float>(static_cast<double>(g.log_i) - sigma));
      sc.sigma = static_cast<float>(sigma);
      sc.m = g.m;
      m_run = g.m;
      sigma_run = sigma;
    }
    out[k] = sc;
  }
}

// TQ: dtype of q, k, v, h. RT: rows of C per thread.
template <typename TQ, int RT>
__global__ void __launch_bounds__(sequence_max_threads<RT>()) recurrent_sequence_fwd_kernel(const SequenceParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const SequenceSmem L(static_cast<int>(p.DHQK), p.W, p.TR, RT, sizeof(TQ));
  float* const xq = reinterpret_cast<float*>(smem + L.xq);
  float* const xa = reinterpret_cast<float*>(smem + L.xa);
  float* const xv = reinterpret_cast<float*>(smem + L.xv);
  float* const hpart = reinterpret_cast<float*>(smem + L.hpart);
  float* const npart = reinterpret_cast<float*>(smem + L.npart);
  float* const nhat = reinterpret_cast<float*>(smem + L.nhat);
  float* const gate_i = reinterpret_cast<float*>(smem + L.gates);                    // [2][32]
  float* const gate_f = reinterpret_cast<float*>(smem + L.gates) + 2 * kGateWindow;  // [2][32] logsigmoid(f)
  StepScalars* const scalars = reinterpret_cast<StepScalars*>(smem + L.scalars);    // [kScalarSlots][kChunk]

  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int warp = tid / 32, lane = tid % 32, nwarps = nthreads / 32;
  const int64_t S = p.S, DHQK = p.DHQK;
  const int64_t NCH = (S + kChunk - 1) / kChunk;
  const int W = p.W, TR = p.TR, TC = p.TC;
  const int64_t bh = blockIdx.x / p.nslab;
  const int slab = static_cast<int>(blockIdx.x % p.nslab);
  const int64_t b = bh / p.NH, hh = bh % p.NH;
  const int64_t col0 = int64_t(slab) * W;
  const bool is_main = tid < TR * TC;  // the block is rounded up to whole warps
  const int tr = tid / TC, tc = tid % TC;
  const bool is_scanner = tid == nthreads - 32;

  constexpr int es = sizeof(TQ);
  const unsigned char* q_bh = static_cast<const unsigned char*>(p.q) + (b * p.q_s0 + hh * p.q_s1) * es;
  const unsigned char* k_bh = static_cast<const unsigned char*>(p.k) + (b * p.k_s0 + hh * p.k_s1) * es;
  const unsigned char* v_bh = static_cast<const unsigned char*>(p.v) + (b * p.v_s0 + hh * p.v_s1 + col0) * es;
  const int64_t i_bh = b * p.i_s0 + hh * p.i_s1, f_bh = b * p.f_s0 + hh * p.f_s1;
  TQ* const h_bh = static_cast<TQ*>(p.h) + b * p.h_s0 + hh * p.h_s1 + col0;

  auto issue_chunk = [&](int64_t c) {
    for (int k = 0; k < kChunk; ++k) {
      const int64_t s = c * kChunk + k;
      if (s < S) issue_step_copy<TQ>(p, smem + ((c % kRing) * kChunk + k) * L.raw_slot, L, q_bh, k_bh, v_bh, s);
    }
    cp_async_commit();
  };

  // Start the input ring: chunks 0 .. kRing-2, one commit group each.
  for (int c = 0; c < kRing - 1; ++c) issue_chunk(c);

  // Initial state: C^ = C_0 (sigma = 0), n^ = n_0, m = m_0; zeros and m = 0 when absent.
  float C[RT][4];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int j = 0; j < 4; ++j) C[r][j] = 0.0f;
  if (p.has_initial && is_main) {
    const int64_t base = b * p.c_in_s0 + hh * p.c_in_s1 + col0 + tc * 4;
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int j = 0; j < 4; ++j) C[r][j] = load_any(p.c_in, base + (tr * RT + r) * p.c_in_s2 + j, p.state_dtype);
  }
  for (int r = tid; r < DHQK; r += nthreads)
    nhat[r] = p.has_initial ? load_any(p.n_in, b * p.n_in_s0 + hh * p.n_in_s1 + r, p.state_dtype) : 0.0f;
  // The scanner's running m and sigma.
  float m_run = p.has_initial ? load_any(p.m_in, b * p.m_in_s0 + hh * p.m_in_s1, p.state_dtype) : 0.0f;
  double sigma_run = 0.0;

  // Gate windows 0 and 1, then the scalars of chunk 0.
  for (int s = tid; s < 2 * kGateWindow && s < S; s += nthreads) {
    gate_i[s] = load_any(p.i, i_bh + s, p.gate_dtype);
    gate_f[s] = log_sigmoid(load_any(p.f, f_bh + s, p.gate_dtype));
  }
  __syncthreads();
  if (is_scanner) scan_chunk(0, S, gate_i, gate_f, m_run, sigma_run, scalars);
  uint32_t next_i_bits = 0, next_f_bits = 0;  // warp 0: the gates of a later window, in flight

  for (int64_t c = -1; c <= NCH; ++c) {
    // Inputs of chunk c+1 have landed (kRing-2 younger groups may be pending); publish them and
    // everything written in the previous iteration.
    cp_async_wait<kRing - 2>();
    __syncthreads();

    // Refill the ring slots of chunk c (the converter read them in iteration c-1) with chunk c+kRing.
    issue_chunk(c + kRing);

    // Gate windows w >= 2 (steps 32w ..): the scan of chunk x runs at iteration x-2, so window w is
    // first read at iteration w*kWindowChunks - 2 and its slot (window w-2) last at
    // (w-1)*kWindowChunks - 3. Loaded at w*kWindowChunks - kWindowChunks - 2, stored at
    // w*kWindowChunks - 3.
    if (warp == 0) {
      if (c >= kWindowChunks - 2 && (c + kWindowChunks + 2) % kWindowChunks == 0) {
        const int64_t s = ((c + kWindowChunks + 2) / kWindowChunks) * kGateWindow + lane;
        if (s < S) next_i_bits = load_bits(p.i, i_bh + s, p.gate_dtype), next_f_bits = load_bits(p.f, f_bh + s, p.gate_dtype);
      }
      if (c >= 2 * kWindowChunks - 3 && (c + 3) % kWindowChunks == 0) {
        const int64_t w = (c + 3) / kWindowChunks;
        if (w * kGateWindow + lane < S) {
          gate_i[(w & 1) * kGateWindow + lane] = bits_to_float(next_i_bits, p.gate_dtype);
          gate_f[(w & 1) * kGateWindow + lane] = log_sigmoid(bits_to_float(next_f_bits, p.gate_dtype));
        }
      }
    }

    // Reducer: h of chunk c-1, h_t = exp(sigma) sum_r C^_r q^_r / (max(|exp(sigma) n^ . q^|, exp(-m)) + eps).
    if (c >= 1) {
      const int64_t u = c - 1;
      const StepScalars* sc = scalars + (u % kScalarSlots) * kChunk;
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const int64_t t = u * kChunk + k;
        if (t >= S) break;
        const float* hp = hpart + ((u & 1) * kChunk + k) * TR * W;
        const float* np = npart + ((u % 3) * kChunk + k) * 32;
        float nq = 0.0f;
        for (int w = 0; w < nwarps; ++w) nq += np[w];
        const float scale = expf(sc[k].sigma);
        const float denominator = fmaxf(fabsf(scale * nq), expf(-sc[k].m)) + p.eps;
        for (int x = tid; x < W; x += nthreads) {
          float sum = 0.0f;
          for (int g = 0; g < TR; ++g) sum += hp[g * W + x];
          h_bh[t * p.h_s2 + x] = from_float<TQ>((scale * sum) / denominator);
        }
      }
    }

    // Scanner: the scalars of chunk c+2 (published by the next barrier, first read at iteration c+1).
    if (is_scanner && c + 2 < NCH)
      scan_chunk(c + 2, S, gate_i, gate_f, m_run, sigma_run, scalars + ((c + 2) % kScalarSlots) * kChunk);

    // Converter: chunk c+1 into fp32 (q^, a = coef * k, v), the update of n^ and sum n^ . q^ per warp.
    if (c + 1 < NCH) {
      const int64_t x = c + 1;
      const StepScalars* sc = scalars + (x % kScalarSlots) * kChunk;
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const bool valid = x * kChunk + k < S;  // past S: zeros, so that the tile update is a no-op
        const unsigned char* slot = smem + ((x % kRing) * kChunk + k) * L.raw_slot;
        const TQ* rq = reinterpret_cast<const TQ*>(slot + L.raw_q);
        const TQ* rk = reinterpret_cast<const TQ*>(slot + L.raw_k);
        const TQ* rv = reinterpret_cast<const TQ*>(slot + L.raw_v);
        float* xq_k = xq + ((x & 1) * kChunk + k) * L.pq;
        float* xa_k = xa + ((x & 1) * kChunk + k) * L.pq;
        float* xv_k = xv + ((x & 1) * kChunk + k) * W;
        const float coef = sc[k].coef, rho = sc[k].rho;
        float part = 0.0f;
        for (int r = tid; r < DHQK; r += nthreads) {
          const float qv = valid ? to_float(rq[r]) * p.qk_scale : 0.0f;
          const float av = valid ? coef * to_float(rk[r]) : 0.0f;
          const int pr = (r / RT) * (RT + kRowPad) + r % RT;
          xq_k[pr] = qv;
          xa_k[pr] = av;
          const float nh = fmaf(nhat[r], rho, av);
          nhat[r] = nh;
          part = fmaf(nh, qv, part);
        }
        for (int y = tid; y < W; y += nthreads) xv_k[y] = valid ? to_float(rv[y]) : 0.0f;
        part = warp_sum(part);
        if (lane == 0) npart[((x % 3) * kChunk + k) * 32 + warp] = part;
      }
    }

    // Main: the kChunk steps of chunk c on this thread's RT x 4 tile.
    if (c >= 0 && c < NCH && is_main) {
      const StepScalars* sc = scalars + (c % kScalarSlots) * kChunk;
#pragma unroll 1
      for (int k = 0; k < kChunk; ++k) {
        const float rho = sc[k].rho;
        if (rho != 1.0f) {
#pragma unroll
          for (int r = 0; r < RT; ++r)
#pragma unroll
            for (int j = 0; j < 4; ++j) C[r][j] *= rho;
        }
        const float* xq_t = xq + ((c & 1) * kChunk + k) * L.pq + tr * (RT + kRowPad);
        const float* xa_t = xa + ((c & 1) * kChunk + k) * L.pq + tr * (RT + kRowPad);
        const float4 v4 = *reinterpret_cast<const float4*>(xv + ((c & 1) * kChunk + k) * W + tc * 4);
        const float vc[4] = {v4.x, v4.y, v4.z, v4.w};
        float h_even[4] = {0.0f, 0.0f, 0.0f, 0.0f}, h_odd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int r4 = 0; r4 < RT / 4; ++r4) {
          const float4 q4 = *reinterpret_cast<const float4*>(xq_t + 4 * r4);
          const float4 a4 = *reinterpret_cast<const float4*>(xa_t + 4 * r4);
          const float qr[4] = {q4.x, q4.y, q4.z, q4.w};
          const float ar[4] = {a4.x, a4.y, a4.z, a4.w};
          // Two accumulators per column halve the dependent chain of C^T q^.
#pragma unroll
          for (int rr = 0; rr < 4; rr += 2) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              C[4 * r4 + rr][j] = fmaf(ar[rr], vc[j], C[4 * r4 + rr][j]);
              h_even[j] = fmaf(C[4 * r4 + rr][j], qr[rr], h_even[j]);
              C[4 * r4 + rr + 1][j] = fmaf(ar[rr + 1], vc[j], C[4 * r4 + rr + 1][j]);
              h_odd[j] = fmaf(C[4 * r4 + rr + 1][j], qr[rr + 1], h_odd[j]);
            }
          }
        }
        *reinterpret_cast<float4*>(hpart + ((c & 1) * kChunk + k) * TR * W + tr * W + tc * 4) =
            make_float4(h_even[0] + h_odd[0], h_even[1] + h_odd[1], h_even[2] + h_odd[2], h_even[3] + h_odd[3]);
      }
    }
  }
  cp_async_wait<0>();

  // Last states: C_S = exp(sigma_S) C^, n_S = exp(sigma_S) n^, m_S, from the scalars of step S-1
  // (their slot is not rewritten: the scanner stops at the last chunk).
  if (p.has_last) {
    const StepScalars last = scalars[((NCH - 1) % kScalarSlots) * kChunk + (S - 1) % kChunk];
    const float scale = expf(last.sigma);
    if (is_main) {
      const int64_t base = b * p.c_out_s0 + hh * p.c_out_s1 + col0 + tc * 4;
#pragma unroll
      for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j) store_any(p.c_out, base + (tr * RT + r) * p.c_out_s2 + j, p.state_dtype, scale * C[r][j]);
    }
    if (slab == 0) {
      for (int r = tid; r < DHQK; r += nthreads)
        store_any(p.n_out, b * p.n_out_s0 + hh * p.n_out_s1 + r, p.state_dtype, scale * nhat[r]);
      if (tid == 0) store_any(p.m_out, b * p.m_out_s0 + hh * p.m_out_s1, p.state_dtype, last.m);
    }
  }
}

}  // namespace mlstm::cuda::recurrent
