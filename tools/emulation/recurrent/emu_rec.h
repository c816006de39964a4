// Additions to tools/emulation/emu.h for the recurrent kernels (force-included after it).
#pragma once
namespace emu { void cp_async_n(void* dst, const void* src, int bytes); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::emu::warp_barrier(); }
#include <cstring>
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; std::memcpy(&x, &f, 4); return x; }
