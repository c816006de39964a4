// Shared CUDA helpers: error checks that report through mlstm::fail, a device guard, dtype loads.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/error.h"
#include "common/params.h"

namespace mlstm::cuda {

// Return MLSTM_ERROR_CUDA with the call and the runtime's message when `expr` fails.
#define MLSTM_CUDA_CHECK(expr)                                                                     \
  do {                                                                                             \
    cudaError_t mlstm_err_ = (expr);                                                               \
    if (mlstm_err_ != cudaSuccess)                                                                 \
      return ::mlstm::fail(MLSTM_ERROR_CUDA, "%s failed: %s (%s:%d)", #expr,                      \
                           cudaGetErrorString(mlstm_err_), __FILE__, __LINE__);                    \
  } while (0)

// After a launch: report launch-configuration errors without synchronising.
#define MLSTM_CUDA_CHECK_LAUNCH(kernel_name) MLSTM_CUDA_CHECK(cudaGetLastError())

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&previous_);
    if (previous_ != device) cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int now = -1;
    cudaGetDevice(&now);
    if (now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

inline cudaStream_t stream_of(void* s) { return static_cast<cudaStream_t>(s); }

// Element conversions used by every kernel: load as float, store from float.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

}  // namespace mlstm::cuda
