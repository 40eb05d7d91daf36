/* gemm.h (private): a thin, checked wrapper over BLIS's typed sgemm with explicit row and column strides.
 *
 * Every matrix is given by a pointer plus a row stride and a column stride (in floats), so a transposed operand is
 * just swapped strides: no trans flags.  The one copy made is of an operand that BLIS would pack element by
 * element (k-contiguous along C's contiguous dimension, gemm.c), into a per-thread scratch of at most 8 MiB that
 * lives until the thread ends.  BLIS threads the product itself with the count set by mn_threads_init.
 */
#ifndef MN_NN_GEMM_H
#define MN_NN_GEMM_H

#include <stddef.h>

#include "mednet/error.h"

/* C = alpha * A * B + beta * C with A (m x k), B (k x n), C (m x n); element (i, j) of X sits at
 * X[i*rsx + j*csx].  C is overwritten when beta == 0 (its old contents, even NaN, are ignored) and accumulated
 * into otherwise.  m, n or k may be 0 (k == 0 scales C by beta).  MN_ERR_ARG on negative sizes, NULL operands
 * or zero strides.  Not thread-safe with respect to C; multi-threaded through BLIS. */
mn_err mn_gemm(int m, int n, int k, float alpha, const float *a, ptrdiff_t rsa, ptrdiff_t csa, const float *b,
               ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c, ptrdiff_t rsc, ptrdiff_t csc);

/* count independent products C_i = A_i B_i + beta C_i (alpha 1), operand i at its base + i * its step (floats),
 * with mn_gemm's argument rules.  With several OpenMP threads and products below 2^30 multiply-adds each, the
 * products are dealt over the threads and each runs single-threaded; otherwise one after the other through mn_gemm.
 * BLIS splits a product over threads along m and n only, so every C_i is bitwise the same either way. */
mn_err mn_gemm_batch(int count, int m, int n, int k, const float *a, ptrdiff_t rsa, ptrdiff_t csa, size_t sa,
                     const float *b, ptrdiff_t rsb, ptrdiff_t csb, size_t sb, float beta, float *c, ptrdiff_t rsc,
                     ptrdiff_t csc, size_t sc);

#endif
