/* test_torch_parity: the layer core against PyTorch.
 *
 * Usage: test_torch_parity FIXTURES.h5 [THREADS]   (fixtures written by tests/ref/make_fixtures.py at test time,
 * see parity.cmake; THREADS defaults to 1, ctest also runs 2 to catch races in the OpenMP/BLIS paths)
 *
 * The fixture file holds one group per case; the group's `layer` attribute names the mednet routine to run and its
 * other attributes the hyper-parameters (k, s, p, dil, op, eps, momentum, training, ignore_index, ...).  Shapes are
 * the dataset shapes, so nothing about a case is written in this file.  For every case we run forward and backward
 * (the gradient of L = sum(r * y) for a stored random r, or of the loss itself for the losses) and compare each
 * output and gradient with PyTorch's.  Convolutions run both the fast (BLIS) path and the `_ref` loop nests, and
 * backward with only dx or only the parameter gradients wanted; batch norm in training mode also runs the split
 * (stats/apply) form used by synchronised batch norm.  Backward is called a second time without zeroing to check
 * that gradients accumulate (+=) as the headers promise; the losses are called again with another `scale`.
 * Dice has no PyTorch function: the script writes loss.h's formula with autograd.
 *
 * Tolerance: an element passes when |got - ref| <= 1e-5 + 1e-4 * |ref| (1e-4 relative with a 1e-5 absolute floor,
 * the numpy.allclose rule; a NaN matches only a NaN).  The references are computed by PyTorch in float64 from the
 * stored float32 inputs, so they carry no float32 rounding of their own; the script also runs each case in float32
 * and refuses cases where PyTorch itself uses more than half of this tolerance, so every case is one that float32
 * arithmetic can meet.  Integer outputs (pooling indices, resized labels) must match exactly.  Each case prints one
 * line per compared quantity with its worst absolute and relative error and the fraction of the tolerance used;
 * a closing table puts mednet's fraction next to PyTorch float32's.  The test exits non-zero on any mismatch, on a
 * missing or malformed fixture, or if a layer kind has no case in the file.
 *
 * No MPI: the layers never touch it; the fixture file is opened serially (H5P_DEFAULT), which the parallel HDF5
 * library allows.
 */
#include <hdf5.h>
#include <stdint.h>
#include <string.h>

#include "mednet/conv3d.h"
#include "mednet/error.h"
#include "mednet/h5check.h"
#include "mednet/layers.h"
#include "mednet/loss.h"
#include "mednet/mem.h"
#include "mednet/threads.h"
#include "test_util.h"

#define RTOL 1e-4
#define ATOL 1e-5
#define MAX_BUFS 64
#define MAX_CASES 512

/* One case: its group, name, and every buffer allocated for it (freed together at the end of the case). */
typedef struct fx {
    hid_t g;
    const char *name;
    void *bufs[MAX_BUFS];
    int nbufs;
    int mismatches;
    double worst; /* largest fraction of the tolerance used by any compared float output */
} fx;

/* An array read from the fixture file: data plus its shape (rank <= 5). */
typedef struct arr {
    void *v;
    size_t n;
    int rank;
    int dims[5];
} arr;

static mn_err fx_alloc(fx *f, size_t bytes, void **out)
{
    MN_CHECK(f->nbufs < MAX_BUFS, MN_ERR_INTERNAL, "case %s: more than %d buffers", f->name, MAX_BUFS);
    MN_CALL(mn_calloc(bytes ? bytes : 1, f->name, out));
    f->bufs[f->nbufs++] = *out;
    return MN_OK;
}

static void fx_release(fx *f)
{
    for (int i = 0; i < f->nbufs; i++) mn_free(&f->bufs[i]);
    f->nbufs = 0;
}

static int fx_has(const fx *f, const char *name) { return H5Lexists(f->g, name, H5P_DEFAULT) > 0; }

/* Read dataset `name` of the case as `memtype` (H5T_NATIVE_FLOAT/INT/DOUBLE, element size `esize`). */
static mn_err fx_read(fx *f, const char *name, hid_t memtype, size_t esize, arr *a)
{
    hid_t d, sp;
    hsize_t dims[8];
    MN_CHECK(fx_has(f, name), MN_ERR_FORMAT, "case %s: dataset '%s' missing from the fixture file", f->name, name);
    MN_H5(d = H5Dopen2(f->g, name, H5P_DEFAULT));
    MN_H5(sp = H5Dget_space(d));
    int rank = H5Sget_simple_extent_ndims(sp);
    MN_CHECK(rank >= 0 && rank <= 5, MN_ERR_FORMAT, "case %s: dataset '%s' has rank %d, expected 0..5", f->name, name,
             rank);
    MN_H5(H5Sget_simple_extent_dims(sp, dims, NULL));
    a->rank = rank;
    a->n = 1;
    for (int i = 0; i < rank; i++) {
        a->dims[i] = (int)dims[i];
        a->n *= (size_t)dims[i];
    }
    MN_CALL(fx_alloc(f, a->n * esize, &a->v));
    MN_H5(H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, a->v));
    MN_H5(H5Sclose(sp));
    MN_H5(H5Dclose(d));
    return MN_OK;
}

static mn_err fx_f32(fx *f, const char *name, arr *a) { return fx_read(f, name, H5T_NATIVE_FLOAT, sizeof(float), a); }
static mn_err fx_i32(fx *f, const char *name, arr *a) { return fx_read(f, name, H5T_NATIVE_INT32, sizeof(int32_t), a); }

