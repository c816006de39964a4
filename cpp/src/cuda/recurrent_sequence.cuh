// The fused sequence kernel: the whole recurrence of SPEC §2 over S steps in one launch, the state on
// chip.
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
// Work mapping. DHHV is split into slabs of W columns; a block owns the slab of C of one (b, h) in
// registers for all S steps, as tiles of RT rows x 4 columns, one per thread. A warp holds TRW x TCW
// tiles (lane = trw * TCW + tcw: TRW row groups stacked over TCW = 32 / TRW column groups), the block
// TRx x TCx warps (warp = trx * TCx + tcx). Tile (tr, tc) = (trx * TRW + trw, tcx * TCW + tcw) covers
// rows [tr * RT, tr * RT + RT) and slab columns [tc * 4, tc * 4 + 4). Rows past DHQK (when the tiles
// cover more) see q^ = a = 0, so their tiles stay zero.
// Why this shape. Per step a thread does 2 * 4 * RT FMAs fed by RT values each of q^ and a and 4 of v,
// all fp32 in shared memory. The lanes of one row group read the same q^ and a; with TCW >= 2 adjacent
// lanes share an address, which halves the shared-memory return traffic of those 16-byte loads.
// h_c = sum_r C^_rc q^_r sums over all the rows of a column: a shuffle reduction over the TRW row
// groups of the warp, then (only when TRx > 1) a sum of partials in shared memory. With DHQK = 256 and
// RT = 32, TRW = 8 and TRx = 1: every warp owns whole columns and h needs no cross-warp sum.
// Per step and thread (RT = 32, TRW = 8, from the SASS): 256 FFMA and 64 other instructions (18 shared
// loads, 4 shuffles and 14 adds and selects of the reduction, 1 shared store, the rest integer and
// control). The per-block work (conversion, n^, h output, copies) is spread over all threads and adds
// roughly 30 instructions per thread and step at DHQK = 256, W = 128, chunk = 8.
//
// Pipeline. The steps go in chunks of `chunk` (<= kMaxChunk, chosen on the host to fit shared
// memory); iteration c (c = -1 .. NCH) starts with the block's one __syncthreads and then:
//   * cp.async brings q, k and the slab of v of chunk c + kRing into the ring slot of chunk c;
//   * the last warp keeps the gate windows (32 steps, loaded one window ahead) and its lane 0 scans the
//     gates of chunk c + 2: m, rescale factor rho, coefficient I / exp(sigma), sigma;
//   * the writer turns the column sums of chunk c - 1 into h (scale, normaliser, dtype, 16-byte stores);
//   * the converter turns chunk c + 1 into fp32 q^, a = coef * k and v, updates n^ (one row per
//     thread, all steps of the chunk) and leaves per-warp partial sums of n^ . q^;
//   * every thread runs the chunk c steps on its tile, leaving the column sums of C^T q^.
// The phases of one iteration touch disjoint buffers, so their order is free: with `stagger`, half of
// the warps (one of the two warps of each scheduler) run writer and converter after their tile steps
// instead of before, so that the latency-bound phases overlap FMA work instead of idling the SM
// between barriers. Only the per-block phases see the input dtype (a runtime value: they touch each
// element once); the tile loop works in fp32 and is compiled per (RT, TRW), so that its shuffle
// reduction has no branches.
#pragma once

#include "cuda/recurrent_common.cuh"

