/* test_gemm.c: mn_gemm and mn_gemm_batch (src/nn/gemm.c) against a double-precision loop nest.
 *
 * (a) every storage orientation of A, B and C (row- or column-major, with leading dimensions wider than the
 *     matrix), on shapes that take each branch of gemm.c: the operand along C's contiguous dimension k-contiguous
 *     (transposed into the scratch first) or not; k above MN_GEMM_KC (several k blocks, the last one partial) and
 *     not a multiple of 4; widths not multiples of 8 (the scalar edges of the 4x4 transposes); m or n of 1;
 *     k = 0 (C scaled by beta); alpha 0.5 with beta 0 (C prefilled with NaN: must be ignored) and beta 1.
 *     Tolerance: 1e-5 of sum |a||b| per element (float rounding over k terms is below 1e-6 of it);
 * (b) the same products on 1 and 2 threads are bitwise equal (the k blocks depend only on the shapes);
 * (c) mn_gemm_batch on 2 threads (products dealt over the threads, each single-threaded) gives bitwise the results
 *     of one mn_gemm call per product, with the k-contiguous orientation;
 * (d) bad arguments (negative size, NULL operand, zero stride) return MN_ERR_ARG.
 */
#include <string.h>

#include "mednet/threads.h"
#include "nn/gemm.h"
#include "test_util.h"

typedef struct {
    int m, n, k;
} shape;

/* Element (i, j) of an r x c matrix stored row-major (row = 1) or column-major, leading dimension padded by 3. */
static ptrdiff_t ld_of(int row, int r, int c) { return (row ? c : r) + 3; }
static size_t size_of(int row, int r, int c) { return (size_t)ld_of(row, r, c) * (size_t)(row ? r : c) + 1; }
static void strides(int row, int r, int c, ptrdiff_t *rs, ptrdiff_t *cs)
{
    *rs = row ? ld_of(row, r, c) : 1;
    *cs = row ? 1 : ld_of(row, r, c);
}

/* Runs one product in the given orientation; returns the worst error against the double reference (relative to
 * sum |a||b| + |beta c|) and leaves C in *out (caller frees). */
static double run_one(const shape *s, int ar, int br, int cr, float alpha, float beta, mn_test_rng *rng, float **out)
{
    const int m = s->m, n = s->n, k = s->k;
    ptrdiff_t rsa, csa, rsb, csb, rsc, csc;
    strides(ar, m, k, &rsa, &csa);
    strides(br, k, n, &rsb, &csb);
    strides(cr, m, n, &rsc, &csc);
    const size_t na = size_of(ar, m, k), nb = size_of(br, k, n), nc = size_of(cr, m, n);
    float *a = mn_test_alloc(na), *b = mn_test_alloc(nb), *c = mn_test_alloc(nc), *c0 = mn_test_alloc(nc);
    mn_test_fill(rng, a, na, 1.0f);
    mn_test_fill(rng, b, nb, 1.0f);
    if (beta == 0.0f)
        for (size_t i = 0; i < nc; i++) c[i] = NAN;
    else
        mn_test_fill(rng, c, nc, 1.0f);
    memcpy(c0, c, nc * sizeof(float));
    double worst = 0;
    if (mn_gemm(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) != MN_OK) {
        worst = INFINITY;
    } else {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double sum = 0, mag = 0;
                for (int p = 0; p < k; p++) {
                    const double t = (double)a[i * rsa + p * csa] * b[p * rsb + j * csb];
                    sum += t;
                    mag += fabs(t);
                }
                const double old = beta == 0.0f ? 0.0 : (double)beta * c0[i * rsc + j * csc];
                const double ref = alpha * sum + old;
                const double got = c[i * rsc + j * csc];
                const double e = fabs(got - ref) / (fabs(alpha) * mag + fabs(old) + 1e-30);
                if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
            }
    }
    free(a);
    free(b);
    free(c0);
    *out = c;
    return worst;
}

