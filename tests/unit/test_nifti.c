/* test_nifti: NIfTI reading and the spatial/intensity normalisation of mednet prep, on synthetic files written
 * by this test with libnifti:
 * - every voxel type (uint8, int8, int16, uint16, int32, float32, float64) with scl_slope/scl_inter, and slope 0;
 * - the affine choice: sform over qform, qform alone, neither (pixdim);
 * - resampling against analytic values: a linear function of world coordinates on a flipped, anisotropic grid
 *   is reproduced exactly by trilinear resampling (to 1e-4), at the native spacing the flip is an exact index
 *   reversal, labels (nearest) are exact, and a label on another (flipped, coarser) grid lands through world
 *   coordinates on the expected codes;
 * - intensity statistics (z-score over foreground, CT clip + z-score, quantiles), anti-aliasing, label maps;
 * - bad files: missing, wrong magic, truncated .nii.gz and .nii, 4-D: each a clear error naming the file. */
#include "mednet/nifti.h"
#include "mednet/preprocess.h"
#include "test_nifti_util.h"

#include <zlib.h>
#include "test_util.h"

#include <unistd.h>
#include <zlib.h>

static char g_dir[64];
static char g_files[64][160];
static int g_nfiles;

static const char *tmp_path(const char *name)
{
    snprintf(g_files[g_nfiles], sizeof g_files[0], "%s/%s", g_dir, name);
    return g_files[g_nfiles++];
}

/* World coordinate (x,y,z) of voxel (i,j,k) under affine a. */
static void world(const tn_affine a, double i, double j, double k, double p[3])
{
    for (int r = 0; r < 3; r++) p[r] = a[r][0] * i + a[r][1] * j + a[r][2] * k + a[r][3];
}

static double linear_f(const double p[3]) { return 0.5 * p[0] - 2 * p[1] + 1.25 * p[2] + 3; }

static void test_dtypes(void)
{
    const int64_t dims[3] = {4, 3, 2};
    double raw[24];
    for (int i = 0; i < 24; i++) raw[i] = i % 7;
    const int types[] = {DT_UINT8, DT_INT8, DT_INT16, DT_UINT16, DT_INT32, DT_FLOAT32, DT_FLOAT64};
    const char *names[] = {"uint8", "int8", "int16", "uint16", "int32", "float32", "float64"};
    tn_affine A = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}};
    for (int t = 0; t < 7; t++) {
        for (int sc = 0; sc < 2; sc++) {
            char name[64];
            snprintf(name, sizeof name, "dt_%s_%d.nii%s", names[t], sc, t % 2 ? ".gz" : "");
            const char *p = tmp_path(name);
            double slope = sc ? 2.5 : 0, inter = sc ? -3 : 0;
            TEST_EXPECT(tn_write(p, dims, 1, types[t], raw, slope, inter, &A, NULL) == 0, "write %s", p);
            mn_volume v = {0};
            mn_nifti_info info;
            TEST_EXPECT(mn_nifti_read(p, &v, &info) == MN_OK, "read %s: %s", p, mn_error_last());
            if (!v.data) continue;
            TEST_EXPECT(!strcmp(info.dtype, names[t]), "dtype %s vs %s", info.dtype, names[t]);
            double worst = 0;
            for (int i = 0; i < 24; i++) {
                double want = sc ? 2.5 * raw[i] - 3 : raw[i];
                double e = fabs(v.data[i] - want);
                if (e > worst) worst = e;
            }
            TEST_EXPECT(worst < 1e-6, "%s slope %g: worst error %g", names[t], slope, worst);
            TEST_EXPECT(info.file_bytes > 0 && info.crc32 != 0, "size and crc recorded");
            mn_volume_free(&v);
        }
    }
    printf("dtypes: 7 voxel types x {scaled, slope 0}, plain and gzipped: exact\n");
}

