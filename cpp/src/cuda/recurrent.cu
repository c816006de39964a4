// CUDA recurrent forms: the fused step (one launch per step, recurrent_step.cuh) and the fused
// sequence (one launch for all S steps, recurrent_sequence.cuh). This file is the host adapter:
// it picks the work split for the device, checks the alignment that vector accesses need, turns the
// dtypes (step) or the tiling (sequence) into template parameters (one dispatch point each) and
// launches on the caller's stream.
// Nothing here synchronises or allocates, so both forms can be captured in CUDA graphs.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "common/backend.h"
#include "cuda/common.cuh"
#include "cuda/forms.h"
#include "cuda/recurrent_sequence.cuh"
#include "cuda/recurrent_step.cuh"

namespace mlstm::cuda {
namespace {

using recurrent::kStepThreads;
using recurrent::SequenceParams;
using recurrent::StepParams;

struct DeviceInfo {
  int sm_count = 0;
  int cc_major = 0;
  int smem_optin = 0;  // largest dynamic shared memory per block after opting in
  int l2_bytes = 0;
};

// Device attributes, queried once per device (cheap calls, but the step runs thousands of times).
mlstm_status device_info(int device, DeviceInfo* info) {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static DeviceInfo cache[kMaxDevices];
  static bool known[kMaxDevices] = {};
  const bool cacheable = device >= 0 && device < kMaxDevices;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(mutex);
    if (known[device]) {
      *info = cache[device];
      return MLSTM_OK;
    }
  }
  MLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&info->sm_count, cudaDevAttrMultiProcessorCount, device));
  MLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&info->cc_major, cudaDevAttrComputeCapabilityMajor, device));
  MLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&info->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  MLSTM_CUDA_CHECK(cudaDeviceGetAttribute(&info->l2_bytes, cudaDevAttrL2CacheSize, device));
  if (cacheable) {
    std::lock_guard<std::mutex> lock(mutex);
    cache[device] = *info;
    known[device] = true;
  }
  return MLSTM_OK;
}

// Largest power of two <= `limit` that divides the address and every byte stride/offset given.
int common_alignment(int limit, const void* ptr, std::initializer_list<int64_t> byte_values) {
  int a = limit;
  auto fits = [&](uint64_t x) { return x % uint64_t(a) == 0; };
  for (;;) {
    bool ok = fits(reinterpret_cast<uintptr_t>(ptr));
    for (int64_t x : byte_values) ok = ok && fits(uint64_t(x));
    if (ok || a == 1) return a;
    a /= 2;
  }
}

// One dispatch point per form: runtime dtype -> template type, loud default for anything else.
#define MLSTM_RECURRENT_DISPATCH(dtype, what, T, ...)                                              \
  switch (dtype) {                                                                                 \
    case MLSTM_FLOAT32: {                                                                          \
      using T = float;                                                                             \
      __VA_ARGS__                                                                                  \
    } break;                                                                                       \
    case MLSTM_FLOAT16: {                                                                          \
      using T = __half;                                                                            \
      __VA_ARGS__                                                                                  \
    } break;                                                                                       \
    case MLSTM_BFLOAT16: {                                                                         \
      using T = __nv_bfloat16;                                                                     \
      __VA_ARGS__                                                                                  \
    } break;                                                                                       \
    default:                                                                                       \
      return fail(MLSTM_ERROR_UNSUPPORTED, "%s: dtype code %d is not supported on CUDA", what, int(dtype)); \
  }

// ---- step ---------------------------------------------------------------------------------------------

