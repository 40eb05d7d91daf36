/* test_deform.c: the deformations of `mednet synth` (mednet/deform.h) and the grid writer they use.
 *
 * Checks: strengths of 0 give the identity bitwise (image and label, also with an oblique affine and a label on
 * another grid); a translation by whole voxels moves the volume by those voxels; under a known rotation + scale +
 * translation, trilinear sampling reproduces a linear ramp and nearest neighbour picks the voxel of the rounded
 * source point (both computed independently here); a strong random deformation leaves
 * only label values of the input; draws are deterministic per (seed, stream) and differ between streams; the
 * intensity change keeps zero at zero; the resampled grid and mn_nifti_write_grid's header (read back through
 * libnifti); bad strengths are refused. */
#include "mednet/deform.h"
#include "mednet/nifti.h"
#include "test_nifti_util.h"
#include "test_util.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

#define NX 11
#define NY 9
#define NZ 7
#define NV (NX * NY * NZ)

static const double label_values[4] = {0, 3, 7, 200};

static void fill(float *img, float *lab, uint64_t seed)
{
    mn_test_rng r = {seed};
    for (int n = 0; n < NV; n++) {
        img[n] = 100.0f + 50.0f * mn_test_rng_uniform(&r);
        lab[n] = (float)label_values[mn_test_rng_u64(&r) % 4];
    }
}

static void set_affine(double a[4][4], const double lin[3][3], const double t[3])
{
    memset(a, 0, sizeof(double) * 16);
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 3; c++) a[r][c] = lin[r][c];
        a[r][3] = t[r];
    }
    a[3][3] = 1;
}