static void test_affines(void)
{
    const int64_t dims[3] = {3, 3, 3};
    double raw[27] = {0};
    tn_affine S = {{2, 0, 0, 10}, {0, 2, 0, 20}, {0, 0, 2, 30}};
    tn_affine Q = {{-1.5, 0, 0, 4}, {0, 1, 0, -2}, {0, 0, 2, 1}};
    const char *both = tmp_path("aff_both.nii"), *qonly = tmp_path("aff_q.nii.gz"), *none = tmp_path("aff_none.nii");
    TEST_EXPECT(tn_write(both, dims, 1, DT_UINT8, raw, 1, 0, &S, &Q) == 0, "write");
    TEST_EXPECT(tn_write(qonly, dims, 1, DT_UINT8, raw, 1, 0, NULL, &Q) == 0, "write");
    TEST_EXPECT(tn_write(none, dims, 1, DT_UINT8, raw, 1, 0, NULL, NULL) == 0, "write");
    mn_volume v = {0};
    mn_nifti_info info;
    TEST_EXPECT(mn_nifti_read_header(both, &v, &info) == MN_OK, "read both");
    TEST_EXPECT(!strcmp(info.affine_source, "sform"), "sform preferred, got %s", info.affine_source);
    double worst = 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) worst = fmax(worst, fabs(v.affine[r][c] - S[r][c]));
    TEST_EXPECT(worst < 1e-6, "sform affine error %g", worst);
    TEST_EXPECT(mn_nifti_read_header(qonly, &v, &info) == MN_OK, "read qform");
    TEST_EXPECT(!strcmp(info.affine_source, "qform"), "qform used, got %s", info.affine_source);
    worst = 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) worst = fmax(worst, fabs(v.affine[r][c] - Q[r][c]));
    TEST_EXPECT(worst < 1e-5, "qform affine (flipped x) error %g", worst);
    double sp[3];
    mn_volume_world_spacing(&v, sp);
    TEST_EXPECT(fabs(sp[0] - 1.5) < 1e-6 && fabs(sp[1] - 1) < 1e-6 && fabs(sp[2] - 2) < 1e-6, "world spacing %g %g %g",
                sp[0], sp[1], sp[2]);
    TEST_EXPECT(mn_nifti_read_header(none, &v, &info) == MN_OK, "read none");
    TEST_EXPECT(!strcmp(info.affine_source, "pixdim") && v.affine[0][0] == 1 && v.affine[0][3] == 0,
                "no form: pixdim diagonal, got %s", info.affine_source);
    printf("affines: sform over qform, qform alone (flipped x, max err %.1e), pixdim fallback\n", worst);
}