namespace mlstm::cuda::recurrent {

constexpr int kMaxChunk = 8;        // steps per iteration (per barrier), at most
constexpr int kRing = 2;            // chunks of raw inputs: c + 1 (being converted), c + 2 (landing)
constexpr int kGateWindow = 32;     // steps per gate window (one per lane of the scanning warp)
constexpr int kScalarSlots = 4;     // chunks of step scalars: written at iteration x - 2, read up to x + 1
constexpr int kPartSlots = 3;       // chunks of n^ . q^ partials: written at iteration x - 1, read at x + 1
constexpr float kRescaleBelow = 20.0f;
constexpr int kRowPad = 4;          // floats after each row group of q^ and a (spreads the row groups over banks)
constexpr int kMaxTRw = 16;         // row groups per warp, at most (see the kernel)
static_assert(kGateWindow % kMaxChunk == 0, "a chunk must not straddle two gate windows");

// Per step of a chunk, written by the scanning thread.
struct alignas(16) StepScalars {
  float coef;   // I_t / exp(sigma_t): a = coef * k (coef and rho adjacent: one 8-byte load)
  float rho;    // rescale C^ and n^ by rho before the step (1 = none)
  float sigma;  // sigma_t, after the step
  float m;      // m_t
};

// Per-block values kept in shared memory rather than in registers, which the state tile needs: the
// (b, h) base addresses of the inputs (used once per iteration) and the scanner's running m and sigma.
struct BlockPlace {
  const unsigned char *q, *k, *v;  // step 0 of q, k and of the block's slab of v
  unsigned char* h;                // step 0 of the block's slab of h
  int64_t i, f;                    // element offsets of the gates of step 0
  double sigma_run;                // sum of log F since the last rescale, after the last scanned step
  float m_run;                     // m after the last scanned step
};

// Byte offsets of the shared-memory regions, computed once on the host.
struct SequenceSmem {
  int raw_q = 0, raw_k = 0, raw_v = 0, raw_slot = 0;  // within a slot: one step of q, k (DHQK) and v (W), input dtype
  int xq = 0, xa = 0;  // [2][chunk][pq] floats: q^ and a, row group tr at tr * (RT + kRowPad)
  int xv = 0;          // [2][chunk][W] floats
  int hsum = 0;        // [2][chunk][TRx][W] floats: column sums of C^T q^ per warp row
  int npart = 0;       // [kPartSlots][chunk][nwarps] floats: per-warp sums of n^ . q^
  int nhat = 0;        // [DHQK] floats
  int gates = 0;       // [2][2][kGateWindow] floats: i and logsigmoid(f) of two windows
  int scalars = 0;     // [kScalarSlots][chunk] StepScalars
  int place = 0;       // BlockPlace
  int pq = 0;          // floats per step in xq / xa
  int total = 0;
};

inline int align16(int x) { return (x + 15) & ~15; }

inline SequenceSmem sequence_smem(int DHQK, int W, int RT, int rows, int TRx, int nwarps, int chunk, int elem_bytes) {
  SequenceSmem L;
  L.raw_q = 0;
  L.raw_k = align16(DHQK * elem_bytes);
  L.raw_v = L.raw_k + align16(DHQK * elem_bytes);
  L.raw_slot = L.raw_v + align16(W * elem_bytes);
  L.pq = rows / RT * (RT + kRowPad);
  L.xq = kRing * chunk * L.raw_slot;
  L.xa = L.xq + align16(2 * chunk * L.pq * 4);
  L.xv = L.xa + align16(2 * chunk * L.pq * 4);
  L.hsum = L.xv + align16(2 * chunk * W * 4);
  L.npart = L.hsum + align16(2 * chunk * TRx * W * 4);
  L.nhat = L.npart + align16(kPartSlots * chunk * nwarps * 4);
  L.gates = L.nhat + align16(DHQK * 4);
  L.scalars = L.gates + 2 * 2 * kGateWindow * 4;
  L.place = L.scalars + kScalarSlots * chunk * static_cast<int>(sizeof(StepScalars));
  L.total = L.place + align16(static_cast<int>(sizeof(BlockPlace)));
  return L;
}

struct SequenceParams {
  int64_t NH = 0, S = 0;
  int DHQK = 0, DHHV = 0;
  int nslab = 1, W = 0;             // slabs per (b, h) and their width
  int TRx = 1, TCx = 1;             // warps per block (the tiles per warp are template parameters)
  int rows = 0;                     // TRx * TRW * RT >= DHQK
  int chunk = 1;                    // steps per iteration: 1, 2, 4 or 8
  int64_t NCH = 0;                  // chunks: ceil(S / chunk)
  mlstm_dtype dtype = MLSTM_FLOAT32;  // of q, k, v and h
  int elem_bytes = 4;
  int copy_bytes = 16;              // cp.async granularity (16, 8 or 4; 2 = plain loads)
  int q_pieces = 0, v_pieces = 0;   // copies per step of q (and of k) and of the slab of v
  bool has_initial = false, has_last = false;
  bool h_vec = false;               // h rows allow 16-byte stores
  bool stagger = true;              // see "Pipeline" above
  float eps = 1e-6f, qk_scale = 1.0f;
  mlstm_dtype gate_dtype = MLSTM_FLOAT32, state_dtype = MLSTM_FLOAT32;
  SequenceSmem L;
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

// RT = 32: 128 state registers per thread, so at most 255 registers and 256 threads; RT = 16: 128
// registers and 512 threads.
template <int RT>
constexpr int sequence_max_threads() {
  return RT == 32 ? 256 : 512;
}

// Where a block and a thread sit; recomputed where needed rather than held in registers through the
// loop (the state tile needs them).
struct BlockCoords {
  int64_t b, hh, col0;  // batch, head, first column of the slab
  int slab;
};
__device__ __forceinline__ BlockCoords block_coords(const SequenceParams& p) {
  BlockCoords bc;
  const int64_t bh = blockIdx.x / p.nslab;
  bc.slab = static_cast<int>(blockIdx.x % p.nslab);
  bc.b = bh / p.NH, bc.hh = bh % p.NH;
  bc.col0 = int64_t(bc.slab) * p.W;
  return bc;
}

// The thread's tile: row group tr (of which trw within the warp, trx the warp row) and column group tc.
struct TileCoords {
  int tr, tc, trx, trw;
};
template <int TRW>
__device__ __forceinline__ TileCoords tile_coords(const SequenceParams& p) {
  constexpr int TCW = 32 / TRW;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  TileCoords t;
  t.trx = warp / p.TCx, t.trw = lane / TCW;
  t.tr = t.trx * TRW + t.trw;
  t.tc = (warp % p.TCx) * TCW + lane % TCW;
  return t;
}

// x mod m for a chunk index x >= -1.
__device__ __forceinline__ int slot_of(int64_t x, int m) { return static_cast<int>((x + m) % m); }

// Element i of a raw row of q, k or v (input dtype) as float.
__device__ __forceinline__ float raw_element(const unsigned char* row, int i, mlstm_dtype dtype) {
  return bits_to_float(load_bits(row, i, dtype), dtype);
}

// ---- pieces of one iteration ------------------------------------------------------------------------

// The raw q, k (DHQK each) and slab of v (W) of the steps of chunk x into its ring slot, spread over
// the block; one commit group per call (empty past the last chunk), so that wait counts are uniform.
__device__ __forceinline__ void issue_chunk(const SequenceParams& p, unsigned char* smem, int64_t x, int64_t NCH) {
  if (x < NCH) {
    const BlockPlace& at = *reinterpret_cast<const BlockPlace*>(smem + p.L.place);
    const unsigned char *q_bh = at.q, *k_bh = at.k, *v_bh = at.v;
    const int64_t es = p.elem_bytes;
    const int64_t s0 = x * p.chunk;
    const int nk = static_cast<int>(min(int64_t(p.chunk), p.S - s0));
    const int g = p.copy_bytes, nq = p.q_pieces, per_step = 2 * nq + p.v_pieces;
    unsigned char* ring = smem + slot_of(x, kRing) * p.chunk * p.L.raw_slot;
    for (int it = threadIdx.x; it < nk * per_step; it += blockDim.x) {
      const int k = it / per_step, piece = it - k * per_step;
      const int64_t s = s0 + k;
      unsigned char* dst = ring + k * p.L.raw_slot;
      const unsigned char* src;
      if (piece < nq) {
        src = q_bh + s * p.q_s2 * es + piece * g, dst += p.L.raw_q + piece * g;
      } else if (piece < 2 * nq) {
        src = k_bh + s * p.k_s2 * es + (piece - nq) * g, dst += p.L.raw_k + (piece - nq) * g;
      } else {
        src = v_bh + s * p.v_s2 * es + (piece - 2 * nq) * g, dst += p.L.raw_v + (piece - 2 * nq) * g;
      }
      switch (g) {
        case 16: cp_async<16>(dst, src); break;
        case 8: cp_async<8>(dst, src); break;
        case 4: cp_async<4>(dst, src); break;
        default: *reinterpret_cast<uint16_t*>(dst) = *reinterpret_cast<const uint16_t*>(src);
      }
    }
  }
  cp_async_commit();
}

// The gate scan of chunk x, by one thread that carries m and sigma across chunks.
__device__ __forceinline__ void scan_chunk(int64_t x, int chunk, int64_t S, const float* gate_i, const float* gate_f,
                                           BlockPlace& at, StepScalars* out) {
  float m_run = at.m_run;
  double sigma_run = at.sigma_run;
#pragma unroll 1
  for (int k = 0; k < chunk; ++k) {
    const int64_t s = x * chunk + k;
    if (s >= S) break;
    const int w = static_cast<int>((s / kGateWindow) & 1) * kGateWindow + static_cast<int>(s % kGateWindow);
    const GateStep g = gate_step(gate_i[w], gate_f[w], m_run);
    double sigma = sigma_run + static_cast<double>(g.log_f);
    StepScalars sc;
    sc.rho = 1.0f;
    if (sigma < -static_cast<double>(kRescaleBelow)) {
      sc.rho = expf(static_cast<float>(sigma));
      sigma = 0.0;
    }
    sc.coef = expf(static_cast<float>(static_cast<double>(g.log_i) - sigma));
    sc.sigma = static_cast<float>(sigma);
    sc.m = g.m;
    out[k] = sc;
    m_run = g.m;
    sigma_run = sigma;
  }
  at.m_run = m_run;
  at.sigma_run = sigma_run;
}

// Sums v[j] over the 32 lanes for all N values at once with N - 1 + log2(32 / N) shuffles (instead of
// 5 N): each level halves the values a lane keeps. Lane l ends with the sum of v[l / (32 / N)].
template <int N>
__device__ __forceinline__ float warp_sum_spread(float (&v)[N]) {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "N must be a power of two <= 32");
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int half = N / 2, offset = 16; half >= 1; half /= 2, offset /= 2) {
    const bool upper = (lane & offset) != 0;
#pragma unroll
    for (int j = 0; j < half; ++j) {
      const float send = upper ? v[j] : v[j + half];
      const float keep = upper ? v[j + half] : v[j];
      v[j] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
    }
  }
  float x = v[0];
#pragma unroll
  for (int offset = 16 / N; offset >= 1; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Converter, chunk x: q^ = q * qk_scale and a = coef * k into fp32 (padded row groups), v into fp32,
// n^ = rho n^ + a, and per-warp sums of n^ . q^ per step. A thread owns rows tid, tid + blockDim.x, ...
// for all steps, so n^ stays in a register through the chunk.
template <int RT>
__device__ __forceinline__ void convert_chunk(const SequenceParams& p, unsigned char* smem, int64_t x, int nk) {
  const SequenceSmem& L = p.L;
  const int chunk = p.chunk;
  const StepScalars* sc = reinterpret_cast<const StepScalars*>(smem + L.scalars) + slot_of(x, kScalarSlots) * chunk;
  const unsigned char* ring = smem + slot_of(x, kRing) * chunk * L.raw_slot;
  float* const xq = reinterpret_cast<float*>(smem + L.xq) + (x & 1) * chunk * L.pq;
  float* const xa = reinterpret_cast<float*>(smem + L.xa) + (x & 1) * chunk * L.pq;
  float* const xv = reinterpret_cast<float*>(smem + L.xv) + (x & 1) * chunk * p.W;
  float* const nhat = reinterpret_cast<float*>(smem + L.nhat);
  float part[kMaxChunk];
#pragma unroll
  for (int k = 0; k < kMaxChunk; ++k) part[k] = 0.0f;
  // __restrict__: the raw slots, q^, a and n^ do not overlap, so loads may move ahead of stores.
  const unsigned char* __restrict__ raw = ring;
  float* __restrict__ xq_r = xq;
  float* __restrict__ xa_r = xa;
  float* __restrict__ nhat_r = nhat;
  for (int r = threadIdx.x; r < p.DHQK; r += blockDim.x) {
    float n = nhat_r[r];
    const int pr = r / RT * (RT + kRowPad) + r % RT;
#pragma unroll
    for (int k = 0; k < kMaxChunk; ++k) {
      if (k < nk) {
        const float2 coef_rho = *reinterpret_cast<const float2*>(&sc[k].coef);  // broadcast
        const float qh = raw_element(raw + k * L.raw_slot + L.raw_q, r, p.dtype) * p.qk_scale;
        const float a = coef_rho.x * raw_element(raw + k * L.raw_slot + L.raw_k, r, p.dtype);
        n = fmaf(n, coef_rho.y, a);
        part[k] = fmaf(n, qh, part[k]);
        xq_r[k * L.pq + pr] = qh;
        xa_r[k * L.pq + pr] = a;
      }
    }
    nhat_r[r] = n;
  }
  float* __restrict__ xv_r = xv;
  for (int y = threadIdx.x; y < p.W; y += blockDim.x) {
#pragma unroll
    for (int k = 0; k < kMaxChunk; ++k)
      if (k < nk) xv_r[k * p.W + y] = raw_element(raw + k * L.raw_slot + L.raw_v, y, p.dtype);
  }
  const float sum = warp_sum_spread(part);
  const int lane = threadIdx.x & 31, k = lane / (32 / kMaxChunk);
  if (lane % (32 / kMaxChunk) == 0 && k < nk) {
    const int nwarps = blockDim.x / 32;
    reinterpret_cast<float*>(smem + L.npart)[(slot_of(x, kPartSlots) * chunk + k) * nwarps + threadIdx.x / 32] = sum;
  }
}

// Writer, chunk u: h_t = exp(sigma_t) sum / (max(|exp(sigma_t) n^ . q^|, exp(-m_t)) + eps), where sum
// adds the TRx column sums, as 16-byte groups of columns (4 in fp32, 8 in 16-bit dtypes) spread over
// the block.
__device__ __forceinline__ void write_chunk(const SequenceParams& p, unsigned char* smem, int64_t u, int nk,
                                            void* h_bh) {
  const SequenceSmem& L = p.L;
  const int chunk = p.chunk, W = p.W, TRx = p.TRx, nwarps = blockDim.x / 32;
  const int VW = 16 / p.elem_bytes, groups = W / VW;  // W is a multiple of 16
  const StepScalars* sc = reinterpret_cast<const StepScalars*>(smem + L.scalars) + slot_of(u, kScalarSlots) * chunk;
  const float* np = reinterpret_cast<const float*>(smem + L.npart) + slot_of(u, kPartSlots) * chunk * nwarps;
  const float* hs = reinterpret_cast<const float*>(smem + L.hsum) + (u & 1) * chunk * TRx * W;
  for (int it = threadIdx.x; it < nk * groups; it += blockDim.x) {
    const int k = it / groups, g = it - k * groups;
    float nq = 0.0f;
    for (int w = 0; w < nwarps; ++w) nq += np[k * nwarps + w];
    const float scale = expf(sc[k].sigma);
    const float factor = scale / (fmaxf(fabsf(scale * nq), expf(-sc[k].m)) + p.eps);
    float out[8];
#pragma unroll
    for (int j = 0; j < 8; j += 4) {
      float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (j < VW) {
        for (int t = 0; t < TRx; ++t) {
          const float4 x = *reinterpret_cast<const float4*>(hs + (k * TRx + t) * W + g * VW + j);
          s.x += x.x, s.y += x.y, s.z += x.z, s.w += x.w;
        }
      }
      out[j] = s.x * factor, out[j + 1] = s.y * factor, out[j + 2] = s.z * factor, out[j + 3] = s.w * factor;
    }
    const int64_t index = (u * chunk + k) * p.h_s2 + g * VW;  // elements from h_bh
    if (p.h_vec) {
      uint4 raw;
      if (p.dtype == MLSTM_FLOAT32) {
        raw = make_uint4(__float_as_uint(out[0]), __float_as_uint(out[1]), __float_as_uint(out[2]),
                         __float_as_uint(out[3]));
      } else {
        uint32_t w[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          w[j] = p.dtype == MLSTM_BFLOAT16
                     ? uint32_t(half_bits(__float2bfloat16_rn(out[2 * j]))) |
                           (uint32_t(half_bits(__float2bfloat16_rn(out[2 * j + 1]))) << 16)
                     : uint32_t(half_bits(__float2half_rn(out[2 * j]))) |
                           (uint32_t(half_bits(__float2half_rn(out[2 * j + 1]))) << 16);
        raw = make_uint4(w[0], w[1], w[2], w[3]);
      }
      *reinterpret_cast<uint4*>(static_cast<unsigned char*>(h_bh) + index * p.elem_bytes) = raw;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (j < VW) store_any(h_bh, index + j, p.dtype, out[j]);
    }
  }
}

// The sum of a tile's 4 column values over the TRW row groups of the warp (lanes tcw, tcw + TCW, ...),
// spreading the columns: level 0 leaves a lane 2 of its 4 columns, level 1 one, and the levels after
// add whole values: log2(TRW) levels, 4 shuffles at TRW = 8 instead of 12. Afterwards v[0 ..) hold the
// sums of columns keep_col, keep_col + 1, ... (4 of them for TRW = 1, 2 for TRW = 2, else 1). The
// levels are separate calls so that the tile loop can spread them between its FMAs.
template <int TRW>
__host__ __device__ constexpr int row_group_levels() {
  return TRW >= 16 ? 4 : TRW >= 8 ? 3 : TRW >= 4 ? 2 : TRW >= 2 ? 1 : 0;
}

template <int TRW>
__device__ __forceinline__ void row_group_level(int level, float (&v)[4], bool up1, bool up2) {
  constexpr int TCW = 32 / TRW;
  if (level == 0) {
    const float s0 = up1 ? v[0] : v[2], s1 = up1 ? v[1] : v[3];
    v[0] = (up1 ? v[2] : v[0]) + __shfl_xor_sync(0xffffffffu, s0, TCW);
    v[1] = (up1 ? v[3] : v[1]) + __shfl_xor_sync(0xffffffffu, s1, TCW);
  } else if (level == 1) {
    v[0] = (up2 ? v[1] : v[0]) + __shfl_xor_sync(0xffffffffu, up2 ? v[0] : v[1], 2 * TCW);
  } else {
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], TCW << level);
  }
}

// Stores what the row_group_level calls left for one step at dst (column keep_col of the tile); for
// TRW >= 4 the lanes of row groups 0-3 hold distinct columns and the others repeat them.
template <int TRW>
__device__ __forceinline__ void store_row_group_sums(float* dst, const float (&out)[4], int trw) {
  if constexpr (TRW == 1) {
    *reinterpret_cast<float4*>(dst) = make_float4(out[0], out[1], out[2], out[3]);
  } else if constexpr (TRW == 2) {
    *reinterpret_cast<float2*>(dst) = make_float2(out[0], out[1]);
  } else {
    if (trw < 4) *dst = out[0];
  }
}

// The tile's steps of chunk c: per step C^ = rho C^ + a v^T on the RT x 4 tile, then the tile's part
// of C^T q^, summed over the warp's row groups into the column sums. The row-group sum of a step is
// done during the next step (its shuffles and adds are independent of that step's FMAs, so they issue
// in between instead of stalling the warp at the end of each step); rho is loaded a step ahead, so that
// the rescale test does not wait on it.
template <int RT, int TRW>
__device__ __forceinline__ void tile_chunk(float (&C)[RT][4], const SequenceParams& p, unsigned char* smem, int64_t c,
                                           int nk) {
  const SequenceSmem& L = p.L;
  const TileCoords t = tile_coords<TRW>(p);
  const int tr = t.tr, tc = t.tc, trx = t.trx, trw = t.trw;
  const int chunk = p.chunk, W = p.W;
  const StepScalars* sc = reinterpret_cast<const StepScalars*>(smem + L.scalars) + slot_of(c, kScalarSlots) * chunk;
  const float* xq = reinterpret_cast<const float*>(smem + L.xq) + (c & 1) * chunk * L.pq + tr * (RT + kRowPad);
  const float* xa = reinterpret_cast<const float*>(smem + L.xa) + (c & 1) * chunk * L.pq + tr * (RT + kRowPad);
  const bool up1 = (trw & 1) != 0, up2 = (trw & 2) != 0;
  const int keep_col = TRW == 1 ? 0 : TRW == 2 ? (up1 ? 2 : 0) : (up1 ? 2 : 0) + (up2 ? 1 : 0);
  // Per-step pointers, advanced by one step each iteration.
  const float* v_k = reinterpret_cast<const float*>(smem + L.xv) + (c & 1) * chunk * W + tc * 4;
  const float* q_k = xq;
  const float* a_k = xa;
  const int hs_step = p.TRx * W;
  float* hs_prev = reinterpret_cast<float*>(smem + L.hsum) + (c & 1) * chunk * hs_step + trx * W + tc * 4 +
                   keep_col;  // the column sums of step k - 1 (of step 0 until k = 1)
  // Level l of the previous step's row-group sum goes after row group l * kSpacing of this step. With
  // RT = 16 the levels go together at the start: spreading them costs registers that it lacks.
  constexpr int kLevels = row_group_levels<TRW>();
  constexpr int kSpacing = RT == 32 && kLevels > 0 ? (RT / 4) / kLevels : 0;

  float rho = sc[0].rho;
  float h_prev[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 1
  for (int k = 0; k < nk; ++k) {
    if (rho != 1.0f) {
#pragma unroll
      for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j) C[r][j] *= rho;
    }
    const float4 v4 = *reinterpret_cast<const float4*>(v_k);
    const float vk[4] = {v4.x, v4.y, v4.z, v4.w};
    rho = sc[min(k + 1, nk - 1)].rho;
    float h_even[4] = {0.0f, 0.0f, 0.0f, 0.0f}, h_odd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int r4 = 0; r4 < RT / 4; ++r4) {
      const float4 q4 = *reinterpret_cast<const float4*>(q_k + 4 * r4);
      const float4 a4 = *reinterpret_cast<const float4*>(a_k + 4 * r4);
      const float qr[4] = {q4.x, q4.y, q4.z, q4.w};
      const float ar[4] = {a4.x, a4.y, a4.z, a4.w};
      // Two accumulators per column halve the dependent chain of C^T q^.
#pragma unroll
      for (int rr = 0; rr < 4; rr += 2) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          C[4 * r4 + rr][j] = fmaf(ar[rr], vk[j], C[4 * r4 + rr][j]);
          h_even[j] = fmaf(C[4 * r4 + rr][j], qr[rr], h_even[j]);
          C[4 * r4 + rr + 1][j] = fmaf(ar[rr + 1], vk[j], C[4 * r4 + rr + 1][j]);
          h_odd[j] = fmaf(C[4 * r4 + rr + 1][j], qr[rr + 1], h_odd[j]);
        }
      }
#pragma unroll
      for (int level = 0; level < kLevels; ++level)
        if (r4 == level * kSpacing) row_group_level<TRW>(level, h_prev, up1, up2);
    }
    if (k > 0) {
      store_row_group_sums<TRW>(hs_prev, h_prev, trw);
      hs_prev += hs_step;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) h_prev[j] = h_even[j] + h_odd[j];
    q_k += L.pq, a_k += L.pq, v_k += W;
  }
