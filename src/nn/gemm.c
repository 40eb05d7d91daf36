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
 *
 * Operand orientation: BLIS packs the operand that runs along C's contiguous dimension (B when C is row-major, A
 * when it is column-major) into panels 16 (haswell, zen3) or 32 (skx) wide.  When that operand is contiguous along
 * k instead, BLIS 0.9's reference packing copies it one element at a time with a strided scalar loop.  Measured
 * single-threaded on AMD Zen 5 (bench_conv3d --gemm 1 20, skx): 64x256x4096 (a pointwise conv's backward-weights,
 * dW = dY X^T) 1.63 ms against 0.73 with that operand stored the other way; 128x512x512 (a tap GEMM with the weights
 * k-contiguous) 0.38 against 0.30 ms; haswell and zen3 lose the same way.
 * Both operands of a backward-weights product are k-contiguous (voxels run fastest in NCDHW), so no choice of
 * strides avoids it.  Such an operand is therefore transposed here into a per-thread scratch, MN_GEMM_KC rows of k
 * at a time (one product per block, beta 1 after the first), with 4x4 SSE transposes.  The blocks depend only on
 * the shapes, so results stay bitwise equal for every thread count.  With the transpose the same products ran in
 * 0.86 and 0.32 ms, and the resnet50 2x64^3 training step got 2-5% faster.
 */
#include "nn/gemm.h"

#include <blis.h>
#include <omp.h>
#include <stdlib.h>
#include <xmmintrin.h>

/* Below this many multiply-adds (about 10 us on one core) a product runs single-threaded. */
#define MN_GEMM_SERIAL_MACS ((double)(1 << 20))
/* mn_gemm_batch deals products below this many multiply-adds over the OpenMP threads, one single-threaded product
 * per thread at a time, instead of threading each product inside BLIS. */
#define MN_GEMM_BATCH_SPLIT_MACS ((double)(1 << 30))

/* Rows of k transposed per block (see the note above), and the largest block in floats (8 MiB): a block of the
 * widest operand of the ResNets (2048 channels) is 4 MiB. */
#define MN_GEMM_KC 512
#define MN_GEMM_SCRATCH ((size_t)2 << 20)

/* Per-thread scratch for the transposed blocks; grows to the largest block seen and is then reused, so the
 * steady-state step allocates nothing. */
static _Thread_local float *tl_scratch;
static _Thread_local size_t tl_scratch_cap;

static float *scratch_floats(size_t n)
{
    if (n > tl_scratch_cap) {
        free(tl_scratch);
        tl_scratch = aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
        tl_scratch_cap = tl_scratch ? n : 0;
    }
    return tl_scratch;
}

/* dst[i*ldd + j] = src[i + j*lds] for i < kb, j < w: a k-contiguous block turned w-contiguous, in 4x4 SSE
 * transposes over strips of 8 source columns (8 streams: with lds a multiple of 1024 every column maps to the same
 * L1 set, and 32-column tiles thrashed it).  The plain loop nest ran at 4 cycles an element. */
static void transpose_block(const float *src, ptrdiff_t lds, int kb, int w, float *dst, size_t ldd, int par)
{
    const int w8 = w & ~7, k4 = kb & ~3;
#pragma omp parallel for schedule(static) if (par)
    for (int j = 0; j < w8; j += 8) {
        const float *s0 = src + (ptrdiff_t)j * lds, *s4 = s0 + 4 * lds;
        for (int i = 0; i < k4; i += 4) {
            __m128 a0 = _mm_loadu_ps(s0 + i), a1 = _mm_loadu_ps(s0 + lds + i);
            __m128 a2 = _mm_loadu_ps(s0 + 2 * lds + i), a3 = _mm_loadu_ps(s0 + 3 * lds + i);
            __m128 b0 = _mm_loadu_ps(s4 + i), b1 = _mm_loadu_ps(s4 + lds + i);
            __m128 b2 = _mm_loadu_ps(s4 + 2 * lds + i), b3 = _mm_loadu_ps(s4 + 3 * lds + i);
            _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
            _MM_TRANSPOSE4_PS(b0, b1, b2, b3);
            float *d = dst + (size_t)i * ldd + j;
            _mm_storeu_ps(d, a0);
            _mm_storeu_ps(d + 4, b0);
            d += ldd;
            _mm_storeu_ps(d, a1);
            _mm_storeu_ps(d + 4, b1);
            d += ldd;
            _mm_storeu_ps(d, a2);
            _mm_storeu_ps(d + 4, b2);
            d += ldd;
            _mm_storeu_ps(d, a3);
            _mm_storeu_ps(d + 4, b3);
        }
        for (int i = k4; i < kb; i++)
            for (int jj = j; jj < j + 8; jj++) dst[(size_t)i * ldd + jj] = src[i + (ptrdiff_t)jj * lds];
    }
    for (int j = w8; j < w; j++)
        for (int i = 0; i < kb; i++) dst[(size_t)i * ldd + j] = src[i + (ptrdiff_t)j * lds];
}