static void test_resample(void)
{
    /* Flipped x (2 mm), 1 mm y, 3 mm z; values are a linear function of world position. */
    const int64_t dims[3] = {10, 12, 8};
    tn_affine A = {{-2, 0, 0, 30}, {0, 1, 0, -5}, {0, 0, 3, 7}};
    double *raw = malloc(10 * 12 * 8 * sizeof *raw);
    for (int k = 0; k < 8; k++)
        for (int j = 0; j < 12; j++)
            for (int i = 0; i < 10; i++) {
                double p[3];
                world(A, i, j, k, p);
                raw[i + 10 * (j + 12 * k)] = linear_f(p);
            }
    const char *path = tmp_path("lin.nii.gz");
    TEST_EXPECT(tn_write(path, dims, 1, DT_FLOAT64, raw, 1, 0, &A, NULL) == 0, "write");
    mn_volume v = {0};
    TEST_EXPECT(mn_nifti_read(path, &v, NULL) == MN_OK, "read: %s", mn_error_last());
    if (!v.data) {
        free(raw);
        return;
    }
    /* 1.5 mm isotropic: the grid covers x 12..30, y -5..6, z 7..28. */
    const double sp[3] = {1.5, 1.5, 1.5};
    mn_grid g;
    TEST_EXPECT(mn_grid_for_volume(&v, sp, &g) == MN_OK, "grid");
    TEST_EXPECT(g.n[0] == 13 && g.n[1] == 8 && g.n[2] == 15, "grid %lldx%lldx%lld, expected 13x8x15",
                (long long)g.n[0], (long long)g.n[1], (long long)g.n[2]);
    TEST_EXPECT(fabs(g.origin[0] - 12) < 1e-9 && fabs(g.origin[1] + 5) < 1e-9 && fabs(g.origin[2] - 7) < 1e-9,
                "origin %g %g %g", g.origin[0], g.origin[1], g.origin[2]);
    int64_t n = g.n[0] * g.n[1] * g.n[2];
    float *out = malloc((size_t)n * sizeof *out);
    TEST_EXPECT(mn_resample(&v, &g, 1, -999, out) == MN_OK, "resample");
    double worst = 0;
    int64_t o = 0;
    for (int64_t k = 0; k < g.n[2]; k++)
        for (int64_t j = 0; j < g.n[1]; j++)
            for (int64_t i = 0; i < g.n[0]; i++, o++) {
                double p[3] = {g.origin[0] + 1.5 * i, g.origin[1] + 1.5 * j, g.origin[2] + 1.5 * k};
                worst = fmax(worst, fabs(out[o] - linear_f(p)));
            }
    TEST_EXPECT(worst < 1e-4, "trilinear on a linear field: worst error %g", worst);
    printf("resample: flipped anisotropic (2,1,3) mm -> 1.5 mm trilinear, worst error %.2e over %lld voxels\n",
           worst, (long long)n);
    free(out);

    /* Native spacing: the flip is an exact index reversal along x. */
    const double nat[3] = {2, 1, 3};
    TEST_EXPECT(mn_grid_for_volume(&v, nat, &g) == MN_OK && g.n[0] == 10 && g.n[1] == 12 && g.n[2] == 8, "native");
    out = malloc(10 * 12 * 8 * sizeof *out);
    TEST_EXPECT(mn_resample(&v, &g, 1, 0, out) == MN_OK, "resample native");
    int bad = 0;
    for (int k = 0; k < 8; k++)
        for (int j = 0; j < 12; j++)
            for (int i = 0; i < 10; i++) bad += out[i + 10 * (j + 12 * k)] != v.data[(9 - i) + 10 * (j + 12 * k)];
    TEST_EXPECT(bad == 0, "native-spacing flip: %d voxels differ from the reversed source", bad);

    /* Labels: nearest neighbour, exact codes. */
    for (int k = 0; k < 8; k++)
        for (int j = 0; j < 12; j++)
            for (int i = 0; i < 10; i++) v.data[i + 10 * (j + 12 * k)] = (float)((i + 2 * j + 3 * k) % 5);
    TEST_EXPECT(mn_resample(&v, &g, 0, 0, out) == MN_OK, "nearest");
    bad = 0;
    for (int k = 0; k < 8; k++)
        for (int j = 0; j < 12; j++)
            for (int i = 0; i < 10; i++) bad += out[i + 10 * (j + 12 * k)] != (float)(((9 - i) + 2 * j + 3 * k) % 5);
    TEST_EXPECT(bad == 0, "nearest labels: %d wrong", bad);
    free(out);
    mn_volume_free(&v);
    free(raw);

    /* A label on another grid: image RAS 1 mm 20^3 at the origin; label flipped x, 2 mm, 10^3, x = 18 - 2i. */
    const int64_t d20[3] = {20, 20, 20}, d10[3] = {10, 10, 10};
    tn_affine I = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}};
    tn_affine L = {{-2, 0, 0, 18}, {0, 2, 0, 0}, {0, 0, 2, 0}};
    double *img = calloc(8000, sizeof *img), *lab = calloc(1000, sizeof *lab);
    for (int i = 0; i < 1000; i++) lab[i] = i % 10; /* code = label index i */
    const char *ip = tmp_path("grid_img.nii"), *lp = tmp_path("grid_lab.nii.gz");
    TEST_EXPECT(tn_write(ip, d20, 1, DT_INT16, img, 1, 0, &I, NULL) == 0, "write");
    TEST_EXPECT(tn_write(lp, d10, 1, DT_UINT8, lab, 1, 0, &L, NULL) == 0, "write");
    mn_volume vi = {0}, vl = {0};
    TEST_EXPECT(mn_nifti_read(ip, &vi, NULL) == MN_OK && mn_nifti_read(lp, &vl, NULL) == MN_OK, "read pair");
    TEST_EXPECT(!mn_volume_same_grid(&vi, &vl, 1e-3), "grids differ");
    const double two[3] = {2, 2, 2};
    TEST_EXPECT(mn_grid_for_volume(&vi, two, &g) == MN_OK && g.n[0] == 10, "image grid at 2 mm");
    TEST_EXPECT(mn_grid_overlap(&g, &vl) > 0.99, "overlap %g", mn_grid_overlap(&g, &vl));
    out = malloc(1000 * sizeof *out);
    TEST_EXPECT(mn_resample(&vl, &g, 0, 0, out) == MN_OK, "label through world");
    bad = 0;
    /* Output voxel i sits at world x = 2i; the label voxel there is (18 - x) / 2 = 9 - i, whose code is 9 - i. */
    for (int k = 0; k < 10; k++)
        for (int j = 0; j < 10; j++)
            for (int i = 0; i < 10; i++) bad += out[i + 10 * (j + 10 * k)] != (float)(9 - i);
    TEST_EXPECT(bad == 0, "label through world coordinates: %d wrong", bad);
    free(out);
    free(img), free(lab);
    mn_volume_free(&vi), mn_volume_free(&vl);
    printf("resample: exact flip at native spacing, nearest labels exact, label on a flipped 2 mm grid placed "
           "through world coordinates\n");
}

