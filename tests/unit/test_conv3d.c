/* test_conv3d.c: the GEMM convolution and transposed convolution against their direct loop-nest twins, by finite
 * differences, for accumulation, adjointness and shape errors.
 *
 * (a) fast vs _ref on awkward shapes (odd sizes, stride 2, padding, dilation 2 and 4, 1x1x1 with stride 1 and 2,
 *     the tap-box path of the dilated stages (with stride, with outputs that see no tap at all), batch 1-5
 *     including a partial GEMM group, channels 1..9, asymmetric kernels, with/without bias): y, dx, dw,
 *     db to a relative error of 1e-4 with an absolute floor of 1% of the largest reference value;
 * (b) finite differences of L = sum r*y (gradcheck.h: r fixed random, L summed in double, central differences)
 *     against the fast backward pass on 16 entries each of dx, dw, db;
 * (c) a second backward call doubles every gradient (accumulation);
 * (d) bad shapes and hyper-parameters return MN_ERR_SHAPE / MN_ERR_ARG with a message naming the layer;
 * (e) all of the above for convt3d, plus <conv(x), z> == <x, convT(z)> with shared weights.
 * Runs with 2 threads so that the OpenMP vol2col/col2vol paths (race freedom of col2vol) are exercised.
 */
#include <blis.h>
#include <omp.h>
#include <string.h>

#include "mednet/conv3d.h"
#include "mednet/mem.h"
#include "mednet/threads.h"
#include "gradcheck.h"

#define TOL_REF 1e-4
#define TOL_FD 5e-3
#define FD_EPS 3e-2f
#define FD_SAMPLES 16

static double g_worst_ref, g_worst_acc, g_worst_adj;

/* Change the BLIS and OpenMP thread counts after mn_threads_init (which may run only once per process). */
static void set_threads(int n)
{
    bli_thread_set_num_threads(n);
    omp_set_num_threads(n);
}

