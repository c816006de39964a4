// Kernel parameters: built once on the host by the API layer (cpp/src/api.cpp) from the public
// argument structs after validation, then handed unchanged to a backend (cpu/ or cuda/).
// Everything here is already checked: pointers of required tensors are non-null, optional groups
// are all-or-none, strides have unit innermost stride, sizes and dtypes are supported.
#pragma once

#include <cmath>
#include <cstdint>

#include "mlstm/mlstm.h"

namespace mlstm {

enum class Form { kParallel, kChunkwise, kSequence, kStep };

const char* form_name(Form form);

struct TensorView {
  void* data = nullptr;
  mlstm_dtype dtype = MLSTM_FLOAT32;
  int64_t stride[4] = {0, 0, 0, 0};  // elements

  bool present() const { return data != nullptr; }
  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }
};

// Size in bytes of one element of `dtype`.
inline int64_t dtype_size(mlstm_dtype dtype) {
  switch (dtype) {
    case MLSTM_FLOAT64: return 8;
    case MLSTM_FLOAT32: return 4;
    default: return 2;
  }
}

struct FwdParams {
  Form form = Form::kChunkwise;
  int32_t device_index = 0;
  void* stream = nullptr;  // cudaStream_t on CUDA
  int64_t B = 0, NH = 0, S = 0, DHQK = 0, DHHV = 0;
  int64_t L = 0;  // chunk size (chunkwise only)
  mlstm_chunkwise_algorithm algorithm = MLSTM_CHUNKWISE_LIMIT;
  float eps = 1e-6f;
  float qk_scale = 1.0f;  // 1 / sqrt(DHQK): q_hat = q * qk_scale
  // The parallel form starts its stabiliser at -inf (m_t = max_s logD_{t,s}); the recurrent and
  // chunkwise forms start at m_initial (0 when absent).
  bool m_starts_at_neg_inf = false;
  bool has_initial = false;  // c/n/m_initial present
  bool has_last = false;     // c/n/m_last requested
  TensorView q, k, v, i, f;                  // (B,NH,S,DHQK) x2, (B,NH,S,DHHV), (B,NH,S) x2
  TensorView c_initial, n_initial, m_initial;  // (B,NH,DHQK,DHHV), (B,NH,DHQK), (B,NH)
  TensorView h;                              // (B,NH,S,DHHV)
  TensorView c_last, n_last, m_last;         // as the initial states
  void* saved = nullptr;      // may be null: then nothing is saved for a backward
  void* workspace = nullptr;
};

struct BwdParams {
  Form form = Form::kChunkwise;
  int32_t device_index = 0;
  void* stream = nullptr;
  int64_t B = 0, NH = 0, S = 0, DHQK = 0, DHHV = 0;
  int64_t L = 0;
  mlstm_chunkwise_algorithm algorithm = MLSTM_CHUNKWISE_LIMIT;
  float eps = 1e-6f;
  float qk_scale = 1.0f;
  bool m_starts_at_neg_inf = false;
  bool has_initial = false;   // c/n/m_initial present, so dc/dn/dm_initial are outputs
  bool has_dlast = false;     // dc/dn/dm_last present
  TensorView q, k, v, i, f;
  TensorView c_initial, n_initial, m_initial;
  TensorView h;
  const void* saved = nullptr;  // what the forward of the same params wrote
  TensorView dh;
  TensorView dc_last, dn_last, dm_last;
  TensorView dq, dk, dv, di, df;
  TensorView dc_initial, dn_initial, dm_initial;
  void* workspace = nullptr;
};

}  // namespace mlstm
