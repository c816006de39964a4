// A tiny test toolkit: CHECK that counts failures, random inputs, host tensors in every ABI dtype with
// padded (non-contiguous) strides, error norms and one-line reports.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "mlstm/mlstm.h"

namespace testing {

inline int& failure_count() {
  static int count = 0;
  return count;
}

inline int& check_count() {
  static int count = 0;
  return count;
}

// CHECK(condition, printf-style message): reports and counts a failure; the test goes on.
#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    ++::testing::check_count();                                            \
    if (!(cond)) {                                                         \
      ++::testing::failure_count();                                        \
      std::printf("FAILED %s:%d: %s -- ", __FILE__, __LINE__, #cond);      \
      std::printf(__VA_ARGS__);                                            \
      std::printf("\n");                                                   \
      std::fflush(stdout);                                                 \
    }                                                                      \
  } while (0)

// Exit code of a test executable.
inline int finish(const char* name) {
  std::printf("%s: %d checks, %d failed\n", name, check_count(), failure_count());
  return failure_count() == 0 ? 0 : 1;
}

struct Rng {
  std::mt19937_64 engine;
  explicit Rng(uint64_t seed) : engine(seed) {}
  double normal(double mean = 0.0, double stddev = 1.0) { return std::normal_distribution<double>(mean, stddev)(engine); }
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(engine); }
  std::vector<double> normals(size_t n, double mean = 0.0, double stddev = 1.0) {
    std::vector<double> x(n);
    for (auto& e : x) e = normal(mean, stddev);
    return x;
  }
};

// ---- dtype rounding, written independently of the library (scaling and nearbyint, one rounding) --

struct Format {
  int precision;     // significand bits including the implicit one
  int min_exponent;  // exponent of the smallest normal
  double max_finite;
};

inline Format format_of(mlstm_dtype dtype) {
  switch (dtype) {
    case MLSTM_FLOAT16: return {11, -14, 65504.0};
    case MLSTM_BFLOAT16: return {8, -126, 3.3895313892515355e38};
    case MLSTM_FLOAT32: return {24, -126, 3.4028234663852886e38};
    default: return {53, -1022, 1.7976931348623157e308};
  }
}

// x rounded to nearest even in `dtype` (returned as a double).
inline double round_to(mlstm_dtype dtype, double x) {
  if (dtype == MLSTM_FLOAT64 || x == 0.0 || !std::isfinite(x)) return x;
  const Format fm = format_of(dtype);
  const int e = std::max(std::ilogb(x), fm.min_exponent);
  const double quantum = std::ldexp(1.0, e - (fm.precision - 1));
  const double r = std::nearbyint(x / quantum) * quantum;
  if (std::fabs(r) > fm.max_finite) return std::copysign(INFINITY, x);
  return r;
}

// Bits of a double that is exactly representable in a 16-bit dtype.
inline uint16_t encode16(mlstm_dtype dtype, double r) {
  const Format fm = format_of(dtype);
  const int mant_bits = fm.precision - 1;
  const int bias = 1 - fm.min_exponent;
  uint16_t sign = std::signbit(r) ? 0x8000 : 0;
  const double a = std::fabs(r);
  if (std::isnan(r)) return dtype == MLSTM_FLOAT16 ? 0x7e00 : 0x7fc0;
  const uint16_t exp_all_ones = uint16_t(((1 << (15 - mant_bits)) - 1) << mant_bits);
  if (std::isinf(r)) return sign | exp_all_ones;
  if (a == 0.0) return sign;
  const int e = std::ilogb(a);
  if (e < fm.min_exponent) return sign | uint16_t(a / std::ldexp(1.0, fm.min_exponent - mant_bits));
  const uint16_t mant = uint16_t((a / std::ldexp(1.0, e) - 1.0) * std::ldexp(1.0, mant_bits));
  return sign | uint16_t((e + bias) << mant_bits) | mant;
}

inline double decode16(mlstm_dtype dtype, uint16_t bits) {
  const Format fm = format_of(dtype);
  const int mant_bits = fm.precision - 1;
  const int bias = 1 - fm.min_exponent;
  const int exp_field = (bits & 0x7fff) >> mant_bits;
  const int mant = bits & ((1 << mant_bits) - 1);
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  const int exp_max = (1 << (15 - mant_bits)) - 1;
  if (exp_field == exp_max) return mant ? NAN : sign * INFINITY;
  if (exp_field == 0) return sign * mant * std::ldexp(1.0, fm.min_exponent - mant_bits);
  return sign * (1.0 + mant * std::ldexp(1.0, -mant_bits)) * std::ldexp(1.0, exp_field - bias);
}

inline const char* dtype_name(mlstm_dtype dtype) {
  switch (dtype) {
    case MLSTM_FLOAT32: return "fp32";
    case MLSTM_FLOAT16: return "fp16";
    case MLSTM_BFLOAT16: return "bf16";
    case MLSTM_FLOAT64: return "fp64";
  }
  return "?";
}

inline int64_t dtype_bytes(mlstm_dtype dtype) { return dtype == MLSTM_FLOAT64 ? 8 : dtype == MLSTM_FLOAT32 ? 4 : 2; }