int main(void)
{
    mn_threads_init(2);
    mn_test_rng rng = {0x9e3779b97f4a7c15ULL};
    const shape shapes[] = {
        {37, 29, 1100}, /* three k blocks, the last 76 long; widths not multiples of 8 */
        {64, 72, 517},  /* two k blocks, k odd */
        {40, 24, 512},  /* exactly one block */
        {5, 3, 7},      /* tiny: under the transposes' vector width */
        {1, 40, 600},   /* m = 1 */
        {40, 1, 600},   /* n = 1 */
        {9, 11, 0},     /* k = 0: C = beta C */
    };
    const int nshape = (int)(sizeof shapes / sizeof shapes[0]);
    double worst = 0;

    printf("(a) orientations x shapes x (alpha, beta):\n");
    for (int si = 0; si < nshape; si++) {
        double ws = 0;
        for (int o = 0; o < 8; o++)
            for (int bi = 0; bi < 2; bi++) {
                float *c;
                const float beta = bi ? 1.0f : 0.0f;
                const double e = run_one(&shapes[si], o & 1, (o >> 1) & 1, (o >> 2) & 1, 0.5f, beta, &rng, &c);
                TEST_EXPECT(e <= 1e-5, "%dx%dx%d A %s B %s C %s beta %g: error %.3g", shapes[si].m, shapes[si].n,
                            shapes[si].k, o & 1 ? "row" : "col", (o >> 1) & 1 ? "row" : "col",
                            (o >> 2) & 1 ? "row" : "col", beta, e);
                free(c);
                if (e > ws) ws = e;
            }
        printf("  %4dx%4dx%4d: 16 cases, worst %.3g of sum |a||b|\n", shapes[si].m, shapes[si].n, shapes[si].k, ws);
        if (ws > worst) worst = ws;
    }

    printf("(b) 1 and 2 threads:\n");
    for (int o = 0; o < 8; o++) {
        const shape s = {70, 90, 1100};
        float *c1, *c2;
        mn_test_rng r1 = {42}, r2 = {42};
        mn_threads_init(1);
        run_one(&s, o & 1, (o >> 1) & 1, (o >> 2) & 1, 1.0f, 1.0f, &r1, &c1);
        mn_threads_init(2);
        run_one(&s, o & 1, (o >> 1) & 1, (o >> 2) & 1, 1.0f, 1.0f, &r2, &c2);
        TEST_EXPECT(!memcmp(c1, c2, size_of((o >> 2) & 1, s.m, s.n) * sizeof(float)),
                    "orientation %d: C differs between 1 and 2 threads", o);
        free(c1);
        free(c2);
    }
    printf("  70x90x1100, 8 orientations: bitwise equal\n");

    printf("(c) mn_gemm_batch against single calls:\n");
    {
        /* C row-major, B k-contiguous (column-major): the transposed branch, on the OpenMP workers. */
        const int cnt = 5, m = 33, n = 45, k = 700;
        const size_t sa = (size_t)m * k, sb = (size_t)k * n, sc = (size_t)m * n;
        float *a = mn_test_alloc(cnt * sa), *b = mn_test_alloc(cnt * sb);
        float *c1 = mn_test_alloc(cnt * sc), *c2 = mn_test_alloc(cnt * sc);
        mn_test_fill(&rng, a, cnt * sa, 1.0f);
        mn_test_fill(&rng, b, cnt * sb, 1.0f);
        mn_test_fill(&rng, c1, cnt * sc, 1.0f);
        memcpy(c2, c1, cnt * sc * sizeof(float));
        TEST_EXPECT(mn_gemm_batch(cnt, m, n, k, a, k, 1, sa, b, 1, k, sb, 1.0f, c1, n, 1, sc) == MN_OK,
                    "mn_gemm_batch failed");
        for (int i = 0; i < cnt; i++)
            TEST_EXPECT(mn_gemm(m, n, k, 1.0f, a + i * sa, k, 1, b + i * sb, 1, k, 1.0f, c2 + i * sc, n, 1) == MN_OK,
                        "mn_gemm failed");
        TEST_EXPECT(!memcmp(c1, c2, cnt * sc * sizeof(float)), "batch and single calls differ");
        printf("  %d products %dx%dx%d on 2 threads: bitwise equal to single calls\n", cnt, m, n, k);
        free(a);
        free(b);
        free(c1);
        free(c2);
    }

    printf("(d) bad arguments:\n");
    {
        float x[16] = {0};
        mn_error_set_quiet(1);
        TEST_EXPECT(mn_gemm(-1, 2, 2, 1.0f, x, 1, 2, x, 1, 2, 0.0f, x, 1, 2) == MN_ERR_ARG, "negative m accepted");
        TEST_EXPECT(mn_gemm(2, 2, 2, 1.0f, NULL, 1, 2, x, 1, 2, 0.0f, x, 1, 2) == MN_ERR_ARG, "NULL A accepted");
        TEST_EXPECT(mn_gemm(2, 2, 2, 1.0f, x, 1, 2, x, 0, 2, 0.0f, x, 1, 2) == MN_ERR_ARG, "zero stride accepted");
        mn_error_set_quiet(0);
        printf("  negative size, NULL operand, zero stride: MN_ERR_ARG\n");
    }
    printf("worst error: %.3g of sum |a||b| (tol 1e-5)\n", worst);
    return mn_test_finish("test_gemm");
}