// Variants of the step's work split that only a timing run can settle. Nothing else reads them; a
// timing build may override them (-DMLSTM_STEP_BLOCKS_PER_SM=2, -DMLSTM_STEP_PROGRAMMATIC_LAUNCH=0,
// -DMLSTM_STEP_SLABS=8; scripts/step_slabs.sh, scripts/step_lib_variants.sh). The library reads no
// environment.
//  * kStepBlocksPerSm: how many blocks of the step share an SM in the slab-count model of
//    choose_step_config. 1: at B*NH >= ~#SMs every block streams whole rows of one (b, h) (2 KiB per
//    row for fp32 DHHV = 512); 2: twice the slabs, half as wide, two blocks per SM (B=16 -> 2 slabs).
//  * kStepProgrammaticLaunch: launch with programmatic stream serialization (sm_90), so that a step
//    launches while the previous one drains (the kernel waits for it before its first load). H100,
//    out of place, same run: 0.5-1 us less per step at every B (B=1 4.4 against 5.3, B=16 49.7
//    against 50.5).
//  * kStepForcedSlabs: d slabs per (b, h) wherever d is a valid count for the shape (divides the
//    vectors of a row, >= 16 columns, within the in-place cap); 0: the rule of choose_step_config.
#ifndef MLSTM_STEP_BLOCKS_PER_SM
#define MLSTM_STEP_BLOCKS_PER_SM 1
#endif
#ifndef MLSTM_STEP_PROGRAMMATIC_LAUNCH
#define MLSTM_STEP_PROGRAMMATIC_LAUNCH 1
#endif
#ifndef MLSTM_STEP_SLABS
#define MLSTM_STEP_SLABS 0
#endif
constexpr int kStepBlocksPerSm = MLSTM_STEP_BLOCKS_PER_SM;
constexpr int kStepForcedSlabs = MLSTM_STEP_SLABS;
constexpr bool kStepProgrammaticLaunch = MLSTM_STEP_PROGRAMMATIC_LAUNCH != 0;

// The step's work split (recurrent_step.cuh): slabs per (b, h) and the tile inside a slab.
struct StepConfig {
  int vec = 1;           // state elements per access: 16 bytes, or 1 for unaligned rows
  int nv = 1;            // vectors per thread in a row of a tile
  int nslab = 1;         // blocks per (b, h)
  int slab_width = 0;    // columns per block
  int tile_threads = 1;  // threads along a row of a tile
  bool cluster = false;  // in place with several slabs: the slabs of a (b, h) form a cluster
  bool programmatic_launch = false;
};