/* One BLIS call; single-threaded through a local runtime object when serial. */
static void blis_call(int serial, int m, int n, int k, float alpha, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                      const float *b, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c, ptrdiff_t rsc, ptrdiff_t csc)
{
    if (serial) {
        rntm_t rntm;
        bli_rntm_init(&rntm);
        bli_rntm_set_num_threads(1, &rntm);
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &alpha, (float *)a,
                     (inc_t)rsa, (inc_t)csa, (float *)b, (inc_t)rsb, (inc_t)csb, &beta, c, (inc_t)rsc, (inc_t)csc,
                     NULL, &rntm);
    } else {
        bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &alpha, (float *)a, (inc_t)rsa,
                  (inc_t)csa, (float *)b, (inc_t)rsb, (inc_t)csb, &beta, c, (inc_t)rsc, (inc_t)csc);
    }
}

/* The product, with a k-contiguous operand along C's contiguous dimension transposed block by block first (see
 * the note at the top).  Sizes are checked and m, n > 0.  Without scratch memory the product runs as given
 * (slower, same result up to rounding): safe on OpenMP workers, which cannot report errors. */
static void gemm_run(int serial, int m, int n, int k, float alpha, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                     const float *b, ptrdiff_t rsb, ptrdiff_t csb, float beta, float *c, ptrdiff_t rsc, ptrdiff_t csc)
{
    const int c_rows = csc == 1 && rsc != 1, c_cols = rsc == 1 && csc != 1;
    const int fix_b = c_rows && rsb == 1 && csb != 1 && n > 1 && k > 1;
    const int fix_a = c_cols && csa == 1 && rsa != 1 && m > 1 && k > 1;
    /* The scratch row stride is padded off a multiple of 4 KiB (n = 1024 rows would share one L1 set).  The block
     * is at most MN_GEMM_SCRATCH floats: k blocks shrink for wider operands, down to 64 rows (below, the product runs
     * as given). */
    const int w = fix_b ? n : m;
    const size_t ldt = (size_t)w + 16;
    int kc = k < MN_GEMM_KC ? k : MN_GEMM_KC;
    while (kc > 64 && (size_t)kc * ldt > MN_GEMM_SCRATCH) kc /= 2;
    float *t = (fix_a || fix_b) && (size_t)kc * ldt <= MN_GEMM_SCRATCH ? scratch_floats((size_t)kc * ldt) : NULL;
    if (!t) {
        blis_call(serial, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
        return;
    }
    /* Threads share the transpose when BLIS threads the product (not on an OpenMP worker, not for small blocks). */
    const int par = !serial && !omp_in_parallel() && omp_get_max_threads() > 1 && (double)kc * w >= 65536.0;
    for (int k0 = 0; k0 < k; k0 += kc) {
        const int kb = k - k0 < kc ? k - k0 : kc;
        const float bk = k0 ? 1.0f : beta;
        if (fix_b) {
            /* B block (kb x n) row-major. */
            transpose_block(b + k0, csb, kb, n, t, ldt, par);
            blis_call(serial, m, n, kb, alpha, a + (ptrdiff_t)k0 * csa, rsa, csa, t, (ptrdiff_t)ldt, 1, bk, c, rsc,
                      csc);
        } else {
            /* A block (m x kb) column-major. */
            transpose_block(a + k0, rsa, kb, m, t, ldt, par);
            blis_call(serial, m, n, kb, alpha, t, 1, (ptrdiff_t)ldt, b + (ptrdiff_t)k0 * rsb, rsb, csb, bk, c, rsc,
                      csc);
        }
    }
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
    gemm_run((double)m * n * k < MN_GEMM_SERIAL_MACS, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
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
        gemm_run(1, m, n, k, 1.0f, a + i * sa, rsa, csa, b + i * sb, rsb, csb, beta, c + i * sc, rsc, csc);
    return MN_OK;
}
