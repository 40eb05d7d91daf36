/* test_segmetrics.c: the metrics of mednet eval on hand-computed cases (anisotropic spacing, detached voxels,
 * structures touching the volume's edge, empty structures) and the distance transform against a brute force over
 * every pair of voxels on random masks with anisotropic spacing. */
#include "mednet/segmetrics.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

#define NX 9
#define NY 8
#define NZ 7

static int32_t A[NX * NY * NZ], B[NX * NY * NZ];
static void clear(void) { memset(A, 0, sizeof A), memset(B, 0, sizeof B); }
static int32_t *at(int32_t *m, int x, int y, int z) { return &m[x + NX * (y + NY * z)]; }
static void box(int32_t *m, int x0, int x1, int y0, int y1, int z0, int z1, int v)
{
    for (int z = z0; z <= z1; z++)
        for (int y = y0; y <= y1; y++)
            for (int x = x0; x <= x1; x++) *at(m, x, y, z) = v;
}

static void expect_close(const char *what, double got, double want)
{
    TEST_EXPECT(fabs(got - want) <= 1e-12 * (1 + fabs(want)) || (isinf(got) && isinf(want)), "%s: %.17g, expected %.17g",
                what, got, want);
}

static void edt_vs_brute(uint64_t seed)
{
    const int64_t n[3] = {7, 9, 6};
    const double sp[3] = {0.7, 1.3, 2.1};
    const int64_t N = n[0] * n[1] * n[2];
    double f[7 * 9 * 6];
    int feat[7 * 9 * 6];
    mn_test_rng r = {seed};
    for (int64_t i = 0; i < N; i++) feat[i] = mn_test_rng_u64(&r) % 11 == 0, f[i] = feat[i] ? 0 : INFINITY;
    TEST_EXPECT(mn_edt_sq(f, n, sp) == MN_OK, "edt failed");
    double worst = 0;
    for (int64_t i = 0; i < N; i++) {
        double best = INFINITY;
        for (int64_t j = 0; j < N; j++) {
            if (!feat[j]) continue;
            double dx = sp[0] * (double)(i % n[0] - j % n[0]), dy = sp[1] * (double)(i / n[0] % n[1] - j / n[0] % n[1]),
                   dz = sp[2] * (double)(i / (n[0] * n[1]) - j / (n[0] * n[1]));
            double d = dx * dx + dy * dy + dz * dz;
            if (d < best) best = d;
        }
        double err = isinf(best) ? (isinf(f[i]) ? 0 : 1) : fabs(f[i] - best);
        if (err > worst) worst = err;
    }
    TEST_EXPECT(worst < 1e-9, "edt vs brute force (seed %llu): worst error %g mm^2", (unsigned long long)seed, worst);
    printf("edt vs brute force, 7x9x6, spacing 0.7/1.3/2.1, seed %llu: worst |d^2 error| %.3g mm^2\n",
           (unsigned long long)seed, worst);
}

