// Shared pieces of the CPU backend: element conversions (fp16 and bf16 written out here, rounding to
// nearest even), strided tensor access, and small numeric helpers.
//
// Precision. T is float for fp32/fp16/bf16 q, k, v and double for fp64 q, k, v: inputs are converted
// to T on load, the states (C, n) and the gradient matrices are kept and accumulated in T, and outputs
// are rounded once on store. Two parts are done in double whatever T is, because a nearly cancelling
// den_t amplifies their rounding -- by 1 / den_t -- into h_t and every gradient of the row:
//  * the gates: logsigmoid(f), the running sums logD, the stabilisers m and the weights
//    exp(logD - m) (a float logD of size ~30 would carry ~2e-6 of rounding into each weight);
//  * the reductions that form num_t and den_t (the scores q . k and the sums over s; a product of
//    two floats is exact in double, so these are rounded only by their additions).
// The gates are O(L) scalar work per row; the double reductions cost little more than float ones
// (fwd+bwd at B=2, NH=3, S=512, DHQK=64, DHHV=96 took the same time within noise). Together they make
// fp32 outputs and dq, dk, dv 10-100x closer to fp64 than a plain fp32 implementation where
// denominators nearly cancel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "common/params.h"
#include "cpu/isa.h"

MLSTM_CPU_ISA_BEGIN
namespace mlstm::cpu::MLSTM_CPU_ISA {

// ---- fp16 / bf16 <-> float ----------------------------------------------------------------------

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf, nan
  if (exponent != 0) return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in float.
  const float magnitude = float(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

inline uint16_t float_to_half(float x) {
  const uint32_t u = float_bits(x);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;   // nan stays a (quiet) nan
  if (a >= 0x47800000u) return sign | 0x7c00u;  // >= 65536 (or inf): inf
  const uint32_t e = a >> 23;
  if (e < 113) {
    // Below the smallest normal half (2^-14): a subnormal in units of 2^-24, or zero.
    // value = m * 2^(e-150) with m the 24-bit significand, so value / 2^-24 = m >> (126 - e).
    const int shift = 126 - int(e);
    if (shift > 24) return sign;  // below 2^-25: rounds to zero
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;  // may carry into the smallest normal: right
    return uint16_t(sign | r);
  }
  uint32_t r = ((e - 112) << 10) | ((a & 0x7fffffu) >> 13);
  const uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // a carry rolls into the exponent (or inf): right
  return uint16_t(sign | r);
}

inline float bf16_to_float(uint16_t b) { return bits_float(uint32_t(b) << 16); }

inline uint16_t float_to_bf16(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // quiet nan
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// double -> float rounding to odd: exact values stay, inexact ones are truncated and get an odd last
// bit. Rounding that float to a 16-bit type (at least 2 fewer significand bits) is then the correctly
// rounded double -> 16-bit conversion (no double-rounding error).
inline float round_to_odd(double x) {
  float f = static_cast<float>(x);
  if (std::isnan(x) || static_cast<double>(f) == x) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(x)) f = std::nextafter(f, 0.0f);
  return bits_float(float_bits(f) | 1u);
}

// ---- element access ----------------------------------------------------------------------------

template <typename T>
inline T load_element(const void* base, mlstm_dtype dtype, int64_t index) {
  switch (dtype) {
    case MLSTM_FLOAT32: return static_cast<T>(static_cast<const float*>(base)[index]);
    case MLSTM_FLOAT64: return static_cast<T>(static_cast<const double*>(base)[index]);
    case MLSTM_FLOAT16: return static_cast<T>(half_to_float(static_cast<const uint16_t*>(base)[index]));
    case MLSTM_BFLOAT16: return static_cast<T>(bf16_to_float(static_cast<const uint16_t*>(base)[index]));
  }
  return T(0);
}

inline uint16_t to_half(float x) { return float_to_half(x); }
inline uint16_t to_half(double x) { return float_to_half(round_to_odd(x)); }
inline uint16_t to_bf16(float x) { return float_to_bf16(x); }
inline uint16_t to_bf16(double x) { return float_to_bf16(round_to_odd(x)); }

// out[j] = element offset + j of t, j < n, converted to T. The dtype switch sits outside the loops.
template <typename T>
void load_row(const TensorView& t, int64_t offset, int64_t n, T* out) {
  switch (t.dtype) {
    case MLSTM_FLOAT32: {
      const float* src = t.ptr<const float>() + offset;
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<T>(src[j]);
      return;
    }
    case MLSTM_FLOAT64: {
      const double* src = t.ptr<const double>() + offset;
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<T>(src[j]);
      return;
    }
    case MLSTM_FLOAT16: {
      const uint16_t* src = t.ptr<const uint16_t>() + offset;
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<T>(half_to_float(src[j]));
      return;
    }
    case MLSTM_BFLOAT16: {
      const uint16_t* src = t.ptr<const uint16_t>() + offset;
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<T>(bf16_to_float(src[j]));
      return;
    }
  }
}

// Element offset + j of t = in[j], rounded to t's dtype (to nearest even).
template <typename T>
void store_row(const TensorView& t, int64_t offset, int64_t n, const T* in) {
  switch (t.dtype) {
    case MLSTM_FLOAT32: {
      float* dst = t.ptr<float>() + offset;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(in[j]);
      return;
    }
    case MLSTM_FLOAT64: {
      double* dst = t.ptr<double>() + offset;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<double>(in[j]);
      return;
    }
    case MLSTM_FLOAT16: {
      uint16_t* dst = t.ptr<uint16_t>() + offset;
      for (int64_t j = 0; j < n; ++j) dst[j] = to_half(in[j]);
      return;
    }
    case MLSTM_BFLOAT16: {
      uint16_t* dst = t.ptr<uint16_t>() + offset;
      for (int64_t j = 0; j < n; ++j) dst[j] = to_bf16(in[j]);
      return;
    }
  }
}

// x rounded to `dtype` and back.
template <typename T>
T round_to_dtype(T x, mlstm_dtype dtype) {
  switch (dtype) {
    case MLSTM_FLOAT32: return static_cast<T>(static_cast<float>(x));
    case MLSTM_FLOAT64: return x;
    case MLSTM_FLOAT16: return static_cast<T>(half_to_float(to_half(x)));
    case MLSTM_BFLOAT16: return static_cast<T>(bf16_to_float(to_bf16(x)));
  }
  return x;
}

// Offset of the (b, h) slice of a tensor whose first two dimensions are (B, NH).
inline int64_t head_offset(const TensorView& t, int64_t b, int64_t h) { return b * t.stride[0] + h * t.stride[1]; }

// ---- numerics -------------------------------------------------------------------------------------

// log(sigmoid(x)) without overflow or cancellation for either sign of x.
template <typename T>
T logsigmoid(T x) {
  return x >= T(0) ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}

// sigmoid(-x) = d logsigmoid(x) / dx.
template <typename T>
T sigmoid_neg(T x) {
  if (x >= T(0)) {
    const T e = std::exp(-x);
    return e / (T(1) + e);
  }
  return T(1) / (T(1) + std::exp(x));
}

// y += a x. The loops below are written as such row updates (never as dot products) so that the
// compiler vectorises them without reassociating floating-point sums.
template <typename T>
inline void axpy(int64_t n, T a, const T* __restrict x, T* __restrict y) {
  for (int64_t j = 0; j < n; ++j) y[j] += a * x[j];
}

// y += a x with y in double: for float x the products are exact in double, so sums built this way
// are rounded only by their additions, at double precision.
template <typename T>
inline void axpy_wide(int64_t n, double a, const T* __restrict x, double* __restrict y) {
  for (int64_t j = 0; j < n; ++j) y[j] += a * static_cast<double>(x[j]);
}

// Dot product accumulated in double (used for the per-step scalars of the gate gradients).
template <typename T>
inline double dot_wide(int64_t n, const T* x, const T* y) {
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) s += static_cast<double>(x[j]) * static_cast<double>(y[j]);
  return s;
}

// out (cols, rows) = in (rows, cols) transposed; both row-major and contiguous.
template <typename T>
void transpose(int64_t rows, int64_t cols, const T* in, T* out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
}

}  // namespace mlstm::cpu::MLSTM_CPU_ISA
MLSTM_CPU_ISA_END