// Slabs per (b, h): first the count whose busiest SM streams the fewest columns, with the blocks
// spread evenly, kStepBlocksPerSm at a time per SM (on ties the fewest slabs); this fills the GPU at
// small batches. Then, out of place, more slabs until each holds at most 64 KiB of state: with one
// large slab per SM the step lasts as long as the slowest SM's slab (ncu, H200, B=16: SMs active 87 %
// of the kernel), while many small blocks are handed out as SMs free up. Each slab is at least 16
// columns and a whole number of vectors. In place, the slabs of a (b, h) form one cluster (n and m
// are read by all and written by one); clusters wider than 2 cost bandwidth, so they are used only
// where there are too few (b, h) to fill the GPU otherwise (at most 8 blocks, the portable limit),
// and before sm_90 there is a single slab (benchmarks/results/recurrent_h100.md).
// Tile: the most threads along a row (up to a warp: 512 contiguous bytes per load instruction), then
// the most vectors per thread (up to 16 state elements) that divide the slab.
StepConfig choose_step_config(const FwdParams& p, const DeviceInfo& dev, int vec, int64_t es, bool nm_in_place) {
  StepConfig cfg;
  cfg.vec = vec;
  const int64_t BH = p.B * p.NH;
  const bool use_cluster = nm_in_place && dev.cc_major >= 9;
  const int cap = nm_in_place ? (use_cluster ? (BH < 64 ? 8 : 2) : 1) : 64;
  const int64_t vectors = p.DHHV / vec;
  const int64_t slots = int64_t(kStepBlocksPerSm) * dev.sm_count;
  int64_t best_cost = INT64_MAX;
  for (int d = 1; d <= cap; ++d) {
    if (vectors % d != 0 || p.DHHV / d < 16) continue;
    const int64_t cost = (BH * d + slots - 1) / slots * (p.DHHV / d);
    if (cost < best_cost) best_cost = cost, cfg.nslab = d;
    if (BH * d >= slots) break;
  }
  if (!nm_in_place) {
    for (int d = cfg.nslab; d <= cap; ++d) {
      if (vectors % d != 0 || p.DHHV / d < 16) continue;
      cfg.nslab = d;
      if (p.DHQK * (p.DHHV / d) * es <= (int64_t(64) << 10)) break;
    }
  }
  constexpr int forced = kStepForcedSlabs > 0 ? kStepForcedSlabs : 1;  // a divisor even when unset
  if (kStepForcedSlabs > 0 && forced <= cap && vectors % forced == 0 && p.DHHV / forced >= 16) cfg.nslab = forced;
  cfg.slab_width = static_cast<int>(p.DHHV / cfg.nslab);
  const int slab_vectors = cfg.slab_width / vec;
  cfg.tile_threads = 32;
  while (slab_vectors % cfg.tile_threads != 0) cfg.tile_threads /= 2;
  const int max_nv = vec == 1 ? 1 : 16 / vec;
  for (int nv = max_nv; nv >= 1; nv /= 2)
    if (slab_vectors % (cfg.tile_threads * nv) == 0) {
      cfg.nv = nv;
      break;
    }
  cfg.cluster = use_cluster && cfg.nslab > 1;
  // Not for a grid of at most one block per SM in place: the next step's blocks, launched early,
  // crowd some SMs, and that grid then runs unbalanced (H100, B=16 in place: 54.7 against 52.5 us).
  const bool one_wave_in_place = nm_in_place && BH * cfg.nslab <= dev.sm_count;
  cfg.programmatic_launch = kStepProgrammaticLaunch && dev.cc_major >= 9 && !cfg.cluster && !one_wave_in_place;
  return cfg;
}

// The one dispatch point of the step's compile-time variants: (vec, nv, prologue first) -> kernel, null
// if not built. Unaligned states (vec 1) have a single variant.
template <typename TS, typename TQ, bool PF>
void (*step_kernel_vec(int nv))(StepParams) {
  constexpr int kVec = 16 / sizeof(TS);
  switch (nv) {
    case 1: return recurrent::recurrent_step_fwd_kernel<TS, TQ, kVec, 1, PF>;
    case 2: return recurrent::recurrent_step_fwd_kernel<TS, TQ, kVec, 2, PF>;
    case 4:
      if constexpr (kVec == 4) return recurrent::recurrent_step_fwd_kernel<TS, TQ, kVec, 4, PF>;
      return nullptr;
    default: return nullptr;
  }
}
template <typename TS, typename TQ>
void (*step_kernel(int vec, int nv, bool prologue_first))(StepParams) {
  if (vec == 1) return nv == 1 ? recurrent::recurrent_step_fwd_kernel<TS, TQ, 1, 1, false> : nullptr;
  if (vec != int(16 / sizeof(TS))) return nullptr;
  return prologue_first ? step_kernel_vec<TS, TQ, true>(nv) : step_kernel_vec<TS, TQ, false>(nv);
}

