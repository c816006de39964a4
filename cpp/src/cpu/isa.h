// The CPU kernels (chunked_forward.cpp, chunked_backward.cpp, recurrent.cpp and the headers they
// share) are compiled once per instruction set: for the target's baseline, and on x86-64 with GCC
// or Clang a second time with MLSTM_CPU_ISA_AVX2 defined (cpp/CMakeLists.txt). dispatch.cpp picks
// one build at the first call. Each build lives in its own namespace, mlstm::cpu::MLSTM_CPU_ISA, so
// that the inline and template functions of both link into one library without clashing.
//
// The AVX2 build enables the instructions with a target pragma around the kernel code instead of
// -mavx2 for the whole file: std templates instantiated in these files (std::vector<float>::resize,
// ...) are merged with the baseline copies by the linker, which keeps whichever it sees first, and
// an AVX2 copy would then run on machines without AVX2. Headers included before MLSTM_CPU_ISA_BEGIN
// (the standard library, common/) therefore stay baseline code.
//
// FMA is left out on purpose: contracting a * b + c changes the rounding, and the AVX2 build
// measured as fast without it. The compiler vectorises the row updates without reassociating sums,
// so both builds return bitwise the same results (test_cpu_isa checks this).
#pragma once

#if defined(MLSTM_CPU_ISA_AVX2) && !defined(__x86_64__)
#error "the AVX2 build of the CPU kernels is for x86-64 only (see MLSTM_CPU_DISPATCH in CMakeLists.txt)"
#endif

#if defined(MLSTM_CPU_ISA_AVX2)
#define MLSTM_CPU_ISA avx2
#if defined(__clang__)
#define MLSTM_CPU_ISA_BEGIN _Pragma("clang attribute push(__attribute__((target(\"avx2\"))), apply_to = function)")
#define MLSTM_CPU_ISA_END _Pragma("clang attribute pop")
#else
#define MLSTM_CPU_ISA_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2\")")
#define MLSTM_CPU_ISA_END _Pragma("GCC pop_options")
#endif
#else
#define MLSTM_CPU_ISA baseline
#define MLSTM_CPU_ISA_BEGIN
#define MLSTM_CPU_ISA_END
#endif