static void test_intensity(void)
{
    float x[10] = {0, 0, 1, 2, 3, 4, 5, 0, 6, 7};
    double mean, std;
    int64_t cnt;
    mn_masked_stats(x, NULL, 10, 0, 0, &mean, &std, &cnt);
    TEST_EXPECT(cnt == 7 && fabs(mean - 4) < 1e-12 && fabs(std - 2) < 1e-12, "fg stats %lld %g %g", (long long)cnt,
                mean, std);
    mn_normalise(x, NULL, 10, MN_NORM_ZSCORE, 0, 0, mean, std);
    mn_masked_stats(x, x, 10, 0, 0, &mean, &std, &cnt); /* mask = x: only voxels that were and stay > 0 */
    TEST_EXPECT(x[0] == 0 && x[1] == 0 && x[7] == 0, "background stays 0");
    TEST_EXPECT(fabs(x[2] + 1.5) < 1e-6 && fabs(x[9] - 1.5) < 1e-6, "z-scored values %g %g", x[2], x[9]);
    /* CT: clip then z-score every voxel. */
    float ct[5] = {-2000, -100, 0, 100, 3000};
    mn_normalise(ct, NULL, 5, MN_NORM_CT, -1000, 1000, 0, 500);
    TEST_EXPECT(ct[0] == -2 && ct[1] == -0.2f && ct[2] == 0 && ct[4] == 2, "ct %g %g %g %g", ct[0], ct[1], ct[2], ct[4]);
    float q[1000];
    for (int i = 0; i < 1000; i++) q[i] = (float)((i * 617) % 1000); /* a permutation of 0..999 */
    double lo = mn_quantile_sorted_inplace(q, 1000, 0.005), hi = mn_quantile_sorted_inplace(q, 1000, 0.995);
    TEST_EXPECT(fabs(lo - 4.995) < 1e-9 && fabs(hi - 994.005) < 1e-9, "quantiles %g %g", lo, hi);
    /* Masked stats with clipping. */
    float v[4] = {1, 2, 100, 0}, m[4] = {1, 1, 1, 0};
    mn_masked_stats(v, m, 4, 0, 10, &mean, &std, &cnt);
    TEST_EXPECT(cnt == 3 && fabs(mean - 13.0 / 3) < 1e-12, "clipped mean %g", mean);
    /* With a mask: only masked voxels are z-scored, the rest become 0 even if positive. */
    float y[4] = {2, 4, 7, 0}, ym[4] = {1, 1, 0, 0};
    mn_normalise(y, ym, 4, MN_NORM_ZSCORE, 0, 0, 3, 1);
    TEST_EXPECT(y[0] == -1 && y[1] == 1 && y[2] == 0 && y[3] == 0, "masked z-score %g %g %g %g", y[0], y[1], y[2], y[3]);
    printf("intensity: foreground z-score (masked), CT clip + z-score, quantiles 0.5/99.5 = %g/%g\n", lo, hi);
}

