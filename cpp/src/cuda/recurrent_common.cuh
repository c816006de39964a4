// Device helpers of the recurrent kernels (recurrent_step.cuh, recurrent_sequence.cuh): the gate
// arithmetic of one step, loads of runtime-typed scalars, 16-byte state vectors, asynchronous
// global->shared copies and the thread-block-cluster barrier.
#pragma once

#include <cstdint>

#include "cuda/common.cuh"

namespace mlstm::cuda::recurrent {

// Largest head dimension (DHQK or DHHV) of the recurrent forms on CUDA.
constexpr int kMaxHeadDim = 1024;

// ---- scalars of a runtime dtype (gates, and states where they are touched once per (b, h)) ------

__device__ __forceinline__ float load_any(const void* base, int64_t index, mlstm_dtype dtype) {
  switch (dtype) {
    case MLSTM_FLOAT16: return __half2float(static_cast<const __half*>(base)[index]);
    case MLSTM_BFLOAT16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    default: return static_cast<const float*>(base)[index];
  }
}

__device__ __forceinline__ void store_any(void* base, int64_t index, mlstm_dtype dtype, float x) {
  switch (dtype) {
    case MLSTM_FLOAT16: static_cast<__half*>(base)[index] = __float2half_rn(x); break;
    case MLSTM_BFLOAT16: static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(x); break;
    default: static_cast<float*>(base)[index] = x;
  }
}

// The raw bits of one element, so that a prefetch does not wait for the load: converting the value
// right away would stall the thread until the data arrives.
__device__ __forceinline__ uint32_t load_bits(const void* base, int64_t index, mlstm_dtype dtype) {
  if (dtype == MLSTM_FLOAT32) return static_cast<const uint32_t*>(base)[index];
  return static_cast<const uint16_t*>(base)[index];
}

__device__ __forceinline__ float bits_to_float(uint32_t bits, mlstm_dtype dtype) {
  switch (dtype) {
    case MLSTM_FLOAT16: return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
    case MLSTM_BFLOAT16: return __uint_as_float(bits << 16);
    default: return __uint_as_float(bits);
  }
}

// logsigmoid(x) = min(x, 0) - log1p(exp(-|x|)), accurate for either sign.
__device__ __forceinline__ float log_sigmoid(float x) { return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }

// One step of the stabiliser (SPEC §2): m_t = max(f~_t + m_{t-1}, i_t), log F_t = f~_t + m_{t-1} - m_t,
// log I_t = i_t - m_t, where f~_t = logsigmoid(f_t).
struct GateStep {
  float m;      // m_t
  float log_f;  // log F_t <= 0
  float log_i;  // log I_t <= 0
};

__device__ __forceinline__ GateStep gate_step(float i, float f_log, float m_prev) {
  GateStep g;
  g.m = fmaxf(f_log + m_prev, i);
  g.log_f = f_log + m_prev - g.m;
  g.log_i = i - g.m;
  return g;
}

// Bit casts between a 16-bit float type and its raw bits.
template <typename T>
__device__ __forceinline__ T half_from_bits(unsigned short bits);
template <>
__device__ __forceinline__ __half half_from_bits<__half>(unsigned short bits) { return __ushort_as_half(bits); }
template <>
__device__ __forceinline__ __nv_bfloat16 half_from_bits<__nv_bfloat16>(unsigned short bits) {
  return __ushort_as_bfloat16(bits);
}
__device__ __forceinline__ unsigned short half_bits(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ unsigned short half_bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }

// ---- stores of 16-byte vectors of state elements (VEC = 16 / sizeof(T)), or single elements (VEC = 1)

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float (&x)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    uint4 raw;
    if constexpr (sizeof(T) == 4) {
      raw = make_uint4(__float_as_uint(x[0]), __float_as_uint(x[1]), __float_as_uint(x[2]), __float_as_uint(x[3]));
    } else {
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        w[j] = uint32_t(half_bits(from_float<T>(x[2 * j]))) |
               (uint32_t(half_bits(from_float<T>(x[2 * j + 1]))) << 16);
      raw = make_uint4(w[0], w[1], w[2], w[3]);
    }
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) p[j] = from_float<T>(x[j]);
  }
}

// ---- sums -----------------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Sum over the block; every thread gets the result. `scratch` holds one float per warp and may be
// reused only after a further __syncthreads.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = (blockDim.x + 31) / 32;
  x = warp_sum(x);
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float s = 0.0f;
  for (int w = 0; w < nwarps; ++w) s += scratch[w];
  return s;
}

// ---- asynchronous copies global -> shared (sm_80+) ---------------------------------------------------

template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem_dst, const void* gmem_src) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  if constexpr (BYTES == 16) {
    // .cg: the inputs are read once; keep them out of L1.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(gmem_src), "n"(BYTES) : "memory");
  }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}

// ---- thread-block-cluster barrier (sm_90+): split into arrive (release) and wait (acquire) -------

__device__ __forceinline__ void cluster_arrive_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void cluster_wait_acquire() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
#endif
}

// ---- programmatic dependent launch (sm_90+; no-ops before) --------------------------------------------

// Waits until the grid before this one in the stream has finished (its memory is visible).
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next grid in the stream start launching (it still waits for this one before its accesses).
__device__ __forceinline__ void grid_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

}  // namespace mlstm::cuda::recurrent