// A host tensor in one of the ABI dtypes. With padding, every leading dimension gets extra room so
// the strides are not those of a contiguous tensor (kernels must honour them); padding is NaN.
struct Tensor {
  mlstm_dtype dtype = MLSTM_FLOAT64;
  std::vector<int64_t> shape, stride;
  std::vector<unsigned char> bytes;

  Tensor() = default;
  Tensor(mlstm_dtype dt, std::vector<int64_t> shp, bool padded) : dtype(dt), shape(std::move(shp)) {
    stride.assign(shape.size(), 1);
    for (int d = int(shape.size()) - 2; d >= 0; --d) stride[d] = stride[d + 1] * (shape[d + 1] + (padded ? 3 : 0));
    const int64_t span = shape.empty() ? 1 : stride[0] * (shape[0] + (padded ? 1 : 0));
    bytes.assign(size_t(span * dtype_bytes(dtype)), 0);
    poison();
  }

  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }

  // Offset in elements of the logical (row-major) index `flat`.
  int64_t offset(int64_t flat) const {
    int64_t off = 0;
    for (int d = int(shape.size()) - 1; d >= 0; --d) {
      off += (flat % shape[d]) * stride[d];
      flat /= shape[d];
    }
    return off;
  }

  void put(int64_t off, double x) {
    unsigned char* p = bytes.data() + off * dtype_bytes(dtype);
    switch (dtype) {
      case MLSTM_FLOAT64: std::memcpy(p, &x, 8); break;
      case MLSTM_FLOAT32: {
        float f = float(x);
        std::memcpy(p, &f, 4);
        break;
      }
      default: {
        uint16_t b = encode16(dtype, round_to(dtype, x));
        std::memcpy(p, &b, 2);
      }
    }
  }

  double at(int64_t off) const {
    const unsigned char* p = bytes.data() + off * dtype_bytes(dtype);
    switch (dtype) {
      case MLSTM_FLOAT64: {
        double x;
        std::memcpy(&x, p, 8);
        return x;
      }
      case MLSTM_FLOAT32: {
        float f;
        std::memcpy(&f, p, 4);
        return f;
      }
      default: {
        uint16_t b;
        std::memcpy(&b, p, 2);
        return decode16(dtype, b);
      }
    }
  }

  // NaN in every element (and in the padding).
  void poison() {
    const int64_t n = int64_t(bytes.size()) / dtype_bytes(dtype);
    for (int64_t j = 0; j < n; ++j) put(j, NAN);
  }

  // Stores values (logical order), rounded to the dtype.
  void set(const std::vector<double>& values) {
    for (int64_t j = 0; j < numel(); ++j) put(offset(j), values[size_t(j)]);
  }

  std::vector<double> get() const {
    std::vector<double> out(static_cast<size_t>(numel()));
    for (int64_t j = 0; j < numel(); ++j) out[size_t(j)] = at(offset(j));
    return out;
  }

  mlstm_tensor abi() {
    mlstm_tensor t{};
    t.data = bytes.data();
    t.dtype = dtype;
    for (size_t d = 0; d < stride.size(); ++d) t.stride[d] = stride[d];
    return t;
  }
};

// Values as the dtype would hold them.
inline std::vector<double> rounded(mlstm_dtype dtype, std::vector<double> x) {
  for (auto& e : x) e = dtype == MLSTM_FLOAT32 ? double(float(e)) : round_to(dtype, e);
  return x;
}

// ---- errors -----------------------------------------------------------------------------------------

inline double norm(const std::vector<double>& x) {
  double s = 0;
  for (double e : x) s += e * e;
  return std::sqrt(s);
}

// ||out - ref|| / ||ref||; NaN anywhere in out gives NaN (so unwritten, NaN-poisoned outputs fail).
inline double rel_error(const std::vector<double>& out, const std::vector<double>& ref) {
  if (out.size() != ref.size()) return NAN;
  double num = 0, den = 0;
  for (size_t j = 0; j < out.size(); ++j) {
    if (std::isnan(out[j])) return NAN;
    num += (out[j] - ref[j]) * (out[j] - ref[j]);
    den += ref[j] * ref[j];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

inline double max_abs_error(const std::vector<double>& out, const std::vector<double>& ref) {
  double m = 0;
  for (size_t j = 0; j < out.size(); ++j) {
    const double e = std::fabs(out[j] - ref[j]);
    if (std::isnan(e)) return NAN;
    m = std::max(m, e);
  }
  return m;
}

// Records the worst relative error per label, for the summary at the end of a test.
struct Worst {
  std::vector<std::pair<std::string, double>> entries;
  void add(const std::string& label, double err) {
    for (auto& [name, value] : entries)
      if (name == label) {
        value = std::max(value, err);
        return;
      }
    entries.push_back({label, err});
  }
  void print() const {
    for (auto& [name, value] : entries) std::printf("  max rel. error %-34s %.3e\n", name.c_str(), value);
  }
};

// Passes when err <= tol (NaN fails); prints one line either way.
inline bool expect_close(const std::string& what, double err, double tol) {
  const bool ok = err <= tol;
  std::printf("%s %-100s rel.err=%.3e tol=%.1e\n", ok ? "ok  " : "FAIL", what.c_str(), err, tol);
  CHECK(ok, "%s: relative error %.3e > tolerance %.1e", what.c_str(), err, tol);
  return ok;
}

inline std::string format(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

}  // namespace testing
