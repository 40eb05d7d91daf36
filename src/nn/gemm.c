/* gemm.c: the BLIS sgemm wrapper (see gemm.h).
 *
 * We call the typed API (bli_sgemm) rather than the BLAS interface because BLAS only knows column-major storage
 * with a leading dimension; the typed API takes a row and a column stride per operand, which lets the convolution
 * code pass transposed views of NCDHW tensors and vol2col buffers without copying.  BLIS decides internally
 * whether to transpose the whole product to suit its micro-kernel.  BLIS takes non-const pointers even for inputs
 * it only reads, hence the casts.
 *
 * Small products (below MN_GEMM_SERIAL_MACS multiply-adds) run on one thread through the expert interface with a
 * local runtime object: BLIS would otherwise wake and synchronise all its threads for a few microseconds of work,
 * which on a loaded machine (threads spinning against other processes) cost milliseconds per call.  The tap path
 * of a small dilated conv issues dozens of such products.
 */
#include "nn/gemm.h"

#include <blis.h>

/* Below this many multiply-adds (about 10 us on one core) a product runs single-threaded. */
#define MN_GEMM_SERIAL_MACS ((double)(1 << 20))

mn_err mn_gemm(int m, int n, int k, float alpha, const float *a, ptrdiff_t rsa, ptrdiff_t csa, const float *b,
               ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c, ptrdiff_t rsc, ptrdiff_t csc)
{
    MN_CHECK(m >= 0 && n >= 0 && k >= 0, MN_ERR_ARG, "sgemm: negative size m=%d n=%d k=%d", m, n, k);
    if (m == 0 || n == 0) return MN_OK;
    MN_CHECK(c != NULL, MN_ERR_ARG, "sgemm %dx%dx%d: C is NULL", m, n, k);
    MN_CHECK(rsc != 0 && csc != 0, MN_ERR_ARG, "sgemm %dx%dx%d: zero stride for C (rs=%td cs=%td)", m, n, k, rsc,
             csc);
    if (k > 0) {
        MN_CHECK(a != NULL && b != NULL, MN_ERR_ARG, "sgemm %dx%dx%d: A or B is NULL", m, n, k);
        MN_CHECK(rsa != 0 && csa != 0 && rsb != 0 && csb != 0, MN_ERR_ARG,
                 "sgemm %dx%dx%d: zero stride (A rs=%td cs=%td, B rs=%td cs=%td)", m, n, k, rsa, csa, rsb, csb);
    }
    if ((double)m * n * k < MN_GEMM_SERIAL_MACS) {
        rntm_t rntm;
        bli_rntm_init(&rntm);
        bli_rntm_set_num_threads(1, &rntm);
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &alpha, (float *)a,
                     (inc_t)rsa, (inc_t)csa, (float *)b, (inc_t)rsb, (inc_t)csb, &beta, c, (inc_t)rsc, (inc_t)csc,
                     NULL, &rntm);
        return MN_OK;
    }
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &alpha, (float *)a, (inc_t)rsa,
              (inc_t)csa, (float *)b, (inc_t)rsb, (inc_t)csb, &beta, c, (inc_t)rsc, (inc_t)csc);
    return MN_OK;
}
