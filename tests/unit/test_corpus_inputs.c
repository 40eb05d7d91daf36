/* test_corpus_inputs DIR: writes the synthetic NIfTI inputs and the corpus definition DIR/synth.ini used by the
 * MPI corpus tests (a ctest fixture, so the 1-, 2- and 4-rank runs read the same files), plus one bad file per
 * bad-input case under DIR/bad/.  Every file is written to a temporary name and renamed, so a reader never sees
 * a half-written file.
 *
 * Datasets (7 volumes, 6 of them for pre-training):
 *   mr_a      3 MR volumes: uint8 RAS 1 mm (sform), int16 flipped x 1.5 mm (sform), float32 anisotropic
 *             1x1x2 mm (qform only); a sphere with an inner core (label 1) and a shell (label 2)
 *   ct_b      2 CT volumes: int16 with scl_inter -1024 (HU), air background, label code 5 -> class 1; 2 mm
 *   atlas_c   1 MR volume whose label lives on a flipped 2 mm grid (label_grid = world)
 *   target_t  1 MR volume, role = target
 */
#include "test_nifti_util.h"
#include "test_util.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *g_dir;

static int put(const char *name, const int64_t dims[3], int64_t nt, int dt, const double *raw, double slope,
               double inter, const tn_affine *s, const tn_affine *q)
{
    char path[1024], tmp[1100];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    /* Keep the real extension at the end of the temporary name: libnifti decides gzip by it. */
    snprintf(tmp, sizeof tmp, "%s/tmp_%d_%s", g_dir, (int)getpid(), name);
    char *slash = strrchr(name, '/');
    if (slash) snprintf(tmp, sizeof tmp, "%s/%.*s/tmp_%d_%s", g_dir, (int)(slash - name), name, (int)getpid(), slash + 1);
    int rc = tn_write(tmp, dims, nt, dt, raw, slope, inter, s, q);
    if (rc == 0 && rename(tmp, path) != 0) rc = 5;
    TEST_EXPECT(rc == 0, "writing %s failed (%d)", path, rc);
    return rc;
}

/* A sphere volume: image intensity `fg` + a gradient inside radius r (world mm), labels inner (1) / shell (2)
 * (codes c_in, c_shell), background image value bg. */