template <typename TS, typename TQ>
mlstm_status launch_step(const FwdParams& p, const DeviceInfo& dev, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(TS);
  constexpr int64_t es = sizeof(TS);
  const int64_t BH = p.B * p.NH;

  const bool c_in_place = p.has_initial && p.c_last.data == p.c_initial.data;
  const bool nm_in_place = p.has_initial && (p.n_last.data == p.n_initial.data || p.m_last.data == p.m_initial.data);
  if (c_in_place && (p.c_last.stride[0] != p.c_initial.stride[0] || p.c_last.stride[1] != p.c_initial.stride[1] ||
                     p.c_last.stride[2] != p.c_initial.stride[2]))
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "step: c_last is the c_initial buffer but with other strides");

  // 16-byte state vectors need 16-byte aligned rows (slab and vector starts are multiples of kVec columns).
  bool vec_ok = common_alignment(16, p.c_last.data, {p.c_last.stride[0] * es, p.c_last.stride[1] * es,
                                                     p.c_last.stride[2] * es}) == 16;
  if (p.has_initial)
    vec_ok = vec_ok && common_alignment(16, p.c_initial.data, {p.c_initial.stride[0] * es, p.c_initial.stride[1] * es,
                                                               p.c_initial.stride[2] * es}) == 16;
  const StepConfig cfg = choose_step_config(p, dev, vec_ok ? kVec : 1, es, nm_in_place);

  StepParams sp;
  sp.NH = p.NH, sp.DHQK = p.DHQK, sp.DHHV = p.DHHV;
  sp.nslab = cfg.nslab, sp.slab_width = cfg.slab_width, sp.tile_threads = cfg.tile_threads;
  sp.has_initial = p.has_initial;
  sp.cluster_in_place = cfg.cluster;
  const int64_t state_bytes = BH * p.DHQK * p.DHHV * es;
  sp.prefetch_l2 = state_bytes <= (int64_t(16) << 20);
  const bool prologue_first = 2 * state_bytes > dev.l2_bytes;  // streams from DRAM (recurrent_step.cuh)
  sp.eps = p.eps, sp.qk_scale = p.qk_scale;
  sp.gate_dtype = p.i.dtype;
  sp.q = p.q.data, sp.q_s0 = p.q.stride[0], sp.q_s1 = p.q.stride[1];
  sp.k = p.k.data, sp.k_s0 = p.k.stride[0], sp.k_s1 = p.k.stride[1];
  sp.v = p.v.data, sp.v_s0 = p.v.stride[0], sp.v_s1 = p.v.stride[1];
  sp.i = p.i.data, sp.i_s0 = p.i.stride[0], sp.i_s1 = p.i.stride[1];
  sp.f = p.f.data, sp.f_s0 = p.f.stride[0], sp.f_s1 = p.f.stride[1];
  if (p.has_initial) {
    sp.c_in = p.c_initial.data, sp.c_in_s0 = p.c_initial.stride[0], sp.c_in_s1 = p.c_initial.stride[1];
    sp.c_in_s2 = p.c_initial.stride[2];
    sp.n_in = p.n_initial.data, sp.n_in_s0 = p.n_initial.stride[0], sp.n_in_s1 = p.n_initial.stride[1];
    sp.m_in = p.m_initial.data, sp.m_in_s0 = p.m_initial.stride[0], sp.m_in_s1 = p.m_initial.stride[1];
  }
  sp.c_out = p.c_last.data, sp.c_out_s0 = p.c_last.stride[0], sp.c_out_s1 = p.c_last.stride[1];
  sp.c_out_s2 = p.c_last.stride[2];
  sp.n_out = p.n_last.data, sp.n_out_s0 = p.n_last.stride[0], sp.n_out_s1 = p.n_last.stride[1];
  sp.m_out = p.m_last.data, sp.m_out_s0 = p.m_last.stride[0], sp.m_out_s1 = p.m_last.stride[1];
  sp.h = p.h.data, sp.h_s0 = p.h.stride[0], sp.h_s1 = p.h.stride[1];

  void (*kernel)(StepParams) = step_kernel<TS, TQ>(cfg.vec, cfg.nv, prologue_first);
  if (kernel == nullptr)
    return fail(MLSTM_ERROR_INTERNAL, "step: no kernel for %d elements per access and %d vectors per thread", cfg.vec,
                cfg.nv);
  const int64_t blocks = BH * cfg.nslab;
  if (blocks > INT32_MAX) return fail(MLSTM_ERROR_UNSUPPORTED, "step: B * NH = %lld is too large", (long long)BH);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kStepThreads);
  config.dynamicSmemBytes = recurrent::step_smem_bytes(cfg.slab_width);
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  int nattrs = 0;
  if (cfg.cluster) {
    attrs[nattrs].id = cudaLaunchAttributeClusterDimension;
    attrs[nattrs].val.clusterDim.x = static_cast<unsigned>(cfg.nslab);
    attrs[nattrs].val.clusterDim.y = 1;
    attrs[nattrs].val.clusterDim.z = 1;
    ++nattrs;
  }
  if (cfg.programmatic_launch) {
    attrs[nattrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[nattrs].val.programmaticStreamSerializationAllowed = 1;
    ++nattrs;
  }
  config.attrs = attrs;
  config.numAttrs = nattrs;
  MLSTM_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, sp));
  MLSTM_CUDA_CHECK_LAUNCH("recurrent_step_fwd_kernel");
  return MLSTM_OK;
}

