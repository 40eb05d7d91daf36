/* deform.c: seeded random affine + elastic deformations of an image and its label map (mednet/deform.h).
 *
 * The random numbers come from splitmix64 over a state derived from (seed, stream) alone, drawn in a fixed order
 * (rotation, scale, shear, translation, control points, gain, gamma) whatever the strengths, and scaled by them: a
 * strength of 0 gives exactly 0 (or a factor of exactly 1), so the zero deformation is the identity and one strength
 * never changes the draws of another.  Source positions within 1e-6 voxels of a whole voxel are snapped onto it, so
 * the identity and whole-voxel translations copy voxels exactly instead of blending them with weights of 1e-12.
 *
 * Sampling is per output voxel, in double, pulling from the sources (a backward map), so every output voxel gets a
 * value and the label keeps only values of the source.  Rejected: B-spline interpolation of the control grid (the
 * [1 2 1] smoothing and trilinear interpolation already give a displacement without visible creases at the control
 * spacings used here, for a fraction of the cost); resampling the label with a majority vote (nearest neighbour keeps
 * thin structures and costs one read). */
#include "mednet/deform.h"
#include "mednet/mem.h"
#include "mednet/preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MN_DEFORM_MAX_GRID 64
#define MN_DEFORM_SNAP 1e-6
#define MN_PI 3.14159265358979323846

/* ---- random numbers ------------------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1), 53 bits. */
static double unif(uint64_t *s) { return (double)(splitmix64(s) >> 11) * (1.0 / 9007199254740992.0); }

/* Uniform in [-1, 1). */
static double sym(uint64_t *s) { return 2.0 * unif(s) - 1.0; }

/* Standard normal (Box-Muller, one value per call: simple and stateless). */
static double normal(uint64_t *s)
{
    double u1 = 1.0 - unif(s), u2 = unif(s); /* u1 in (0, 1] */
    return sqrt(-2.0 * log(u1)) * cos(2.0 * MN_PI * u2);
}

/* ---- small linear algebra ------------------------------------------------------------------------------------ */