int main(void)
{
    static float img[NV], lab[NV], out_img[NV], out_lab[NV];
    fill(img, lab, 42);
    const int64_t dim[3] = {NX, NY, NZ};
    const double oblique[3][3] = {{0.9, 0.3, 0.0}, {-0.25, 1.1, 0.1}, {0.05, 0.0, 2.5}};
    const double origin[3] = {-12.5, 30.25, 7};
    mn_deform_src si = {img, {NX, NY, NZ}, {{0}}}, sl = {lab, {NX, NY, NZ}, {{0}}};
    set_affine(si.affine, oblique, origin);
    memcpy(sl.affine, si.affine, sizeof sl.affine);

    /* Zero strengths through the random draw: the identity, bitwise. */
    mn_deform_params zero = {0};
    zero.elastic_grid = 5;
    mn_deform d;
    TEST_EXPECT(mn_deform_draw(&zero, 7, 3, &d) == MN_OK, "draw of zero strengths");
    TEST_EXPECT(mn_deform_apply(&d, dim, si.affine, &si, out_img, &sl, out_lab) == MN_OK, "apply identity");
    TEST_EXPECT(!memcmp(out_img, img, sizeof img), "zero deformation changed the image");
    TEST_EXPECT(!memcmp(out_lab, lab, sizeof lab), "zero deformation changed the label");
    mn_deform_free(&d);
    printf("identity: zero strengths reproduce image and label bitwise (oblique affine)\n");

    /* The label on another grid (flipped x, shifted by whole voxels, as HarvardOxford against Colin27): read through
     * its own affine, the identity still returns it on the image grid. */
    static float lab_flip[NV];
    for (int k = 0; k < NZ; k++)
        for (int j = 0; j < NY; j++)
            for (int i = 0; i < NX; i++) lab_flip[(NX - 1 - i) + NX * (j + NY * k)] = lab[i + NX * (j + NY * k)];
    const double diag[3][3] = {{2, 0, 0}, {0, 1, 0}, {0, 0, 3}}, flip[3][3] = {{-2, 0, 0}, {0, 1, 0}, {0, 0, 3}};
    const double o1[3] = {-10, 4, 2}, o2[3] = {-10 + 2 * (NX - 1), 4, 2};
    mn_deform_src sd = {img, {NX, NY, NZ}, {{0}}}, sf = {lab_flip, {NX, NY, NZ}, {{0}}};
    set_affine(sd.affine, diag, o1);
    set_affine(sf.affine, flip, o2);
    mn_deform_affine((const double[3][3]){{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}, (const double[3]){0, 0, 0}, &d);
    TEST_EXPECT(mn_deform_apply(&d, dim, sd.affine, &sd, out_img, &sf, out_lab) == MN_OK, "apply flipped label");
    TEST_EXPECT(!memcmp(out_lab, lab, sizeof lab), "a label on a flipped grid did not come back through its affine");

    /* A pure translation by whole voxels: t = (+2 voxels in x, -1 in y, +1 in z) in mm on the 2 x 1 x 3 mm grid.
     * The output at p takes the source at p + t / spacing; at the borders the source's edge repeats. */
    mn_deform_affine((const double[3][3]){{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}, (const double[3]){4, -1, 3}, &d);
    TEST_EXPECT(mn_deform_apply(&d, dim, sd.affine, &sd, out_img, &sd, out_lab) == MN_OK, "apply translation");
    int bad = 0;
    for (int k = 0; k < NZ; k++)
        for (int j = 0; j < NY; j++)
            for (int i = 0; i < NX; i++) {
                int si_ = i + 2 > NX - 1 ? NX - 1 : i + 2, sj = j - 1 < 0 ? 0 : j - 1, sk = k + 1 > NZ - 1 ? NZ - 1 : k + 1;
                int64_t o = i + NX * (j + NY * k), s = si_ + NX * (sj + NY * sk);
                bad += out_img[o] != img[s] || out_lab[o] != img[s];
            }
    TEST_EXPECT(bad == 0, "translation by whole voxels: %d voxel(s) not moved as expected", bad);
    printf("translation by (2, -1, 1) voxels: every voxel moved exactly\n");

    /* Trilinear interpolation against the exact value: a linear ramp is reproduced exactly at any point inside the
     * volume, so under a known rotation + scale + translation every output voxel whose source point (computed here
     * independently: q = A^-1 (c + M (A p - c) + t)) lies inside must equal the ramp there. */
    static float ramp[NV];
    const double rc[4] = {0.7, -1.3, 2.1, 5.0};
    for (int k = 0; k < NZ; k++)
        for (int j = 0; j < NY; j++)
            for (int i = 0; i < NX; i++) ramp[i + NX * (j + NY * k)] = (float)(rc[0] * i + rc[1] * j + rc[2] * k + rc[3]);
    const double th = 0.3, mm[3][3] = {{cos(th) * 1.1, -sin(th), 0}, {sin(th), cos(th) * 0.9, 0}, {0, 0, 1.05}};
    const double tt[3] = {0.7, -0.4, 0.9};
    mn_deform_src sr = sd;
    sr.data = ramp;
    /* The label source holds each voxel's own index: nearest neighbour must return the index of the rounded q. */
    static float idx[NV];
    for (int n = 0; n < NV; n++) idx[n] = (float)n;
    mn_deform_src sx = sd;
    sx.data = idx;
    mn_deform_affine(mm, tt, &d);
    TEST_EXPECT(mn_deform_apply(&d, dim, sr.affine, &sr, out_img, &sx, out_lab) == MN_OK, "apply ramp");
    double worst_ramp = 0;
    int inside = 0, wrong_nearest = 0;
    const double sp[3] = {2, 1, 3}, cen[3] = {o1[0] + 2 * (NX - 1) / 2.0, o1[1] + (NY - 1) / 2.0, o1[2] + 3 * (NZ - 1) / 2.0};
    for (int k = 0; k < NZ; k++)
        for (int j = 0; j < NY; j++)
            for (int i = 0; i < NX; i++) {
                const double x[3] = {o1[0] + 2 * i - cen[0], o1[1] + j - cen[1], o1[2] + 3 * k - cen[2]};
                double q[3];
                for (int r = 0; r < 3; r++)
                    q[r] = (cen[r] + mm[r][0] * x[0] + mm[r][1] * x[1] + mm[r][2] * x[2] + tt[r] - o1[r]) / sp[r];
                if (q[0] < 0 || q[0] > NX - 1 || q[1] < 0 || q[1] > NY - 1 || q[2] < 0 || q[2] > NZ - 1) continue;
                inside++;
                double want = rc[0] * q[0] + rc[1] * q[1] + rc[2] * q[2] + rc[3];
                worst_ramp = fmax(worst_ramp, fabs(out_img[i + NX * (j + NY * k)] - want));
                int tie = 0;
                for (int r = 0; r < 3; r++) tie |= fabs(q[r] - floor(q[r]) - 0.5) < 1e-3;
                if (!tie) {
                    double nn = floor(q[0] + 0.5) + NX * (floor(q[1] + 0.5) + NY * floor(q[2] + 0.5));
                    wrong_nearest += out_lab[i + NX * (j + NY * k)] != (float)nn;
                }
            }
    TEST_EXPECT(wrong_nearest == 0, "nearest neighbour picked another voxel at %d voxel(s)", wrong_nearest);
    TEST_EXPECT(inside > NV / 3 && worst_ramp < 1e-4, "ramp under a known affine: %d voxels inside, worst error %g",
                inside, worst_ramp);
    printf("trilinear: a linear ramp under rotation + scale + translation matches at %d voxels, worst error %.2g\n",
           inside, worst_ramp);

    /* Strong random deformations: only label values of the input, and a changed volume. */
    mn_deform_params strong = {.rotate_deg = 25, .scale = 0.2, .shear = 0.1, .translate_mm = 3, .elastic_mm = 4,
                               .elastic_grid = 4, .intensity = 0.3};
    int foreign = 0, changed = 0, zero_kept = 1;
    for (uint64_t st = 0; st < 5; st++) {
        TEST_EXPECT(mn_deform_draw(&strong, 11, st, &d) == MN_OK, "draw strong");
        TEST_EXPECT(mn_deform_apply(&d, dim, si.affine, &si, out_img, &sl, out_lab) == MN_OK, "apply strong");
        for (int n = 0; n < NV; n++) {
            int ok = 0;
            for (int v = 0; v < 4; v++) ok |= out_lab[n] == (float)label_values[v];
            foreign += !ok;
            changed += out_lab[n] != lab[n];
        }
        mn_deform_free(&d);
    }
    TEST_EXPECT(foreign == 0, "%d label voxel(s) hold values the input does not", foreign);
    TEST_EXPECT(changed > NV, "strong deformations changed only %d label voxels", changed);
    printf("strong deformations: %d label voxels changed, none with a value outside {0, 3, 7, 200}\n", changed);

    /* Intensity only: zero stays zero, the rest changes monotonically. */
    static float img0[NV];
    memcpy(img0, img, sizeof img);
    img0[5] = 0, img0[77] = 0;
    mn_deform_src s0 = si;
    s0.data = img0;
    mn_deform_params inten = {.intensity = 0.3, .elastic_grid = 2};
    TEST_EXPECT(mn_deform_draw(&inten, 5, 9, &d) == MN_OK, "draw intensity");
    TEST_EXPECT(d.gain != 1.0 && d.gamma != 1.0, "intensity draw gave gain %g gamma %g", d.gain, d.gamma);
    TEST_EXPECT(mn_deform_apply(&d, dim, s0.affine, &s0, out_img, NULL, NULL) == MN_OK, "apply intensity");
    zero_kept = out_img[5] == 0 && out_img[77] == 0;
    TEST_EXPECT(zero_kept, "the intensity change moved zero to %g", out_img[5]);
    int mono = 1;
    for (int n = 1; n < NV; n++)
        if ((img0[n] - img0[0]) * (out_img[n] - out_img[0]) < 0) mono = 0;
    TEST_EXPECT(mono, "the intensity change is not monotonic");
    mn_deform_free(&d);

    /* Determinism: the same (seed, stream) gives the same deformation; another stream or seed another one. */
    mn_deform da, db, dc, de;
    mn_deform_draw(&strong, 99, 4, &da), mn_deform_draw(&strong, 99, 4, &db);
    mn_deform_draw(&strong, 99, 5, &dc), mn_deform_draw(&strong, 100, 4, &de);
    const size_t nd = sizeof(float) * 3 * 4 * 4 * 4;
    TEST_EXPECT(!memcmp(da.m, db.m, sizeof da.m) && !memcmp(da.disp, db.disp, nd) && da.gain == db.gain,
                "the same seed and stream gave different deformations");
    TEST_EXPECT(memcmp(da.m, dc.m, sizeof da.m) && memcmp(da.disp, dc.disp, nd), "another stream gave the same one");
    TEST_EXPECT(memcmp(da.m, de.m, sizeof da.m) && memcmp(da.disp, de.disp, nd), "another seed gave the same one");
    mn_deform_free(&da), mn_deform_free(&db), mn_deform_free(&dc), mn_deform_free(&de);
    printf("draws: deterministic per (seed, stream), different across streams and seeds\n");

    /* Bad strengths. */
    mn_error_set_quiet(1);
    mn_deform_params p = strong;
    p.scale = 1;
    TEST_EXPECT(mn_deform_draw(&p, 1, 1, &d) == MN_ERR_ARG, "scale 1 accepted");
    p = strong, p.rotate_deg = -1;
    TEST_EXPECT(mn_deform_draw(&p, 1, 1, &d) == MN_ERR_ARG, "negative rotation accepted");
    p = strong, p.elastic_grid = 1;
    TEST_EXPECT(mn_deform_draw(&p, 1, 1, &d) == MN_ERR_ARG, "elastic grid 1 accepted");
    p = strong, p.translate_mm = NAN;
    TEST_EXPECT(mn_deform_draw(&p, 1, 1, &d) == MN_ERR_ARG, "NaN translation accepted");
    mn_error_set_quiet(0);

    /* The resampled grid: 2 x 1 x 3 mm voxels at 4 mm: 6 x 2 x 5 voxels (rounded), first corners aligned; written
     * on the header of a like file and read back. */
    int64_t gd[3];
    double ga[4][4];
    mn_deform_grid(dim, sd.affine, 4.0, gd, ga);
    TEST_EXPECT(gd[0] == 6 && gd[1] == 2 && gd[2] == 5, "grid %lldx%lldx%lld, expected 6x2x5", (long long)gd[0],
                (long long)gd[1], (long long)gd[2]);
    TEST_EXPECT(ga[0][0] == 4 && ga[1][1] == 4 && ga[2][2] == 4 && ga[0][3] == -9 && ga[1][3] == 5.5 &&
                fabs(ga[2][3] - 2.5) < 1e-12, "grid affine diag %g %g %g origin %g %g %g", ga[0][0], ga[1][1],
                ga[2][2], ga[0][3], ga[1][3], ga[2][3]);
    char like[64], outp[64];
    snprintf(like, sizeof like, "deform_like_%d.nii", (int)getpid());
    snprintf(outp, sizeof outp, "deform_out_%d.nii.gz", (int)getpid());
    static double raw[NV];
    for (int n = 0; n < NV; n++) raw[n] = img[n];
    tn_affine sform = {{2, 0, 0, -10}, {0, 1, 0, 4}, {0, 0, 3, 2}};
    TEST_EXPECT(tn_write(like, dim, 1, DT_FLOAT32, raw, 1, 0, &sform, &sform) == 0, "write like file");
    float small[6 * 2 * 5];
    for (int n = 0; n < 60; n++) small[n] = (float)n;
    TEST_EXPECT(mn_nifti_write_grid(like, outp, gd, (const double(*)[4])ga, DT_FLOAT32, 1, small, 0, 0, 59) == MN_OK,
                "write on the grid");
    mn_volume back = {0};
    TEST_EXPECT(mn_nifti_read(outp, &back, NULL) == MN_OK, "read back");
    if (back.data) {
        TEST_EXPECT(back.dim[0] == 6 && back.dim[1] == 2 && back.dim[2] == 5, "read back dims");
        double worst = 0;
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) worst = fmax(worst, fabs(back.affine[r][c] - ga[r][c]));
        TEST_EXPECT(worst < 1e-5, "read-back affine differs by %g", worst);
        TEST_EXPECT(!memcmp(back.data, small, sizeof small), "read-back voxels differ");
        printf("grid writer: 6x2x5 at 4 mm written on the like file's header, affine back within %.1g\n", worst);
    }
    mn_volume_free(&back);
    unlink(like), unlink(outp);
    return mn_test_finish("test_deform");
}
