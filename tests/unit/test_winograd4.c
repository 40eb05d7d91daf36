/* test_winograd4.c: the Winograd F(4x4x4, 3x3x3) path of mn_conv3d against the direct loop nests.
 *
 * (a) forward, backward-data and backward-weights forced onto F(4,3) (l->algo), compared with
 *     mn_conv3d_forward_ref / mn_conv3d_backward_ref on awkward shapes: odd extents, extents smaller than one tile,
 *     dilation 1/2/3/4 and mixed per dimension, padding 0, 1, d and unequal per dimension, batch 1 to 3, channels
 *     not multiples of 16, with and without bias.  y is overwritten (prefilled with NaN), dx and dw accumulate
 *     (prefilled with random values); the largest error below 5e-5 of the largest reference value (F(4,3) rounds
 *     worse than F(2,3): about 1e-5 of the largest output, where a wrong coefficient gives errors of order 1);
 * (b) the same layers with a small block budget, so that the tiles and the output channels run in several blocks
 *     (forward: several channel blocks per tile block; backward-weights: several tile blocks summed in order),
 *     give the same results to the same tolerance;
 * (c) the same layer on 1 and on 2 threads gives bitwise equal y, dx and dw (the plan does not depend on the
 *     thread count and every sum runs in a fixed order);
 * (d) mn_conv3d_pass_algo reports "winograd4"; a layer it cannot run (stride 2) keeps the GEMM path and still
 *     matches; MEDNET_CONV_ALGO=winograd4 makes mn_conv3d_choose_algo take it on every pass of an eligible layer
 *     and the workspace covers it.
 */
#include <omp.h>
#include <string.h>

#include "mednet/conv3d.h"
#include "mednet/threads.h"
#include "nn/winograd4.h"
#include "test_util.h"

#define TOL 5e-5

static double g_worst;

/* Largest error over the largest reference value (the usual measure of Winograd's rounding); NaN counts. */
static double cmp(const float *a, const float *b, size_t n)
{
    double big = 0, e = 0;
    for (size_t i = 0; i < n; i++) {
        big = fmax(big, fabs(b[i]));
        const double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d;
    }
    return e / fmax(big, 1e-30);
}

static mn_conv3d mk(int cin, int cout, const int s[3], const int p[3], const int dil[3])
{
    mn_conv3d l;
    memset(&l, 0, sizeof l);
    l.cin = cin;
    l.cout = cout;
    for (int i = 0; i < 3; i++) {
        l.k[i] = 3;
        l.s[i] = s[i];
        l.p[i] = p[i];
        l.dil[i] = dil[i];
    }
    for (int i = 0; i < MN_CONV_NPASS; i++) l.algo[i] = MN_CONV_ALGO_WINOGRAD4;
    return l;
}

typedef struct run {
    float *y, *dx, *dw;
} run;

/* All three passes of l on fixed random operands (seed); results in r (caller frees). ref: the loop nests. */
static int run_layer(mn_conv3d l, mn_shape in, int bias, uint64_t seed, int ref, run *r)
{
    mn_test_rng rng = {seed};
    mn_shape out;
    if (mn_conv3d_out_shape(&l, &in, &out) != MN_OK) return 0;
    const size_t nx = mn_shape_numel(&in), ny = mn_shape_numel(&out), nw = (size_t)l.cout * l.cin * 27;
    float *x = mn_test_alloc(nx), *w = mn_test_alloc(nw), *b = mn_test_alloc((size_t)l.cout), *dy = mn_test_alloc(ny);
    float *ws = mn_test_alloc(mn_conv3d_workspace_floats(&l, &in) + 1);
    r->y = mn_test_alloc(ny);
    r->dx = mn_test_alloc(nx);
    r->dw = mn_test_alloc(nw);
    mn_test_fill(&rng, x, nx, 1.0f);
    mn_test_fill(&rng, w, nw, 0.5f);
    mn_test_fill(&rng, b, (size_t)l.cout, 1.0f);
    mn_test_fill(&rng, dy, ny, 1.0f);
    mn_test_fill(&rng, r->dx, nx, 1.0f);
    mn_test_fill(&rng, r->dw, nw, 1.0f);
    for (size_t i = 0; i < ny; i++) r->y[i] = NAN; /* forward must overwrite */
    l.w = w;
    l.b = bias ? b : NULL;
    int ok = (ref ? mn_conv3d_forward_ref(&l, &in, x, r->y) : mn_conv3d_forward(&l, &in, x, r->y, ws)) == MN_OK;
    l.dw = r->dw;
    ok = ok && (ref ? mn_conv3d_backward_ref(&l, &in, x, dy, r->dx)
                    : mn_conv3d_backward(&l, &in, x, dy, r->dx, ws)) == MN_OK;
    free(x);
    free(w);
    free(b);
    free(dy);
    free(ws);
    return ok;
}

