/* preprocess.c: canonical grids, resampling through affines, label maps, cropping and intensity normalisation.
 *
 * Resampling walks the output grid in storage order (k, j, i) and carries the source continuous index along
 * incrementally (c = c0 + i*di), so the inner loop is a few adds and one trilinear gather; the inverse affine is
 * computed once in double.  Everything is a pure function of its inputs, so the same volume gives bit-identical
 * output on whichever rank processes it (the 1/2/4-rank corpus identity rests on that).
 */
#include "mednet/preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void mn_volume_world_spacing(const mn_volume *vol, double spacing[3])
{
    for (int w = 0; w < 3; w++) {
        /* The voxel axis whose column points most along world axis w. */
        int best = 0;
        double bestv = -1;
        for (int a = 0; a < 3; a++) {
            double norm = sqrt(vol->affine[0][a] * vol->affine[0][a] + vol->affine[1][a] * vol->affine[1][a] +
                               vol->affine[2][a] * vol->affine[2][a]);
            double cosv = norm > 0 ? fabs(vol->affine[w][a]) / norm : 0;
            if (cosv > bestv) bestv = cosv, best = a;
        }
        spacing[w] = sqrt(vol->affine[0][best] * vol->affine[0][best] + vol->affine[1][best] * vol->affine[1][best] +
                          vol->affine[2][best] * vol->affine[2][best]);
    }
}

int mn_affine_invert3(const double a[4][4], double inv[3][3])
{
    double det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
                 a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    if (!(fabs(det) > 1e-12)) return 0;
    inv[0][0] = (a[1][1] * a[2][2] - a[1][2] * a[2][1]) / det;
    inv[0][1] = (a[0][2] * a[2][1] - a[0][1] * a[2][2]) / det;
    inv[0][2] = (a[0][1] * a[1][2] - a[0][2] * a[1][1]) / det;
    inv[1][0] = (a[1][2] * a[2][0] - a[1][0] * a[2][2]) / det;
    inv[1][1] = (a[0][0] * a[2][2] - a[0][2] * a[2][0]) / det;
    inv[1][2] = (a[0][2] * a[1][0] - a[0][0] * a[1][2]) / det;
    inv[2][0] = (a[1][0] * a[2][1] - a[1][1] * a[2][0]) / det;
    inv[2][1] = (a[0][1] * a[2][0] - a[0][0] * a[2][1]) / det;
    inv[2][2] = (a[0][0] * a[1][1] - a[0][1] * a[1][0]) / det;
    return 1;
}

/* World bounding box of the index box [lo, hi] (same bound on all three axes directions). */
static void world_box(const mn_volume *vol, double lo_idx, double hi_off, double wmin[3], double wmax[3])
{
    for (int w = 0; w < 3; w++) wmin[w] = INFINITY, wmax[w] = -INFINITY;
    for (int c = 0; c < 8; c++) {
        double idx[3];
        for (int a = 0; a < 3; a++) idx[a] = (c >> a & 1) ? (double)(vol->dim[a] - 1) + hi_off : lo_idx;
        for (int w = 0; w < 3; w++) {
            double p = vol->affine[w][3] + vol->affine[w][0] * idx[0] + vol->affine[w][1] * idx[1] +
                       vol->affine[w][2] * idx[2];
            if (p < wmin[w]) wmin[w] = p;
            if (p > wmax[w]) wmax[w] = p;
        }
    }
}

mn_err mn_grid_for_volume(const mn_volume *vol, const double spacing[3], mn_grid *grid)
{
    double inv[3][3];
    MN_CHECK(mn_affine_invert3(vol->affine, inv), MN_ERR_ARG, "the volume's affine is singular (zero voxel size?)");
    double wmin[3], wmax[3];
    world_box(vol, 0, 0, wmin, wmax);
    int64_t total = 1;
    for (int w = 0; w < 3; w++) {
        MN_CHECK(spacing[w] > 0, MN_ERR_ARG, "target spacing must be > 0, got %g on axis %d", spacing[w], w);
        /* The 1e-6 keeps an extent that is an exact multiple of the spacing from losing its last voxel. */
        grid->n[w] = (int64_t)floor((wmax[w] - wmin[w]) / spacing[w] + 1e-6) + 1;
        grid->origin[w] = wmin[w];
        grid->spacing[w] = spacing[w];
        total *= grid->n[w];
    }
    MN_CHECK(total < ((int64_t)1 << 31), MN_ERR_ARG, "resampled grid %lldx%lldx%lld is too large",
             (long long)grid->n[0], (long long)grid->n[1], (long long)grid->n[2]);
    return MN_OK;
}