// ---- sequence -------------------------------------------------------------------------------------------

using SequenceKernel = void (*)(SequenceParams);

// The tilings compiled, and the one dispatch point of the sequence kernel: (RT rows per thread, TRw
// row groups per warp) -> instantiation (the input dtype is a runtime value of the kernel). RT = 32
// serves DHQK = 128 .. 1024 (TRw = DHQK / 32 up to 16, then row groups across warps); RT = 16 covers
// the smaller head dims and the 128-register variant of the larger ones.
struct SequenceTiling {
  int RT, TRw;
  SequenceKernel kernel;
};
constexpr SequenceTiling kSequenceTilings[] = {
    {32, 4, recurrent::recurrent_sequence_fwd_kernel<32, 4>},
    {32, 8, recurrent::recurrent_sequence_fwd_kernel<32, 8>},
    {32, 16, recurrent::recurrent_sequence_fwd_kernel<32, 16>},
    {16, 1, recurrent::recurrent_sequence_fwd_kernel<16, 1>},
    {16, 2, recurrent::recurrent_sequence_fwd_kernel<16, 2>},
    {16, 4, recurrent::recurrent_sequence_fwd_kernel<16, 4>},
    {16, 8, recurrent::recurrent_sequence_fwd_kernel<16, 8>},
    {16, 16, recurrent::recurrent_sequence_fwd_kernel<16, 16>},
};

struct SequenceConfig {
  SequenceKernel kernel = nullptr;
  int RT = 0, TRw = 0, TRx = 0, TCx = 0, W = 0, nslab = 0, rows = 0, threads = 0, chunk = 0;
  bool stagger = true;
  recurrent::SequenceSmem smem;
};

// Overrides of the choice below, for timing the alternatives on a GPU: a timing build may define
// MLSTM_SEQUENCE_TUNE as a string holding any of "rt=16|32 trw=1..16 w=<slab width> chunk=1|2|4|8
// stagger=0|1", e.g. -DMLSTM_SEQUENCE_TUNE='"rt=16 w=64"'. Settings that leave no tiling for the shape
// are dropped. The library reads no environment.
struct SequenceTune {
  int rt = 0, trw = 0, w = 0, chunk = 0, stagger = -1;
};

SequenceTune sequence_tune() {
  SequenceTune t;
#ifdef MLSTM_SEQUENCE_TUNE
  const std::string text(MLSTM_SEQUENCE_TUNE);
  auto value = [&](const char* key) {
    const size_t at = text.find(key);
    return at == std::string::npos ? -1 : std::atoi(text.c_str() + at + std::strlen(key));
  };
  t.rt = std::max(0, value("rt=")), t.trw = std::max(0, value("trw=")), t.w = std::max(0, value("w="));
  t.chunk = std::max(0, value("chunk="));
  t.stagger = value("stagger=");
#endif
  return t;
}