static void run_free(run *r)
{
    free(r->y);
    free(r->dx);
    free(r->dw);
}

static void check(const char *name, mn_conv3d l, mn_shape in, int bias, const char *expect, uint64_t seed)
{
    for (int p = 0; p < MN_CONV_NPASS; p++)
        TEST_EXPECT(!strcmp(mn_conv3d_pass_algo(&l, &in, p), expect), "%s: pass %d runs '%s', expected '%s'", name,
                    p, mn_conv3d_pass_algo(&l, &in, p), expect);
    mn_shape out;
    TEST_EXPECT(mn_conv3d_out_shape(&l, &in, &out) == MN_OK, "%s: out_shape failed", name);
    const size_t nx = mn_shape_numel(&in), ny = mn_shape_numel(&out), nw = (size_t)l.cout * l.cin * 27;
    run a, r;
    const int ok = run_layer(l, in, bias, seed, 0, &a) && run_layer(l, in, bias, seed, 1, &r);
    TEST_EXPECT(ok, "%s: a call failed", name);
    if (ok) {
        const double ey = cmp(a.y, r.y, ny), ex = cmp(a.dx, r.dx, nx), ew = cmp(a.dw, r.dw, nw);
        const double e = fmax(ey, fmax(ex, ew));
        printf("  %-50s y %.2e dx %.2e dw %.2e\n", name, ey, ex, ew);
        TEST_EXPECT(e < TOL, "%s: worst rel err %.3g (y %.3g dx %.3g dw %.3g)", name, e, ey, ex, ew);
        if (e > g_worst || e != e) g_worst = e;
    }
    run_free(&a);
    run_free(&r);
}

