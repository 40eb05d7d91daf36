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
 *
 * mn_gemm_batch goes one step further for a batch of independent products (the 64 of a Winograd block): each
 * runs single-threaded and the OpenMP threads share the batch.  Measured on the Winograd layers of ResNet-18 at
 * 2x64^3 with 2 threads (bench_conv3d 2 5, skx): layer1 and layer2 ran 20-45% faster than with BLIS threading each
 * product (e.g. layer2 128->128 forward 245 against 170 GFLOP/s), where each product is 4-8M multiply-adds and
 * BLIS's two threads split a 1024-row panel.
 */
#include "nn/gemm.h"

#include <blis.h>
#include <omp.h>

/* Below this many multiply-adds (about 10 us on one core) a product runs single-threaded. */
#define MN_GEMM_SERIAL_MACS ((double)(1 << 20))
/* mn_gemm_batch deals products below this many multiply-adds over the OpenMP threads, one single-threaded product
 * per thread at a time, instead of threading each product inside BLIS. */
#define MN_GEMM_BATCH_SPLIT_MACS ((double)(1 << 30))

/* One product on the calling thread only (arguments already checked). */
static mn_err gemm_serial(int m, int n, int k, float alpha, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                          const float *b, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c, ptrdiff_t rsc,
                          ptrdiff_t csc)
{
    rntm_t rntm;
    bli_rntm_init(&rntm);
    bli_rntm_set_num_threads(1, &rntm);
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &alpha, (float *)a, (inc_t)rsa,
                 (inc_t)csa, (float *)b, (inc_t)rsb, (inc_t)csb, &beta, c, (inc_t)rsc, (inc_t)csc, NULL, &rntm);
    return MN_OK;
}

/* The argument rules of mn_gemm (gemm.h), shared with mn_gemm_batch; an empty product (m or n 0) passes. */
static mn_err gemm_check(int m, int n, int k, const float *a, ptrdiff_t rsa, ptrdiff_t csa, const float *b,
                         ptrdiff_t rsb, ptrdiff_t csb, const float *c, ptrdiff_t rsc, ptrdiff_t csc)
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
    return MN_OK;
}

mn_err mn_gemm(int m, int n, int k, float alpha, const float *a, ptrdiff_t rsa, ptrdiff_t csa, const float *b,
               ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c, ptrdiff_t rsc, ptrdiff_t csc)
{
    MN_CALL(gemm_check(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc));
    if (m == 0 || n == 0) return MN_OK;
    if ((double)m * n * k < MN_GEMM_SERIAL_MACS)
        return gemm_serial(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &alpha, (float *)a, (inc_t)rsa,
              (inc_t)csa, (float *)b, (inc_t)rsb, (inc_t)csb, &beta, c, (inc_t)rsc, (inc_t)csc);
    return MN_OK;
}

mn_err mn_gemm_batch(int count, int m, int n, int k, const float *a, ptrdiff_t rsa, ptrdiff_t csa, size_t sa,
                     const float *b, ptrdiff_t rsb, ptrdiff_t csb, size_t sb, float beta, float *c, ptrdiff_t rsc,
                     ptrdiff_t csc, size_t sc)
{
    MN_CHECK(count >= 0, MN_ERR_ARG, "sgemm batch: negative count %d", count);
    const int nth = omp_get_max_threads();
    if (nth <= 1 || count < nth || (double)m * n * k >= MN_GEMM_BATCH_SPLIT_MACS || omp_in_parallel()) {
        for (int i = 0; i < count; i++)
            MN_CALL(mn_gemm(m, n, k, 1.0f, a + i * sa, rsa, csa, b + i * sb, rsb, csb, beta, c + i * sc, rsc, csc));
        return MN_OK;
    }
    /* Checked here, on the calling thread: a worker cannot return an error. */
    MN_CALL(gemm_check(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc));
    if (m == 0 || n == 0) return MN_OK;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < count; i++)
        gemm_serial(m, n, k, 1.0f, a + i * sa, rsa, csa, b + i * sb, rsb, csb, beta, c + i * sc, rsc, csc);
    return MN_OK;
}