mn_err mn_resample_affine(const mn_volume *src, const int64_t dim[3], const double affine[4][4], int order, float fill,
                          float *out)
{
    double inv[3][3];
    MN_CHECK(mn_affine_invert3(src->affine, inv), MN_ERR_ARG, "the source affine is singular (zero voxel size?)");
    const int64_t nx = src->dim[0], ny = src->dim[1], nz = src->dim[2];
    const float *s = src->data;
    /* Source index of output voxel (i,j,k): c = inv * (B (i,j,k) + b - t) for the output affine (B, b); for a
     * canonical grid B is diagonal and the sums below add exact zeros, so mn_resample's values do not change. */
    double d[3][3], base[3];
    for (int a = 0; a < 3; a++) {
        base[a] = 0;
        for (int b = 0; b < 3; b++) {
            d[b][a] = 0;
            for (int w = 0; w < 3; w++) d[b][a] += inv[a][w] * affine[w][b];
        }
        for (int w = 0; w < 3; w++) base[a] += inv[a][w] * (affine[w][3] - src->affine[w][3]);
    }
    const double lim[3] = {(double)nx - 0.5, (double)ny - 0.5, (double)nz - 0.5};
    int64_t o = 0;
    for (int64_t k = 0; k < dim[2]; k++)
        for (int64_t j = 0; j < dim[1]; j++)
            for (int64_t i = 0; i < dim[0]; i++, o++) {
                double c[3];
                for (int a = 0; a < 3; a++)
                    c[a] = base[a] + d[0][a] * (double)i + d[1][a] * (double)j + d[2][a] * (double)k;
                if (c[0] < -0.5 || c[1] < -0.5 || c[2] < -0.5 || c[0] >= lim[0] || c[1] >= lim[1] || c[2] >= lim[2]) {
                    out[o] = fill;
                    continue;
                }
                if (order == 0) {
                    int64_t x = (int64_t)floor(c[0] + 0.5), y = (int64_t)floor(c[1] + 0.5), z = (int64_t)floor(c[2] + 0.5);
                    out[o] = s[x + nx * (y + ny * z)];
                    continue;
                }
                int64_t i0[3], i1[3];
                double f[3];
                const int64_t n[3] = {nx, ny, nz};
                for (int a = 0; a < 3; a++) {
                    double cc = c[a] < 0 ? 0 : c[a] > (double)(n[a] - 1) ? (double)(n[a] - 1) : c[a];
                    i0[a] = (int64_t)floor(cc);
                    if (i0[a] > n[a] - 1) i0[a] = n[a] - 1;
                    f[a] = cc - (double)i0[a];
                    i1[a] = i0[a] + 1 < n[a] ? i0[a] + 1 : i0[a];
                }
                double v00 = s[i0[0] + nx * (i0[1] + ny * i0[2])] * (1 - f[0]) + s[i1[0] + nx * (i0[1] + ny * i0[2])] * f[0];
                double v10 = s[i0[0] + nx * (i1[1] + ny * i0[2])] * (1 - f[0]) + s[i1[0] + nx * (i1[1] + ny * i0[2])] * f[0];
                double v01 = s[i0[0] + nx * (i0[1] + ny * i1[2])] * (1 - f[0]) + s[i1[0] + nx * (i0[1] + ny * i1[2])] * f[0];
                double v11 = s[i0[0] + nx * (i1[1] + ny * i1[2])] * (1 - f[0]) + s[i1[0] + nx * (i1[1] + ny * i1[2])] * f[0];
                double v0 = v00 * (1 - f[1]) + v10 * f[1], v1 = v01 * (1 - f[1]) + v11 * f[1];
                out[o] = (float)(v0 * (1 - f[2]) + v1 * f[2]);
            }
    return MN_OK;
}