int main(void)
{
    mn_threads_init(2);
    const int s1[3] = {1, 1, 1}, s2[3] = {2, 2, 2};
    static const struct {
        const char *name;
        int cin, cout, p[3], dil[3];
        mn_shape in;
        int bias;
    } cases[] = {
        {"5->7 p1 dil1 9x10x11 n2", 5, 7, {1, 1, 1}, {1, 1, 1}, {2, 5, 9, 10, 11}, 1},
        {"6->9 p2 dil2 14^3 n1", 6, 9, {2, 2, 2}, {2, 2, 2}, {1, 6, 14, 14, 14}, 1},
        {"3->17 p4 dil4 14x13x12 n2", 3, 17, {4, 4, 4}, {4, 4, 4}, {2, 3, 14, 13, 12}, 0},
        {"4->6 p(0,1,3) dil(1,2,3) 10x11x12 n1", 4, 6, {0, 1, 3}, {1, 2, 3}, {1, 4, 10, 11, 12}, 1},
        {"7->5 p1 dil1 3x4x5 n3 (smaller than a tile)", 7, 5, {1, 1, 1}, {1, 1, 1}, {3, 7, 3, 4, 5}, 1},
        {"5->3 p0 dil1 8x7x6 n1", 5, 3, {0, 0, 0}, {1, 1, 1}, {1, 5, 8, 7, 6}, 0},
        {"2->33 p3 dil3 13^3 n1", 2, 33, {3, 3, 3}, {3, 3, 3}, {1, 2, 13, 13, 13}, 1},
    };
    const int nc = (int)(sizeof cases / sizeof cases[0]);
    printf("(a) all passes F(4,3) vs loop nests:\n");
    for (int i = 0; i < nc; i++)
        check(cases[i].name, mk(cases[i].cin, cases[i].cout, s1, cases[i].p, cases[i].dil), cases[i].in,
              cases[i].bias, "winograd4", 4000 + (uint64_t)i);

    printf("(b) several blocks of tiles and of output channels:\n");
    {
        /* 20 input, 40 output channels, 54 tiles: a budget of 16 tiles x 16 channels. */
        const int p[3] = {1, 1, 1};
        mn_shape in = {2, 20, 10, 11, 9};
        mn_wino4_set_budget((size_t)216 * (20 * 16 + 16 * 16 + 16 * 20 + 3 * 32));
        check("20->40 p1 dil1 10x11x9 n2, 16 tiles x 16 channels", mk(20, 40, s1, p, s1), in, 1, "winograd4", 4100);
        const int d2[3] = {2, 2, 2}, p2[3] = {2, 2, 2};
        mn_shape in2 = {1, 20, 14, 14, 14};
        check("20->40 p2 dil2 14^3 n1, 16 tiles x 16 channels", mk(20, 40, s1, p2, d2), in2, 0, "winograd4", 4101);
        mn_wino4_set_budget(0);
    }

    printf("(c) thread count:\n");
    {
        const int p[3] = {2, 2, 2}, d[3] = {2, 2, 2};
        mn_shape in = {2, 24, 14, 13, 12};
        const mn_conv3d l = mk(24, 40, s1, p, d);
        mn_shape out;
        mn_conv3d_out_shape(&l, &in, &out);
        run a, b;
        mn_threads_init(1);
        const int ok1 = run_layer(l, in, 1, 4200, 0, &a);
        mn_threads_init(2);
        const int ok2 = run_layer(l, in, 1, 4200, 0, &b);
        TEST_EXPECT(ok1 && ok2, "thread-count runs failed");
        const size_t ny = mn_shape_numel(&out), nx = mn_shape_numel(&in), nw = (size_t)24 * 40 * 27;
        TEST_EXPECT(!memcmp(a.y, b.y, ny * sizeof(float)), "y differs between 1 and 2 threads");
        TEST_EXPECT(!memcmp(a.dx, b.dx, nx * sizeof(float)), "dx differs between 1 and 2 threads");
        TEST_EXPECT(!memcmp(a.dw, b.dw, nw * sizeof(float)), "dw differs between 1 and 2 threads");
        printf("  24->40 dil2 14x13x12 n2: y, dx, dw bitwise equal on 1 and 2 threads\n");
        run_free(&a);
        run_free(&b);
    }

    printf("(d) path names, layers it cannot run, MEDNET_CONV_ALGO=winograd4:\n");
    {
        const int p1[3] = {1, 1, 1};
        mn_shape in = {2, 5, 9, 8, 7};
        mn_conv3d l = mk(5, 7, s2, p1, s1);
        TEST_EXPECT(!mn_wino4_eligible(&l, &in), "stride-2 layer reported eligible");
        for (int p = 0; p < MN_CONV_NPASS; p++)
            TEST_EXPECT(strcmp(mn_conv3d_pass_algo(&l, &in, p), "winograd4") != 0,
                        "stride-2 layer asked for F(4,3): pass %d claims it", p);
        run a, r;
        const int ok = run_layer(l, in, 1, 4300, 0, &a) && run_layer(l, in, 1, 4300, 1, &r);
        mn_shape out;
        mn_conv3d_out_shape(&l, &in, &out);
        TEST_EXPECT(ok && cmp(a.y, r.y, mn_shape_numel(&out)) < TOL && cmp(a.dx, r.dx, mn_shape_numel(&in)) < TOL,
                    "stride-2 layer asked for F(4,3): GEMM path does not match");
        run_free(&a);
        run_free(&r);

        const int d2[3] = {2, 2, 2}, p2[3] = {2, 2, 2};
        mn_shape in2 = {1, 12, 14, 14, 14};
        mn_conv3d c = mk(12, 20, s1, p2, d2);
        for (int p = 0; p < MN_CONV_NPASS; p++) c.algo[p] = MN_CONV_ALGO_GEMM;
        const size_t nw = (size_t)12 * 20 * 27;
        float *w = mn_test_alloc(nw), *dw = mn_test_alloc(nw);
        c.w = w;
        c.dw = dw;
        setenv("MEDNET_CONV_ALGO", "winograd4", 1);
        const size_t wsn = mn_conv3d_workspace_floats(&c, &in2);
        TEST_EXPECT(wsn >= mn_wino4_workspace_floats(&c, &in2) && mn_wino4_workspace_floats(&c, &in2) > 0,
                    "MEDNET_CONV_ALGO=winograd4: workspace %zu does not cover F(4,3)'s %zu", wsn,
                    mn_wino4_workspace_floats(&c, &in2));
        float *ws = mn_test_alloc(wsn);
        TEST_EXPECT(mn_conv3d_choose_algo(&c, &in2, ws, wsn) == MN_OK, "choose (winograd4) failed");
        for (int p = 0; p < MN_CONV_NPASS; p++)
            TEST_EXPECT(c.algo[p] == MN_CONV_ALGO_WINOGRAD4 && !strcmp(mn_conv3d_pass_algo(&c, &in2, p), "winograd4"),
                        "MEDNET_CONV_ALGO=winograd4: pass %d runs '%s'", p, mn_conv3d_pass_algo(&c, &in2, p));
        unsetenv("MEDNET_CONV_ALGO");
        free(w);
        free(dw);
        free(ws);
    }
    printf("worst relative error vs loop nests: %.3g (tol %.0e)\n", g_worst, TOL);
    return mn_test_finish("test_winograd4");
}
