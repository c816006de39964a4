// How the work split of a state-streaming kernel (the recurrent step: read C, write a*C + b, per
// (b, h) a DHQK x DHHV fp32 matrix) changes the achieved bandwidth at decode sizes. Each variant moves
// the same bytes as the step at B (NH = 8, 256 x 512 fp32 per head) with the step's arithmetic per
// element but nothing else, so the differences are the mapping of work to blocks alone:
//   copy       one 16-byte vector per thread, as many blocks as that takes (an elementwise copy)
//   slab<d>    one block of 256 threads per (b, h, column slab), d slabs per head, walking its rows
//              in address order with 16 loads in flight per thread (the step kernel's mapping)
//   rows<r>    one block per (b, h, r-row range): B * NH * DHQK / r blocks, same walk
//   stride<g>  g blocks in all, each walking 4-KiB pieces g pieces apart (grid-stride)
//   cluster<c> rows<256/c> with the c blocks of a (b, h) in one thread-block cluster, a dependent load
//              before the update and a cluster barrier at the end (the step's shape of work)
// Timing: CUDA-graph replay of 16 calls rotating over buffer sets larger than L2, per call.
//
//   nvcc -O3 -arch=sm_90a -o /tmp/stream_probe benchmarks/gpu/stream_probe.cu && /tmp/stream_probe [B ...]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                  \
  do {                                                                            \
    cudaError_t e = (x);                                                          \
    if (e != cudaSuccess) {                                                       \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e));       \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

constexpr int kThreads = 256;
constexpr int kDepth = 16;

__device__ __forceinline__ float4 fma4(float4 c, float a, float b) {
  return make_float4(fmaf(a, c.x, b), fmaf(a, c.y, b), fmaf(a, c.z, b), fmaf(a, c.w, b));
}

__global__ void copy_kernel(const float4* __restrict__ in, float4* __restrict__ out, long n, float a, float b) {
  const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = fma4(in[i], a, b);
}

// A block streams `rows` rows of `width` float4 each (row stride `ld` float4; 256 % width == 0),
// starting at `base`: item k is the 256 vectors k * 256 ... of the row-major order, thread t its
// vector t, so consecutive threads read consecutive addresses; kDepth items in flight per thread.
__device__ __forceinline__ void walk(const float4* __restrict__ in, float4* __restrict__ out, long base, int rows,
                                     int width, long ld, float a, float b) {
  const int t = threadIdx.x;
  const long first = base + long(t / width) * ld + t % width;
  const long step = long(kThreads / width) * ld;  // from one item to the next
  const int items = rows * width / kThreads;
  float4 ring[kDepth];
#pragma unroll
  for (int u = 0; u < kDepth; ++u)
    if (u < items) ring[u] = in[first + u * step];
  for (int k0 = 0; k0 < items; k0 += kDepth) {
#pragma unroll
    for (int u = 0; u < kDepth; ++u) {
      const int k = k0 + u;
      if (k < items) {
        out[first + k * step] = fma4(ring[u], a, b);
        if (k + kDepth < items) ring[u] = in[first + (k + kDepth) * step];
      }
    }
  }
}

// Column slabs: block (bh, slab) walks all DHQK rows of columns [slab * W, (slab + 1) * W).
__global__ void __launch_bounds__(kThreads, 2) slab_kernel(const float4* in, float4* out, int nslab, int DHQK,
                                                           int DHHV4, float a, float b) {
  const long bh = blockIdx.x / nslab;
  const int slab = blockIdx.x % nslab, W = DHHV4 / nslab;
  walk(in, out, bh * DHQK * DHHV4 + slab * W, DHQK, W, DHHV4, a, b);
}

// Row ranges: block (bh, r) walks rows [r * R, (r + 1) * R) of all columns.
__global__ void __launch_bounds__(kThreads, 2) rows_kernel(const float4* in, float4* out, int R, int DHQK, int DHHV4,
                                                           float a, float b) {
  const int per = DHQK / R;
  const long bh = blockIdx.x / per;
  const int r = blockIdx.x % per;
  walk(in, out, (bh * DHQK + long(r) * R) * DHHV4, R, DHHV4, DHHV4, a, b);
}

