/* segmetrics.c: Dice, Hausdorff distances and ASSD in mm (definitions in mednet/segmetrics.h).
 *
 * The distance transform is Felzenszwalb & Huttenlocher's 1-D lower envelope of parabolas applied along i, then j,
 * then k (separable: the squared Euclidean distance is a sum over axes), each pass in physical positions q * h so
 * that anisotropic spacing is exact.  A line with no finite entry stays infinite.  Everything is in double: squared
 * distances of a few hundred mm are exact enough to compare with scipy to 1e-9.
 */
#include "mednet/segmetrics.h"

#include "mednet/mem.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void mn_affine_spacing(const double affine[4][4], double spacing[3], double *shear)
{
    double worst = 0;
    for (int a = 0; a < 3; a++) {
        spacing[a] = sqrt(affine[0][a] * affine[0][a] + affine[1][a] * affine[1][a] + affine[2][a] * affine[2][a]);
        for (int b = 0; b < a; b++) {
            double dot = affine[0][a] * affine[0][b] + affine[1][a] * affine[1][b] + affine[2][a] * affine[2][b];
            double c = spacing[a] > 0 && spacing[b] > 0 ? fabs(dot) / (spacing[a] * spacing[b]) : 0;
            if (c > worst) worst = c;
        }
    }
    if (shear) *shear = worst;
}

/* One line: d[q] = min_p (h (q - p))^2 + f[p] for q < n.  f and d may not alias; v, z are scratch of n and n+1. */
static void edt_line(const double *f, double *d, int64_t n, double h, int64_t *v, double *z)
{
    int64_t k = -1;
    for (int64_t q = 0; q < n; q++) {
        if (isinf(f[q])) continue;
        double pq = h * (double)q, s = -INFINITY;
        while (k >= 0) {
            double pp = h * (double)v[k];
            s = ((f[q] + pq * pq) - (f[v[k]] + pp * pp)) / (2 * (pq - pp));
            if (s > z[k]) break;
            k--;
        }
        k++;
        v[k] = q;
        z[k] = k == 0 ? -INFINITY : s;
        z[k + 1] = INFINITY;
    }
    if (k < 0) {
        for (int64_t q = 0; q < n; q++) d[q] = INFINITY;
        return;
    }
    k = 0;
    for (int64_t q = 0; q < n; q++) {
        double pq = h * (double)q;
        while (z[k + 1] < pq) k++;
        double t = pq - h * (double)v[k];
        d[q] = t * t + f[v[k]];
    }
}

