/* simd_clones.h (private): MN_SIMD_CLONES marks an element-wise kernel to be compiled three times (baseline x86-64,
 * AVX2, AVX-512F) and picked by the CPU at load time (GCC target_clones, an ifunc).  The library is built for
 * baseline x86-64 (SSE2) so that one binary runs everywhere; loops over activations gain 2-4x from wider vectors.
 * Results can differ in the last bits between CPUs (vector width changes the order of a reduction), never between
 * two runs on one CPU.  Other compilers and architectures get the plain function. */
#ifndef MN_NN_SIMD_CLONES_H
#define MN_NN_SIMD_CLONES_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MN_SIMD_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define MN_SIMD_CLONES
#endif

#endif