int main(void)
{
    const int64_t n[3] = {NX, NY, NZ};
    mn_seg_metrics m;

    /* Two single voxels 3 apart along x, spacing 2 mm along x: every distance is 6 mm. */
    clear();
    *at(A, 2, 2, 2) = 1, *at(B, 5, 2, 2) = 1;
    TEST_EXPECT(mn_seg_metrics_class(A, B, n, (double[]){2, 1, 1}, 1, &m) == MN_OK, "metrics failed");
    expect_close("points: dice", m.dice, 0);
    expect_close("points: hd", m.hd, 6), expect_close("points: hd95", m.hd95, 6), expect_close("points: assd", m.assd, 6);

    /* Planes z = 1 and z = 4 (spacing 2.5 mm along z): every surface voxel is 7.5 mm from the other plane. */
    clear();
    box(A, 0, NX - 1, 0, NY - 1, 1, 1, 1), box(B, 0, NX - 1, 0, NY - 1, 4, 4, 1);
    TEST_EXPECT(mn_seg_metrics_class(A, B, n, (double[]){1, 1, 2.5}, 1, &m) == MN_OK, "metrics failed");
    expect_close("planes: hd95", m.hd95, 7.5), expect_close("planes: assd", m.assd, 7.5);
    TEST_EXPECT(m.pred_surface == NX * NY && m.label_surface == NX * NY, "planes: surfaces %lld %lld",
                (long long)m.pred_surface, (long long)m.label_surface);

    /* A 3x3x3 cube (26 surface voxels) against the same cube plus a detached voxel 2 voxels beyond its face, x
     * spacing 1.5 mm: D holds 52 zeros and one 3 mm, so HD 3, HD95 0 (the 95th percentile of 53 values falls
     * between two zeros), ASSD 3/53, Dice 2*27/55. */
    clear();
    box(A, 1, 3, 1, 3, 1, 3, 1), box(B, 1, 3, 1, 3, 1, 3, 1);
    *at(B, 5, 2, 2) = 1;
    TEST_EXPECT(mn_seg_metrics_class(A, B, n, (double[]){1.5, 1, 1}, 1, &m) == MN_OK, "metrics failed");
    expect_close("cube: dice", m.dice, 54.0 / 55.0);
    expect_close("cube: hd", m.hd, 3), expect_close("cube: hd95", m.hd95, 0), expect_close("cube: assd", m.assd, 3.0 / 53);
    TEST_EXPECT(m.pred_surface == 26 && m.label_surface == 27, "cube: surfaces %lld %lld", (long long)m.pred_surface,
                (long long)m.label_surface);

    /* A structure filling the whole volume: its border voxels are surface (outside the volume is outside it). */
    clear();
    box(A, 0, NX - 1, 0, NY - 1, 0, NZ - 1, 2), box(B, 0, NX - 1, 0, NY - 1, 0, NZ - 1, 2);
    TEST_EXPECT(mn_seg_metrics_class(A, B, n, (double[]){1, 1, 1}, 2, &m) == MN_OK, "metrics failed");
    TEST_EXPECT(m.pred_surface == NX * NY * NZ - (NX - 2) * (NY - 2) * (NZ - 2), "full: surface %lld",
                (long long)m.pred_surface);
    expect_close("full: dice", m.dice, 1), expect_close("full: hd95", m.hd95, 0);

    /* Empty structures: both empty -> Dice 1, distances 0; one empty -> Dice 0, distances inf. */
    clear();
    TEST_EXPECT(mn_seg_metrics_class(A, B, n, (double[]){1, 1, 1}, 1, &m) == MN_OK, "metrics failed");
    expect_close("both empty: dice", m.dice, 1), expect_close("both empty: hd95", m.hd95, 0);
    expect_close("both empty: assd", m.assd, 0);
    box(B, 2, 3, 2, 3, 2, 3, 1);
    TEST_EXPECT(mn_seg_metrics_class(A, B, n, (double[]){1, 1, 1}, 1, &m) == MN_OK, "metrics failed");
    expect_close("pred empty: dice", m.dice, 0);
    TEST_EXPECT(isinf(m.hd95) && isinf(m.assd) && isinf(m.hd), "pred empty: distances %g %g %g", m.hd95, m.assd, m.hd);
    TEST_EXPECT(mn_seg_metrics_class(B, A, n, (double[]){1, 1, 1}, 1, &m) == MN_OK, "metrics failed");
    TEST_EXPECT(m.dice == 0 && isinf(m.hd95), "label empty: dice %g hd95 %g", m.dice, m.hd95);

    /* Spacing from an affine with flipped and permuted axes. */
    double aff[4][4] = {{0, 0, -3, 10}, {-0.5, 0, 0, 0}, {0, 2, 0, 0}, {0, 0, 0, 1}}, sp[3], shear;
    mn_affine_spacing(aff, sp, &shear);
    TEST_EXPECT(sp[0] == 0.5 && sp[1] == 2 && sp[2] == 3 && shear == 0, "spacing %g %g %g shear %g", sp[0], sp[1],
                sp[2], shear);

    for (uint64_t s = 1; s <= 4; s++) edt_vs_brute(s * 7919);
    printf("hand cases: points, planes, cube + detached voxel, full volume, empty structures\n");
    return mn_test_finish("test_segmetrics");
}
