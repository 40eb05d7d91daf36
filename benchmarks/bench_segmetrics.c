/* bench_segmetrics.c [N...]: the surface metrics of mednet eval (distance transform on the union box) against the
 * brute force over every pair of surface voxels, on two overlapping perturbed ellipsoids in an N^3 volume with
 * anisotropic spacing (0.8 x 1.0 x 2.5 mm).  Each size is validated first (HD, HD95 and ASSD of both methods equal
 * to 1e-9 mm), then timed (median of 3); the brute force is skipped above 64^3 (it grows with |S|^2).  Prints the CPU
 * and BLIS kernel set (the metrics do not use BLIS; printed as every benchmark does). */
#include "mednet/segmetrics.h"
#include "mednet/threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void cpu_name(char *out, size_t n)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(out, n, "unknown CPU");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            snprintf(out, n, "%.200s", c ? c + 2 : line);
            out[strcspn(out, "\n")] = 0;
            break;
        }
    if (f) fclose(f);
}

static void ellipsoid(int32_t *m, int N, double cx, double cy, double cz, double r, double wobble)
{
    for (int z = 0; z < N; z++)
        for (int y = 0; y < N; y++)
            for (int x = 0; x < N; x++) {
                double dx = (x - cx) / (r * 1.2), dy = (y - cy) / r, dz = (z - cz) / (r * 0.7);
                double bump = 1 + wobble * sin(0.7 * x) * cos(0.5 * y + 0.3 * z);
                m[x + N * (y + (size_t)N * z)] = dx * dx + dy * dy + dz * dz < bump;
            }
}

static int cmp_d(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Brute force: every surface voxel of one mask against every surface voxel of the other. */
static void brute(const int32_t *a, const int32_t *b, int N, const double sp[3], double *hd, double *hd95,
                  double *assd)
{
    int (*pa)[3] = malloc(sizeof *pa * (size_t)N * N * N), (*pb)[3] = malloc(sizeof *pb * (size_t)N * N * N);
    int64_t na = 0, nb = 0;
    for (int pass = 0; pass < 2; pass++) {
        const int32_t *m = pass ? b : a;
        for (int z = 0; z < N; z++)
            for (int y = 0; y < N; y++)
                for (int x = 0; x < N; x++) {
                    int64_t i = x + N * (y + (int64_t)N * z);
                    if (!m[i]) continue;
                    int s = x == 0 || y == 0 || z == 0 || x == N - 1 || y == N - 1 || z == N - 1 || !m[i - 1] ||
                            !m[i + 1] || !m[i - N] || !m[i + N] || !m[i - (int64_t)N * N] || !m[i + (int64_t)N * N];
                    if (!s) continue;
                    int *p = pass ? pb[nb++] : pa[na++];
                    p[0] = x, p[1] = y, p[2] = z;
                }
    }
    double *d = malloc(sizeof *d * (size_t)(na + nb)), sum = 0;
    for (int dir = 0; dir < 2; dir++) {
        int (*from)[3] = dir ? pb : pa, (*to)[3] = dir ? pa : pb;
        int64_t nf = dir ? nb : na, nt = dir ? na : nb;
        for (int64_t i = 0; i < nf; i++) {
            double best = INFINITY;
            for (int64_t j = 0; j < nt; j++) {
                double dx = sp[0] * (from[i][0] - to[j][0]), dy = sp[1] * (from[i][1] - to[j][1]),
                       dz = sp[2] * (from[i][2] - to[j][2]), q = dx * dx + dy * dy + dz * dz;
                if (q < best) best = q;
            }
            d[dir ? na + i : i] = sqrt(best);
        }
    }
    int64_t nd = na + nb;
    *hd = 0;
    for (int64_t i = 0; i < nd; i++) sum += d[i], *hd = d[i] > *hd ? d[i] : *hd;
    *assd = sum / (double)nd;
    qsort(d, (size_t)nd, sizeof *d, cmp_d);
    double pos = 0.95 * (double)(nd - 1);
    int64_t k = (int64_t)floor(pos);
    *hd95 = k >= nd - 1 ? d[nd - 1] : d[k] + (pos - (double)k) * (d[k + 1] - d[k]);
    free(pa), free(pb), free(d);
}

int main(int argc, char **argv)
{
    int sizes[8] = {32, 48, 64, 128}, ns = 4;
    if (argc > 1) {
        ns = 0;
        for (int i = 1; i < argc && ns < 8; i++) sizes[ns++] = atoi(argv[i]);
    }
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    if (mn_threads_init(1) != MN_OK) return 1;
    printf("bench_segmetrics: %s, BLIS kernels %s (not used here), 1 thread, spacing 0.8 x 1.0 x 2.5 mm\n", cpu,
           mn_blis_arch());
    printf("%6s %10s %10s %12s %12s %8s\n", "N", "|S(A)|", "|S(B)|", "edt_s", "brute_s", "ratio");
    const double sp[3] = {0.8, 1.0, 2.5};
    for (int s = 0; s < ns; s++) {
        int N = sizes[s];
        int64_t n[3] = {N, N, N};
        int32_t *a = malloc(sizeof *a * (size_t)N * N * N), *b = malloc(sizeof *b * (size_t)N * N * N);
        ellipsoid(a, N, 0.5 * N, 0.5 * N, 0.5 * N, 0.3 * N, 0.15);
        ellipsoid(b, N, 0.52 * N, 0.47 * N, 0.5 * N, 0.28 * N, 0.2);
        mn_seg_metrics m;
        double te[3], tb[3] = {NAN, NAN, NAN};
        for (int r = 0; r < 3; r++) {
            double t0 = now();
            if (mn_seg_metrics_class(a, b, n, sp, 1, &m) != MN_OK) return 1;
            te[r] = now() - t0;
        }
        if (N <= 64) {
            double hd, hd95, assd;
            for (int r = 0; r < 3; r++) {
                double t0 = now();
                brute(a, b, N, sp, &hd, &hd95, &assd);
                tb[r] = now() - t0;
            }
            if (fabs(hd - m.hd) > 1e-9 || fabs(hd95 - m.hd95) > 1e-9 || fabs(assd - m.assd) > 1e-9) {
                fprintf(stderr, "MISMATCH at N=%d: hd %g/%g hd95 %g/%g assd %g/%g\n", N, m.hd, hd, m.hd95, hd95,
                        m.assd, assd);
                return 1;
            }
        }
        qsort(te, 3, sizeof *te, cmp_d);
        qsort(tb, 3, sizeof *tb, cmp_d);
        printf("%6d %10lld %10lld %12.4f %12.4f %8.1f\n", N, (long long)m.pred_surface, (long long)m.label_surface, te[1],
               tb[1], tb[1] / te[1]);
        free(a), free(b);
    }
    return 0;
}
