// The CPU backend's fp16/bf16 conversions (cpp/src/cpu/common.h) against the independent rounding in
// testing.h (scaling by a power of two and nearbyint: one rounding, to nearest even): every 16-bit
// pattern decoded, every value and every tie between neighbours encoded (from float and from double),
// overflow, subnormals, and double inputs that a double -> float -> 16-bit path would round twice.
#include <cmath>
#include <cstdio>
#include <limits>

#include "cpu/common.h"
#include "testing.h"

namespace cpu = mlstm::cpu::MLSTM_CPU_ISA;  // the baseline build of the CPU kernels

namespace {

using testing::decode16;
using testing::encode16;
using testing::round_to;

uint16_t lib_encode(mlstm_dtype dtype, float x) {
  return dtype == MLSTM_FLOAT16 ? cpu::float_to_half(x) : cpu::float_to_bf16(x);
}
uint16_t lib_encode(mlstm_dtype dtype, double x) {
  return dtype == MLSTM_FLOAT16 ? cpu::to_half(x) : cpu::to_bf16(x);
}
float lib_decode(mlstm_dtype dtype, uint16_t b) {
  return dtype == MLSTM_FLOAT16 ? cpu::half_to_float(b) : cpu::bf16_to_float(b);
}

bool same_bits_or_both_nan(uint16_t a, uint16_t b, mlstm_dtype dtype) {
  if (std::isnan(decode16(dtype, a)) && std::isnan(decode16(dtype, b))) return true;
  return a == b;
}

void check_dtype(mlstm_dtype dtype) {
  const char* name = testing::dtype_name(dtype);
  int decode_bad = 0, roundtrip_bad = 0, tie_bad = 0, near_bad = 0, double_bad = 0;
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const uint16_t b = uint16_t(bits);
    const double want = decode16(dtype, b);
    const float got = lib_decode(dtype, b);
    if (!(std::isnan(want) ? std::isnan(got) : double(got) == want)) ++decode_bad;
    if (std::isnan(want)) continue;
    if (!same_bits_or_both_nan(lib_encode(dtype, got), b, dtype) && !(want == 0.0)) ++roundtrip_bad;
    if (want == 0.0 && lib_encode(dtype, got) != b) ++roundtrip_bad;  // +0 and -0 keep their sign
    // The tie with the next value up (same sign), and the floats just around it.
    const uint16_t next = uint16_t(b + 1);
    const double up = decode16(dtype, next);
    if ((b & 0x7fff) == 0x7fff || std::isnan(up) || std::isinf(want)) continue;
    const float mid = float((want + up) / 2);  // exact in float: 16-bit types have <= 11 significand bits
    auto expected = [&](double x) { return encode16(dtype, round_to(dtype, x)); };
    if (lib_encode(dtype, mid) != expected(mid)) ++tie_bad;
    for (float x : {std::nextafter(mid, 0.0f), std::nextafter(mid, std::copysign(INFINITY, mid))})
      if (lib_encode(dtype, x) != expected(x)) ++near_bad;
    // From double: a hair off the tie, closer than float can resolve (double rounding would tie).
    for (double x : {double(mid) * (1 + 0x1p-40), double(mid) * (1 - 0x1p-40), double(mid)})
      if (lib_encode(dtype, x) != expected(x)) ++double_bad;
  }
  auto report = [&](const char* what, int bad) {
    std::printf("%s %s %s: %d mismatches\n", bad ? "FAIL" : "ok  ", name, what, bad);
    CHECK(bad == 0, "%s %s: %d mismatches", name, what, bad);
  };
  report("decode of all 65536 patterns", decode_bad);
  report("encode of every representable value (round trip)", roundtrip_bad);
  report("encode of every tie between neighbours (to even)", tie_bad);
  report("encode of the floats next to every tie", near_bad);
  report("encode from double next to every tie (no double rounding)", double_bad);

  // Random floats and doubles across the whole range, including beyond it.
  testing::Rng rng(31);
  int random_bad = 0;
  for (int j = 0; j < 200000; ++j) {
    const double x = std::ldexp(rng.uniform(-1.0, 1.0), int(rng.uniform(-30.0, 20.0)));
    if (lib_encode(dtype, x) != encode16(dtype, round_to(dtype, x))) ++random_bad;
    const float xf = float(x);
    if (lib_encode(dtype, xf) != encode16(dtype, round_to(dtype, double(xf)))) ++random_bad;
  }
  report("encode of 400000 random values", random_bad);
  const uint16_t inf_bits = dtype == MLSTM_FLOAT16 ? 0x7c00 : 0x7f80;
  CHECK(lib_encode(dtype, std::numeric_limits<float>::infinity()) == inf_bits, "%s: inf", name);
  CHECK(lib_encode(dtype, -std::numeric_limits<double>::infinity()) == (inf_bits | 0x8000), "%s: -inf", name);
  CHECK(std::isnan(lib_decode(dtype, lib_encode(dtype, std::numeric_limits<float>::quiet_NaN()))), "%s: nan", name);
  CHECK(std::isnan(lib_decode(dtype, lib_encode(dtype, std::numeric_limits<double>::quiet_NaN()))), "%s: nan from double",
        name);
  if (dtype == MLSTM_FLOAT16) {
    CHECK(cpu::float_to_half(65519.99f) == 0x7bff, "65519.99 -> 65504");
    CHECK(cpu::float_to_half(65520.0f) == 0x7c00, "65520 -> inf");
    CHECK(cpu::float_to_half(1e10f) == 0x7c00, "1e10 -> inf");
    CHECK(cpu::float_to_half(0x1p-25f) == 0x0000, "2^-25 ties to 0");
    CHECK(cpu::float_to_half(std::nextafter(0x1p-25f, 1.0f)) == 0x0001, "just above 2^-25 -> 2^-24");
    CHECK(cpu::to_half(1e300) == 0x7c00, "1e300 -> inf");
    CHECK(cpu::to_half(1e-300) == 0x0000, "1e-300 -> 0");
  } else {
    CHECK(cpu::to_bf16(1e300) == 0x7f80, "1e300 -> inf");
    CHECK(cpu::float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80, "FLT_MAX -> inf");
  }
}

}  // namespace

int main() {
  check_dtype(MLSTM_FLOAT16);
  check_dtype(MLSTM_BFLOAT16);
  return testing::finish("test_cpu_convert");
}