/* Integer attribute with exactly `n` elements (scalar when n == 1). */
static mn_err fx_attr_ints(fx *f, const char *name, int *v, int n)
{
    hid_t at, sp;
    MN_CHECK(H5Aexists(f->g, name) > 0, MN_ERR_FORMAT, "case %s: attribute '%s' missing", f->name, name);
    MN_H5(at = H5Aopen(f->g, name, H5P_DEFAULT));
    MN_H5(sp = H5Aget_space(at));
    hssize_t np = H5Sget_simple_extent_npoints(sp);
    MN_CHECK(np == n, MN_ERR_FORMAT, "case %s: attribute '%s' has %lld values, expected %d", f->name, name,
             (long long)np, n);
    MN_H5(H5Aread(at, H5T_NATIVE_INT, v));
    MN_H5(H5Sclose(sp));
    MN_H5(H5Aclose(at));
    return MN_OK;
}

static mn_err fx_attr_double(fx *f, const char *name, double *v)
{
    hid_t at;
    MN_CHECK(H5Aexists(f->g, name) > 0, MN_ERR_FORMAT, "case %s: attribute '%s' missing", f->name, name);
    MN_H5(at = H5Aopen(f->g, name, H5P_DEFAULT));
    MN_H5(H5Aread(at, H5T_NATIVE_DOUBLE, v));
    MN_H5(H5Aclose(at));
    return MN_OK;
}

/* Fixed-length string attribute (h5py's np.string_) into buf, NUL-terminated. */
static mn_err attr_string(hid_t obj, const char *objname, const char *name, char *buf, size_t cap)
{
    hid_t at, ft, mt;
    MN_CHECK(H5Aexists(obj, name) > 0, MN_ERR_FORMAT, "%s: attribute '%s' missing", objname, name);
    MN_H5(at = H5Aopen(obj, name, H5P_DEFAULT));
    MN_H5(ft = H5Aget_type(at));
    MN_CHECK(H5Tget_class(ft) == H5T_STRING && !H5Tis_variable_str(ft), MN_ERR_FORMAT,
             "%s: attribute '%s' is not a fixed-length string", objname, name);
    size_t len = H5Tget_size(ft);
    MN_CHECK(len > 0 && len < cap, MN_ERR_FORMAT, "%s: attribute '%s' has length %zu, expected 1..%zu", objname, name,
             len, cap - 1);
    MN_H5(mt = H5Tcopy(H5T_C_S1));
    MN_H5(H5Tset_size(mt, len + 1));
    MN_H5(H5Tset_strpad(mt, H5T_STR_NULLTERM));
    memset(buf, 0, cap);
    MN_H5(H5Aread(at, mt, buf));
    MN_H5(H5Tclose(mt));
    MN_H5(H5Tclose(ft));
    MN_H5(H5Aclose(at));
    return MN_OK;
}

/* The NCDHW shape of a rank-5 array. */
static mn_err shape5(const fx *f, const char *what, const arr *a, mn_shape *s)
{
    MN_CHECK(a->rank == 5, MN_ERR_FORMAT, "case %s: '%s' has rank %d, expected 5 (NCDHW)", f->name, what, a->rank);
    *s = (mn_shape){a->dims[0], a->dims[1], a->dims[2], a->dims[3], a->dims[4]};
    return MN_OK;
}

/* Compare got with scale * ref elementwise; print one line; count a mismatch (and print the worst element). */
static void cmp_scaled(fx *f, const char *what, const float *got, const float *ref, size_t n, double scale)
{
    double max_abs = 0, max_rel = 0, worst_ratio = 0;
    size_t bad = 0, worst_i = 0;
    for (size_t i = 0; i < n; i++) {
        double r = scale * (double)ref[i], d = fabs((double)got[i] - r), rel, ratio;
        if (d != d) { /* a NaN matches only a NaN (max pooling lets NaN win, as PyTorch does) */
            d = rel = ratio = (r != r && got[i] != got[i]) ? 0.0 : INFINITY;
        } else {
            rel = mn_test_relerr(got[i], r, ATOL);
            ratio = d / (ATOL + RTOL * fabs(r));
        }
        if (d > max_abs) max_abs = d;
        if (rel > max_rel) max_rel = rel;
        if (ratio > worst_ratio) {
            worst_ratio = ratio;
            worst_i = i;
        }
        if (!(ratio <= 1.0)) bad++;
    }
    printf("  %-34s %-18s n=%-6zu max_abs=%.2e max_rel=%.2e tol_used=%.3f %s\n", f->name, what, n, max_abs, max_rel,
           worst_ratio, bad ? "MISMATCH" : "ok");
    if (scale == 1.0 && worst_ratio > f->worst) f->worst = worst_ratio; /* the summary compares single passes */
    if (bad) {
        f->mismatches++;
        TEST_EXPECT(0, "case %s: %s: %zu of %zu elements outside tolerance; worst at flat index %zu: got %.8g, "
                       "PyTorch %.8g", f->name, what, bad, n, worst_i, (double)got[worst_i],
                    scale * (double)ref[worst_i]);
    }
}

static void cmp(fx *f, const char *what, const float *got, const arr *ref)
{
    cmp_scaled(f, what, got, (const float *)ref->v, ref->n, 1.0);
}

/* Exact comparison of integer outputs. */
static void cmp_int(fx *f, const char *what, const int32_t *got, const arr *ref)
{
    const int32_t *r = (const int32_t *)ref->v;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < ref->n; i++) {
        if (got[i] != r[i] && bad++ == 0) first = i;
    }
    printf("  %-34s %-18s n=%-6zu exact %s\n", f->name, what, ref->n, bad ? "MISMATCH" : "ok");
    if (bad) {
        f->mismatches++;
        TEST_EXPECT(0, "case %s: %s: %zu of %zu differ; first at flat index %zu: got %d, PyTorch %d", f->name, what,
                    bad, ref->n, first, (int)got[first], (int)r[first]);
    }
}