// As rows_kernel, but like the step: the blocks of one (b, h) form a cluster, the update waits for a
// per-(b, h) value from memory (the gates), and the cluster synchronises at the end (the h reduction).
__global__ void __launch_bounds__(kThreads, 2) rows_cluster_kernel(const float4* in, float4* out, int R, int DHQK,
                                                                   int DHHV4, const float* gate) {
  const int per = DHQK / R;
  const long bh = blockIdx.x / per;
  const int r = blockIdx.x % per;
  const float a = gate[bh];
  walk(in, out, (bh * DHQK + long(r) * R) * DHHV4, R, DHHV4, DHHV4, a, 1.f - a);
  asm volatile("barrier.cluster.arrive.release;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
}

// Grid-stride over 4-KiB pieces (256 float4).
__global__ void __launch_bounds__(kThreads, 2) stride_kernel(const float4* in, float4* out, long n, float a, float b) {
  for (long p = blockIdx.x; p * 256 < n; p += gridDim.x) {
    const long i = p * 256 + threadIdx.x;
    if (i < n) out[i] = fma4(in[i], a, b);
  }
}

struct Sets {
  std::vector<float4*> buf;
  long n = 0;
};

template <typename Launch>
float per_call_us(const Sets& s, Launch launch) {
  cudaStream_t st;
  CHECK(cudaStreamCreate(&st));
  const int sets = int(s.buf.size()), calls = 16;
  for (int j = 0; j < sets; ++j) launch(s.buf[j], s.buf[(j + 1) % sets], st);
  CHECK(cudaStreamSynchronize(st));
  cudaGraph_t g;
  CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  for (int j = 0; j < calls; ++j) launch(s.buf[j % sets], s.buf[(j + 1) % sets], st);
  CHECK(cudaStreamEndCapture(st, &g));
  cudaGraphExec_t ge;
  CHECK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  std::vector<float> t;
  for (int r = 0; r < 23; ++r) {
    cudaEventRecord(e0, st);
    CHECK(cudaGraphLaunch(ge, st));
    cudaEventRecord(e1, st);
    CHECK(cudaEventSynchronize(e1));
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    if (r >= 3) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  cudaGraphExecDestroy(ge), cudaGraphDestroy(g), cudaStreamDestroy(st);
  return t[t.size() / 2] * 1000.f / calls;
}

int main(int argc, char** argv) {
  std::vector<int> batches;
  for (int j = 1; j < argc; ++j) batches.push_back(std::atoi(argv[j]));
  if (batches.empty()) batches = {16, 32, 64};
  const int NH = 8, DHQK = 256, DHHV4 = 512 / 4;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  {  // reference: a 1-GiB copy
    Sets big;
    big.n = (1L << 30) / 16;
    big.buf.resize(2);
    for (auto& p : big.buf) CHECK(cudaMalloc(&p, big.n * 16));
    const float us = per_call_us(big, [&](float4* i, float4* o, cudaStream_t st) {
      copy_kernel<<<unsigned((big.n + 255) / 256), 256, 0, st>>>(i, o, big.n, 1.f, 0.f);
    });
    std::printf("1-GiB copy: %.1f us = %.3f TB/s (read + write)\n", us, 2.0 * big.n * 16 / us / 1e6);
    for (auto p : big.buf) cudaFree(p);
  }
  for (int B : batches) {
    Sets s;
    s.n = long(B) * NH * DHQK * DHHV4;
    const long bytes = s.n * 16;
    const int sets = int(std::max(3L, (256L << 20) / bytes + 1));
    s.buf.resize(sets);
    for (auto& p : s.buf) {
      CHECK(cudaMalloc(&p, bytes));
      CHECK(cudaMemset(p, 0, bytes));
    }
    const int BH = B * NH;
    std::printf("\nB=%d: %.1f MiB per state, floor at the 1-GiB copy rate above\n", B, bytes / 1048576.0);
    auto report = [&](const char* name, float us) {
      std::printf("  %-12s %7.1f us  %.3f TB/s\n", name, us, 2.0 * bytes / us / 1e6);
    };
    report("copy", per_call_us(s, [&](float4* i, float4* o, cudaStream_t st) {
             copy_kernel<<<unsigned((s.n + 255) / 256), 256, 0, st>>>(i, o, s.n, 0.9f, 0.1f);
           }));
    for (int d : {1, 2, 4, 8}) {
      char name[32];
      std::snprintf(name, sizeof name, "slab%d", d);
      report(name, per_call_us(s, [&](float4* i, float4* o, cudaStream_t st) {
               slab_kernel<<<BH * d, kThreads, 0, st>>>(i, o, d, DHQK, DHHV4, 0.9f, 0.1f);
             }));
    }
    for (int R : {64, 32, 16, 8}) {
      char name[32];
      std::snprintf(name, sizeof name, "rows%d", R);
      report(name, per_call_us(s, [&](float4* i, float4* o, cudaStream_t st) {
               rows_kernel<<<BH * (DHQK / R), kThreads, 0, st>>>(i, o, R, DHQK, DHHV4, 0.9f, 0.1f);
             }));
    }
    float* gate;
    CHECK(cudaMalloc(&gate, BH * sizeof(float)));
    CHECK(cudaMemset(gate, 0, BH * sizeof(float)));
    CHECK(cudaFuncSetAttribute(rows_cluster_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    for (int R : {128, 64, 32, 16}) {
      char name[32];
      std::snprintf(name, sizeof name, "cluster%d", DHQK / R);
      report(name, per_call_us(s, [&](float4* i, float4* o, cudaStream_t st) {
               cudaLaunchConfig_t cfg = {};
               cfg.gridDim = dim3(BH * (DHQK / R)), cfg.blockDim = dim3(kThreads), cfg.stream = st;
               cudaLaunchAttribute at[1];
               at[0].id = cudaLaunchAttributeClusterDimension;
               at[0].val.clusterDim.x = DHQK / R, at[0].val.clusterDim.y = 1, at[0].val.clusterDim.z = 1;
               cfg.attrs = at, cfg.numAttrs = 1;
               CHECK(cudaLaunchKernelEx(&cfg, rows_cluster_kernel, (const float4*)i, o, R, DHQK, DHHV4,
                                        (const float*)gate));
             }));
    }
    cudaFree(gate);
    for (int g : {prop.multiProcessorCount, 2 * prop.multiProcessorCount, 8 * prop.multiProcessorCount}) {
      char name[32];
      std::snprintf(name, sizeof name, "stride%d", g);
      report(name, per_call_us(s, [&](float4* i, float4* o, cudaStream_t st) {
               stride_kernel<<<g, kThreads, 0, st>>>(i, o, s.n, 0.9f, 0.1f);
             }));
    }
    for (auto p : s.buf) cudaFree(p);
  }
  return 0;
}