static void test_antialias(void)
{
    /* 1 mm source, flipped x, to 4 mm on x/y and 1 mm on z: sigma (4-1)/2 = 1.5 voxels on i and j, 0 on k. */
    mn_volume v = {0};
    v.dim[0] = 24, v.dim[1] = 20, v.dim[2] = 6;
    double A[4][4] = {{-1, 0, 0, 5}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}};
    memcpy(v.affine, A, sizeof A);
    int64_t n = mn_volume_voxels(&v);
    v.data = malloc((size_t)n * sizeof *v.data);
    const double sp[3] = {4, 4, 1};
    double sigma[3];
    /* A linear field stays linear away from the edges (the kernel is symmetric and sums to 1). */
    for (int64_t k = 0, o = 0; k < 6; k++)
        for (int64_t j = 0; j < 20; j++)
            for (int64_t i = 0; i < 24; i++, o++) v.data[o] = (float)(2 * i - 3 * j + 5 * k);
    TEST_EXPECT(mn_antialias(&v, sp, sigma) == MN_OK, "antialias");
    TEST_EXPECT(sigma[0] == 1.5 && sigma[1] == 1.5 && sigma[2] == 0, "sigmas %g %g %g", sigma[0], sigma[1], sigma[2]);
    double worst = 0;
    for (int64_t k = 0; k < 6; k++)
        for (int64_t j = 6; j < 14; j++)
            for (int64_t i = 6; i < 18; i++)
                worst = fmax(worst, fabs(v.data[i + 24 * (j + 20 * k)] - (2 * i - 3 * j + 5 * k)));
    TEST_EXPECT(worst < 1e-4, "linear field away from edges: error %g", worst);
    /* An impulse spreads into the product of two sampled Gaussians (radius 6 = int(4*1.5+0.5)), mass preserved. */
    memset(v.data, 0, (size_t)n * sizeof *v.data);
    v.data[12 + 24 * (10 + 20 * 3)] = 1;
    mn_antialias(&v, sp, sigma);
    double mass = 0, g0 = 0, g1 = 0;
    for (int64_t i = 0; i < n; i++) mass += v.data[i];
    for (int d = -6; d <= 6; d++) g0 += exp(-0.5 * d * d / 2.25);
    g1 = exp(-0.5 / 2.25) / g0;
    g0 = 1 / g0;
    TEST_EXPECT(fabs(mass - 1) < 1e-6, "mass %g", mass);
    TEST_EXPECT(fabs(v.data[12 + 24 * (10 + 20 * 3)] - g0 * g0) < 1e-7 && fabs(v.data[13 + 24 * (10 + 20 * 3)] - g1 * g0) < 1e-7,
                "impulse response %g vs %g", v.data[12 + 24 * (10 + 20 * 3)], g0 * g0);
    TEST_EXPECT(v.data[12 + 24 * (10 + 20 * 2)] == 0, "k axis (not downsampled) untouched");
    mn_volume_free(&v);
    printf("antialias: sigma (f-1)/2 per axis, linear fields kept, impulse response = sampled Gaussian, mass kept\n");
}

static void test_label_map(void)
{
    mn_volume v = {0};
    v.dim[0] = 6, v.dim[1] = 1, v.dim[2] = 1;
    float d[6] = {0, 1, 2, 3, 10, 0};
    v.data = d;
    mn_label_range r[3] = {{0, 0, 0}, {1, 3, 1}, {10, 10, 2}};
    TEST_EXPECT(mn_label_map_apply(&v, r, 3, 3, "map.nii") == MN_OK, "map");
    TEST_EXPECT(d[1] == 1 && d[3] == 1 && d[4] == 2 && d[0] == 0, "mapped %g %g %g", d[1], d[3], d[4]);
    float e[3] = {0, 5, 1};
    v.data = e, v.dim[0] = 3;
    TEST_EXPECT(mn_label_map_apply(&v, r, 3, 3, "bad_map.nii") == MN_ERR_FORMAT, "unmapped code rejected");
    TEST_EXPECT(strstr(mn_error_last(), "label value 5") && strstr(mn_error_last(), "bad_map.nii"), "msg: %s",
                mn_error_last());
    float f[2] = {0, 1.5f};
    v.data = f, v.dim[0] = 2;
    TEST_EXPECT(mn_label_map_apply(&v, r, 3, 3, "frac.nii") == MN_ERR_FORMAT, "non-integer label rejected");
    float g[3] = {0, 1, 2};
    v.data = g, v.dim[0] = 3;
    TEST_EXPECT(mn_label_map_apply(&v, NULL, 0, 2, "ident.nii") == MN_ERR_FORMAT, "identity map: code 2 >= 2 classes");
    printf("label map: ranges applied, unmapped / non-integer / out-of-range codes rejected with the file named\n");
}