// The state slab of a block lives in registers as RT x 4 tiles (recurrent_sequence.cuh: a warp holds
// TRw x TCw tiles, TRw * TCw = 32, the block TRx x TCx warps). Among the compiled tilings and the slab
// widths W = 4 * TCw * TCx that divide DHHV, pick the one with the least estimated time on the busiest
// SM. A block costs per step, in thread instructions,
//   2 * rows * W            FMAs (rows = TRx * TRw * RT >= DHQK: padded rows cost as much as real ones)
//   threads * (RT / 2 + 48) shared loads of q^ and a, h reduction, loop (per tile; from the SASS)
//   12 * DHQK + 3 * W       conversion of q, k and the update of n^ (once per block), h output.
// The blocks are spread evenly; an SM issues 4 warp instructions per cycle only with about two warps
// per scheduler resident: one warp per scheduler is taken to reach 70% (the tile loop has plenty of
// independent FMAs), fewer than 4 warps leave schedulers idle. Padded rows count once more at half
// weight, and ties go to fewer cross-warp partials (smaller TRx). The step chunk is the largest (<= 8)
// whose buffers fit shared memory.
SequenceConfig choose_sequence_config(const FwdParams& p, const DeviceInfo& dev, int elem_bytes,
                                      const SequenceTune& tune) {
  SequenceConfig best;
  double best_cost = 0.0;
  const int64_t BH = p.B * p.NH;
  const int DHQK = static_cast<int>(p.DHQK), DHHV = static_cast<int>(p.DHHV);
  for (const SequenceTiling& tiling : kSequenceTilings) {
    const int RT = tiling.RT, TRw = tiling.TRw;
    if ((tune.rt != 0 && tune.rt != RT) || (tune.trw != 0 && tune.trw != TRw)) continue;
    const int max_threads = RT == 32 ? recurrent::sequence_max_threads<32>() : recurrent::sequence_max_threads<16>();
    const int regs = RT == 32 ? 256 : 128;  // what the launch bounds allow per thread
    const int TR = (DHQK + RT - 1) / RT;
    const int TCw = 32 / TRw, TRx = (TR + TRw - 1) / TRw, rows = TRx * TRw * RT;
    for (int TCx = 1; 32 * TRx * TCx <= max_threads; ++TCx) {
      const int W = 4 * TCw * TCx, threads = 32 * TRx * TCx;
      if (W % 16 != 0 || DHHV % W != 0 || (tune.w != 0 && tune.w != W)) continue;
      int chunk = 0;
      recurrent::SequenceSmem L;
      for (int ch = recurrent::kMaxChunk; ch >= 1 && chunk == 0; ch /= 2) {
        if (tune.chunk != 0 && ch > tune.chunk) continue;
        L = recurrent::sequence_smem(DHQK, W, RT, rows, TRx, threads / 32, ch, elem_bytes);
        if (L.total <= dev.smem_optin) chunk = ch;
      }
      if (chunk == 0) continue;
      const int64_t nslab = DHHV / W;
      const int64_t per_sm = (BH * nslab + dev.sm_count - 1) / dev.sm_count;
      const double per_block = 2.0 * rows * W + threads * (RT / 2 + 48.0) + 12.0 * DHQK + 3.0 * W;
      const int64_t fit = std::min({int64_t(65536 / (regs * threads)), int64_t(2048 / threads),
                                    int64_t((dev.smem_optin + 1024) / (L.total + 1024))});
      const double warps = double(std::min(per_sm, std::max<int64_t>(fit, 1)) * (threads / 32));
      const double rate = warps >= 8.0 ? 1.0 : warps >= 4.0 ? 0.7 + 0.075 * (warps - 4.0) : 0.175 * warps;
      // Padded rows that only buy warps come out even in this count; lean against them on near ties.
      const double cost = double(per_sm) * per_block / rate * (1.0 + 0.5 * (rows - DHQK) / rows);
      if (best.kernel == nullptr || cost < best_cost || (cost == best_cost && TRx < best.TRx)) {
        best_cost = cost;
        best.kernel = tiling.kernel;
        best.RT = RT, best.TRw = TRw, best.TRx = TRx, best.TCx = TCx, best.W = W;
        best.nslab = static_cast<int>(nslab), best.rows = rows, best.threads = threads, best.chunk = chunk;
        best.smem = L;
      }
    }
  }
  best.stagger = tune.stagger != 0;
  return best;
}