mn_err mn_edt_sq(double *f, const int64_t n[3], const double spacing[3])
{
    int64_t len = n[0] > n[1] ? n[0] : n[1];
    if (n[2] > len) len = n[2];
    double *line = NULL, *out = NULL, *z = NULL;
    int64_t *v = NULL;
    mn_err e = mn_malloc(sizeof(double) * (size_t)len, "distance transform line", (void **)&line);
    if (!e) e = mn_malloc(sizeof(double) * (size_t)len, "distance transform output", (void **)&out);
    if (!e) e = mn_malloc(sizeof(double) * (size_t)(len + 1), "distance transform envelope", (void **)&z);
    if (!e) e = mn_malloc(sizeof(int64_t) * (size_t)len, "distance transform vertices", (void **)&v);
    if (!e) {
        const int64_t stride[3] = {1, n[0], n[0] * n[1]};
        for (int axis = 0; axis < 3; axis++) {
            const int a1 = axis == 0 ? 1 : 0, a2 = axis == 2 ? 1 : 2;
            const int64_t st = stride[axis], m = n[axis];
            for (int64_t q2 = 0; q2 < n[a2]; q2++)
                for (int64_t q1 = 0; q1 < n[a1]; q1++) {
                    double *base = f + q1 * stride[a1] + q2 * stride[a2];
                    for (int64_t t = 0; t < m; t++) line[t] = base[t * st];
                    edt_line(line, out, m, spacing[axis], v, z);
                    for (int64_t t = 0; t < m; t++) base[t * st] = out[t];
                }
        }
    }
    mn_free(&line);
    mn_free(&out);
    mn_free(&z);
    mn_free(&v);
    MN_CHECK(!e, e, "called from distance transform");
    return MN_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* 1 if the box voxel (x, y, z) of mask m (box dims b) is a surface voxel: in the mask with a face neighbour out of
 * it or out of the box (the box holds every mask voxel, so out of the box is out of the mask). */
static int on_surface(const uint8_t *m, const int64_t b[3], int64_t x, int64_t y, int64_t z)
{
    int64_t i = x + b[0] * (y + b[1] * z);
    if (!m[i]) return 0;
    if (x == 0 || x == b[0] - 1 || y == 0 || y == b[1] - 1 || z == 0 || z == b[2] - 1) return 1;
    const int64_t sy = b[0], sz = b[0] * b[1];
    return !m[i - 1] || !m[i + 1] || !m[i - sy] || !m[i + sy] || !m[i - sz] || !m[i + sz];
}

/* Distances from every surface voxel of `from` to the surface of `to` (box arrays), appended to dist[*nd]. */
static mn_err surface_distances(const uint8_t *from, const uint8_t *to, const int64_t b[3], const double sp[3],
                                double *f, double *dist, int64_t *nd)
{
    int64_t o = 0;
    for (int64_t z = 0; z < b[2]; z++)
        for (int64_t y = 0; y < b[1]; y++)
            for (int64_t x = 0; x < b[0]; x++, o++) f[o] = on_surface(to, b, x, y, z) ? 0 : INFINITY;
    MN_CALL(mn_edt_sq(f, b, sp));
    o = 0;
    for (int64_t z = 0; z < b[2]; z++)
        for (int64_t y = 0; y < b[1]; y++)
            for (int64_t x = 0; x < b[0]; x++, o++)
                if (on_surface(from, b, x, y, z)) dist[(*nd)++] = sqrt(f[o]);
    return MN_OK;
}

mn_err mn_seg_metrics_class(const int32_t *pred, const int32_t *label, const int64_t n[3], const double spacing[3],
                            int cls, mn_seg_metrics *out)
{
    memset(out, 0, sizeof *out);
    out->cls = cls;
    /* Counts and the bounding box of A u B. */
    int64_t lo[3] = {n[0], n[1], n[2]}, hi[3] = {-1, -1, -1}, o = 0;
    for (int64_t z = 0; z < n[2]; z++)
        for (int64_t y = 0; y < n[1]; y++)
            for (int64_t x = 0; x < n[0]; x++, o++) {
                int a = pred[o] == cls, b = label[o] == cls;
                out->pred_voxels += a, out->label_voxels += b, out->overlap_voxels += a && b;
                if (!a && !b) continue;
                const int64_t p[3] = {x, y, z};
                for (int d = 0; d < 3; d++) {
                    if (p[d] < lo[d]) lo[d] = p[d];
                    if (p[d] > hi[d]) hi[d] = p[d];
                }
            }
    const int64_t na = out->pred_voxels, nb = out->label_voxels;
    if (!na && !nb) {
        out->dice = 1;
        return MN_OK; /* distances 0: nothing to find and nothing missed */
    }
    out->dice = 2.0 * (double)out->overlap_voxels / (double)(na + nb);
    if (!na || !nb) {
        out->hd = out->hd95 = out->assd = INFINITY;
        return MN_OK;
    }
    /* Both masks, cut to the box. */
    const int64_t b[3] = {hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1}, nbox = b[0] * b[1] * b[2];
    uint8_t *ma = NULL, *mb = NULL;
    double *f = NULL, *dist = NULL;
    mn_err e = mn_malloc((size_t)nbox, "prediction mask", (void **)&ma);
    if (!e) e = mn_malloc((size_t)nbox, "reference mask", (void **)&mb);
    if (!e) e = mn_malloc(sizeof(double) * (size_t)nbox, "distance map", (void **)&f);
    if (!e) {
        int64_t q = 0;
        for (int64_t z = lo[2]; z <= hi[2]; z++)
            for (int64_t y = lo[1]; y <= hi[1]; y++)
                for (int64_t x = lo[0]; x <= hi[0]; x++, q++) {
                    int64_t i = x + n[0] * (y + n[1] * z);
                    ma[q] = pred[i] == cls, mb[q] = label[i] == cls;
                }
        for (int64_t z = 0; z < b[2]; z++)
            for (int64_t y = 0; y < b[1]; y++)
                for (int64_t x = 0; x < b[0]; x++) {
                    out->pred_surface += on_surface(ma, b, x, y, z);
                    out->label_surface += on_surface(mb, b, x, y, z);
                }
        e = mn_malloc(sizeof(double) * (size_t)(out->pred_surface + out->label_surface), "surface distances",
                      (void **)&dist);
    }
    int64_t nd = 0;
    if (!e) e = surface_distances(ma, mb, b, spacing, f, dist, &nd);
    if (!e) e = surface_distances(mb, ma, b, spacing, f, dist, &nd);
    if (!e) {
        double sum = 0, mx = 0;
        for (int64_t i = 0; i < nd; i++) {
            sum += dist[i];
            if (dist[i] > mx) mx = dist[i];
        }
        out->hd = mx;
        out->assd = sum / (double)nd;
        /* HD95: numpy.percentile's default (linear interpolation between order statistics). */
        qsort(dist, (size_t)nd, sizeof *dist, cmp_double);
        double pos = 0.95 * (double)(nd - 1);
        int64_t i = (int64_t)floor(pos);
        out->hd95 = i >= nd - 1 ? dist[nd - 1] : dist[i] + (pos - (double)i) * (dist[i + 1] - dist[i]);
    }
    mn_free(&ma);
    mn_free(&mb);
    mn_free(&f);
    mn_free(&dist);
    MN_CHECK(!e, e, "called from metrics of class %d", cls);
    return MN_OK;
}
