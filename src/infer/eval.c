/* eval.c: `mednet eval` on pairs of NIfTI files: reading and checking a pair, the table, CSV and JSON
 * (definitions and conventions in mednet/segmetrics.h). */
#include "mednet/segmetrics.h"

#include "mednet/fileio.h"
#include "mednet/mem.h"
#include "mednet/nifti.h"
#include "mednet/preprocess.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* float voxels -> non-negative integer classes, checked; *vmax gets the largest. */
static mn_err to_classes(const mn_volume *v, const char *path, int32_t *out, int32_t *vmax)
{
    int64_t n = mn_volume_voxels(v);
    int32_t mx = 0;
    for (int64_t i = 0; i < n; i++) {
        float x = v->data[i];
        MN_CHECK(isfinite(x) && x >= 0 && x < MN_EVAL_MAX_CLASSES && x == floorf(x), MN_ERR_FORMAT,
                 "'%s': voxel %lld has the value %g; expected a class index, an integer in [0, %d]", path,
                 (long long)i, (double)x, MN_EVAL_MAX_CLASSES - 1);
        out[i] = (int32_t)x;
        if (out[i] > mx) mx = out[i];
    }
    *vmax = mx;
    return MN_OK;
}

static void describe_grid(const mn_volume *v, char *buf, size_t n)
{
    snprintf(buf, n, "%lldx%lldx%lld, affine rows [%g %g %g %g] [%g %g %g %g] [%g %g %g %g]", (long long)v->dim[0],
             (long long)v->dim[1], (long long)v->dim[2], v->affine[0][0], v->affine[0][1], v->affine[0][2],
             v->affine[0][3], v->affine[1][0], v->affine[1][1], v->affine[1][2], v->affine[1][3], v->affine[2][0],
             v->affine[2][1], v->affine[2][2], v->affine[2][3]);
}

/* Every class 1..nc-1: one pass finds each class's box (the union of its voxels in both volumes), then each class is
 * measured on a copy of its box alone.  Exact: the box holds every voxel of the class, a neighbour outside it is
 * outside the class as a neighbour outside the volume is, and distances do not change under translation.  So a
 * many-class atlas costs one pass over the volume plus the classes' boxes, not one pass per class. */
static mn_err all_classes(const int32_t *pa, const int32_t *pb, const int64_t n[3], const double sp[3], int nc,
                          mn_seg_metrics *m)
{
    int64_t(*lo)[3] = NULL, (*hi)[3] = NULL;
    int32_t *ca = NULL, *cb = NULL;
    mn_err e = mn_malloc(sizeof *lo * (size_t)nc, "class boxes", (void **)&lo);
    if (!e) e = mn_malloc(sizeof *hi * (size_t)nc, "class boxes", (void **)&hi);
    for (int c = 0; c < nc && !e; c++)
        for (int d = 0; d < 3; d++) lo[c][d] = n[d], hi[c][d] = -1;
    int64_t o = 0, biggest = 1;
    for (int64_t z = 0; z < n[2] && !e; z++)
        for (int64_t y = 0; y < n[1]; y++)
            for (int64_t x = 0; x < n[0]; x++, o++)
                for (int k = 0; k < 2; k++) {
                    int c = k ? pb[o] : pa[o];
                    if (c <= 0) continue;
                    const int64_t p[3] = {x, y, z};
                    for (int d = 0; d < 3; d++) {
                        if (p[d] < lo[c][d]) lo[c][d] = p[d];
                        if (p[d] > hi[c][d]) hi[c][d] = p[d];
                    }
                }
    for (int c = 1; c < nc && !e; c++) {
        int64_t v = 1;
        for (int d = 0; d < 3; d++) v *= hi[c][d] >= lo[c][d] ? hi[c][d] - lo[c][d] + 1 : 1;
        if (v > biggest) biggest = v;
    }
    if (!e) e = mn_malloc(sizeof(int32_t) * (size_t)biggest, "class box (prediction)", (void **)&ca);
    if (!e) e = mn_malloc(sizeof(int32_t) * (size_t)biggest, "class box (reference)", (void **)&cb);
    for (int c = 1; c < nc && !e; c++) {
        int64_t b[3] = {1, 1, 1}, q = 0;
        if (hi[c][0] < lo[c][0]) { /* absent from both: an empty box */
            ca[0] = cb[0] = 0;
        } else {
            for (int d = 0; d < 3; d++) b[d] = hi[c][d] - lo[c][d] + 1;
            for (int64_t z = lo[c][2]; z <= hi[c][2]; z++)
                for (int64_t y = lo[c][1]; y <= hi[c][1]; y++)
                    for (int64_t x = lo[c][0]; x <= hi[c][0]; x++, q++) {
                        int64_t i = x + n[0] * (y + n[1] * z);
                        ca[q] = pa[i], cb[q] = pb[i];
                    }
        }
        e = mn_seg_metrics_class(ca, cb, b, sp, c, &m[c]);
    }
    mn_free(&lo);
    mn_free(&hi);
    mn_free(&ca);
    mn_free(&cb);
    MN_CHECK(!e, e, "called from measuring the classes");
    return MN_OK;
}

