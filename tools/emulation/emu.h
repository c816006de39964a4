// Host emulation of the CUDA features the chunkwise and parallel-form kernels use (development only;
// force-included; see README.md).
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#define MLSTM_CHUNKWISE_HOST_EMULATION 1
#undef __launch_bounds__
#define __launch_bounds__(...)
using std::min;
using std::max;

namespace emu {
struct D3 { unsigned x, y, z; };
extern D3 g_tid, g_bid, g_bdim, g_gdim;
void syncthreads();
void warp_barrier();
unsigned char* smem();
void launch(std::function<void()> body, dim3 grid, dim3 block, size_t smem);
uint64_t exchange(uint64_t mine, int src_lane);
const void* exchange_ptr(const void* mine, int src_lane);
void deposit_mma(const uint32_t* a, uint32_t b0, uint32_t b1);
void fetch_mma(int lane, uint32_t* a, uint32_t* b);
void cp_async(void* dst, const void* src, bool valid, int bytes = 16);
void cp_commit();
void cp_wait(int n);
}  // namespace emu

#define threadIdx (::emu::g_tid)
#define blockIdx (::emu::g_bid)
#define blockDim (::emu::g_bdim)
#define gridDim (::emu::g_gdim)
#define __syncthreads() ::emu::syncthreads()

template <typename T>
T emu_shfl(T v, int src) {
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  uint64_t r = ::emu::exchange(bits, src);
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}
template <typename T> T __shfl_xor_sync(unsigned, T v, int m) { return emu_shfl(v, int(threadIdx.x & 31) ^ m); }
template <typename T> T __shfl_down_sync(unsigned, T v, unsigned d) { int l = threadIdx.x & 31; return emu_shfl(v, l + int(d) < 32 ? l + int(d) : l); }
template <typename T> T __shfl_up_sync(unsigned, T v, unsigned d) { int l = threadIdx.x & 31; return emu_shfl(v, l >= int(d) ? l - int(d) : l); }
template <typename T> T __shfl_sync(unsigned, T v, int src) { return emu_shfl(v, src); }

namespace mlstm::cuda::chunkwise {
inline unsigned char* dynamic_smem() { return ::emu::smem(); }
inline float fast_exp(float x) { return std::exp(x); }
inline void cp_async16(void* smem, const void* gmem, bool valid) { ::emu::cp_async(smem, gmem, valid); }
inline void cp_async8(void* smem, const void* gmem, bool valid) { ::emu::cp_async(smem, gmem, valid, 8); }
inline void cp_async4(void* smem, const void* gmem, bool valid) { ::emu::cp_async(smem, gmem, valid, 4); }
inline void cp_async_commit() { ::emu::cp_commit(); }
template <int N> inline void cp_async_wait() { ::emu::cp_wait(N); }

inline void emu_ldm(uint32_t* r, int n, const void* addr, bool trans) {
  const int l = threadIdx.x & 31;
  const void* rows[32];
  for (int s = 0; s < 32; ++s) rows[s] = ::emu::exchange_ptr(addr, s);
  for (int q = 0; q < n; ++q) {
    uint16_t e0, e1;
    if (!trans) {
      const uint16_t* rp = static_cast<const uint16_t*>(rows[8 * q + l / 4]);
      e0 = rp[2 * (l % 4)], e1 = rp[2 * (l % 4) + 1];
    } else {
      e0 = static_cast<const uint16_t*>(rows[8 * q + 2 * (l % 4)])[l / 4];
      e1 = static_cast<const uint16_t*>(rows[8 * q + 2 * (l % 4) + 1])[l / 4];
    }
    r[q] = uint32_t(e0) | (uint32_t(e1) << 16);
  }
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { emu_ldm(r, 4, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { emu_ldm(r, 4, row, true); }
inline void ldmatrix_x2(uint32_t (&r)[2], const void* row) { emu_ldm(r, 2, row, false); }
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) { emu_ldm(r, 2, row, true); }

template <typename Elem>
inline float emu_decode(uint16_t bits) {
  if constexpr (std::is_same_v<Elem, __nv_bfloat16>) {
    uint32_t x = uint32_t(bits) << 16; float f; std::memcpy(&f, &x, 4); return f;
  } else {
    __half_raw hr; hr.x = bits; return __half2float(__half(hr));
  }
}
template <typename Elem>
inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ::emu::deposit_mma(a, b0, b1);
  float A[16][16], B[16][8];
  for (int s = 0; s < 32; ++s) {
    uint32_t aa[4], bb[2];
    ::emu::fetch_mma(s, aa, bb);
    const int g = s / 4, t = s % 4;
    auto lo = [](uint32_t x) { return uint16_t(x & 0xffff); };
    auto hi = [](uint32_t x) { return uint16_t(x >> 16); };
    A[g][2 * t] = emu_decode<Elem>(lo(aa[0])); A[g][2 * t + 1] = emu_decode<Elem>(hi(aa[0]));
    A[g + 8][2 * t] = emu_decode<Elem>(lo(aa[1])); A[g + 8][2 * t + 1] = emu_decode<Elem>(hi(aa[1]));
    A[g][2 * t + 8] = emu_decode<Elem>(lo(aa[2])); A[g][2 * t + 9] = emu_decode<Elem>(hi(aa[2]));
    A[g + 8][2 * t + 8] = emu_decode<Elem>(lo(aa[3])); A[g + 8][2 * t + 9] = emu_decode<Elem>(hi(aa[3]));
    B[2 * t][g] = emu_decode<Elem>(lo(bb[0])); B[2 * t + 1][g] = emu_decode<Elem>(hi(bb[0]));
    B[2 * t + 8][g] = emu_decode<Elem>(lo(bb[1])); B[2 * t + 9][g] = emu_decode<Elem>(hi(bb[1]));
  }
  ::emu::warp_barrier();
  const int l = threadIdx.x & 31, g = l / 4, t = l % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
    float s = d[e];
    for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
    d[e] = s;
  }
}
}  // namespace mlstm::cuda::chunkwise

#define MLSTM_CHUNKWISE_LAUNCH(kernel, grid, block, smem, stream, params) \
  ::emu::launch([&] { kernel(params); }, dim3(grid), dim3(block), (smem))

#define cudaFuncSetAttribute(...) cudaSuccess
#define cudaGetLastError() cudaSuccess
#define cudaGetErrorString(e) "emulated"
#define cudaDeviceGetAttribute(ptr, attr, dev) (*(ptr) = ((attr) == cudaDevAttrMultiProcessorCount ? 132 : 232448), cudaSuccess)
#define cudaGetDevice(p) (*(p) = 0, cudaSuccess)
#define cudaSetDevice(d) cudaSuccess
#define cudaGetDeviceCount(p) (*(p) = 1, cudaSuccess)
#define cudaMalloc(pp, n) (*(pp) = (std::remove_reference_t<decltype(*(pp))>)std::malloc(n), cudaSuccess)
#define cudaFree(p) (std::free(p), cudaSuccess)
#define cudaMemcpy(d, s, n, k) (std::memcpy(d, s, n), cudaSuccess)
#define cudaMemset(d, v, n) (std::memset(d, v, n), cudaSuccess)
#define cudaDeviceSynchronize() cudaSuccess
inline int __any_sync(unsigned, int pred) {
  int v = pred != 0;
  for (int o = 1; o < 32; o <<= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