mlstm_status launch_sequence(const FwdParams& p, const DeviceInfo& dev, cudaStream_t stream) {
  if (p.q.dtype != MLSTM_FLOAT32 && p.q.dtype != MLSTM_FLOAT16 && p.q.dtype != MLSTM_BFLOAT16)
    return fail(MLSTM_ERROR_UNSUPPORTED, "sequence (q, k, v, h): dtype code %d is not supported on CUDA",
                int(p.q.dtype));
  const int64_t es = dtype_size(p.q.dtype);
  SequenceConfig cfg = choose_sequence_config(p, dev, static_cast<int>(es), sequence_tune());
  if (cfg.kernel == nullptr) cfg = choose_sequence_config(p, dev, static_cast<int>(es), SequenceTune{});
  if (cfg.kernel == nullptr)
    return fail(MLSTM_ERROR_UNSUPPORTED, "sequence: no work split fits DHQK=%lld, DHHV=%lld on this device",
                (long long)p.DHQK, (long long)p.DHHV);

  // cp.async granularity: the largest of 16, 8, 4 bytes that every row start and length allows
  // (2 = plain loads, for 16-bit inputs at odd element offsets).
  const int q_align = common_alignment(16, p.q.data, {p.q.stride[0] * es, p.q.stride[1] * es, p.q.stride[2] * es});
  const int k_align = common_alignment(16, p.k.data, {p.k.stride[0] * es, p.k.stride[1] * es, p.k.stride[2] * es});
  const int v_align = common_alignment(16, p.v.data, {p.v.stride[0] * es, p.v.stride[1] * es, p.v.stride[2] * es,
                                                      cfg.W * es, p.DHQK * es});
  const int copy_bytes = std::max<int>(2, std::min({q_align, k_align, v_align}));
  // h in 16-byte groups of columns when every row of every slab starts 16-byte aligned.
  const bool h_vec = common_alignment(16, p.h.data, {p.h.stride[0] * es, p.h.stride[1] * es, p.h.stride[2] * es,
                                                     cfg.W * es}) == 16;

  SequenceParams sp;
  sp.NH = p.NH, sp.S = p.S, sp.DHQK = static_cast<int>(p.DHQK), sp.DHHV = static_cast<int>(p.DHHV);
  sp.nslab = cfg.nslab, sp.W = cfg.W;
  sp.TRx = cfg.TRx, sp.TCx = cfg.TCx;
  sp.rows = cfg.rows, sp.chunk = cfg.chunk, sp.NCH = (p.S + cfg.chunk - 1) / cfg.chunk;
  sp.dtype = p.q.dtype, sp.elem_bytes = static_cast<int>(es);
  sp.copy_bytes = copy_bytes;
  sp.q_pieces = static_cast<int>(p.DHQK * es / copy_bytes), sp.v_pieces = static_cast<int>(cfg.W * es / copy_bytes);
  sp.has_initial = p.has_initial, sp.has_last = p.has_last;
  sp.h_vec = h_vec, sp.stagger = cfg.stagger;
  sp.eps = p.eps, sp.qk_scale = p.qk_scale;
  sp.gate_dtype = p.i.dtype;
  sp.state_dtype = p.has_initial ? p.c_initial.dtype : p.has_last ? p.c_last.dtype : MLSTM_FLOAT32;
  sp.L = cfg.smem;
  sp.q = p.q.data, sp.q_s0 = p.q.stride[0], sp.q_s1 = p.q.stride[1], sp.q_s2 = p.q.stride[2];
  sp.k = p.k.data, sp.k_s0 = p.k.stride[0], sp.k_s1 = p.k.stride[1], sp.k_s2 = p.k.stride[2];
  sp.v = p.v.data, sp.v_s0 = p.v.stride[0], sp.v_s1 = p.v.stride[1], sp.v_s2 = p.v.stride[2];
  sp.i = p.i.data, sp.i_s0 = p.i.stride[0], sp.i_s1 = p.i.stride[1];
  sp.f = p.f.data, sp.f_s0 = p.f.stride[0], sp.f_s1 = p.f.stride[1];
  if (p.has_initial) {
    sp.c_in = p.c_initial.data, sp.c_in_s0 = p.c_initial.stride[0], sp.c_in_s1 = p.c_initial.stride[1];
    sp.c_in_s2 = p.c_initial.stride[2];
    sp.n_in = p.n_initial.data, sp.n_in_s0 = p.n_initial.stride[0], sp.n_in_s1 = p.n_initial.stride[1];
    sp.m_in = p.m_initial.data, sp.m_in_s0 = p.m_initial.stride[0], sp.m_in_s1 = p.m_initial.stride[1];
  }
  if (p.has_last) {
    sp.c_out = p.c_last.data, sp.c_out_s0 = p.c_last.stride[0], sp.c_out_s1 = p.c_last.stride[1];
    sp.c_out_s2 = p.c_last.stride[2];
    sp.n_out = p.n_last.data, sp.n_out_s0 = p.n_last.stride[0], sp.n_out_s1 = p.n_last.stride[1];
    sp.m_out = p.m_last.data, sp.m_out_s0 = p.m_last.stride[0], sp.m_out_s1 = p.m_last.stride[1];
  }
  sp.h = p.h.data, sp.h_s0 = p.h.stride[0], sp.h_s1 = p.h.stride[1], sp.h_s2 = p.h.stride[2];

  const SequenceKernel kernel = cfg.kernel;
  const int64_t blocks = p.B * p.NH * cfg.nslab;
  if (blocks > INT32_MAX)
    return fail(MLSTM_ERROR_UNSUPPORTED, "sequence: B * NH = %lld is too large", (long long)(p.B * p.NH));
  const int smem = cfg.smem.total;
  if (smem > 48 * 1024)
    MLSTM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<static_cast<unsigned>(blocks), cfg.threads, smem, stream>>>(sp);
  MLSTM_CUDA_CHECK_LAUNCH("recurrent_sequence_fwd_kernel");
  return MLSTM_OK;
}

}  // namespace

mlstm_status recurrent_fwd_sizes(const FwdParams&, mlstm_buffer_sizes* sizes) {
  *sizes = {0, 0};  // the state stays on chip; no workspace, and these forms have no backward
  return MLSTM_OK;
}

mlstm_status recurrent_sequence_fwd(const FwdParams& p) {
  DeviceGuard guard(p.device_index);
  DeviceInfo dev;
  MLSTM_RETURN_IF_ERROR(device_info(p.device_index, &dev));
  return launch_sequence(p, dev, stream_of(p.stream));
}

mlstm_status step_fwd(const FwdParams& p) {
  DeviceGuard guard(p.device_index);
  DeviceInfo dev;
  MLSTM_RETURN_IF_ERROR(device_info(p.device_index, &dev));
  const mlstm_dtype state_dtype = p.has_initial ? p.c_initial.dtype : p.c_last.dtype;
  MLSTM_RECURRENT_DISPATCH(state_dtype, "step (states)", TS,
                           MLSTM_RECURRENT_DISPATCH(p.q.dtype, "step (q, k, v, h)", TQ,
                                                    return launch_step<TS, TQ>(p, dev, stream_of(p.stream));))
  return MLSTM_OK;
}

}  // namespace mlstm::cuda