mn_err mn_eval_pair(const char *pred, const char *label, int num_classes, double tol, mn_eval_case *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->pred, sizeof out->pred, "%s", pred);
    snprintf(out->label, sizeof out->label, "%s", label);
    MN_CHECK(num_classes >= 0 && num_classes <= MN_EVAL_MAX_CLASSES, MN_ERR_ARG, "eval: %d classes (at most %d)",
             num_classes, MN_EVAL_MAX_CLASSES);
    mn_volume a = {0}, b = {0};
    int32_t *ca = NULL, *cb = NULL;
    mn_err e = mn_nifti_read(pred, &a, NULL);
    if (!e) e = mn_nifti_read(label, &b, NULL);
    if (!e && !mn_volume_same_grid(&a, &b, tol)) {
        char ga[400], gb[400];
        describe_grid(&a, ga, sizeof ga);
        describe_grid(&b, gb, sizeof gb);
        e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                            "prediction '%s' and reference '%s' are not on one grid (tolerance %g mm):\n  %s: %s\n"
                            "  %s: %s\n---> HINT: predictions must be written on the reference's grid (mednet infer "
                            "does so for its input)", pred, label, tol, pred, ga, label, gb);
    }
    int64_t n = e ? 0 : mn_volume_voxels(&a);
    if (!e) e = mn_malloc(sizeof(int32_t) * (size_t)(n ? n : 1), "prediction classes", (void **)&ca);
    if (!e) e = mn_malloc(sizeof(int32_t) * (size_t)(n ? n : 1), "reference classes", (void **)&cb);
    int32_t ma = 0, mb = 0;
    if (!e) e = to_classes(&a, pred, ca, &ma);
    if (!e) e = to_classes(&b, label, cb, &mb);
    if (!e && num_classes > 0 && (ma >= num_classes || mb >= num_classes))
        e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__, "'%s' holds class %d, but --classes is %d",
                            ma >= num_classes ? pred : label, ma >= num_classes ? ma : mb, num_classes);
    if (!e) {
        out->num_classes = num_classes > 0 ? num_classes : (ma > mb ? ma : mb) + 1;
        for (int d = 0; d < 3; d++) out->dim[d] = b.dim[d];
        mn_affine_spacing(b.affine, out->spacing, &out->shear);
        if (out->shear > 1e-3)
            mn_log_warn("eval: the affine of '%s' is sheared (|cos| between voxel axes up to %.3g): distances use "
                        "the per-axis spacing and are approximate", label, out->shear);
        e = all_classes(ca, cb, b.dim, out->spacing, out->num_classes, out->m);
    }
    mn_volume_free(&a);
    mn_volume_free(&b);
    mn_free(&ca);
    mn_free(&cb);
    MN_CHECK(!e, e, "called from evaluating '%s' against '%s'", pred, label);
    return MN_OK;
}

void mn_eval_print(FILE *f, const mn_eval_case *c, int n)
{
    for (int i = 0; i < n; i++)
        fprintf(f, "case %d: %s vs %s (%lldx%lldx%lld, spacing %g x %g x %g mm)\n", i, c[i].pred, c[i].label,
                (long long)c[i].dim[0], (long long)c[i].dim[1], (long long)c[i].dim[2], c[i].spacing[0],
                c[i].spacing[1], c[i].spacing[2]);
    fprintf(f, "%-5s %-5s %8s %10s %10s %10s %12s %12s\n", "case", "class", "dice", "hd95_mm", "assd_mm", "hd_mm",
            "pred_vox", "label_vox");
    int maxc = 0;
    for (int i = 0; i < n; i++) {
        if (c[i].num_classes > maxc) maxc = c[i].num_classes;
        for (int k = 1; k < c[i].num_classes; k++) {
            const mn_seg_metrics *m = &c[i].m[k];
            fprintf(f, "%-5d %-5d %8.4f %10.3f %10.3f %10.3f %12lld %12lld\n", i, k, m->dice, m->hd95, m->assd, m->hd,
                    (long long)m->pred_voxels, (long long)m->label_voxels);
        }
    }
    if (n < 2) return;
    fprintf(f, "mean over %d cases (distances: finite cases only; 'inf' counts cases with one side empty):\n", n);
    for (int k = 1; k < maxc; k++) {
        double sd = 0, sh = 0, sa = 0;
        int nd = 0, nf = 0, ninf = 0;
        for (int i = 0; i < n; i++) {
            if (k >= c[i].num_classes) continue;
            const mn_seg_metrics *m = &c[i].m[k];
            sd += m->dice, nd++;
            if (isfinite(m->hd95))
                sh += m->hd95, sa += m->assd, nf++;
            else
                ninf++;
        }
        fprintf(f, "class %-3d dice %.4f  hd95 %.3f mm  assd %.3f mm  (%d cases, %d inf)\n", k, nd ? sd / nd : NAN,
                nf ? sh / nf : NAN, nf ? sa / nf : NAN, nd, ninf);
    }
}