static void sphere(const int64_t d[3], const tn_affine A, double cx, double cy, double cz, double r, double fg,
                   double bg, int c_in, int c_shell, double *img, double *lab)
{
    int64_t o = 0;
    for (int64_t k = 0; k < d[2]; k++)
        for (int64_t j = 0; j < d[1]; j++)
            for (int64_t i = 0; i < d[0]; i++, o++) {
                double p[3];
                for (int a = 0; a < 3; a++) p[a] = A[a][0] * i + A[a][1] * j + A[a][2] * k + A[a][3];
                double rr = sqrt((p[0] - cx) * (p[0] - cx) + (p[1] - cy) * (p[1] - cy) + (p[2] - cz) * (p[2] - cz));
                int inside = rr < r;
                img[o] = inside ? fg + 3 * (p[0] - cx) + (double)((i * 7 + j * 3 + k) % 5) : bg;
                lab[o] = rr < 0.5 * r ? c_in : inside ? c_shell : 0;
            }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_corpus_inputs DIR\n");
        return 2;
    }
    g_dir = argv[1];
    char bad[1024];
    snprintf(bad, sizeof bad, "%s/bad", g_dir);
    if ((mkdir(g_dir, 0755) && errno != EEXIST) || (mkdir(bad, 0755) && errno != EEXIST)) {
        perror("mkdir");
        return 1;
    }
    double *img = malloc(40 * 40 * 40 * 3 * sizeof *img), *lab = malloc(40 * 40 * 40 * sizeof *lab);
    if (!img || !lab) return 1;

    /* mr_a */
    const int64_t da0[3] = {24, 22, 20}, da1[3] = {18, 22, 20}, da2[3] = {24, 22, 10};
    tn_affine A0 = {{1, 0, 0, -12}, {0, 1, 0, -11}, {0, 0, 1, -10}};
    tn_affine A1 = {{-1.5, 0, 0, 13}, {0, 1, 0, -11}, {0, 0, 1, -10}};
    tn_affine A2 = {{1, 0, 0, -12}, {0, 1, 0, -11}, {0, 0, 2, -10}};
    sphere(da0, A0, 0, 0, 0, 8, 100, 0, 1, 2, img, lab);
    put("mr_a_0.nii.gz", da0, 1, DT_UINT8, img, 1, 0, &A0, NULL);
    put("mr_a_0_seg.nii.gz", da0, 1, DT_UINT8, lab, 1, 0, &A0, NULL);
    sphere(da1, A1, 1, -1, 0, 7, 300, 0, 1, 2, img, lab);
    put("mr_a_1.nii", da1, 1, DT_INT16, img, 1, 0, &A1, NULL);
    put("mr_a_1_seg.nii.gz", da1, 1, DT_INT16, lab, 1, 0, &A1, NULL);
    sphere(da2, A2, 0, 1, 1, 8, 50, 0, 1, 2, img, lab);
    put("mr_a_2.nii.gz", da2, 1, DT_FLOAT32, img, 1, 0, NULL, &A2);
    put("mr_a_2_seg.nii.gz", da2, 1, DT_UINT8, lab, 1, 0, NULL, &A2);

    /* ct_b: raw = HU + 1024 stored with scl_inter = -1024 */
    const int64_t db[3] = {20, 20, 16};
    tn_affine B = {{1, 0, 0, -10}, {0, 1, 0, -10}, {0, 0, 1.5, -12}};
    for (int v = 0; v < 2; v++) {
        sphere(db, B, v, 0, 0, 7, 40 + 1024 + 20 * v, 0, 5, 5, img, lab);
        char in[64], ln[64];
        snprintf(in, sizeof in, "ct_b_%d.nii.gz", v);
        snprintf(ln, sizeof ln, "ct_b_%d_seg.nii.gz", v);
        put(in, db, 1, DT_INT16, img, 1, -1024, &B, NULL);
        put(ln, db, 1, DT_UINT8, lab, 1, 0, &B, NULL);
    }

    /* atlas_c: image RAS 1 mm 24^3, label flipped x on a 2 mm 12^3 grid covering the same box */
    const int64_t dc[3] = {24, 24, 24}, dcl[3] = {12, 12, 12};
    tn_affine C = {{1, 0, 0, -12}, {0, 1, 0, -12}, {0, 0, 1, -12}};
    tn_affine CL = {{-2, 0, 0, 11}, {0, 2, 0, -11}, {0, 0, 2, -11}};
    sphere(dc, C, 0, 0, 0, 9, 80, 0, 1, 1, img, lab);
    put("atlas_c.nii.gz", dc, 1, DT_UINT8, img, 1, 0, &C, NULL);
    sphere(dcl, CL, 2, 0, 0, 8, 0, 0, 3, 4, img, lab);
    put("atlas_c_seg.nii.gz", dcl, 1, DT_UINT8, lab, 1, 0, &CL, NULL);

    /* target_t */
    const int64_t dt3[3] = {16, 18, 14};
    tn_affine T = {{0.8, 0, 0, -6}, {0, 0.8, 0, -7}, {0, 0, 0.8, -5}};
    sphere(dt3, T, 0, 0, 0, 5, 200, 0, 1, 2, img, lab);
    put("target_t.nii.gz", dt3, 1, DT_FLOAT32, img, 1, 0, &T, NULL);
    put("target_t_seg.nii.gz", dt3, 1, DT_UINT8, lab, 1, 0, &T, NULL);

    /* Bad files, each next to a fitting partner (the bad-input configs pair them). */
    sphere(da0, A0, 0, 0, 0, 8, 100, 0, 1, 2, img, lab);
    put("bad/good.nii.gz", da0, 1, DT_UINT8, img, 1, 0, &A0, NULL);
    put("bad/good_seg.nii.gz", da0, 1, DT_UINT8, lab, 1, 0, &A0, NULL);
    put("bad/four_d.nii.gz", da0, 2, DT_UINT8, img, 1, 0, &A0, NULL);
    const int64_t other[3] = {24, 22, 19};
    put("bad/mismatch_seg.nii.gz", other, 1, DT_UINT8, lab, 1, 0, &A0, NULL);
    double *zero = calloc(24 * 22 * 20, sizeof *zero);
    put("bad/empty_seg.nii.gz", da0, 1, DT_UINT8, zero, 1, 0, &A0, NULL);
    free(zero);
    double *nan_img = malloc(24 * 22 * 20 * sizeof *nan_img);
    memcpy(nan_img, img, 24 * 22 * 20 * sizeof *nan_img);
    nan_img[1234] = NAN;
    put("bad/nan.nii.gz", da0, 1, DT_FLOAT32, nan_img, 1, 0, &A0, NULL);
    free(nan_img);
    lab[777] = 7; /* a code no label map covers */
    put("bad/code7_seg.nii.gz", da0, 1, DT_UINT8, lab, 1, 0, &A0, NULL);
    /* wrong magic and truncated gzip, derived from good files */
    char src[1100], dst[1100];
    snprintf(src, sizeof src, "%s/bad/good.nii.gz", g_dir);
    snprintf(dst, sizeof dst, "%s/bad/trunc.nii.gz", g_dir);
    long len = 0;
    unsigned char *b = tn_slurp(src, &len);
    TEST_EXPECT(b && tn_spit(dst, b, len / 2) == 0, "truncated copy");
    free(b);
    snprintf(src, sizeof src, "%s/mr_a_1.nii", g_dir);
    snprintf(dst, sizeof dst, "%s/bad/magic.nii", g_dir);
    b = tn_slurp(src, &len);
    if (b) memcpy(b + 344, "bad", 4);
    TEST_EXPECT(b && tn_spit(dst, b, len) == 0, "wrong-magic copy");
    free(b);

    /* The definition. */
    char ini[1024];
    snprintf(ini, sizeof ini, "%s/synth.ini", g_dir);
    FILE *f = fopen(ini, "w");
    TEST_EXPECT(f != NULL, "open %s", ini);
    if (f) {
        fprintf(f, "[corpus]\nname = synth\noutput = %s/synth.h5\nroot = %s\nchunk = 8\n\n"
                   "[mr_a]\nimage = mr_a_?.nii*\nlabel = mr_a_?_seg.nii.gz\nmodality = MR\n"
                   "classes = background, core, shell\n\n"
                   "[ct_b]\nimage = ct_b_0.nii.gz, ct_b_1.nii.gz\nlabel = ct_b_*_seg.nii.gz\nmodality = CT\n"
                   "spacing = 2\nclasses = background, object\nlabel_map = 0:0, 5:1\n\n"
                   "[atlas_c]\nimage = atlas_c.nii.gz\nlabel = atlas_c_seg.nii.gz\nlabel_grid = world\n"
                   "classes = background, a, b\nlabel_map = 0:0, 3:1, 4:2\n\n"
                   "[target_t]\nimage = target_t.nii.gz\nlabel = target_t_seg.nii.gz\nrole = target\n"
                   "classes = background, core, shell\n",
                g_dir, g_dir);
        fclose(f);
    }
    free(img), free(lab);
    printf("wrote the synthetic corpus inputs and %s\n", ini);
    return mn_test_finish("test_corpus_inputs");
}
