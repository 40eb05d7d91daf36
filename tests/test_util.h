/* test_util.h: tiny helpers shared by the test executables: a failure counter, relative-error comparison, a
 * seeded RNG, and for MPI tests the world-size assertion.  Each test prints what it checked and its worst error and exits non-zero on any failure. */
#ifndef MN_TEST_UTIL_H
#define MN_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int mn_test_failures = 0;

#define TEST_EXPECT(cond, ...)                                                  \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            mn_test_failures++;                                                 \
        }                                                                       \
    } while (0)

/* Exit status for main(): prints a summary line. */
static inline int mn_test_finish(const char *name)
{
    if (mn_test_failures) {
        fprintf(stderr, "%s: %d check(s) FAILED\n", name, mn_test_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

#ifdef MPI_VERSION
/* For MPI tests (defined when mpi.h was included first): check that MPI_COMM_WORLD has the size the test was
 * registered with, MN_TEST_NP (set per entry by mn_mpi_test; unset: nothing is checked, e.g. a test run by hand).
 * Call it right after mn_mpi_init.  A launcher that does not match the MPI library starts every process as a
 * singleton (size 1), which would otherwise pass as a 1-rank run; a mismatch prints what was found on every rank
 * and ends the process with status 1 (every rank sees the same mismatch, so MPI_Finalize is safe). */
static inline void mn_test_expect_size(void)
{
    const char *np = getenv("MN_TEST_NP");
    int size = 0, rank = 0;
    if (!np || !*np) return;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (atoi(np) == size) return;
    fprintf(stderr, "FAIL [rank %d]: registered for %s ranks (MN_TEST_NP) but MPI_COMM_WORLD has %d: the launcher "
                    "does not match the MPI library the test is linked with (each process a singleton?)\n",
            rank, np, size);
    MPI_Finalize();
    exit(1);
}
#endif

/* xorshift64* RNG for test data: deterministic from the seed. */
typedef struct mn_test_rng { uint64_t s; } mn_test_rng;
static inline uint64_t mn_test_rng_u64(mn_test_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ULL;
}
/* Uniform in [-1, 1). */
static inline float mn_test_rng_uniform(mn_test_rng *r)
{
    return (float)((double)(mn_test_rng_u64(r) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static inline void mn_test_fill(mn_test_rng *r, float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) x[i] = scale * mn_test_rng_uniform(r);
}

/* Relative error with an absolute floor: |a-b| / max(|a|, |b|, floor). */
static inline double mn_test_relerr(double a, double b, double floor_)
{
    double m = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    if (m < floor_) m = floor_;
    return fabs(a - b) / m;
}

/* Worst relative error of a[i] against s * b[i] (s = 2: a second backward call doubles what one accumulated). */
static inline double mn_test_max_relerr_s(const float *a, double s, const float *b, size_t n, double floor_)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = mn_test_relerr(a[i], s * b[i], floor_);
        if (e > worst || e != e) worst = e;
    }
    return worst;
}

/* Worst relative error over two arrays. */
static inline double mn_test_max_relerr(const float *a, const float *b, size_t n, double floor_)
{
    return mn_test_max_relerr_s(a, 1.0, b, n, floor_);
}

/* n zeroed floats (at least one); exits on out of memory. */
static inline float *mn_test_alloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

#endif