static void test_bad_files(void)
{
    const int64_t dims[3] = {8, 8, 8};
    double raw[512];
    for (int i = 0; i < 512; i++) raw[i] = (i * 37) % 251;
    tn_affine A = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}};
    mn_volume v = {0};
    const char *missing = tmp_path("does_not_exist.nii.gz");
    TEST_EXPECT(mn_nifti_read(missing, &v, NULL) == MN_ERR_IO, "missing file");
    TEST_EXPECT(strstr(mn_error_last(), "does_not_exist.nii.gz"), "msg: %s", mn_error_last());

    const char *good = tmp_path("good.nii"), *magic = tmp_path("magic.nii");
    TEST_EXPECT(tn_write(good, dims, 1, DT_UINT8, raw, 1, 0, &A, NULL) == 0, "write");
    long len = 0;
    unsigned char *b = tn_slurp(good, &len);
    TEST_EXPECT(b && len > 352, "slurp");
    if (b) {
        memcpy(b + 344, "xyz", 4);
        TEST_EXPECT(tn_spit(magic, b, len) == 0, "spit");
        free(b);
    }
    TEST_EXPECT(mn_nifti_read(magic, &v, NULL) == MN_ERR_FORMAT, "wrong magic");
    TEST_EXPECT(strstr(mn_error_last(), "magic") && strstr(mn_error_last(), "magic.nii"), "msg: %s", mn_error_last());

    const char *trunc_nii = tmp_path("trunc.nii");
    TEST_EXPECT(tn_copy_prefix(good, trunc_nii, 352 + 200) == 0, "truncate");
    TEST_EXPECT(mn_nifti_read(trunc_nii, &v, NULL) == MN_ERR_FORMAT, "truncated .nii");
    TEST_EXPECT(strstr(mn_error_last(), "trunc.nii") && strstr(mn_error_last(), "truncated"), "msg: %s",
                mn_error_last());

    const char *gz = tmp_path("good.nii.gz"), *trunc_gz = tmp_path("trunc.nii.gz");
    TEST_EXPECT(tn_write(gz, dims, 1, DT_FLOAT32, raw, 1, 0, &A, NULL) == 0, "write gz");
    long gzlen = 0;
    unsigned char *gb = tn_slurp(gz, &gzlen);
    free(gb);
    TEST_EXPECT(tn_copy_prefix(gz, trunc_gz, gzlen * 6 / 10) == 0, "truncate gz");
    TEST_EXPECT(mn_nifti_read(trunc_gz, &v, NULL) == MN_ERR_FORMAT, "truncated .nii.gz");
    TEST_EXPECT(strstr(mn_error_last(), "trunc.nii.gz"), "msg: %s", mn_error_last());
    TEST_EXPECT(v.data == NULL, "no data left after a failed read");

    const char *four = tmp_path("four.nii.gz");
    double *raw4 = calloc(512 * 3, sizeof *raw4);
    TEST_EXPECT(tn_write(four, dims, 3, DT_INT16, raw4, 1, 0, &A, NULL) == 0, "write 4D");
    free(raw4);
    TEST_EXPECT(mn_nifti_read(four, &v, NULL) == MN_ERR_FORMAT, "4-D rejected");
    TEST_EXPECT(strstr(mn_error_last(), "4D") && strstr(mn_error_last(), "four.nii.gz"), "msg: %s", mn_error_last());
    /* NaN voxels survive the read (libnifti's own loader would have zeroed them): prep must see them. */
    const char *nanp = tmp_path("nan.nii.gz");
    raw[100] = NAN;
    TEST_EXPECT(tn_write(nanp, dims, 1, DT_FLOAT32, raw, 1, 0, &A, NULL) == 0, "write nan");
    TEST_EXPECT(mn_nifti_read(nanp, &v, NULL) == MN_OK && v.data && isnan(v.data[100]) && v.data[101] == raw[101],
                "NaN preserved by the reader");
    mn_volume_free(&v);
    printf("bad files: missing, wrong magic, truncated .nii and .nii.gz, 4-D: each rejected naming the file\n");
}