/* A growing text buffer. */
typedef struct text {
    char *s;
    size_t len, cap;
    int oom;
} text;

__attribute__((format(printf, 2, 3))) static void tprintf(text *t, const char *fmt, ...)
{
    if (t->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            t->oom = 1;
            return;
        }
        if (t->s && t->len + (size_t)k < t->cap) {
            t->len += (size_t)k;
            return;
        }
        size_t cap = (t->cap ? t->cap * 2 : 4096) + (size_t)k;
        char *ns = realloc(t->s, cap);
        if (!ns) {
            t->oom = 1;
            return;
        }
        t->s = ns, t->cap = cap;
    }
}

static const char *fmt_dist(double v, char *buf, size_t n, const char *inf)
{
    if (isinf(v)) return inf;
    snprintf(buf, n, "%.17g", v);
    return buf;
}

/* A JSON string literal of s (quotes, backslashes and control characters escaped). */
static void tjson_str(text *t, const char *s)
{
    tprintf(t, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            tprintf(t, "\\%c", ch);
        else if (ch < 0x20)
            tprintf(t, "\\u%04x", ch);
        else
            tprintf(t, "%c", ch);
    }
    tprintf(t, "\"");
}

static mn_err publish(const char *path, text *t)
{
    if (t->oom) {
        free(t->s);
        MN_FAIL(MN_ERR_MEM, "out of memory formatting '%s'", path);
    }
    mn_err e = mn_write_file_atomic(path, t->s ? t->s : "", t->len);
    free(t->s);
    MN_CHECK(!e, e, "called from writing '%s'", path);
    return MN_OK;
}

mn_err mn_eval_write_csv(const char *path, const mn_eval_case *c, int n)
{
    text t = {0};
    tprintf(&t, "pred,label,class,dice,hd95_mm,assd_mm,hd_mm,pred_voxels,label_voxels,overlap_voxels,pred_surface,"
                "label_surface\n");
    for (int i = 0; i < n; i++)
        for (int k = 1; k < c[i].num_classes; k++) {
            const mn_seg_metrics *m = &c[i].m[k];
            char b1[40], b2[40], b3[40];
            tprintf(&t, "%s,%s,%d,%.17g,%s,%s,%s,%lld,%lld,%lld,%lld,%lld\n", c[i].pred, c[i].label, k, m->dice,
                    fmt_dist(m->hd95, b1, sizeof b1, "inf"), fmt_dist(m->assd, b2, sizeof b2, "inf"),
                    fmt_dist(m->hd, b3, sizeof b3, "inf"), (long long)m->pred_voxels, (long long)m->label_voxels,
                    (long long)m->overlap_voxels, (long long)m->pred_surface, (long long)m->label_surface);
        }
    MN_CALL(publish(path, &t));
    return MN_OK;
}

mn_err mn_eval_write_json(const char *path, const mn_eval_case *c, int n)
{
    text t = {0};
    tprintf(&t, "{\"cases\": [");
    for (int i = 0; i < n; i++) {
        tprintf(&t, "%s\n  {\"pred\": ", i ? "," : "");
        tjson_str(&t, c[i].pred);
        tprintf(&t, ", \"label\": ");
        tjson_str(&t, c[i].label);
        tprintf(&t, ", \"dim\": [%lld, %lld, %lld], \"spacing_mm\": [%.17g, %.17g, %.17g], \"classes\": [",
                (long long)c[i].dim[0], (long long)c[i].dim[1], (long long)c[i].dim[2], c[i].spacing[0],
                c[i].spacing[1], c[i].spacing[2]);
        for (int k = 1; k < c[i].num_classes; k++) {
            const mn_seg_metrics *m = &c[i].m[k];
            char b1[40], b2[40], b3[40];
            tprintf(&t, "%s\n    {\"class\": %d, \"dice\": %.17g, \"hd95_mm\": %s, \"assd_mm\": %s, \"hd_mm\": %s, "
                        "\"pred_voxels\": %lld, \"label_voxels\": %lld, \"overlap_voxels\": %lld, "
                        "\"pred_surface\": %lld, \"label_surface\": %lld}",
                    k > 1 ? "," : "", k, m->dice, fmt_dist(m->hd95, b1, sizeof b1, "null"),
                    fmt_dist(m->assd, b2, sizeof b2, "null"), fmt_dist(m->hd, b3, sizeof b3, "null"),
                    (long long)m->pred_voxels, (long long)m->label_voxels, (long long)m->overlap_voxels,
                    (long long)m->pred_surface, (long long)m->label_surface);
        }
        tprintf(&t, "]}");
    }
    tprintf(&t, "\n]}\n");
    MN_CALL(publish(path, &t));
    return MN_OK;
}