void mn_grid_affine(const mn_grid *grid, double affine[4][4])
{
    memset(affine, 0, 16 * sizeof(double));
    for (int w = 0; w < 3; w++) affine[w][w] = grid->spacing[w], affine[w][3] = grid->origin[w];
    affine[3][3] = 1;
}

mn_err mn_resample(const mn_volume *src, const mn_grid *grid, int order, float fill, float *out)
{
    double a[4][4];
    mn_grid_affine(grid, a);
    MN_CALL(mn_resample_affine(src, grid->n, a, order, fill, out));
    return MN_OK;
}

int64_t mn_volume_nonfinite(const mn_volume *vol, int64_t *first, float *vmin)
{
    int64_t nbad = 0, fb = -1, nv = mn_volume_voxels(vol);
    float mn = INFINITY;
    for (int64_t i = 0; i < nv; i++) {
        if (!isfinite(vol->data[i])) {
            if (!nbad++) fb = i;
        } else if (vol->data[i] < mn) {
            mn = vol->data[i];
        }
    }
    if (first) *first = fb;
    if (vmin) *vmin = mn;
    return nbad;
}

mn_err mn_preprocess_image(mn_volume *img, const char *path, const double spacing[3], int zscore_mask, int antialias,
                           float fill, mn_grid *grid, float **image, float **mask, double aa_sigma[3])
{
    *image = *mask = NULL;
    aa_sigma[0] = aa_sigma[1] = aa_sigma[2] = 0;
    /* The source's foreground mask, taken before the low-pass and resampled with nearest, so that neither blur nor
     * trilinear weights leak the background into it. */
    const int64_t nv = mn_volume_voxels(img);
    mn_volume msk = *img;
    msk.data = malloc((size_t)(nv ? nv : 1) * sizeof(float));
    MN_CHECK(msk.data, MN_ERR_MEM, "out of memory for the mask of '%s'", path);
    for (int64_t i = 0; i < nv; i++) msk.data[i] = zscore_mask ? img->data[i] > 0 : img->data[i] != 0;
    mn_err e = antialias ? mn_antialias(img, spacing, aa_sigma) : MN_OK;
    if (!e) e = mn_grid_for_volume(img, spacing, grid);
    float *ri = NULL, *rm = NULL;
    if (!e) {
        int64_t ng = grid->n[0] * grid->n[1] * grid->n[2];
        ri = malloc((size_t)ng * sizeof *ri);
        rm = malloc((size_t)ng * sizeof *rm);
        if (!ri || !rm) e = mn_error_report(MN_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory resampling '%s'", path);
    }
    if (!e) e = mn_resample(img, grid, 1, fill, ri);
    if (!e) e = mn_resample(&msk, grid, 0, 0, rm);
    free(msk.data);
    if (e) {
        free(ri), free(rm);
        MN_CHECK(!e, e, "preprocessing '%s'", path);
    }
    *image = ri, *mask = rm;
    return MN_OK;
}

/* Smooth every line of x along `axis` with the kernel w[0..2r] (clamped edges).  line is scratch of n[axis]+2r:
 * each line is copied with r edge values repeated on both sides, so the tap loop has no branches. */
static void smooth_axis(float *x, const int64_t n[3], int axis, const double *w, int r, float *line)
{
    const int64_t stride[3] = {1, n[0], n[0] * n[1]};
    const int64_t len = n[axis], st = stride[axis];
    /* The two other axes enumerate the line starts. */
    const int a1 = axis == 0 ? 1 : 0, a2 = axis == 2 ? 1 : 2;
    for (int64_t q = 0; q < n[a2]; q++)
        for (int64_t p = 0; p < n[a1]; p++) {
            float *base = x + p * stride[a1] + q * stride[a2];
            for (int64_t t = 0; t < len; t++) line[r + t] = base[t * st];
            for (int d = 0; d < r; d++) line[d] = line[r], line[r + len + d] = line[r + len - 1];
            for (int64_t t = 0; t < len; t++) {
                const float *l = line + t;
                double acc = 0;
                for (int d = 0; d <= 2 * r; d++) acc += w[d] * l[d];
                base[t * st] = (float)acc;
            }
        }
}

mn_err mn_antialias(mn_volume *vol, const double target_spacing[3], double sigma[3])
{
    int64_t maxlen = 0;
    for (int a = 0; a < 3; a++) {
        /* Source spacing along voxel axis a and the world axis it points along. */
        double col[3] = {vol->affine[0][a], vol->affine[1][a], vol->affine[2][a]};
        double norm = sqrt(col[0] * col[0] + col[1] * col[1] + col[2] * col[2]);
        int w = 0;
        for (int k = 1; k < 3; k++)
            if (fabs(col[k]) > fabs(col[w])) w = k;
        double f = norm > 0 ? target_spacing[w] / norm : 1;
        sigma[a] = f > 1 ? (f - 1) / 2 : 0;
        if (vol->dim[a] > maxlen) maxlen = vol->dim[a];
    }
    float *line = malloc((size_t)(maxlen + 2 * 100) * sizeof *line);
    MN_CHECK(line, MN_ERR_MEM, "out of memory for the anti-aliasing line buffer");
    for (int a = 0; a < 3; a++) {
        if (sigma[a] <= 0) continue;
        /* scipy's truncate = 4: radius int(4 sigma + 0.5). */
        int r = (int)(4 * sigma[a] + 0.5);
        double w[201], sum = 0;
        if (r > 100) r = 100;
        for (int d = -r; d <= r; d++) sum += w[d + r] = exp(-0.5 * d * d / (sigma[a] * sigma[a]));
        for (int d = 0; d <= 2 * r; d++) w[d] /= sum;
        smooth_axis(vol->data, vol->dim, a, w, r, line);
    }
    free(line);
    return MN_OK;
}

int mn_volume_same_grid(const mn_volume *a, const mn_volume *b, double tol)
{
    for (int i = 0; i < 3; i++)
        if (a->dim[i] != b->dim[i]) return 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            if (fabs(a->affine[r][c] - b->affine[r][c]) > tol) return 0;
    return 1;
}

double mn_grid_overlap(const mn_grid *grid, const mn_volume *vol)
{
    double wmin[3], wmax[3];
    world_box(vol, -0.5, 0.5, wmin, wmax);
    double frac = 1;
    for (int w = 0; w < 3; w++) {
        double g0 = grid->origin[w] - 0.5 * grid->spacing[w];
        double g1 = grid->origin[w] + ((double)grid->n[w] - 0.5) * grid->spacing[w];
        double lo = g0 > wmin[w] ? g0 : wmin[w], hi = g1 < wmax[w] ? g1 : wmax[w];
        frac *= hi > lo ? (hi - lo) / (g1 - g0) : 0;
    }
    return frac;
}

mn_err mn_label_map_apply(mn_volume *vol, const mn_label_range *ranges, int n, int num_classes, const char *path)
{
    int64_t nv = mn_volume_voxels(vol);
    float *x = vol->data;
    double vmin = INFINITY, vmax = -INFINITY;
    for (int64_t i = 0; i < nv; i++) {
        double v = x[i];
        MN_CHECK(isfinite(v), MN_ERR_NUMERIC, "label file '%s' has a non-finite value at voxel %lld", path, (long long)i);
        MN_CHECK(fabs(v - nearbyint(v)) < 1e-3, MN_ERR_FORMAT,
                 "label file '%s' has the non-integer value %g at voxel %lld: expected integer label codes", path, v,
                 (long long)i);
        if (v < vmin) vmin = v;
        if (v > vmax) vmax = v;
    }
    if (nv == 0) return MN_OK;
    int64_t lo = (int64_t)nearbyint(vmin), hi = (int64_t)nearbyint(vmax);
    MN_CHECK(hi - lo < (1 << 24), MN_ERR_FORMAT, "label file '%s' has codes spanning [%lld, %lld]: too wide for a "
             "label image", path, (long long)lo, (long long)hi);
    /* A lookup table over the codes present: -1 marks "not in the map". */
    int *lut = malloc((size_t)(hi - lo + 1) * sizeof *lut);
    MN_CHECK(lut, MN_ERR_MEM, "out of memory for the label lookup table of '%s'", path);
    for (int64_t c = lo; c <= hi; c++) {
        int to = -1;
        if (n == 0) {
            to = c >= 0 && c < num_classes ? (int)c : -1;
        } else {
            for (int r = 0; r < n && to < 0; r++)
                if (c >= ranges[r].lo && c <= ranges[r].hi) to = ranges[r].to;
        }
        lut[c - lo] = to;
    }
    for (int64_t i = 0; i < nv; i++) {
        int64_t c = (int64_t)nearbyint(x[i]);
        int to = lut[c - lo];
        if (to < 0 || to >= num_classes) {
            free(lut);
            MN_FAIL(MN_ERR_FORMAT, "label value %lld of '%s' (voxel %lld) is not in the label map%s (%d classes)\n"
                    "---> HINT: add a range for it to label_map, e.g. `label_map = ..., %lld:0`",
                    (long long)c, path, (long long)i, n ? "" : " (identity map)", num_classes, (long long)c);
        }
        x[i] = (float)to;
    }
    free(lut);
    return MN_OK;
}

void mn_foreground_bbox(const float *image, const float *label, const int64_t dims[3], int64_t lo[3], int64_t hi[3])
{
    for (int a = 0; a < 3; a++) lo[a] = dims[a], hi[a] = 0;
    int64_t o = 0;
    for (int64_t z = 0; z < dims[0]; z++)
        for (int64_t y = 0; y < dims[1]; y++)
            for (int64_t x = 0; x < dims[2]; x++, o++) {
                if (image[o] == 0 && !(label && label[o] > 0)) continue;
                const int64_t p[3] = {z, y, x};
                for (int a = 0; a < 3; a++) {
                    if (p[a] < lo[a]) lo[a] = p[a];
                    if (p[a] + 1 > hi[a]) hi[a] = p[a] + 1;
                }
            }
    if (lo[0] >= hi[0])
        for (int a = 0; a < 3; a++) lo[a] = 0, hi[a] = dims[a];
}

void mn_crop(const float *in, const int64_t dims[3], const int64_t lo[3], const int64_t hi[3], float *out)
{
    int64_t w = hi[2] - lo[2];
    for (int64_t z = lo[0]; z < hi[0]; z++)
        for (int64_t y = lo[1]; y < hi[1]; y++) {
            memcpy(out, in + lo[2] + dims[2] * (y + dims[1] * z), (size_t)w * sizeof *out);
            out += w;
        }
}

void mn_masked_stats(const float *x, const float *mask, int64_t n, double lo, double hi, double *mean, double *std,
                     int64_t *count)
{
    double s = 0, s2 = 0;
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) {
        if (mask ? !(mask[i] > 0) : !(x[i] > 0)) continue;
        double v = x[i];
        if (lo < hi) v = v < lo ? lo : v > hi ? hi : v;
        s += v;
        s2 += v * v;
        c++;
    }
    *count = c;
    *mean = c ? s / (double)c : 0;
    double var = c ? s2 / (double)c - *mean * *mean : 0;
    *std = var > 0 ? sqrt(var) : 0;
}

void mn_normalise(float *x, const float *mask, int64_t n, mn_norm mode, double lo, double hi, double mean,
                  double std)
{
    if (mode == MN_NORM_NONE) return;
    double inv = std > 0 ? 1.0 / std : 1.0;
    for (int64_t i = 0; i < n; i++) {
        double v = x[i];
        if (mode == MN_NORM_ZSCORE) {
            int in = mask ? mask[i] > 0 : v > 0;
            x[i] = in ? (float)((v - mean) * inv) : 0;
            continue;
        }
        v = v < lo ? lo : v > hi ? hi : v;
        x[i] = (float)((v - mean) * inv);
    }
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

double mn_quantile_sorted_inplace(float *v, int64_t n, double q)
{
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    double pos = q * (double)(n - 1);
    int64_t i = (int64_t)floor(pos);
    if (i >= n - 1) return v[n - 1];
    double f = pos - (double)i;
    return (double)v[i] * (1 - f) + (double)v[i + 1] * f;
}