/* Headers that claim more than mednet reads are refused before anything is allocated: 2^40 voxels (.nii and
 * .nii.gz: the size limit), and a plain .nii whose header claims more voxel bytes than the file holds. */
static void patch_dims(unsigned char *b, int16_t nx, int16_t ny, int16_t nz)
{
    int16_t d[4] = {3, nx, ny, nz};
    memcpy(b + 40, d, sizeof d); /* dim[0..3] of the NIfTI-1 header, little-endian as tn_write wrote it */
}

static void test_size_limits(void)
{
    const int64_t dims[3] = {4, 4, 4};
    double raw[64] = {0};
    tn_affine A = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}};
    const char *good = tmp_path("small.nii");
    TEST_EXPECT(tn_write(good, dims, 1, DT_FLOAT32, raw, 1, 0, &A, NULL) == 0, "write");
    long len = 0;
    unsigned char *b = tn_slurp(good, &len);
    TEST_EXPECT(b && len > 352, "slurp");
    if (!b) return;
    mn_volume v = {0};
    /* 32767 x 32767 x 1024 = 2^40 voxels (4 TiB of float32). */
    patch_dims(b, 32767, 32767, 1024);
    const char *huge = tmp_path("huge.nii"), *huge_gz = tmp_path("huge.nii.gz");
    TEST_EXPECT(tn_spit(huge, b, len) == 0, "spit");
    gzFile g = gzopen(huge_gz, "wb");
    TEST_EXPECT(g && gzwrite(g, b, (unsigned)len) == (int)len && gzclose(g) == Z_OK, "gz write");
    const char *paths[2] = {huge, huge_gz};
    for (int i = 0; i < 2; i++) {
        TEST_EXPECT(mn_nifti_read_header(paths[i], &v, NULL) == MN_ERR_FORMAT, "2^40 voxels: header refused");
        TEST_EXPECT(mn_nifti_read(paths[i], &v, NULL) == MN_ERR_FORMAT && v.data == NULL, "2^40 voxels refused");
        TEST_EXPECT(strstr(mn_error_last(), paths[i]) && strstr(mn_error_last(), "limit") &&
                    strstr(mn_error_last(), "32767x32767x1024"), "msg: %s", mn_error_last());
    }
    /* 400^3 voxels (244 MiB of float32: within the limit) claimed by a file of a few hundred bytes. */
    patch_dims(b, 400, 400, 400);
    const char *liar = tmp_path("liar.nii");
    TEST_EXPECT(tn_spit(liar, b, len) == 0, "spit");
    TEST_EXPECT(mn_nifti_read(liar, &v, NULL) == MN_ERR_FORMAT && v.data == NULL, "short file refused");
    TEST_EXPECT(strstr(mn_error_last(), "liar.nii") && strstr(mn_error_last(), "256000000 bytes"), "msg: %s",
                mn_error_last());
    free(b);
    printf("size limits: 2^40 voxels (.nii, .nii.gz) and a header claiming more than its file refused before "
           "allocation, naming the file\n");
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/mn_test_nifti_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    mn_error_set_quiet(1);
    test_dtypes();
    test_affines();
    test_resample();
    test_intensity();
    test_antialias();
    test_label_map();
    test_bad_files();
    test_size_limits();
    for (int i = 0; i < g_nfiles; i++) unlink(g_files[i]);
    rmdir(g_dir);
    return mn_test_finish("test_nifti");
}