static void matmul3(const double a[3][3], const double b[3][3], double c[3][3])
{
    double r[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) r[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
    memcpy(c, r, sizeof r);
}

/* Inverse of an affine: linear part and translation; 0 if singular. */
static int invert_affine(const double a[4][4], double inv[3][3], double it[3])
{
    if (!mn_affine_invert3(a, inv)) return 0;
    for (int i = 0; i < 3; i++) it[i] = -(inv[i][0] * a[0][3] + inv[i][1] * a[1][3] + inv[i][2] * a[2][3]);
    return 1;
}

/* ---- drawing ------------------------------------------------------------------------------------------------- */

void mn_deform_free(mn_deform *d)
{
    if (!d) return;
    mn_free(&d->disp);
    memset(d, 0, sizeof *d);
}

void mn_deform_affine(const double m[3][3], const double t[3], mn_deform *d)
{
    memset(d, 0, sizeof *d);
    memcpy(d->m, m, sizeof d->m);
    memcpy(d->t, t, sizeof d->t);
    d->gain = d->gamma = 1.0;
}

/* One pass of [1 2 1]/4 along axis `ax` of a g^3 grid of 3-vectors, borders repeated. */
static void smooth_axis(float *v, float *tmp, int g, int ax)
{
    const int64_t stride = ax == 0 ? 1 : ax == 1 ? g : (int64_t)g * g;
    for (int64_t n = 0; n < (int64_t)g * g * g; n++) {
        int64_t pos = (n / stride) % g;
        int64_t lo = pos > 0 ? n - stride : n, hi = pos < g - 1 ? n + stride : n;
        for (int c = 0; c < 3; c++) tmp[3 * n + c] = 0.25f * v[3 * lo + c] + 0.5f * v[3 * n + c] + 0.25f * v[3 * hi + c];
    }
    memcpy(v, tmp, sizeof(float) * 3 * (size_t)g * g * g);
}

mn_err mn_deform_draw(const mn_deform_params *p, uint64_t seed, uint64_t stream, mn_deform *d)
{
    memset(d, 0, sizeof *d);
    const double vals[5] = {p->rotate_deg, p->scale, p->shear, p->translate_mm, p->elastic_mm};
    for (int i = 0; i < 5; i++)
        MN_CHECK(isfinite(vals[i]) && vals[i] >= 0, MN_ERR_ARG, "deformation strengths must be finite and >= 0 "
                 "(rotation %g deg, scale %g, shear %g, translation %g mm, elastic %g mm)", p->rotate_deg, p->scale,
                 p->shear, p->translate_mm, p->elastic_mm);
    MN_CHECK(isfinite(p->intensity) && p->intensity >= 0 && p->intensity <= 2, MN_ERR_ARG,
             "intensity variation must be in [0, 2], got %g", p->intensity);
    MN_CHECK(p->rotate_deg <= 180, MN_ERR_ARG, "rotation must be at most 180 degrees, got %g", p->rotate_deg);
    MN_CHECK(p->scale < 1, MN_ERR_ARG, "scale variation must be below 1 (a scale factor of 0 or less), got %g",
             p->scale);
    MN_CHECK(p->elastic_mm == 0 || (p->elastic_grid >= 2 && p->elastic_grid <= MN_DEFORM_MAX_GRID), MN_ERR_ARG,
             "elastic grid must have 2..%d control points per axis, got %d", MN_DEFORM_MAX_GRID, p->elastic_grid);
    uint64_t s = seed;
    s = splitmix64(&s) ^ (stream * 0xd1b54a32d192ed03ULL + 0x632be59bd9b4e019ULL);
    /* Affine part: M = R S H (rotation about x, then y, then z; scale; shear). */
    double a[3], sc[3], sh[3], t[3];
    for (int i = 0; i < 3; i++) a[i] = sym(&s) * p->rotate_deg * MN_PI / 180.0;
    for (int i = 0; i < 3; i++) sc[i] = 1.0 + sym(&s) * p->scale;
    for (int i = 0; i < 3; i++) sh[i] = sym(&s) * p->shear;
    for (int i = 0; i < 3; i++) t[i] = sym(&s) * p->translate_mm;
    const double rx[3][3] = {{1, 0, 0}, {0, cos(a[0]), -sin(a[0])}, {0, sin(a[0]), cos(a[0])}};
    const double ry[3][3] = {{cos(a[1]), 0, sin(a[1])}, {0, 1, 0}, {-sin(a[1]), 0, cos(a[1])}};
    const double rz[3][3] = {{cos(a[2]), -sin(a[2]), 0}, {sin(a[2]), cos(a[2]), 0}, {0, 0, 1}};
    const double ss[3][3] = {{sc[0], 0, 0}, {0, sc[1], 0}, {0, 0, sc[2]}};
    const double hh[3][3] = {{1, sh[0], sh[1]}, {0, 1, sh[2]}, {0, 0, 1}};
    double m[3][3];
    matmul3(rz, ry, m);
    matmul3(m, rx, m);
    matmul3(m, ss, m);
    matmul3(m, hh, m);
    mn_deform_affine(m, t, d);
    /* Elastic part: the control grid's displacements, always drawn (so the intensity draws do not depend on it). */
    const int g = p->elastic_grid >= 2 && p->elastic_grid <= MN_DEFORM_MAX_GRID ? p->elastic_grid : 0;
    const int64_t nc = (int64_t)g * g * g * 3;
    float *tmp = NULL;
    if (g && p->elastic_mm > 0) {
        MN_CALL(mn_malloc(sizeof(float) * (size_t)nc, "elastic control grid", (void **)&d->disp));
        mn_err e = mn_malloc(sizeof(float) * (size_t)nc, "elastic smoothing", (void **)&tmp);
        if (e) {
            mn_deform_free(d);
            MN_CALL(e);
        }
        d->grid = g;
    }
    for (int64_t n = 0; n < nc; n++) {
        double v = normal(&s) * p->elastic_mm;
        if (d->disp) d->disp[n] = (float)v;
    }
    if (d->disp) {
        for (int ax = 0; ax < 3; ax++) smooth_axis(d->disp, tmp, g, ax);
        mn_free(&tmp);
    }
    d->gain = exp(normal(&s) * p->intensity);
    d->gamma = exp(normal(&s) * p->intensity);
    return MN_OK;
}

/* ---- applying ------------------------------------------------------------------------------------------------ */

void mn_deform_grid(const int64_t src_dim[3], const double src_affine[4][4], double spacing, int64_t out_dim[3],
                    double out_affine[4][4])
{
    memcpy(out_affine, src_affine, sizeof(double) * 16);
    for (int ax = 0; ax < 3; ax++) {
        out_dim[ax] = src_dim[ax];
        double len = sqrt(src_affine[0][ax] * src_affine[0][ax] + src_affine[1][ax] * src_affine[1][ax] +
                          src_affine[2][ax] * src_affine[2][ax]);
        if (!(spacing > 0) || !(len > 0)) continue;
        double f = spacing / len; /* source voxels per output voxel */
        int64_t n = (int64_t)floor(src_dim[ax] / f + 0.5);
        out_dim[ax] = n < 1 ? 1 : n;
        /* Output voxel i sits at source voxel f i + (f - 1) / 2: the first corners coincide. */
        for (int r = 0; r < 3; r++) {
            out_affine[r][3] += src_affine[r][ax] * (f - 1) / 2;
            out_affine[r][ax] = src_affine[r][ax] * f;
        }
    }
}

/* Trilinear interpolation weights along one axis of the control grid, for every output index. */
typedef struct axis_w {
    int k;    /* lower control point */
    float f;  /* weight of the upper one */
} axis_w;

static void control_weights(int64_t n, int g, axis_w *w)
{
    for (int64_t i = 0; i < n; i++) {
        double s = n > 1 ? (double)i * (g - 1) / (double)(n - 1) : 0;
        int k = (int)floor(s);
        if (k > g - 2) k = g - 2;
        w[i].k = k, w[i].f = (float)(s - k);
    }
}

static double snap(double q)
{
    double r = floor(q + 0.5);
    return fabs(q - r) < MN_DEFORM_SNAP ? r : q;
}

static float sample_linear(const mn_deform_src *v, const double q[3])
{
    int64_t i0[3], i1[3];
    double f[3];
    for (int ax = 0; ax < 3; ax++) {
        double x = q[ax], hi = (double)(v->dim[ax] - 1);
        x = x < 0 ? 0 : x > hi ? hi : x;
        double fl = floor(x);
        i0[ax] = (int64_t)fl;
        i1[ax] = i0[ax] + 1 < v->dim[ax] ? i0[ax] + 1 : i0[ax];
        f[ax] = x - fl;
    }
    const int64_t nx = v->dim[0], nxy = v->dim[0] * v->dim[1];
    const float *d = v->data;
#define MN_AT(a, b, c) ((double)d[(a) + nx * (b) + nxy * (c)])
    double c00 = MN_AT(i0[0], i0[1], i0[2]) * (1 - f[0]) + MN_AT(i1[0], i0[1], i0[2]) * f[0];
    double c10 = MN_AT(i0[0], i1[1], i0[2]) * (1 - f[0]) + MN_AT(i1[0], i1[1], i0[2]) * f[0];
    double c01 = MN_AT(i0[0], i0[1], i1[2]) * (1 - f[0]) + MN_AT(i1[0], i0[1], i1[2]) * f[0];
    double c11 = MN_AT(i0[0], i1[1], i1[2]) * (1 - f[0]) + MN_AT(i1[0], i1[1], i1[2]) * f[0];
#undef MN_AT
    double c0 = c00 * (1 - f[1]) + c10 * f[1], c1 = c01 * (1 - f[1]) + c11 * f[1];
    /* Exact weights of 0 or 1 return the voxel itself (no rounding through the blend). */
    if (f[0] == 0 && f[1] == 0 && f[2] == 0) return d[i0[0] + nx * i0[1] + nxy * i0[2]];
    return (float)(c0 * (1 - f[2]) + c1 * f[2]);
}

static float sample_nearest(const mn_deform_src *v, const double q[3])
{
    int64_t i[3];
    for (int ax = 0; ax < 3; ax++) {
        double r = floor(q[ax] + 0.5);
        i[ax] = r < 0 ? 0 : r > (double)(v->dim[ax] - 1) ? v->dim[ax] - 1 : (int64_t)r;
    }
    return v->data[i[0] + v->dim[0] * (i[1] + v->dim[1] * i[2])];
}

mn_err mn_deform_apply(const mn_deform *d, const int64_t out_dim[3], const double out_affine[4][4],
                       const mn_deform_src *img, float *out_img, const mn_deform_src *lab, float *out_lab)
{
    const int use_img = img && img->data, use_lab = lab && lab->data;
    MN_CHECK((!use_img || out_img) && (!use_lab || out_lab), MN_ERR_ARG, "deformation output buffer missing");
    double ii[3][3] = {{0}}, it[3] = {0}, li[3][3] = {{0}}, lt[3] = {0};
    MN_CHECK(!use_img || invert_affine(img->affine, ii, it), MN_ERR_ARG, "the image's affine is singular");
    MN_CHECK(!use_lab || invert_affine(lab->affine, li, lt), MN_ERR_ARG, "the label's affine is singular");
    /* y(p) = G p + g0 + u(p): G = M A_lin, g0 = c + M (a_t - c) + t, c the world centre of the output grid. */
    double c[3], g0[3], gm[3][3], alin[3][3];
    for (int r = 0; r < 3; r++) {
        for (int k = 0; k < 3; k++) alin[r][k] = out_affine[r][k];
        c[r] = out_affine[r][3];
        for (int k = 0; k < 3; k++) c[r] += out_affine[r][k] * (double)(out_dim[k] - 1) / 2;
    }
    matmul3(d->m, alin, gm);
    for (int r = 0; r < 3; r++) {
        g0[r] = c[r] + d->t[r];
        for (int k = 0; k < 3; k++) g0[r] += d->m[r][k] * (out_affine[k][3] - c[k]);
    }
    /* Elastic weights per axis. */
    axis_w *w[3] = {NULL, NULL, NULL};
    mn_err e = MN_OK;
    if (d->grid)
        for (int ax = 0; ax < 3 && !e; ax++) {
            e = mn_malloc(sizeof(axis_w) * (size_t)out_dim[ax], "elastic weights", (void **)&w[ax]);
            if (!e) control_weights(out_dim[ax], d->grid, w[ax]);
        }
    if (e) {
        for (int ax = 0; ax < 3; ax++) mn_free(&w[ax]);
        MN_CALL(e);
    }
    /* The intensity change's scale: the largest |value| of the source image. */
    double vmax = 0;
    const int change = use_img && (d->gain != 1.0 || d->gamma != 1.0);
    if (change)
        for (int64_t n = 0; n < img->dim[0] * img->dim[1] * img->dim[2]; n++)
            if (fabs(img->data[n]) > vmax) vmax = fabs(img->data[n]);
    const int g = d->grid;
    for (int64_t k = 0; k < out_dim[2]; k++)
        for (int64_t j = 0; j < out_dim[1]; j++)
            for (int64_t i = 0; i < out_dim[0]; i++) {
                const double p[3] = {(double)i, (double)j, (double)k};
                double y[3];
                for (int r = 0; r < 3; r++) y[r] = gm[r][0] * p[0] + gm[r][1] * p[1] + gm[r][2] * p[2] + g0[r];
                if (g) {
                    const axis_w a = w[0][i], b = w[1][j], cc = w[2][k];
                    for (int r = 0; r < 3; r++) {
                        double u = 0;
                        for (int dz = 0; dz < 2; dz++)
                            for (int dy = 0; dy < 2; dy++)
                                for (int dx = 0; dx < 2; dx++) {
                                    double wt = (dx ? a.f : 1 - a.f) * (dy ? b.f : 1 - b.f) * (dz ? cc.f : 1 - cc.f);
                                    int64_t cp = (a.k + dx) + (int64_t)g * ((b.k + dy) + (int64_t)g * (cc.k + dz));
                                    u += wt * d->disp[3 * cp + r];
                                }
                        y[r] += u;
                    }
                }
                const int64_t o = i + out_dim[0] * (j + out_dim[1] * k);
                if (use_img) {
                    double q[3];
                    for (int r = 0; r < 3; r++)
                        q[r] = snap(ii[r][0] * y[0] + ii[r][1] * y[1] + ii[r][2] * y[2] + it[r]);
                    float v = sample_linear(img, q);
                    if (change && vmax > 0 && v != 0) {
                        double av = fabs((double)v);
                        v = (float)((v < 0 ? -1 : 1) * d->gain * vmax * pow(av / vmax, d->gamma));
                    }
                    out_img[o] = v;
                }
                if (use_lab) {
                    double q[3];
                    for (int r = 0; r < 3; r++)
                        q[r] = snap(li[r][0] * y[0] + li[r][1] * y[1] + li[r][2] * y[2] + lt[r]);
                    out_lab[o] = sample_nearest(lab, q);
                }
            }
    for (int ax = 0; ax < 3; ax++) mn_free(&w[ax]);
    return MN_OK;
}