#pragma unroll
  for (int level = 0; level < kLevels; ++level) row_group_level<TRW>(level, h_prev, up1, up2);
  store_row_group_sums<TRW>(hs_prev, h_prev, trw);
}

// ---- the kernel -----------------------------------------------------------------------------------------

// RT: rows of C per thread; TRW: row groups per warp (the tiles of a warp are TRW x 32 / TRW; TRW = 32
// would leave no two lanes sharing q^ and a, and TRW = 8 always fits, so it is not offered).
template <int RT, int TRW>
__global__ void __launch_bounds__(sequence_max_threads<RT>()) recurrent_sequence_fwd_kernel(const SequenceParams p) {
  static_assert(TRW >= 1 && TRW <= kMaxTRw && (TRW & (TRW - 1)) == 0, "TRW must be a power of two <= 16");
  extern __shared__ __align__(16) unsigned char smem[];
  const SequenceSmem& L = p.L;
  float* const gate_i = reinterpret_cast<float*>(smem + L.gates);                    // [2][32]
  float* const gate_f = reinterpret_cast<float*>(smem + L.gates) + 2 * kGateWindow;  // [2][32] logsigmoid(f)
  StepScalars* const scalars = reinterpret_cast<StepScalars*>(smem + L.scalars);    // [kScalarSlots][chunk]
  float* const nhat = reinterpret_cast<float*>(smem + L.nhat);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, nwarps = blockDim.x / 32;
  const int64_t S = p.S;
  const int chunk = p.chunk;
  const int64_t NCH = p.NCH;
  const bool is_scanner = warp == nwarps - 1;

  BlockPlace& at = *reinterpret_cast<BlockPlace*>(smem + L.place);
  if (tid == 0) {
    const BlockCoords bc = block_coords(p);
    const int64_t b = bc.b, hh = bc.hh, col0 = bc.col0, es = p.elem_bytes;
    at.q = static_cast<const unsigned char*>(p.q) + (b * p.q_s0 + hh * p.q_s1) * es;
    at.k = static_cast<const unsigned char*>(p.k) + (b * p.k_s0 + hh * p.k_s1) * es;
    at.v = static_cast<const unsigned char*>(p.v) + (b * p.v_s0 + hh * p.v_s1 + col0) * es;
    at.h = static_cast<unsigned char*>(p.h) + (b * p.h_s0 + hh * p.h_s1 + col0) * es;
    at.i = b * p.i_s0 + hh * p.i_s1, at.f = b * p.f_s0 + hh * p.f_s1;
    at.m_run = p.has_initial ? load_any(p.m_in, b * p.m_in_s0 + hh * p.m_in_s1, p.state_dtype) : 0.0f;
    at.sigma_run = 0.0;
  }
  __syncthreads();

  // Start the input ring: chunk 0 (iteration c issues chunk c + kRing, from c = -1 on).
  for (int x = 0; x < kRing - 1; ++x) issue_chunk(p, smem, x, NCH);

  // Rows past DHQK: zero q^ and a once, in both buffers; the converter never writes them.
  const int pad_rows = p.rows - p.DHQK;
  for (int e = tid; e < 2 * chunk * pad_rows; e += blockDim.x) {
    const int r = p.DHQK + e % pad_rows, step = e / pad_rows;
    const int pr = r / RT * (RT + kRowPad) + r % RT;
    reinterpret_cast<float*>(smem + L.xq)[step * L.pq + pr] = 0.0f;
    reinterpret_cast<float*>(smem + L.xa)[step * L.pq + pr] = 0.0f;
  }

  // Initial state: C^ = C_0 (sigma = 0), n^ = n_0, m = m_0; zeros and m = 0 when absent.
  float C[RT][4];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int j = 0; j < 4; ++j) C[r][j] = 0.0f;
  if (p.has_initial) {
    const BlockCoords bc = block_coords(p);
    const TileCoords t = tile_coords<TRW>(p);
    const int64_t base = bc.b * p.c_in_s0 + bc.hh * p.c_in_s1 + bc.col0 + t.tc * 4;
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      const int row = t.tr * RT + r;
      if (row < p.DHQK) {
#pragma unroll
        for (int j = 0; j < 4; ++j) C[r][j] = load_any(p.c_in, base + row * p.c_in_s2 + j, p.state_dtype);
      }
    }
  }
  for (int r = tid; r < p.DHQK; r += blockDim.x) {
    const BlockCoords bc = block_coords(p);
    nhat[r] = p.has_initial ? load_any(p.n_in, bc.b * p.n_in_s0 + bc.hh * p.n_in_s1 + r, p.state_dtype) : 0.0f;
  }

  // The scanning warp: gate windows 0 and 1, then the scalars of chunk 0. Lane 0 carries m and sigma
  // (in `at`); every lane holds one step of the next window in flight (raw bits, so the load does not
  // stall).
  uint32_t next_i_bits = 0, next_f_bits = 0;
  if (is_scanner) {
    for (int s = lane; s < 2 * kGateWindow && s < S; s += 32) {
      gate_i[s] = load_any(p.i, at.i + s, p.gate_dtype);
      gate_f[s] = log_sigmoid(load_any(p.f, at.f + s, p.gate_dtype));
    }
    __syncwarp();
    if (lane == 0) scan_chunk(0, chunk, S, gate_i, gate_f, at, scalars);
  }

  // Half of the warps (one per scheduler, warps 4-7 of 8) do writer and converter after their tiles.
  const bool early = !p.stagger || ((warp >> 2) & 1) == 0;
  auto write_and_convert = [&](int64_t u, int nk_u, int64_t y, int nk_y) {
    if (nk_u > 0) write_chunk(p, smem, u, nk_u, at.h);
    if (nk_y > 0) convert_chunk<RT>(p, smem, y, nk_y);
  };

  for (int64_t c = -1; c <= NCH; ++c) {
    // Inputs of chunk c + 1 have landed; publish them and everything written in the previous iteration.
    cp_async_wait<0>();
    __syncthreads();

    // Refill the ring slot of chunk c (converted in iteration c - 1) with chunk c + kRing.
    issue_chunk(p, smem, c + kRing, NCH);

    // Scanner: the scalars of chunk x = c + 2 (published by the next barrier, first read at iteration
    // c + 1). On the first chunk of window w >= 2 the warp stores window w (slot w & 1, last read for
    // window w - 2) from the values loaded a window earlier; on the first chunk of window w >= 1 it
    // starts loading window w + 1.
    const int64_t x = c + 2;
    if (is_scanner && x < NCH) {
      const int64_t s0 = x * chunk;
      if (s0 % kGateWindow == 0) {
        const int64_t w = s0 / kGateWindow;
        if (w >= 2 && s0 + lane < S) {
          gate_i[(w & 1) * kGateWindow + lane] = bits_to_float(next_i_bits, p.gate_dtype);
          gate_f[(w & 1) * kGateWindow + lane] = log_sigmoid(bits_to_float(next_f_bits, p.gate_dtype));
        }
        const int64_t s_next = s0 + kGateWindow + lane;
        if (w >= 1 && s_next < S) {
          next_i_bits = load_bits(p.i, at.i + s_next, p.gate_dtype);
          next_f_bits = load_bits(p.f, at.f + s_next, p.gate_dtype);
        }
      }
      __syncwarp();
      if (lane == 0)
        scan_chunk(x, chunk, S, gate_i, gate_f, at, scalars + slot_of(x, kScalarSlots) * chunk);
    }

    const int64_t u = c - 1, y = c + 1;
    const int nk_u = u >= 0 ? static_cast<int>(min(int64_t(chunk), S - u * chunk)) : 0;
    const int nk_c = c >= 0 && c < NCH ? static_cast<int>(min(int64_t(chunk), S - c * chunk)) : 0;
    const int nk_y = y < NCH ? static_cast<int>(min(int64_t(chunk), S - y * chunk)) : 0;
    if (early) write_and_convert(u, nk_u, y, nk_y);
    if (nk_c > 0) tile_chunk<RT, TRW>(C, p, smem, c, nk_c);
    if (!early) write_and_convert(u, nk_u, y, nk_y);
  }
  cp_async_wait<0>();

  // Last states: C_S = exp(sigma_S) C^, n_S = exp(sigma_S) n^, m_S, from the scalars of step S-1 (their
  // slot is not rewritten: the scanner stops at the last chunk).
  if (p.has_last) {
    const StepScalars last = scalars[slot_of(NCH - 1, kScalarSlots) * chunk + (S - 1) % chunk];
    const float scale = expf(last.sigma);
    const BlockCoords bc = block_coords(p);
    const TileCoords t = tile_coords<TRW>(p);
    const int64_t b = bc.b, hh = bc.hh;
    const int64_t base = b * p.c_out_s0 + hh * p.c_out_s1 + bc.col0 + t.tc * 4;
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      const int row = t.tr * RT + r;
      if (row < p.DHQK) {
#pragma unroll
        for (int j = 0; j < 4; ++j) store_any(p.c_out, base + row * p.c_out_s2 + j, p.state_dtype, scale * C[r][j]);
      }
    }
    if (bc.slab == 0) {
      for (int r = tid; r < p.DHQK; r += blockDim.x)
        store_any(p.n_out, b * p.n_out_s0 + hh * p.n_out_s1 + r, p.state_dtype, scale * nhat[r]);
      if (tid == 0) store_any(p.m_out, b * p.m_out_s0 + hh * p.m_out_s1, p.state_dtype, last.m);
    }
  }
}

}  // namespace mlstm::cuda::recurrent