static float *falloc(size_t n)
{
    void *p = NULL;
    if (mn_calloc(sizeof(float) * (n ? n : 1), "test buffer", &p) != MN_OK) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static double maxabs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

/* Relative error of a against the reference s * b with a floor of 1% of max|s * b|. */
static double cmp(const float *a, double s, const float *b, size_t n)
{
    double floor_ = 0.01 * s * maxabs(b, n);
    return mn_test_max_relerr_s(a, s, b, n, floor_ < 1e-6 ? 1e-6 : floor_);
}

/* A generic layer so that conv and convT share the test driver. */
typedef struct layer {
    int transposed;
    mn_conv3d c;
    mn_convt3d t;
    const mn_shape *fd_in; /* input shape, x, y, r and workspace of fd_loss */
    const float *fd_x, *fd_r;
    float *fd_y, *fd_ws;
    size_t fd_ny;
} layer;

static float **lw(layer *L) { return L->transposed ? &L->t.w : &L->c.w; }
static float **lb(layer *L) { return L->transposed ? &L->t.b : &L->c.b; }
static float **ldw(layer *L) { return L->transposed ? &L->t.dw : &L->c.dw; }
static float **ldb(layer *L) { return L->transposed ? &L->t.db : &L->c.db; }
static int lcout(const layer *L) { return L->transposed ? L->t.cout : L->c.cout; }
static size_t lnw(const layer *L)
{
    const int *k = L->transposed ? L->t.k : L->c.k;
    return (size_t)(L->transposed ? L->t.cin * L->t.cout : L->c.cin * L->c.cout) * k[0] * k[1] * k[2];
}
static mn_err l_out(layer *L, const mn_shape *in, mn_shape *out)
{
    return L->transposed ? mn_convt3d_out_shape(&L->t, in, out) : mn_conv3d_out_shape(&L->c, in, out);
}
static size_t l_ws(layer *L, const mn_shape *in)
{
    return L->transposed ? mn_convt3d_workspace_floats(&L->t, in) : mn_conv3d_workspace_floats(&L->c, in);
}
static mn_err l_fwd(layer *L, const mn_shape *in, const float *x, float *y, float *ws, int ref)
{
    if (L->transposed)
        return ref ? mn_convt3d_forward_ref(&L->t, in, x, y) : mn_convt3d_forward(&L->t, in, x, y, ws);
    return ref ? mn_conv3d_forward_ref(&L->c, in, x, y) : mn_conv3d_forward(&L->c, in, x, y, ws);
}
static mn_err l_bwd(layer *L, const mn_shape *in, const float *x, const float *dy, float *dx, float *ws, int ref)
{
    if (L->transposed)
        return ref ? mn_convt3d_backward_ref(&L->t, in, x, dy, dx) : mn_convt3d_backward(&L->t, in, x, dy, dx, ws);
    return ref ? mn_conv3d_backward_ref(&L->c, in, x, dy, dx) : mn_conv3d_backward(&L->c, in, x, dy, dx, ws);
}

/* L = sum r*y of the fast forward pass at the current x, w, b (the layer's fd fields): the finite differences. */
static double fd_loss(void *p)
{
    layer *L = p;
    return l_fwd(L, L->fd_in, L->fd_x, L->fd_y, L->fd_ws, 0) == MN_OK ? mn_gc_dot(L->fd_r, L->fd_y, L->fd_ny) : NAN;
}

/* One full check of a layer on input shape `in`: (a), (b), (c). */
static void check_layer(const char *name, layer *L, mn_shape in, int bias, uint64_t seed)
{
    mn_test_rng rng = {seed};
    mn_shape out;
    if (l_out(L, &in, &out) != MN_OK) {
        TEST_EXPECT(0, "%s: out_shape failed", name);
        return;
    }
    const size_t nx = mn_shape_numel(&in), ny = mn_shape_numel(&out), nw = lnw(L);
    const int K = lcout(L);
    float *x = falloc(nx), *w = falloc(nw), *b = falloc(K), *r = falloc(ny);
    float *y = falloc(ny), *yr = falloc(ny), *ws = falloc(l_ws(L, &in));
    float *dx = falloc(nx), *dxr = falloc(nx), *dw = falloc(nw), *dwr = falloc(nw), *db = falloc(K),
          *dbr = falloc(K);
    mn_test_fill(&rng, x, nx, 1.0f);
    mn_test_fill(&rng, w, nw, 0.5f);
    mn_test_fill(&rng, b, K, 1.0f);
    mn_test_fill(&rng, r, ny, 1.0f);
    for (size_t i = 0; i < ny; i++) y[i] = yr[i] = NAN; /* forward must overwrite */
    *lw(L) = w;
    *lb(L) = bias ? b : NULL;

    /* (a) forward and backward against the loop nests. */
    TEST_EXPECT(l_fwd(L, &in, x, y, ws, 0) == MN_OK, "%s: forward failed", name);
    TEST_EXPECT(l_fwd(L, &in, x, yr, NULL, 1) == MN_OK, "%s: forward_ref failed", name);
    double ey = cmp(y, 1, yr, ny);
    *ldw(L) = dw;
    *ldb(L) = bias ? db : NULL;
    TEST_EXPECT(l_bwd(L, &in, x, r, dx, ws, 0) == MN_OK, "%s: backward failed", name);
    *ldw(L) = dwr;
    *ldb(L) = bias ? dbr : NULL;
    TEST_EXPECT(l_bwd(L, &in, x, r, dxr, NULL, 1) == MN_OK, "%s: backward_ref failed", name);
    double edx = cmp(dx, 1, dxr, nx), edw = cmp(dw, 1, dwr, nw), edb = bias ? cmp(db, 1, dbr, K) : 0.0;
    double ea = fmax(fmax(ey, edx), fmax(edw, edb));
    TEST_EXPECT(ea <= TOL_REF, "%s: fast vs ref: y %.2e dx %.2e dw %.2e db %.2e (tol %.0e)", name, ey, edx, edw, edb,
                TOL_REF);
    if (ea > g_worst_ref) g_worst_ref = ea;

    /* (b) finite differences of L = sum r*y on a sample of x, w, b entries.  One thread: a hundred small forward
     * calls, each with several thread barriers, take seconds on a loaded 2-core machine with two. */
    set_threads(1);
    L->fd_in = &in, L->fd_x = x, L->fd_r = r, L->fd_y = y, L->fd_ws = ws, L->fd_ny = ny;
    mn_gc_run(&(mn_gc_case){.name = name, .ctx = L, .loss = fd_loss,
                            .t = {{"x", x, dx, nx}, {"w", w, dw, nw}, {"b", bias ? b : NULL, db, (size_t)K}},
                            .eps = FD_EPS, .tol = TOL_FD, .floor_abs = 0.1, .samples = FD_SAMPLES, .seed = seed});
    set_threads(2);

    /* (c) a second backward call adds the same gradients again. */
    float *dx1 = falloc(nx), *dw1 = falloc(nw), *db1 = falloc(K);
    memcpy(dx1, dx, sizeof(float) * nx);
    memcpy(dw1, dw, sizeof(float) * nw);
    memcpy(db1, db, sizeof(float) * K);
    *ldw(L) = dw;
    *ldb(L) = bias ? db : NULL;
    TEST_EXPECT(l_bwd(L, &in, x, r, dx, ws, 0) == MN_OK, "%s: second backward failed", name);
    double eacc = fmax(fmax(cmp(dx, 2, dx1, nx), cmp(dw, 2, dw1, nw)), bias ? cmp(db, 2, db1, K) : 0.0);
    TEST_EXPECT(eacc <= TOL_REF, "%s: backward twice != 2 x backward: %.2e", name, eacc);
    if (eacc > g_worst_acc) g_worst_acc = eacc;

    /* Gradients not wanted: dx NULL and dw/db NULL leave everything alone and succeed. */
    *ldw(L) = NULL;
    *ldb(L) = NULL;
    TEST_EXPECT(l_bwd(L, &in, NULL, r, NULL, ws, 0) == MN_OK, "%s: backward with nothing wanted failed", name);

    if (!L->transposed && strstr(name, "(dense"))
        TEST_EXPECT(strcmp(mn_conv3d_algo(&L->c, &in), "dense") == 0, "%s: expected the dense path, got %s", name,
                    mn_conv3d_algo(&L->c, &in));
    if (!L->transposed && strstr(name, "(taps"))
        TEST_EXPECT(strcmp(mn_conv3d_algo(&L->c, &in), "taps") == 0, "%s: expected the tap path, got %s", name,
                    mn_conv3d_algo(&L->c, &in));
    printf("  %-46s %-6s vs ref: y %.1e dx %.1e dw %.1e db %.1e  acc %.1e\n", "", L->transposed ? "convT" :
           mn_conv3d_algo(&L->c, &in), ey, edx, edw, edb, eacc);
    float *bufs[] = {x, w, b, r, y, yr, ws, dx, dxr, dw, dwr, db, dbr, dx1, dw1, db1};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mn_free(&bufs[i]);
    *lw(L) = *lb(L) = NULL;
}

static layer mk_conv(int cin, int cout, int k0, int k1, int k2, int s0, int s1, int s2, int p0, int p1, int p2,
                     int d0, int d1, int d2)
{
    layer L = {0};
    L.c = (mn_conv3d){.cin = cin, .cout = cout, .k = {k0, k1, k2}, .s = {s0, s1, s2}, .p = {p0, p1, p2},
                      .dil = {d0, d1, d2}};
    return L;
}

static layer mk_convt(int cin, int cout, int k0, int k1, int k2, int s0, int s1, int s2, int p0, int p1, int p2,
                      int d0, int d1, int d2, int o0, int o1, int o2)
{
    layer L = {.transposed = 1};
    L.t = (mn_convt3d){.cin = cin, .cout = cout, .k = {k0, k1, k2}, .s = {s0, s1, s2}, .p = {p0, p1, p2},
                       .dil = {d0, d1, d2}, .op = {o0, o1, o2}};
    return L;
}

/* (e) adjointness: <conv(x), z> == <x, convT(z)> when both share the weight tensor (cout, cin, k...). */
static void check_adjoint(const char *name, mn_conv3d c, mn_shape in, uint64_t seed)
{
    mn_test_rng rng = {seed};
    mn_shape out, back;
    if (mn_conv3d_out_shape(&c, &in, &out) != MN_OK) {
        TEST_EXPECT(0, "%s: conv out_shape failed", name);
        return;
    }
    mn_convt3d t = {.cin = c.cout, .cout = c.cin};
    const int ext[3] = {in.d, in.h, in.w}, oext[3] = {out.d, out.h, out.w};
    for (int i = 0; i < 3; i++) {
        t.k[i] = c.k[i];
        t.s[i] = c.s[i];
        t.p[i] = c.p[i];
        t.dil[i] = c.dil[i];
        t.op[i] = ext[i] - ((oext[i] - 1) * c.s[i] - 2 * c.p[i] + c.dil[i] * (c.k[i] - 1) + 1);
    }
    if (mn_convt3d_out_shape(&t, &out, &back) != MN_OK || !mn_shape_eq(&back, &in)) {
        TEST_EXPECT(0, "%s: convT of the conv output does not give the conv input shape", name);
        return;
    }
    const size_t nx = mn_shape_numel(&in), ny = mn_shape_numel(&out);
    const size_t nw = (size_t)c.cin * c.cout * c.k[0] * c.k[1] * c.k[2];
    size_t nws = mn_conv3d_workspace_floats(&c, &in), nwt = mn_convt3d_workspace_floats(&t, &out);
    float *x = falloc(nx), *z = falloc(ny), *w = falloc(nw), *y = falloc(ny), *u = falloc(nx),
          *ws = falloc(nws > nwt ? nws : nwt);
    mn_test_fill(&rng, x, nx, 1.0f);
    mn_test_fill(&rng, z, ny, 1.0f);
    mn_test_fill(&rng, w, nw, 0.5f);
    c.w = t.w = w;
    c.b = t.b = NULL;
    TEST_EXPECT(mn_conv3d_forward(&c, &in, x, y, ws) == MN_OK, "%s: conv forward failed", name);
    TEST_EXPECT(mn_convt3d_forward(&t, &out, z, u, ws) == MN_OK, "%s: convT forward failed", name);
    double a = mn_gc_dot(z, y, ny), bb = mn_gc_dot(x, u, nx);
    double e = mn_test_relerr(a, bb, 1.0);
    TEST_EXPECT(e <= 1e-4, "%s: <conv x, z> = %.6f but <x, convT z> = %.6f", name, a, bb);
    if (e > g_worst_adj) g_worst_adj = e;
    printf("  %-44s <conv x,z> %.5f <x,convT z> %.5f  rel %.1e\n", name, a, bb, e);
    float *bufs[] = {x, z, w, y, u, ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mn_free(&bufs[i]);
}

/* (d) bad input: codes and messages. */
static void check_errors(void)
{
    mn_error_set_quiet(1);
    float dummy[64] = {0}, ws[64];
    mn_conv3d c = {.cin = 4, .cout = 6, .k = {3, 3, 3}, .s = {2, 2, 2}, .p = {1, 1, 1}, .dil = {1, 1, 1}, .w = dummy};
    mn_shape in = {2, 3, 8, 8, 8}, out;
    mn_err e = mn_conv3d_forward(&c, &in, dummy, dummy, ws);
    TEST_EXPECT(e == MN_ERR_SHAPE, "conv with 3 channels into a 4-channel layer: got %s", mn_err_name(e));
    TEST_EXPECT(strstr(mn_error_last(), "conv3d 4->6 k3 s2") && strstr(mn_error_last(), "has 3 channels, expected 4"),
                "message does not name the layer and the mismatch: '%s'", mn_error_last());
    e = mn_conv3d_backward(&c, &in, dummy, dummy, dummy, ws);
    TEST_EXPECT(e == MN_ERR_SHAPE, "conv backward with wrong channels: got %s", mn_err_name(e));
    e = mn_conv3d_forward_ref(&c, &in, dummy, dummy);
    TEST_EXPECT(e == MN_ERR_SHAPE, "conv forward_ref with wrong channels: got %s", mn_err_name(e));
    in = (mn_shape){1, 4, 8, 8, 1};
    c.p[2] = 0;
    e = mn_conv3d_out_shape(&c, &in, &out);
    TEST_EXPECT(e == MN_ERR_SHAPE, "width 1 with a 3-wide unpadded kernel: got %s", mn_err_name(e));
    TEST_EXPECT(strstr(mn_error_last(), "conv3d 4->6") && strstr(mn_error_last(), "empty output"),
                "message for an empty output: '%s'", mn_error_last());
    in = (mn_shape){0, 4, 8, 8, 8};
    e = mn_conv3d_out_shape(&c, &in, &out);
    TEST_EXPECT(e == MN_ERR_SHAPE, "batch 0: got %s", mn_err_name(e));
    in = (mn_shape){1, 4, 8, 8, 8};
    c.k[1] = 0;
    e = mn_conv3d_out_shape(&c, &in, &out);
    TEST_EXPECT(e == MN_ERR_ARG, "kernel 0: got %s", mn_err_name(e));
    c.k[1] = 3;
    c.s[0] = 0;
    e = mn_conv3d_out_shape(&c, &in, &out);
    TEST_EXPECT(e == MN_ERR_ARG, "stride 0: got %s", mn_err_name(e));
    c.s[0] = 2;
    e = mn_conv3d_forward(&c, &in, dummy, dummy, NULL);
    TEST_EXPECT(e == MN_ERR_ARG, "NULL workspace: got %s", mn_err_name(e));

    mn_conv3d big = {.cin = 1, .cout = 1, .k = {1, 1, 1}, .s = {1, 1, 1}, .dil = {1, 1, 1}, .w = dummy};
    in = (mn_shape){2, 1, 1024, 1024, 1024};
    e = mn_conv3d_out_shape(&big, &in, &out);
    TEST_EXPECT(e == MN_ERR_SHAPE && strstr(mn_error_last(), "too large"),
                "2 x 1024^3 voxels must be refused (32-bit GEMM sizes): got %s '%s'", mn_err_name(e), mn_error_last());

    mn_convt3d t = {.cin = 8, .cout = 2, .k = {2, 2, 2}, .s = {2, 2, 2}, .dil = {1, 1, 1}, .w = dummy};
    in = (mn_shape){1, 5, 4, 4, 4};
    e = mn_convt3d_forward(&t, &in, dummy, dummy, ws);
    TEST_EXPECT(e == MN_ERR_SHAPE, "convT with 5 channels into an 8-channel layer: got %s", mn_err_name(e));
    TEST_EXPECT(strstr(mn_error_last(), "convt3d 8->2 k2 s2") && strstr(mn_error_last(), "has 5 channels, expected 8"),
                "convT message: '%s'", mn_error_last());
    e = mn_convt3d_backward_ref(&t, &in, dummy, dummy, dummy);
    TEST_EXPECT(e == MN_ERR_SHAPE, "convT backward_ref wrong channels: got %s", mn_err_name(e));
    in.c = 8;
    t.op[1] = 2;
    e = mn_convt3d_out_shape(&t, &in, &out);
    TEST_EXPECT(e == MN_ERR_ARG, "convT output padding 2 with stride 2: got %s", mn_err_name(e));
    t.op[1] = 0;
    t.p[0] = 3; /* (4-1)*2 - 6 + 1 + 1 = 2: fine;  p 4 -> 0: empty */
    e = mn_convt3d_out_shape(&t, &in, &out);
    TEST_EXPECT(e == MN_OK && out.d == 2, "convT p3: got %s, d %d", mn_err_name(e), out.d);
    t.p[0] = 4;
    e = mn_convt3d_out_shape(&t, &in, &out);
    TEST_EXPECT(e == MN_ERR_SHAPE, "convT with empty output: got %s", mn_err_name(e));
    mn_error_set_quiet(0);
    printf("  shape and argument errors: codes and messages checked\n");
}

int main(void)
{
    if (mn_threads_init(2) != MN_OK) return 2;
    printf("test_conv3d: BLIS kernels %s, 2 threads\n", mn_blis_arch());
    struct {
        const char *name;
        layer L;
        mn_shape in;
        int bias;
    } cases[] = {
        {"conv 3->5 k3 p1 7x6x5 n2 bias", mk_conv(3, 5, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1), {2, 3, 7, 6, 5}, 1},
        {"conv 5->7 k3 s2 p1 9x8x7 n3", mk_conv(5, 7, 3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1), {3, 5, 9, 8, 7}, 0},
        {"conv 4->6 k3 p2 dil2 11x10x9 n2 bias", mk_conv(4, 6, 3, 3, 3, 1, 1, 1, 2, 2, 2, 2, 2, 2), {2, 4, 11, 10, 9},
         1},
        {"conv 3->5 k3 p4 dil4 9x10x11 n2 bias", mk_conv(3, 5, 3, 3, 3, 1, 1, 1, 4, 4, 4, 4, 4, 4), {2, 3, 9, 10, 11},
         1},
        {"conv 7->3 k1 6x5x7 n2 bias (direct)", mk_conv(7, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1), {2, 7, 6, 5, 7}, 1},
        {"conv 5->4 k1 s2 7x8x9 n3 (gather)", mk_conv(5, 4, 1, 1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 1), {3, 5, 7, 8, 9}, 0},
        {"conv 3->5 k3x1x2 s2x1x2 p1x0x1 dil1x2x1 n2", mk_conv(3, 5, 3, 1, 2, 2, 1, 2, 1, 0, 1, 1, 2, 1),
         {2, 3, 9, 7, 8}, 1},
        {"conv 1->8 k7 s2 p3 16^3 n1 bias (stem)", mk_conv(1, 8, 7, 7, 7, 2, 2, 2, 3, 3, 3, 1, 1, 1),
         {1, 1, 16, 16, 16}, 1},
        {"conv 7->9 k3 p1 12^3 n2 bias", mk_conv(7, 9, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1), {2, 7, 12, 12, 12}, 1},
        {"conv 8->16 k3 s2 p1 8^3 n3 bias", mk_conv(8, 16, 3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1), {3, 8, 8, 8, 8}, 1},
        {"conv 3->4 k3 p1 15x14x15 n5 (groups 3+2)", mk_conv(3, 4, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
         {5, 3, 15, 14, 15}, 1},
        {"conv 3->2 k2x3x1 s1x2x3 p0x2x0 5x6x7 n1", mk_conv(3, 2, 2, 3, 1, 1, 2, 3, 0, 2, 0, 1, 1, 1), {1, 3, 5, 6, 7},
         0},
        {"conv 3->4 k3 p1 dil2 13x12x11 n2 bias (dense)", mk_conv(3, 4, 3, 3, 3, 1, 1, 1, 1, 1, 1, 2, 2, 2),
         {2, 3, 13, 12, 11}, 1},
        /* Dense path in several z-slabs (2M-float slab budget): 2+2+1 planes, and 4+1 planes with stride 2 and a
         * packed batch of two. */
        {"conv 16->2 k3 p1 5x48x48 n1 bias (dense, slabs)", mk_conv(16, 2, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
         {1, 16, 5, 48, 48}, 1},
        {"conv 8->3 k3 s2 p1 9x64x64 n2 (dense, slabs)", mk_conv(8, 3, 3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1),
         {2, 8, 9, 64, 64}, 0},
        {"conv 3->4 k3 p3 5x6x5 n2 bias (taps, empty rim)", mk_conv(3, 4, 3, 3, 3, 1, 1, 1, 3, 3, 3, 1, 1, 1),
         {2, 3, 5, 6, 5}, 1},
        {"conv 4->5 k3 s2 p3 dil3 9x8x10 n2 (taps, s2)", mk_conv(4, 5, 3, 3, 3, 2, 2, 2, 3, 3, 3, 3, 3, 3),
         {2, 4, 9, 8, 10}, 1},
        {"conv 3->4 k3 p4 dil4 14x14x15 n5 (taps, 3+2)", mk_conv(3, 4, 3, 3, 3, 1, 1, 1, 4, 4, 4, 4, 4, 4),
         {5, 3, 14, 14, 15}, 1},
        {"conv 9->7 k3 p4 dil4 8^3 n2 (taps, layer4)", mk_conv(9, 7, 3, 3, 3, 1, 1, 1, 4, 4, 4, 4, 4, 4),
         {2, 9, 8, 8, 8}, 0},
        {"convT 6->4 k2 s2 4^3 n2 bias (seg head)", mk_convt(6, 4, 2, 2, 2, 2, 2, 2, 0, 0, 0, 1, 1, 1, 0, 0, 0),
         {2, 6, 4, 4, 4}, 1},
        {"convT 5->3 k3 s2 p1 op1 5x4x3 n3", mk_convt(5, 3, 3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1),
         {3, 5, 5, 4, 3}, 0},
        {"convT 4->5 k3 p1 dil2 5^3 n2 bias", mk_convt(4, 5, 3, 3, 3, 1, 1, 1, 1, 1, 1, 2, 2, 2, 0, 0, 0),
         {2, 4, 5, 5, 5}, 1},
        {"convT 3->4 k2x3x1 s2x1x3 p0x1x0 op1x0x2 n2", mk_convt(3, 4, 2, 3, 1, 2, 1, 3, 0, 1, 0, 1, 1, 1, 1, 0, 2),
         {2, 3, 4, 5, 3}, 1},
        {"convT 3->2 k2 s2 15x14x15 n5 (groups 3+2)", mk_convt(3, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 1, 1, 1, 0, 0, 0),
         {5, 3, 15, 14, 15}, 1},
        {"convT 7->9 k1 s1 6^3 n2", mk_convt(7, 9, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0), {2, 7, 6, 6, 6}, 1},
    };
    const int ncases = (int)(sizeof cases / sizeof cases[0]);
    printf("(a-c) fast vs _ref, finite differences, accumulation:\n");
    for (int i = 0; i < ncases; i++) check_layer(cases[i].name, &cases[i].L, cases[i].in, cases[i].bias, 1234 + i);

    printf("(e) adjointness of conv and convT:\n");
    check_adjoint("k3 s2 p1 9x8x7", mk_conv(4, 3, 3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1).c, (mn_shape){2, 4, 9, 8, 7}, 7);
    check_adjoint("k2 s2 8^3 (seg head)", mk_conv(5, 6, 2, 2, 2, 2, 2, 2, 0, 0, 0, 1, 1, 1).c,
                  (mn_shape){2, 5, 8, 8, 8}, 8);
    check_adjoint("k3 p4 dil4 8^3 (conv on tap boxes)", mk_conv(6, 5, 3, 3, 3, 1, 1, 1, 4, 4, 4, 4, 4, 4).c,
                  (mn_shape){2, 6, 8, 8, 8}, 10);
    check_adjoint("k3 p2 dil2 7^3", mk_conv(3, 3, 3, 3, 3, 1, 1, 1, 2, 2, 2, 2, 2, 2).c, (mn_shape){1, 3, 7, 7, 7}, 9);

    printf("(d) errors:\n");
    check_errors();

    printf("worst: fast vs ref %.2e (tol %.0e), accumulation %.2e, adjoint %.2e\n", g_worst_ref, TOL_REF, g_worst_acc,
           g_worst_adj);
    return mn_test_finish("test_conv3d");
}