/* A mednet call inside a case: a failure is a test failure of the case (its message was printed by the library). */
#define RUN(f, expr)                                                                                   \
    do {                                                                                               \
        mn_err e__ = (expr);                                                                           \
        if (e__ != MN_OK) {                                                                            \
            (f)->mismatches++;                                                                         \
            TEST_EXPECT(0, "case %s: %s returned %s", (f)->name, #expr, mn_err_name(e__));             \
            return MN_OK;                                                                              \
        }                                                                                              \
    } while (0)

static mn_err fbuf(fx *f, size_t n, float **out) { return fx_alloc(f, n * sizeof(float), (void **)out); }

/* ---- convolutions ------------------------------------------------------------------------------------------ */

static mn_err case_conv(fx *f, int transposed)
{
    arr x, w, b = {0}, y, r, dx, dw, db = {0};
    int k[3], s[3], p[3], dil[3], op[3] = {0, 0, 0}, bias;
    MN_CALL(fx_attr_ints(f, "k", k, 3));
    MN_CALL(fx_attr_ints(f, "s", s, 3));
    MN_CALL(fx_attr_ints(f, "p", p, 3));
    MN_CALL(fx_attr_ints(f, "dil", dil, 3));
    MN_CALL(fx_attr_ints(f, "bias", &bias, 1));
    if (transposed) MN_CALL(fx_attr_ints(f, "op", op, 3));
    MN_CALL(fx_f32(f, "x", &x));
    MN_CALL(fx_f32(f, "w", &w));
    MN_CALL(fx_f32(f, "y", &y));
    MN_CALL(fx_f32(f, "r", &r));
    MN_CALL(fx_f32(f, "dx", &dx));
    MN_CALL(fx_f32(f, "dw", &dw));
    if (bias) {
        MN_CALL(fx_f32(f, "b", &b));
        MN_CALL(fx_f32(f, "db", &db));
    }
    mn_shape in, out, yshape;
    MN_CALL(shape5(f, "x", &x, &in));
    MN_CALL(shape5(f, "y", &y, &yshape));
    MN_CHECK(w.rank == 5, MN_ERR_FORMAT, "case %s: w has rank %d, expected 5", f->name, w.rank);

    float *gy, *gdx, *gdw, *gdb = NULL, *ws = NULL;
    MN_CALL(fbuf(f, y.n, &gy));
    MN_CALL(fbuf(f, x.n, &gdx));
    MN_CALL(fbuf(f, w.n, &gdw));
    if (bias) MN_CALL(fbuf(f, db.n, &gdb));

    mn_conv3d c = {0};
    mn_convt3d t = {0};
    size_t wsn;
    if (!transposed) {
        c = (mn_conv3d){.cin = w.dims[1], .cout = w.dims[0], .w = w.v, .b = bias ? b.v : NULL, .dw = gdw, .db = gdb};
        for (int i = 0; i < 3; i++) {
            c.k[i] = k[i]; c.s[i] = s[i]; c.p[i] = p[i]; c.dil[i] = dil[i];
        }
        RUN(f, mn_conv3d_out_shape(&c, &in, &out));
        wsn = mn_conv3d_workspace_floats(&c, &in);
    } else {
        t = (mn_convt3d){.cin = w.dims[0], .cout = w.dims[1], .w = w.v, .b = bias ? b.v : NULL, .dw = gdw, .db = gdb};
        for (int i = 0; i < 3; i++) {
            t.k[i] = k[i]; t.s[i] = s[i]; t.p[i] = p[i]; t.dil[i] = dil[i]; t.op[i] = op[i];
        }
        RUN(f, mn_convt3d_out_shape(&t, &in, &out));
        wsn = mn_convt3d_workspace_floats(&t, &in);
    }
    char b1[64], b2[64];
    TEST_EXPECT(mn_shape_eq(&out, &yshape), "case %s: out_shape %s, PyTorch %s", f->name, mn_shape_str(&out, b1),
                mn_shape_str(&yshape, b2));
    if (!mn_shape_eq(&out, &yshape)) {
        f->mismatches++;
        return MN_OK;
    }
    MN_CALL(fbuf(f, wsn, &ws));

    /* path 0: fast (BLIS); path 1: the _ref loop nest. */
    for (int path = 0; path < 2; path++) {
        const char *tag = path ? "ref" : "fast";
        char what[32];
        memset(gy, 0xff, y.n * sizeof(float)); /* NaN: forward must overwrite every element */
        if (!transposed)
            RUN(f, path ? mn_conv3d_forward_ref(&c, &in, x.v, gy) : mn_conv3d_forward(&c, &in, x.v, gy, ws));
        else
            RUN(f, path ? mn_convt3d_forward_ref(&t, &in, x.v, gy) : mn_convt3d_forward(&t, &in, x.v, gy, ws));
        snprintf(what, sizeof what, "y/%s", tag);
        cmp(f, what, gy, &y);

        /* Backward twice without zeroing: the first call must give the gradient, the second double it. */
        mn_zero(x.n, gdx);
        mn_zero(w.n, gdw);
        if (bias) mn_zero(db.n, gdb);
        for (int rep = 1; rep <= 2; rep++) {
            if (!transposed)
                RUN(f, path ? mn_conv3d_backward_ref(&c, &in, x.v, r.v, gdx)
                            : mn_conv3d_backward(&c, &in, x.v, r.v, gdx, ws));
            else
                RUN(f, path ? mn_convt3d_backward_ref(&t, &in, x.v, r.v, gdx)
                            : mn_convt3d_backward(&t, &in, x.v, r.v, gdx, ws));
            snprintf(what, sizeof what, "dx/%s%s", tag, rep == 2 ? "/x2" : "");
            cmp_scaled(f, what, gdx, dx.v, dx.n, rep);
            snprintf(what, sizeof what, "dw/%s%s", tag, rep == 2 ? "/x2" : "");
            cmp_scaled(f, what, gdw, dw.v, dw.n, rep);
            if (bias) {
                snprintf(what, sizeof what, "db/%s%s", tag, rep == 2 ? "/x2" : "");
                cmp_scaled(f, what, gdb, db.v, db.n, rep);
            }
        }
    }

    /* Partial gradients on the fast path: dx only (frozen parameters), then parameters only (first layer). */
    mn_zero(x.n, gdx);
    if (!transposed) {
        c.dw = NULL;
        c.db = NULL;
        RUN(f, mn_conv3d_backward(&c, &in, x.v, r.v, gdx, ws));
    } else {
        t.dw = NULL;
        t.db = NULL;
        RUN(f, mn_convt3d_backward(&t, &in, x.v, r.v, gdx, ws));
    }
    cmp(f, "dx/frozen-w", gdx, &dx);
    mn_zero(w.n, gdw);
    if (bias) mn_zero(db.n, gdb);
    if (!transposed) {
        c.dw = gdw;
        c.db = gdb;
        RUN(f, mn_conv3d_backward(&c, &in, x.v, r.v, NULL, ws));
    } else {
        t.dw = gdw;
        t.db = gdb;
        RUN(f, mn_convt3d_backward(&t, &in, x.v, r.v, NULL, ws));
    }
    cmp(f, "dw/no-dx", gdw, &dw);
    if (bias) cmp(f, "db/no-dx", gdb, &db);
    return MN_OK;
}

/* ---- batch norm -------------------------------------------------------------------------------------------- */

static mn_err case_bn(fx *f)
{
    arr x, gamma, beta, rm0, rv0, y, r, dx, dgamma, dbeta, rm1, rv1;
    int training;
    double eps, momentum;
    MN_CALL(fx_attr_ints(f, "training", &training, 1));
    MN_CALL(fx_attr_double(f, "eps", &eps));
    MN_CALL(fx_attr_double(f, "momentum", &momentum));
    MN_CALL(fx_f32(f, "x", &x));
    MN_CALL(fx_f32(f, "gamma", &gamma));
    MN_CALL(fx_f32(f, "beta", &beta));
    MN_CALL(fx_f32(f, "running_mean", &rm0));
    MN_CALL(fx_f32(f, "running_var", &rv0));
    MN_CALL(fx_f32(f, "y", &y));
    MN_CALL(fx_f32(f, "r", &r));
    MN_CALL(fx_f32(f, "dx", &dx));
    MN_CALL(fx_f32(f, "dgamma", &dgamma));
    MN_CALL(fx_f32(f, "dbeta", &dbeta));
    MN_CALL(fx_f32(f, "running_mean_out", &rm1));
    MN_CALL(fx_f32(f, "running_var_out", &rv1));
    mn_shape in;
    MN_CALL(shape5(f, "x", &x, &in));
    size_t c = (size_t)in.c;

    float *gy, *gdx, *gdg, *gdb, *rm, *rv, *save;
    double *sums;
    MN_CALL(fbuf(f, x.n, &gy));
    MN_CALL(fbuf(f, x.n, &gdx));
    MN_CALL(fbuf(f, c, &gdg));
    MN_CALL(fbuf(f, c, &gdb));
    MN_CALL(fbuf(f, c, &rm));
    MN_CALL(fbuf(f, c, &rv));
    MN_CALL(fbuf(f, MN_BN3D_SAVE(c), &save));
    MN_CALL(fx_alloc(f, 2 * c * sizeof(double), (void **)&sums));
    mn_bn3d l = {.c = in.c, .eps = (float)eps, .momentum = (float)momentum, .gamma = gamma.v, .beta = beta.v,
                 .dgamma = gdg, .dbeta = gdb, .running_mean = rm, .running_var = rv};

    /* The fused form. */
    memcpy(rm, rm0.v, c * sizeof(float));
    memcpy(rv, rv0.v, c * sizeof(float));
    memset(gy, 0xff, x.n * sizeof(float));
    RUN(f, mn_bn3d_forward(&l, &in, x.v, gy, save, training));
    cmp(f, "y", gy, &y);
    cmp(f, "running_mean", rm, &rm1);
    cmp(f, "running_var", rv, &rv1);
    for (int rep = 1; rep <= 2; rep++) {
        char what[32];
        RUN(f, mn_bn3d_backward(&l, &in, x.v, r.v, gdx, save, training));
        snprintf(what, sizeof what, "dx%s", rep == 2 ? "/x2" : "");
        cmp_scaled(f, what, gdx, dx.v, dx.n, rep);
        snprintf(what, sizeof what, "dgamma%s", rep == 2 ? "/x2" : "");
        cmp_scaled(f, what, gdg, dgamma.v, dgamma.n, rep);
        snprintf(what, sizeof what, "dbeta%s", rep == 2 ? "/x2" : "");
        cmp_scaled(f, what, gdb, dbeta.v, dbeta.n, rep);
    }
    if (!training) return MN_OK;

    /* The split form with this rank's count and no reduction must give the same (sync batch norm building blocks). */
    double count = (double)in.n * (double)mn_shape_voxels(&in);
    memcpy(rm, rm0.v, c * sizeof(float));
    memcpy(rv, rv0.v, c * sizeof(float));
    mn_zero(x.n, gdx);
    mn_zero(c, gdg);
    mn_zero(c, gdb);
    memset(gy, 0xff, x.n * sizeof(float));
    RUN(f, mn_bn3d_stats(&l, &in, x.v, sums));
    RUN(f, mn_bn3d_apply(&l, &in, x.v, gy, save, sums, count));
    cmp(f, "y/split", gy, &y);
    cmp(f, "running_mean/split", rm, &rm1);
    cmp(f, "running_var/split", rv, &rv1);
    RUN(f, mn_bn3d_bwd_stats(&l, &in, x.v, r.v, save, sums));
    RUN(f, mn_bn3d_bwd_apply(&l, &in, x.v, r.v, gdx, save, sums, count));
    cmp(f, "dx/split", gdx, &dx);
    cmp(f, "dgamma/split", gdg, &dgamma);
    cmp(f, "dbeta/split", gdb, &dbeta);
    return MN_OK;
}

/* ---- pooling ----------------------------------------------------------------------------------------------- */

static mn_err case_pool(fx *f, int is_max)
{
    arr x, y, r, dx, idx = {0};
    int k[3], s[3], p[3];
    MN_CALL(fx_attr_ints(f, "k", k, 3));
    MN_CALL(fx_attr_ints(f, "s", s, 3));
    MN_CALL(fx_attr_ints(f, "p", p, 3));
    MN_CALL(fx_f32(f, "x", &x));
    MN_CALL(fx_f32(f, "y", &y));
    MN_CALL(fx_f32(f, "r", &r));
    MN_CALL(fx_f32(f, "dx", &dx));
    if (is_max) MN_CALL(fx_i32(f, "indices", &idx));
    mn_shape in, out, yshape;
    MN_CALL(shape5(f, "x", &x, &in));
    MN_CALL(shape5(f, "y", &y, &yshape));
    mn_maxpool3d mp;
    mn_avgpool3d ap;
    for (int i = 0; i < 3; i++) {
        mp.k[i] = ap.k[i] = k[i];
        mp.s[i] = ap.s[i] = s[i];
        mp.p[i] = ap.p[i] = p[i];
    }
    RUN(f, is_max ? mn_maxpool3d_out_shape(&mp, &in, &out) : mn_avgpool3d_out_shape(&ap, &in, &out));
    char b1[64], b2[64];
    if (!mn_shape_eq(&out, &yshape)) {
        f->mismatches++;
        TEST_EXPECT(0, "case %s: out_shape %s, PyTorch %s", f->name, mn_shape_str(&out, b1), mn_shape_str(&yshape, b2));
        return MN_OK;
    }
    float *gy, *gdx;
    int32_t *am = NULL;
    MN_CALL(fbuf(f, y.n, &gy));
    MN_CALL(fbuf(f, x.n, &gdx));
    if (is_max) MN_CALL(fx_alloc(f, y.n * sizeof(int32_t), (void **)&am));
    memset(gy, 0xff, y.n * sizeof(float));
    RUN(f, is_max ? mn_maxpool3d_forward(&mp, &in, x.v, gy, am) : mn_avgpool3d_forward(&ap, &in, x.v, gy));
    cmp(f, "y", gy, &y);
    if (is_max) cmp_int(f, "argmax", am, &idx);
    for (int rep = 1; rep <= 2; rep++) {
        RUN(f, is_max ? mn_maxpool3d_backward(&mp, &in, r.v, am, gdx) : mn_avgpool3d_backward(&ap, &in, r.v, gdx));
        cmp_scaled(f, rep == 2 ? "dx/x2" : "dx", gdx, dx.v, dx.n, rep);
    }
    return MN_OK;
}

static mn_err case_gap(fx *f)
{
    arr x, y, r, dx;
    MN_CALL(fx_f32(f, "x", &x));
    MN_CALL(fx_f32(f, "y", &y));
    MN_CALL(fx_f32(f, "r", &r));
    MN_CALL(fx_f32(f, "dx", &dx));
    mn_shape in;
    MN_CALL(shape5(f, "x", &x, &in));
    MN_CHECK(y.rank == 2 && y.dims[0] == in.n && y.dims[1] == in.c, MN_ERR_FORMAT, "case %s: y is not (n, c)",
             f->name);
    float *gy, *gdx;
    MN_CALL(fbuf(f, y.n, &gy));
    MN_CALL(fbuf(f, x.n, &gdx));
    memset(gy, 0xff, y.n * sizeof(float));
    RUN(f, mn_gap3d_forward(&in, x.v, gy));
    cmp(f, "y", gy, &y);
    for (int rep = 1; rep <= 2; rep++) {
        RUN(f, mn_gap3d_backward(&in, r.v, gdx));
        cmp_scaled(f, rep == 2 ? "dx/x2" : "dx", gdx, dx.v, dx.n, rep);
    }
    return MN_OK;
}

/* ---- ReLU, linear ------------------------------------------------------------------------------------------ */

static mn_err case_relu(fx *f)
{
    arr x, y, r, dx;
    MN_CALL(fx_f32(f, "x", &x));
    MN_CALL(fx_f32(f, "y", &y));
    MN_CALL(fx_f32(f, "r", &r));
    MN_CALL(fx_f32(f, "dx", &dx));
    float *gy, *gdx;
    MN_CALL(fbuf(f, y.n, &gy));
    MN_CALL(fbuf(f, x.n, &gdx));
    memset(gy, 0xff, y.n * sizeof(float));
    mn_relu_forward(x.n, x.v, gy);
    cmp(f, "y", gy, &y);
    for (int rep = 1; rep <= 2; rep++) {
        mn_relu_backward(x.n, gy, r.v, gdx);
        cmp_scaled(f, rep == 2 ? "dx/x2" : "dx", gdx, dx.v, dx.n, rep);
    }
    /* In place (y aliases x), as the header allows. */
    memcpy(gy, x.v, x.n * sizeof(float));
    mn_relu_forward(x.n, gy, gy);
    cmp(f, "y/in-place", gy, &y);
    return MN_OK;
}

static mn_err case_linear(fx *f)
{
    arr x, w, b = {0}, y, r, dx, dw, db = {0};
    int bias;
    MN_CALL(fx_attr_ints(f, "bias", &bias, 1));
    MN_CALL(fx_f32(f, "x", &x));
    MN_CALL(fx_f32(f, "w", &w));
    MN_CALL(fx_f32(f, "y", &y));
    MN_CALL(fx_f32(f, "r", &r));
    MN_CALL(fx_f32(f, "dx", &dx));
    MN_CALL(fx_f32(f, "dw", &dw));
    if (bias) {
        MN_CALL(fx_f32(f, "b", &b));
        MN_CALL(fx_f32(f, "db", &db));
    }
    MN_CHECK(x.rank == 2 && w.rank == 2 && w.dims[1] == x.dims[1], MN_ERR_FORMAT, "case %s: x/w shapes", f->name);
    float *gy, *gdx, *gdw, *gdb = NULL;
    MN_CALL(fbuf(f, y.n, &gy));
    MN_CALL(fbuf(f, x.n, &gdx));
    MN_CALL(fbuf(f, w.n, &gdw));
    if (bias) MN_CALL(fbuf(f, db.n, &gdb));
    mn_linear l = {.in = w.dims[1], .out = w.dims[0], .w = w.v, .b = bias ? b.v : NULL, .dw = gdw, .db = gdb};
    memset(gy, 0xff, y.n * sizeof(float));
    RUN(f, mn_linear_forward(&l, x.dims[0], x.v, gy));
    cmp(f, "y", gy, &y);
    for (int rep = 1; rep <= 2; rep++) {
        RUN(f, mn_linear_backward(&l, x.dims[0], x.v, r.v, gdx));
        cmp_scaled(f, rep == 2 ? "dx/x2" : "dx", gdx, dx.v, dx.n, rep);
        cmp_scaled(f, rep == 2 ? "dw/x2" : "dw", gdw, dw.v, dw.n, rep);
        if (bias) cmp_scaled(f, rep == 2 ? "db/x2" : "db", gdb, db.v, db.n, rep);
    }
    return MN_OK;
}

/* ---- resizing ---------------------------------------------------------------------------------------------- */

static mn_err case_upsample(fx *f)
{
    arr x, y, r, dx;
    MN_CALL(fx_f32(f, "x", &x));
    MN_CALL(fx_f32(f, "y", &y));
    MN_CALL(fx_f32(f, "r", &r));
    MN_CALL(fx_f32(f, "dx", &dx));
    mn_shape in, out;
    MN_CALL(shape5(f, "x", &x, &in));
    MN_CALL(shape5(f, "y", &y, &out));
    float *gy, *gdx;
    MN_CALL(fbuf(f, y.n, &gy));
    MN_CALL(fbuf(f, x.n, &gdx));
    memset(gy, 0xff, y.n * sizeof(float));
    RUN(f, mn_upsample3d_forward(&in, x.v, &out, gy));
    cmp(f, "y", gy, &y);
    for (int rep = 1; rep <= 2; rep++) {
        RUN(f, mn_upsample3d_backward(&in, &out, r.v, gdx));
        cmp_scaled(f, rep == 2 ? "dx/x2" : "dx", gdx, dx.v, dx.n, rep);
    }
    return MN_OK;
}

static mn_err case_labels(fx *f)
{
    arr x, y;
    MN_CALL(fx_i32(f, "x", &x));
    MN_CALL(fx_i32(f, "y", &y));
    MN_CHECK(x.rank == 4 && y.rank == 4, MN_ERR_FORMAT, "case %s: labels must be (n, d, h, w)", f->name);
    mn_shape in = {x.dims[0], 1, x.dims[1], x.dims[2], x.dims[3]};
    mn_shape out = {y.dims[0], 1, y.dims[1], y.dims[2], y.dims[3]};
    int32_t *gy;
    MN_CALL(fx_alloc(f, y.n * sizeof(int32_t), (void **)&gy));
    memset(gy, 0xff, y.n * sizeof(int32_t));
    RUN(f, mn_labels_resize_nearest(&in, x.v, &out, gy));
    cmp_int(f, "labels", gy, &y);
    return MN_OK;
}

/* ---- cross-entropy ----------------------------------------------------------------------------------------- */

static mn_err case_ce(fx *f)
{
    arr logits, labels, weight = {0}, loss, dlogits;
    int ignore, weighted, nvalid_ref;
    MN_CALL(fx_attr_ints(f, "ignore_index", &ignore, 1));
    MN_CALL(fx_attr_ints(f, "weighted", &weighted, 1));
    MN_CALL(fx_attr_ints(f, "nvalid", &nvalid_ref, 1));
    MN_CALL(fx_f32(f, "logits", &logits));
    MN_CALL(fx_i32(f, "labels", &labels));
    if (weighted) MN_CALL(fx_f32(f, "weight", &weight));
    MN_CALL(fx_read(f, "loss", H5T_NATIVE_DOUBLE, sizeof(double), &loss));
    MN_CALL(fx_f32(f, "dlogits", &dlogits));
    mn_shape in;
    MN_CALL(shape5(f, "logits", &logits, &in));
    MN_CHECK(labels.n == logits.n / (size_t)in.c && loss.n == 1, MN_ERR_FORMAT, "case %s: label/loss shapes",
             f->name);
    float *g;
    MN_CALL(fbuf(f, logits.n, &g));
    double val = 0;
    long nvalid = -1;
    /* scale 1 into zeros, then scale 0.5 on top: 1.5 times the gradient. */
    RUN(f, mn_ce_loss(&in, logits.v, labels.v, ignore, weighted ? weight.v : NULL, 1.0f, &val, g, &nvalid));
    double lref = *(const double *)loss.v, d = fabs(val - lref);
    int ok = d <= ATOL + RTOL * fabs(lref);
    printf("  %-34s %-18s n=%-6d got=%.8f PyTorch=%.8f abs_err=%.2e %s\n", f->name, "loss", 1, val, lref, d,
           ok ? "ok" : "MISMATCH");
    if (!ok) f->mismatches++;
    TEST_EXPECT(ok, "case %s: loss %.8f, PyTorch %.8f", f->name, val, lref);
    if (nvalid != nvalid_ref) f->mismatches++;
    TEST_EXPECT(nvalid == nvalid_ref, "case %s: nvalid %ld, expected %d", f->name, nvalid, nvalid_ref);
    cmp(f, "dlogits", g, &dlogits);
    double val2 = 0;
    RUN(f, mn_ce_loss(&in, logits.v, labels.v, ignore, weighted ? weight.v : NULL, 0.5f, &val2, g, NULL));
    TEST_EXPECT(val2 == val, "case %s: loss changed between calls: %.10g vs %.10g", f->name, val, val2);
    cmp_scaled(f, "dlogits/x1.5", g, dlogits.v, dlogits.n, 1.5);
    /* The mean over voxels makes dlogits O(1/voxels), where the 1e-5 absolute floor would hide relative errors of
     * a few per cent: compare once more with scale = voxels, so the gradient is O(1) and the 1e-4 relative bound
     * bites. */
    float big = (float)labels.n;
    mn_zero(logits.n, g);
    RUN(f, mn_ce_loss(&in, logits.v, labels.v, ignore, weighted ? weight.v : NULL, big, &val2, g, NULL));
    cmp_scaled(f, "dlogits*voxels", g, dlogits.v, dlogits.n, big);
    /* Loss without a gradient buffer. */
    RUN(f, mn_ce_loss(&in, logits.v, labels.v, ignore, weighted ? weight.v : NULL, 1.0f, &val2, NULL, NULL));
    TEST_EXPECT(val2 == val, "case %s: loss without dlogits %.10g vs %.10g", f->name, val2, val);
    return MN_OK;
}

/* ---- soft and hard Dice (PyTorch has none: the script writes the formula of loss.h with autograd) ---- */

static mn_err case_dice(fx *f)
{
    arr logits, labels, loss, dlogits, hard;
    int ignore, first_class;
    double smooth;
    MN_CALL(fx_attr_ints(f, "ignore_index", &ignore, 1));
    MN_CALL(fx_attr_ints(f, "first_class", &first_class, 1));
    MN_CALL(fx_attr_double(f, "smooth", &smooth));
    MN_CALL(fx_f32(f, "logits", &logits));
    MN_CALL(fx_i32(f, "labels", &labels));
    MN_CALL(fx_read(f, "loss", H5T_NATIVE_DOUBLE, sizeof(double), &loss));
    MN_CALL(fx_f32(f, "dlogits", &dlogits));
    MN_CALL(fx_read(f, "dice_hard", H5T_NATIVE_DOUBLE, sizeof(double), &hard));
    mn_shape in;
    MN_CALL(shape5(f, "logits", &logits, &in));
    MN_CHECK(labels.n == logits.n / (size_t)in.c && loss.n == 1 && hard.n == (size_t)in.c, MN_ERR_FORMAT,
             "case %s: label/loss/dice_hard shapes", f->name);
    float *g;
    double *dh;
    MN_CALL(fbuf(f, logits.n, &g));
    MN_CALL(fx_alloc(f, hard.n * sizeof(double), (void **)&dh));
    double val = 0, val2 = 0;
    RUN(f, mn_dice_loss(&in, logits.v, labels.v, ignore, first_class, (float)smooth, 1.0f, &val, g));
    double lref = *(const double *)loss.v, d = fabs(val - lref);
    int ok = d <= ATOL + RTOL * fabs(lref);
    printf("  %-34s %-18s n=%-6d got=%.8f ref=%.8f abs_err=%.2e %s\n", f->name, "loss", 1, val, lref, d,
           ok ? "ok" : "MISMATCH");
    if (!ok) f->mismatches++;
    TEST_EXPECT(ok, "case %s: Dice loss %.8f, reference %.8f", f->name, val, lref);
    cmp(f, "dlogits", g, &dlogits);
    RUN(f, mn_dice_loss(&in, logits.v, labels.v, ignore, first_class, (float)smooth, 0.5f, &val2, g));
    cmp_scaled(f, "dlogits/x1.5", g, dlogits.v, dlogits.n, 1.5);
    /* As for cross-entropy: scale the O(1/voxels) gradient to O(1) so the relative bound, not the floor, decides. */
    float big = (float)labels.n;
    mn_zero(logits.n, g);
    RUN(f, mn_dice_loss(&in, logits.v, labels.v, ignore, first_class, (float)smooth, big, &val2, g));
    cmp_scaled(f, "dlogits*voxels", g, dlogits.v, dlogits.n, big);

    RUN(f, mn_dice_hard(&in, logits.v, labels.v, ignore, dh));
    const double *hr = (const double *)hard.v;
    int bad = 0;
    for (int c = 0; c < in.c; c++) {
        int same = (dh[c] != dh[c] && hr[c] != hr[c]) || fabs(dh[c] - hr[c]) <= 1e-12;
        if (!same) {
            bad++;
            TEST_EXPECT(0, "case %s: hard Dice of class %d: got %.10g, expected %.10g", f->name, c, dh[c], hr[c]);
        }
    }
    printf("  %-34s %-18s n=%-6d %s\n", f->name, "dice_hard", in.c, bad ? "MISMATCH" : "ok");
    if (bad) f->mismatches++;
    return MN_OK;
}

/* ---- driver ------------------------------------------------------------------------------------------------ */

/* Every layer kind the file must cover at least once. */
static const char *const kinds[] = {"conv3d", "convt3d", "bn3d",       "maxpool3d",      "avgpool3d",     "gap3d",
                                    "relu",   "linear",  "upsample3d", "labels_nearest", "cross_entropy", "dice"};
#define NKINDS ((int)(sizeof kinds / sizeof kinds[0]))

static mn_err run_case(fx *f, const char *layer)
{
    if (!strcmp(layer, "conv3d")) return case_conv(f, 0);
    if (!strcmp(layer, "convt3d")) return case_conv(f, 1);
    if (!strcmp(layer, "bn3d")) return case_bn(f);
    if (!strcmp(layer, "maxpool3d")) return case_pool(f, 1);
    if (!strcmp(layer, "avgpool3d")) return case_pool(f, 0);
    if (!strcmp(layer, "gap3d")) return case_gap(f);
    if (!strcmp(layer, "relu")) return case_relu(f);
    if (!strcmp(layer, "linear")) return case_linear(f);
    if (!strcmp(layer, "upsample3d")) return case_upsample(f);
    if (!strcmp(layer, "labels_nearest")) return case_labels(f);
    if (!strcmp(layer, "cross_entropy")) return case_ce(f);
    if (!strcmp(layer, "dice")) return case_dice(f);
    MN_FAIL(MN_ERR_FORMAT, "case %s: unknown layer '%s' in the fixture file", f->name, layer);
}

static mn_err run_file(const char *path)
{
    hid_t file;
    MN_H5(file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT));
    H5G_info_t info;
    MN_H5(H5Gget_info(file, &info));
    int ncases_attr = -1;
    {
        fx root = {.g = file, .name = path};
        MN_CALL(fx_attr_ints(&root, "ncases", &ncases_attr, 1));
    }
    MN_CHECK((hsize_t)ncases_attr == info.nlinks && info.nlinks > 0, MN_ERR_FORMAT,
             "%s: %llu groups, but the file says ncases = %d", path, (unsigned long long)info.nlinks, ncases_attr);
    int seen[NKINDS] = {0}, bad_cases = 0;
    static char summary[MAX_CASES][256];
    MN_CHECK(info.nlinks <= MAX_CASES, MN_ERR_FORMAT, "%s: %llu cases, this test handles at most %d", path,
             (unsigned long long)info.nlinks, MAX_CASES);
    for (hsize_t i = 0; i < info.nlinks; i++) {
        char name[128], layer[64];
        ssize_t len = H5Lget_name_by_idx(file, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT);
        MN_CHECK(len > 0 && (size_t)len < sizeof name, MN_ERR_FORMAT, "%s: bad group name at index %llu", path,
                 (unsigned long long)i);
        fx f = {.name = name};
        MN_H5(f.g = H5Gopen2(file, name, H5P_DEFAULT));
        MN_CALL(attr_string(f.g, name, "layer", layer, sizeof layer));
        double torch_used = -1;
        if (H5Aexists(f.g, "torch_f32_tol_used") > 0) MN_CALL(fx_attr_double(&f, "torch_f32_tol_used", &torch_used));
        printf("%s (%s)\n", name, layer);
        mn_err e = run_case(&f, layer);
        fx_release(&f);
        MN_H5(H5Gclose(f.g));
        if (e != MN_OK) {
            TEST_EXPECT(0, "case %s: could not be run (%s)", name, mn_err_name(e));
            bad_cases++;
        } else if (f.mismatches) {
            bad_cases++;
        }
        for (int k = 0; k < NKINDS; k++)
            if (!strcmp(layer, kinds[k])) seen[k]++;
        /* The summary line per case: how much of the tolerance mednet used, next to PyTorch's own float32 run. */
        if (torch_used >= 0)
            snprintf(summary[i], sizeof summary[0],
                     "  %-34s mednet %.3f   PyTorch float32 %.3f%s", name, f.worst, torch_used,
                     e != MN_OK || f.mismatches ? "   MISMATCH" : "");
        else
            snprintf(summary[i], sizeof summary[0], "  %-34s exact%s", name,
                     e != MN_OK || f.mismatches ? "   MISMATCH" : "");
    }
    printf("\nFraction of the tolerance used (worst output of each case; > 1 fails):\n");
    for (hsize_t i = 0; i < info.nlinks; i++) printf("%s\n", summary[i]);
    for (int k = 0; k < NKINDS; k++) TEST_EXPECT(seen[k] > 0, "no fixture case for layer '%s'", kinds[k]);
    printf("%llu cases, %d with mismatches (tolerance |got-ref| <= %g + %g*|ref|)\n", (unsigned long long)info.nlinks,
           bad_cases, ATOL, RTOL);
    MN_H5(H5Fclose(file));
    return MN_OK;
}

int main(int argc, char **argv)
{
    int nthreads = argc == 3 ? atoi(argv[2]) : 1;
    if ((argc != 2 && argc != 3) || nthreads < 1) {
        fprintf(stderr, "usage: %s FIXTURES.h5 [THREADS]  (fixtures written by tests/ref/make_fixtures.py)\n",
                argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep case lines and FAIL lines (stderr) in order */
    TEST_EXPECT(mn_threads_init(nthreads) == MN_OK, "mn_threads_init(%d)", nthreads);
    printf("BLIS kernels: %s (%s), %d thread(s)\n", mn_blis_arch(), mn_blis_arch_reason(), mn_threads_count());
    TEST_EXPECT(mn_h5_init() == MN_OK, "mn_h5_init");
    mn_err e = run_file(argv[1]);
    TEST_EXPECT(e == MN_OK, "reading fixtures from %s failed (%s)", argv[1], mn_err_name(e));
    return mn_test_finish("test_torch_parity");
}
