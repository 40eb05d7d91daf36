/* test_layers: finite-difference gradient checks and semantic checks for the non-convolution layers (batch norm in
 * training and eval mode, its split form for SyncBN, ReLU, max/avg/global pooling, linear, trilinear resizing,
 * nearest label resizing, element-wise helpers).
 *
 * Gradient checks (gradcheck.h): L = sum r*y with a fixed random r, summed in double; central differences on up to
 * 40 entries of every input and parameter, compared with the analytic gradient by a relative error with an absolute
 * floor; backward twice must double the gradients (it accumulates).  Shapes are awkward on purpose (odd extents,
 * batch 2-3, 3/5/7 channels, stride 2, padding); inputs avoid kinks (ReLU away from 0, max pooling on distinct values
 * spaced wider than the step), and the ReLU and max-pool cases also skip any index where a kink shows.
 */
#include "mednet/layers.h"
#include "gradcheck.h"

#include <string.h>

static mn_test_rng g_rng = {0x9E3779B97F4A7C15ULL};

static float *rand_f(size_t n, float scale)
{
    float *p = mn_test_alloc(n);
    mn_test_fill(&g_rng, p, n, scale);
    return p;
}

/* ---- ReLU ---- */

typedef struct relu_ctx {
    size_t n;
    float *x, *y, *dx, *r;
} relu_ctx;
static double relu_loss(void *v)
{
    relu_ctx *c = v;
    mn_relu_forward(c->n, c->x, c->y);
    return mn_gc_dot(c->r, c->y, c->n);
}
static mn_err relu_bwd(void *v)
{
    relu_ctx *c = v;
    mn_relu_backward(c->n, c->y, c->r, c->dx);
    return MN_OK;
}
static void test_relu(void)
{
    relu_ctx c = {.n = 2 * 3 * 3 * 5 * 7};
    c.x = rand_f(c.n, 1);
    for (size_t i = 0; i < c.n; i++) c.x[i] = (c.x[i] < 0 ? -1.0f : 1.0f) * (0.1f + 0.9f * fabsf(c.x[i]));
    c.y = mn_test_alloc(c.n);
    c.dx = mn_test_alloc(c.n);
    c.r = rand_f(c.n, 1);
    mn_gc_run(&(mn_gc_case){.name = "relu 2x3x3x5x7", .ctx = &c, .loss = relu_loss, .backward = relu_bwd,
                            .t = {{"x", c.x, c.dx, c.n}}, .eps = 1e-2, .tol = 1e-3, .floor_abs = 1e-3, .samples = 40,
                            .kink = 1e-2});
    /* In place (y aliases x) and NaN propagation as torch.relu. */
    float t[4] = {-1.0f, 2.0f, NAN, 0.0f};
    mn_relu_forward(4, t, t);
    TEST_EXPECT(t[0] == 0 && t[1] == 2 && isnan(t[2]) && t[3] == 0, "relu in place / NaN");
    free(c.x), free(c.y), free(c.dx), free(c.r);
}

/* ---- batch norm ---- */

typedef struct bn_ctx {
    mn_bn3d l;
    mn_shape in;
    int training;
    float *x, *y, *dx, *r, *save;
} bn_ctx;
static mn_err bn_fwd(void *v)
{
    bn_ctx *c = v;
    return mn_bn3d_forward(&c->l, &c->in, c->x, c->y, c->save, c->training);
}
static double bn_loss(void *v)
{
    bn_ctx *c = v;
    return bn_fwd(v) == MN_OK ? mn_gc_dot(c->r, c->y, mn_shape_numel(&c->in)) : NAN;
}
static mn_err bn_bwd(void *v)
{
    bn_ctx *c = v;
    return mn_bn3d_backward(&c->l, &c->in, c->x, c->r, c->dx, c->save, c->training);
}

static void bn_setup(bn_ctx *c, mn_shape in, int training)
{
    memset(c, 0, sizeof *c);
    c->in = in;
    c->training = training;
    int C = in.c;
    size_t n = mn_shape_numel(&in);
    c->l.c = C;
    c->l.eps = 1e-5f;
    c->l.momentum = 0.1f;
    c->l.gamma = rand_f(C, 1);
    c->l.beta = rand_f(C, 1);
    c->l.dgamma = mn_test_alloc(C);
    c->l.dbeta = mn_test_alloc(C);
    c->l.running_mean = rand_f(C, 0.5f);
    c->l.running_var = mn_test_alloc(C);
    for (int k = 0; k < C; k++) c->l.running_var[k] = 0.5f + 0.4f * mn_test_rng_uniform(&g_rng);
    c->x = rand_f(n, 2);
    size_t V = mn_shape_voxels(&in);
    for (int b = 0; b < in.n; b++) /* a different offset per channel */
        for (int k = 0; k < C; k++)
            for (size_t v = 0; v < V; v++) c->x[((size_t)b * C + k) * V + v] += 0.5f * k - 1.0f;
    c->y = mn_test_alloc(n);
    c->dx = mn_test_alloc(n);
    c->r = rand_f(n, 1);
    c->save = mn_test_alloc(MN_BN3D_SAVE(C));
}
static void bn_free(bn_ctx *c)
{
    free(c->l.gamma), free(c->l.beta), free(c->l.dgamma), free(c->l.dbeta), free(c->l.running_mean);
    free(c->l.running_var), free(c->x), free(c->y), free(c->dx), free(c->r), free(c->save);
}

/* The weights r of L = sum r*y have a mean of about 1 and follow x: with a zero-mean r independent of x, sum dy and
 * sum dy*xhat -- the terms a wrong count N (N-1 instead of N, a missing 1/N) scales -- are only O(sqrt(N)), and such a
 * bug changes dx by O(N^-1.5), below any finite-difference tolerance on the larger shapes.  Here both sums are O(N),
 * a wrong count changes dx by about 1/N of its size, and the small shapes (N = 6 and 8 values per channel) make that
 * 12-17%, against a tolerance of 1e-2 with an absolute floor of 2e-2 (|dx| is about 0.01-1 here).  The step 2e-2 is
 * large because batch norm is smooth and the rounding noise of L (~2e-6 on the larger shapes, r having mean 1) over
 * 2 eps is what limits the larger shapes. */
static void bn_gradcheck(mn_shape in, int training, const char *name)
{
    bn_ctx c;
    bn_setup(&c, in, training);
    size_t n = mn_shape_numel(&in);
    for (size_t i = 0; i < n; i++) c.r[i] = 1.0f + 0.25f * c.x[i] + 0.5f * c.r[i];
    mn_gc_run(&(mn_gc_case){.name = name, .ctx = &c, .loss = bn_loss, .backward = bn_bwd,
                            .t = {{"x", c.x, c.dx, n}, {"gamma", c.l.gamma, c.l.dgamma, in.c},
                                  {"beta", c.l.beta, c.l.dbeta, in.c}},
                            .eps = 2e-2, .tol = 1e-2, .floor_abs = 2e-2, .samples = 48});
    bn_free(&c);
}

/* Running statistics after one training forward, against values computed here in double. */
static void test_bn_running(void)
{
    bn_ctx c;
    mn_shape in = {3, 5, 3, 4, 5};
    bn_setup(&c, in, 1);
    int C = in.c;
    float rm0[5], rv0[5];
    memcpy(rm0, c.l.running_mean, sizeof rm0);
    memcpy(rv0, c.l.running_var, sizeof rv0);
    TEST_EXPECT(bn_fwd(&c) == MN_OK, "bn forward");
    size_t V = mn_shape_voxels(&in);
    double cnt = (double)in.n * V, worst = 0, yworst = 0;
    for (int k = 0; k < C; k++) {
        double s = 0, q = 0;
        for (int b = 0; b < in.n; b++)
            for (size_t v = 0; v < V; v++) s += c.x[((size_t)b * C + k) * V + v];
        double mean = s / cnt;
        for (int b = 0; b < in.n; b++)
            for (size_t v = 0; v < V; v++) {
                double d = c.x[((size_t)b * C + k) * V + v] - mean;
                q += d * d;
            }
        double var = q / cnt;
        double erm = 0.9 * rm0[k] + 0.1 * mean, erv = 0.9 * rv0[k] + 0.1 * var * cnt / (cnt - 1);
        double e = fmax(mn_test_relerr(c.l.running_mean[k], erm, 1e-3), mn_test_relerr(c.l.running_var[k], erv, 1e-3));
        worst = fmax(worst, e);
        double invstd = 1 / sqrt(var + 1e-5);
        for (int b = 0; b < in.n; b++)
            for (size_t v = 0; v < V; v++) {
                size_t i = ((size_t)b * C + k) * V + v;
                double ey = (c.x[i] - mean) * invstd * c.l.gamma[k] + c.l.beta[k];
                yworst = fmax(yworst, mn_test_relerr(c.y[i], ey, 1e-2));
            }
        worst = fmax(worst, mn_test_relerr(c.save[k], mean, 1e-3));
        worst = fmax(worst, mn_test_relerr(c.save[C + k], invstd, 1e-3));
    }
    printf("  bn running stats / save vs double: worst rel err %.2e; y: %.2e\n", worst, yworst);
    TEST_EXPECT(worst < 1e-5, "bn running stats: rel err %.3g", worst);
    TEST_EXPECT(yworst < 1e-5, "bn training output: rel err %.3g", yworst);

    /* Eval mode uses the running statistics and does not change them. */
    float rm1[5], rv1[5];
    memcpy(rm1, c.l.running_mean, sizeof rm1);
    memcpy(rv1, c.l.running_var, sizeof rv1);
    c.training = 0;
    TEST_EXPECT(bn_fwd(&c) == MN_OK, "bn eval forward");
    double eworst = 0;
    for (int k = 0; k < C; k++) {
        double invstd = 1 / sqrt((double)rv1[k] + 1e-5);
        for (size_t i = 0; i < V; i++) {
            size_t j = ((size_t)1 * C + k) * V + i;
            eworst = fmax(eworst, mn_test_relerr(c.y[j], (c.x[j] - rm1[k]) * invstd * c.l.gamma[k] + c.l.beta[k], 1e-2));
        }
    }
    TEST_EXPECT(memcmp(rm1, c.l.running_mean, sizeof rm1) == 0 && memcmp(rv1, c.l.running_var, sizeof rv1) == 0,
                "eval must not update running stats");
    TEST_EXPECT(eworst < 1e-5, "bn eval output: rel err %.3g", eworst);
    bn_free(&c);
}

/* The split form with the batch cut in two halves (two "ranks", sums added) equals the one-shot layer: this is
 * the contract synchronised batch norm relies on. */
static void test_bn_split(void)
{
    bn_ctx c;
    mn_shape in = {4, 3, 3, 5, 7};
    bn_setup(&c, in, 1);
    const int C = in.c;
    const size_t half = mn_shape_numel(&in) / 2;
    mn_shape hin = in;
    hin.n = 2;
    /* Two replicas with their own running stats and parameter grads, sharing gamma/beta. */
    mn_bn3d r[2] = {c.l, c.l};
    float rm[2][3], rv[2][3], dg[2][3] = {{0}}, db[2][3] = {{0}}, sv[2][MN_BN3D_SAVE(3)];
    for (int h = 0; h < 2; h++) {
        memcpy(rm[h], c.l.running_mean, sizeof rm[h]);
        memcpy(rv[h], c.l.running_var, sizeof rv[h]);
        r[h].running_mean = rm[h];
        r[h].running_var = rv[h];
        r[h].dgamma = dg[h];
        r[h].dbeta = db[h];
    }
    /* One shot. */
    memset(c.dx, 0, 2 * half * sizeof(float));
    memset(c.l.dgamma, 0, C * sizeof(float));
    memset(c.l.dbeta, 0, C * sizeof(float));
    TEST_EXPECT(bn_fwd(&c) == MN_OK && bn_bwd(&c) == MN_OK, "bn one-shot");
    /* Split: stats per half, add, apply per half; same for backward. */
    double s[2][6], tot[6];
    float *y2 = mn_test_alloc(2 * half), *dx2 = mn_test_alloc(2 * half);
    for (int h = 0; h < 2; h++) TEST_EXPECT(mn_bn3d_stats(&r[h], &hin, c.x + h * half, s[h]) == MN_OK, "stats");
    for (int k = 0; k < 2 * C; k++) tot[k] = s[0][k] + s[1][k];
    double count = (double)in.n * mn_shape_voxels(&in);
    for (int h = 0; h < 2; h++)
        TEST_EXPECT(mn_bn3d_apply(&r[h], &hin, c.x + h * half, y2 + h * half, sv[h], tot, count) == MN_OK, "apply");
    for (int h = 0; h < 2; h++)
        TEST_EXPECT(mn_bn3d_bwd_stats(&r[h], &hin, c.x + h * half, c.r + h * half, sv[h], s[h]) == MN_OK, "bstats");
    for (int k = 0; k < 2 * C; k++) tot[k] = s[0][k] + s[1][k];
    for (int h = 0; h < 2; h++)
        TEST_EXPECT(mn_bn3d_bwd_apply(&r[h], &hin, c.x + h * half, c.r + h * half, dx2 + h * half, sv[h], tot,
                                      count) == MN_OK, "bapply");
    double ey = mn_test_max_relerr(y2, c.y, 2 * half, 1e-3), edx = mn_test_max_relerr(dx2, c.dx, 2 * half, 1e-3);
    double ep = 0;
    for (int k = 0; k < C; k++) {
        ep = fmax(ep, mn_test_relerr(dg[0][k] + dg[1][k], c.l.dgamma[k], 1e-3));
        ep = fmax(ep, mn_test_relerr(db[0][k] + db[1][k], c.l.dbeta[k], 1e-3));
        for (int h = 0; h < 2; h++) {
            ep = fmax(ep, mn_test_relerr(rm[h][k], c.l.running_mean[k], 1e-6));
            ep = fmax(ep, mn_test_relerr(rv[h][k], c.l.running_var[k], 1e-6));
            ep = fmax(ep, mn_test_relerr(sv[h][k], c.save[k], 1e-6));
            ep = fmax(ep, mn_test_relerr(sv[h][C + k], c.save[C + k], 1e-6));
        }
    }
    printf("  bn split (2 halves) vs one shot: y %.2e, dx %.2e, dgamma/dbeta/running/save %.2e\n", ey, edx, ep);
    TEST_EXPECT(ey < 1e-5 && edx < 1e-4 && ep < 1e-5, "bn split differs from one shot");
    free(y2), free(dx2);
    bn_free(&c);
}

/* The fused batch-norm passes against the separate ones, bit for bit: forward with residual and ReLU, the
 * output recomputed from what forward saved, backward with the ReLU mask and overwrite (also with dx aliasing the
 * mask or dy, as the stem does), the split form, eval mode. */
static int same_bits(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof *a) == 0;
}
static void test_bn_fused(void)
{
    for (int mode = 0; mode < 2; mode++) {
        bn_ctx c;
        mn_shape in = {3, 5, 3, 4, 5}; /* odd extents, batch > 1 */
        bn_setup(&c, in, mode == 0);
        const int C = in.c;
        const size_t n = mn_shape_numel(&in);
        float *res = rand_f(n, 1), *mask = rand_f(n, 1), *y1 = mn_test_alloc(n), *y2 = mn_test_alloc(n);
        float *dx1 = mn_test_alloc(n), *dx2 = mn_test_alloc(n), *g = mn_test_alloc(n);
        float *sv1 = mn_test_alloc(MN_BN3D_SAVE(C)), *sv2 = mn_test_alloc(MN_BN3D_SAVE(C)), rm0[5], rv0[5];
        memcpy(rm0, c.l.running_mean, sizeof rm0);
        memcpy(rv0, c.l.running_var, sizeof rv0);
        int ok = 1;
        for (int relu = 0; relu < 2; relu++)
            for (int with_res = 0; with_res < 2; with_res++) {
                /* separate: bn, add, relu */
                memcpy(c.l.running_mean, rm0, sizeof rm0), memcpy(c.l.running_var, rv0, sizeof rv0);
                ok &= mn_bn3d_forward(&c.l, &in, c.x, y1, sv1, c.training) == MN_OK;
                if (with_res) mn_add_inplace(n, y1, res);
                if (relu) mn_relu_forward(n, y1, y1);
                memcpy(c.l.running_mean, rm0, sizeof rm0), memcpy(c.l.running_var, rv0, sizeof rv0);
                ok &= mn_bn3d_forward_fused(&c.l, &in, c.x, y2, sv2, c.training, with_res ? res : NULL, relu) ==
                      MN_OK;
                TEST_EXPECT(same_bits(y1, y2, n) && same_bits(sv1, sv2, MN_BN3D_SAVE(C)),
                            "bn forward fused (training %d, res %d, relu %d) differs", c.training, with_res, relu);
                /* the output recomputed from x and save, as the model's backward does */
                for (size_t i = 0; i < n; i++) y1[i] = NAN;
                ok &= mn_bn3d_recompute(&c.l, &in, c.x, sv2, with_res ? res : NULL, relu, y1) == MN_OK;
                TEST_EXPECT(same_bits(y1, y2, n), "bn recompute (training %d, res %d, relu %d) differs from forward",
                            c.training, with_res, relu);
            }
        /* backward: mask + zero + accumulate vs fused overwrite */
        for (int with_mask = 0; with_mask < 2; with_mask++) {
            memcpy(g, c.r, n * sizeof *g);
            if (with_mask)
                for (size_t i = 0; i < n; i++)
                    if (!(mask[i] > 0.0f)) g[i] = 0.0f;
            memset(dx1, 0, n * sizeof *dx1);
            memset(c.l.dgamma, 0, C * sizeof(float)), memset(c.l.dbeta, 0, C * sizeof(float));
            ok &= mn_bn3d_backward(&c.l, &in, c.x, g, dx1, sv1, c.training) == MN_OK;
            float dg1[5], db1[5];
            memcpy(dg1, c.l.dgamma, sizeof dg1), memcpy(db1, c.l.dbeta, sizeof db1);
            for (size_t i = 0; i < n; i++) dx2[i] = NAN; /* overwritten, never read */
            memset(c.l.dgamma, 0, C * sizeof(float)), memset(c.l.dbeta, 0, C * sizeof(float));
            ok &= mn_bn3d_backward_fused(&c.l, &in, c.x, c.r, with_mask ? mask : NULL, dx2, sv1, c.training) ==
                  MN_OK;
            TEST_EXPECT(same_bits(dx1, dx2, n) && same_bits(dg1, c.l.dgamma, (size_t)C) &&
                            same_bits(db1, c.l.dbeta, (size_t)C),
                        "bn backward fused (training %d, mask %d) differs", c.training, with_mask);
            { /* dx aliasing dy (the stem's in-place backward) */
                float *alias = mn_test_alloc(n);
                memcpy(alias, c.r, n * sizeof *alias);
                memset(c.l.dgamma, 0, C * sizeof(float)), memset(c.l.dbeta, 0, C * sizeof(float));
                ok &= mn_bn3d_backward_fused(&c.l, &in, c.x, alias, with_mask ? mask : NULL, alias, sv1,
                                             c.training) == MN_OK;
                TEST_EXPECT(same_bits(dx1, alias, n) && same_bits(dg1, c.l.dgamma, (size_t)C),
                            "bn backward fused with dx == dy differs (training %d, mask %d)", c.training, with_mask);
                free(alias);
            }
            if (with_mask) { /* dx aliasing the mask */
                float *alias = mn_test_alloc(n);
                memcpy(alias, mask, n * sizeof *alias);
                memset(c.l.dgamma, 0, C * sizeof(float)), memset(c.l.dbeta, 0, C * sizeof(float));
                ok &= mn_bn3d_backward_fused(&c.l, &in, c.x, c.r, alias, alias, sv1, c.training) == MN_OK;
                TEST_EXPECT(same_bits(dx1, alias, n) && same_bits(dg1, c.l.dgamma, (size_t)C),
                            "bn backward fused with dx == mask differs (training %d)", c.training);
                free(alias);
            }
            if (c.training) { /* the split form, one "rank" */
                double sums[10];
                const double count = (double)n / C;
                ok &= mn_bn3d_bwd_stats_masked(&c.l, &in, c.x, c.r, with_mask ? mask : NULL, sv1, sums) == MN_OK;
                for (size_t i = 0; i < n; i++) dx2[i] = NAN;
                memset(c.l.dgamma, 0, C * sizeof(float)), memset(c.l.dbeta, 0, C * sizeof(float));
                ok &= mn_bn3d_bwd_apply_fused(&c.l, &in, c.x, c.r, with_mask ? mask : NULL, dx2, sv1, sums, count) ==
                      MN_OK;
                TEST_EXPECT(same_bits(dx1, dx2, n) && same_bits(dg1, c.l.dgamma, (size_t)C),
                            "bn split backward fused (mask %d) differs", with_mask);
                ok &= mn_bn3d_stats(&c.l, &in, c.x, sums) == MN_OK;
                ok &= mn_bn3d_apply_fused(&c.l, &in, c.x, y2, sv2, sums, count, res, 1) == MN_OK;
                ok &= mn_bn3d_apply(&c.l, &in, c.x, y1, sv2, sums, count) == MN_OK;
                mn_add_inplace(n, y1, res);
                mn_relu_forward(n, y1, y1);
                TEST_EXPECT(same_bits(y1, y2, n), "bn split apply fused differs");
                for (size_t i = 0; i < n; i++) y1[i] = NAN;
                ok &= mn_bn3d_recompute(&c.l, &in, c.x, sv2, res, 1, y1) == MN_OK;
                TEST_EXPECT(same_bits(y1, y2, n), "bn recompute differs from the split apply");
            }
        }
        TEST_EXPECT(ok, "fused bn calls returned errors");
        printf("  bn fused passes (%s) equal the separate ones bit for bit\n", c.training ? "training" : "eval");
        free(res), free(mask), free(y1), free(y2), free(dx1), free(dx2), free(g), free(sv1), free(sv2);
        bn_free(&c);
    }
}

static void test_bn_errors(void)
{
    bn_ctx c;
    mn_shape in = {2, 3, 2, 2, 2};
    bn_setup(&c, in, 1);
    mn_shape bad = in;
    bad.c = 4;
    TEST_EXPECT(mn_bn3d_forward(&c.l, &bad, c.x, c.y, c.save, 1) == MN_ERR_SHAPE, "bn channel mismatch");
    TEST_EXPECT(strstr(mn_error_last(), "bn3d") != NULL, "message names bn3d: %s", mn_error_last());
    TEST_EXPECT(mn_bn3d_backward(&c.l, &bad, c.x, c.r, c.dx, c.save, 1) == MN_ERR_SHAPE, "bn backward mismatch");
    mn_shape one = {1, 3, 1, 1, 1};
    TEST_EXPECT(mn_bn3d_forward(&c.l, &one, c.x, c.y, c.save, 1) == MN_ERR_SHAPE, "bn one value per channel");
    TEST_EXPECT(mn_bn3d_forward(&c.l, &one, c.x, c.y, c.save, 0) == MN_OK, "bn eval with one value is fine");
    bn_free(&c);
}

/* ---- pooling ---- */

/* Distinct values spaced 0.01 apart, in a random order, so that a step of 2e-3 never changes a window's max. */
static float *distinct_f(size_t n)
{
    float *x = mn_test_alloc(n);
    size_t *perm = malloc(n * sizeof *perm);
    for (size_t i = 0; i < n; i++) perm[i] = i;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = mn_test_rng_u64(&g_rng) % (i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (size_t i = 0; i < n; i++) x[i] = 0.01f * ((float)perm[i] - 0.5f * (float)n);
    free(perm);
    return x;
}

typedef struct pool_ctx {
    mn_maxpool3d mp;
    mn_avgpool3d ap;
    int kind; /* 0 max, 1 avg, 2 gap */
    mn_shape in, out;
    float *x, *y, *dx, *r;
    int32_t *arg;
} pool_ctx;
static double pool_loss(void *v)
{
    pool_ctx *c = v;
    mn_err e = c->kind == 0 ? mn_maxpool3d_forward(&c->mp, &c->in, c->x, c->y, c->arg)
             : c->kind == 1 ? mn_avgpool3d_forward(&c->ap, &c->in, c->x, c->y)
                            : mn_gap3d_forward(&c->in, c->x, c->y);
    return e == MN_OK ? mn_gc_dot(c->r, c->y, mn_shape_numel(&c->out)) : NAN;
}
static mn_err pool_bwd(void *v)
{
    pool_ctx *c = v;
    if (c->kind == 0) return mn_maxpool3d_backward(&c->mp, &c->in, c->r, c->arg, c->dx);
    if (c->kind == 1) return mn_avgpool3d_backward(&c->ap, &c->in, c->r, c->dx);
    return mn_gap3d_backward(&c->in, c->r, c->dx);
}

static void pool_gradcheck(int kind, mn_shape in, const int k[3], const int s[3], const int p[3], const char *name)
{
    pool_ctx c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    c.in = in;
    for (int i = 0; i < 3; i++) {
        c.mp.k[i] = c.ap.k[i] = k ? k[i] : 1;
        c.mp.s[i] = c.ap.s[i] = s ? s[i] : 1;
        c.mp.p[i] = c.ap.p[i] = p ? p[i] : 0;
    }
    if (kind == 0) TEST_EXPECT(mn_maxpool3d_out_shape(&c.mp, &in, &c.out) == MN_OK, "%s out shape", name);
    if (kind == 1) TEST_EXPECT(mn_avgpool3d_out_shape(&c.ap, &in, &c.out) == MN_OK, "%s out shape", name);
    if (kind == 2) c.out = (mn_shape){in.n, in.c, 1, 1, 1};
    size_t n = mn_shape_numel(&in), ny = mn_shape_numel(&c.out);
    c.x = kind == 0 ? distinct_f(n) : rand_f(n, 1);
    c.y = mn_test_alloc(ny);
    c.r = rand_f(ny, 1);
    c.dx = mn_test_alloc(n);
    c.arg = calloc(ny, sizeof(int32_t));
    mn_gc_run(&(mn_gc_case){.name = name, .ctx = &c, .loss = pool_loss, .backward = pool_bwd,
                            .t = {{"x", c.x, c.dx, n}}, .eps = 2e-3, .tol = 1e-3, .floor_abs = 1e-3, .samples = 40,
                            .kink = kind == 0 ? 1e-2 : 0});
    free(c.x), free(c.y), free(c.r), free(c.dx), free(c.arg);
}

/* The vectorised max-pool path against its loop-nest twin, bit for bit, on random data with ties and NaNs and on
 * geometries that cover every stride specialisation and the fallback for long rows. */
static void test_maxpool_fast_vs_ref(void)
{
    const struct {
        mn_shape in;
        mn_maxpool3d l;
    } cases[] = {
        {{2, 3, 7, 9, 11}, {{3, 3, 3}, {2, 2, 2}, {1, 1, 1}}},
        {{1, 2, 6, 5, 33}, {{2, 2, 2}, {2, 2, 2}, {0, 0, 0}}},
        {{1, 3, 5, 6, 20}, {{3, 2, 3}, {1, 2, 1}, {1, 1, 1}}},
        {{2, 2, 4, 5, 19}, {{2, 3, 4}, {3, 2, 3}, {1, 1, 2}}},
        {{1, 1, 3, 3, 2500}, {{3, 3, 3}, {2, 2, 2}, {1, 1, 1}}}, /* row too long: reference path */
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        mn_shape out;
        TEST_EXPECT(mn_maxpool3d_out_shape(&cases[t].l, &cases[t].in, &out) == MN_OK, "out shape");
        size_t n = mn_shape_numel(&cases[t].in), m = mn_shape_numel(&out);
        float *x = mn_test_alloc(n), *y1 = mn_test_alloc(m), *y2 = mn_test_alloc(m);
        int32_t *a1 = calloc(m, sizeof(int32_t)), *a2 = calloc(m, sizeof(int32_t));
        for (size_t i = 0; i < n; i++) { /* coarse values: many ties; a few NaNs and -infs */
            uint64_t u = mn_test_rng_u64(&g_rng);
            x[i] = u % 97 == 0 ? NAN : u % 89 == 0 ? -INFINITY : (float)(int)(u % 7) - 3.0f;
        }
        TEST_EXPECT(mn_maxpool3d_forward(&cases[t].l, &cases[t].in, x, y1, a1) == MN_OK, "fast");
        TEST_EXPECT(mn_maxpool3d_forward_ref(&cases[t].l, &cases[t].in, x, y2, a2) == MN_OK, "ref");
        int same = memcmp(a1, a2, m * sizeof(int32_t)) == 0;
        for (size_t i = 0; i < m; i++) same &= (y1[i] == y2[i]) || (isnan(y1[i]) && isnan(y2[i]));
        TEST_EXPECT(same, "maxpool fast != ref in case %zu", t);
        free(x), free(y1), free(y2), free(a1), free(a2);
    }
    printf("  maxpool vectorised vs loop nest: %zu geometries identical (values and argmax)\n",
           sizeof cases / sizeof cases[0]);
}

/* Forward values that the gradient check cannot see: ties, -inf padding, divisors, k=1 subsampling. */
static void test_pool_values(void)
{
    mn_shape in = {1, 2, 3, 5, 4}, out;
    size_t n = mn_shape_numel(&in);
    float *x = mn_test_alloc(n), *y = mn_test_alloc(n);
    int32_t *arg = calloc(n, sizeof(int32_t));
    /* Ties: a constant input keeps the first voxel of each window in scan order. */
    for (size_t i = 0; i < n; i++) x[i] = 1.5f;
    mn_maxpool3d mp = {{3, 3, 3}, {2, 2, 2}, {1, 1, 1}};
    TEST_EXPECT(mn_maxpool3d_out_shape(&mp, &in, &out) == MN_OK && out.d == 2 && out.h == 3 && out.w == 2,
                "maxpool out shape (torch: 2x3x2)");
    TEST_EXPECT(mn_maxpool3d_forward(&mp, &in, x, y, arg) == MN_OK, "maxpool forward");
    int ok = 1;
    for (int oz = 0; oz < out.d; oz++)
        for (int oy = 0; oy < out.h; oy++)
            for (int ox = 0; ox < out.w; ox++) {
                int z0 = oz * 2 - 1 < 0 ? 0 : oz * 2 - 1, y0 = oy * 2 - 1 < 0 ? 0 : oy * 2 - 1;
                int x0 = ox * 2 - 1 < 0 ? 0 : ox * 2 - 1;
                size_t o = ((size_t)oz * out.h + oy) * out.w + ox;
                ok &= arg[o] == (z0 * in.h + y0) * in.w + x0 && y[o] == 1.5f;
            }
    TEST_EXPECT(ok, "maxpool ties: first maximum wins");
    /* -inf padding: an all-negative input never picks a padded zero. */
    for (size_t i = 0; i < n; i++) x[i] = -1.0f - (float)i;
    TEST_EXPECT(mn_maxpool3d_forward(&mp, &in, x, y, arg) == MN_OK, "maxpool forward");
    TEST_EXPECT(y[0] == -1.0f && arg[0] == 0, "maxpool pads with -inf (got %g)", (double)y[0]);
    /* avgpool counts the padding: a corner window of k3 p1 holds 8 real voxels of 27. */
    for (size_t i = 0; i < n; i++) x[i] = 1.0f;
    mn_avgpool3d ap = {{3, 3, 3}, {2, 2, 2}, {1, 1, 1}};
    TEST_EXPECT(mn_avgpool3d_forward(&ap, &in, x, y) == MN_OK, "avgpool forward");
    TEST_EXPECT(fabsf(y[0] - 8.0f / 27.0f) < 1e-7f, "avgpool count_include_pad: %g vs 8/27", (double)y[0]);
    /* k=1 stride 2: plain subsampling (type-A shortcut). */
    for (size_t i = 0; i < n; i++) x[i] = (float)i;
    mn_avgpool3d sub = {{1, 1, 1}, {2, 2, 2}, {0, 0, 0}};
    TEST_EXPECT(mn_avgpool3d_out_shape(&sub, &in, &out) == MN_OK && out.d == 2 && out.h == 3 && out.w == 2,
                "k1 s2 out shape");
    TEST_EXPECT(mn_avgpool3d_forward(&sub, &in, x, y) == MN_OK, "k1 s2 forward");
    ok = 1;
    for (int c = 0; c < 2; c++)
        for (int oz = 0; oz < 2; oz++)
            for (int oy = 0; oy < 3; oy++)
                for (int ox = 0; ox < 2; ox++)
                    ok &= y[((c * 2 + oz) * 3 + oy) * 2 + ox] == x[((c * 3 + 2 * oz) * 5 + 2 * oy) * 4 + 2 * ox];
    TEST_EXPECT(ok, "avgpool k1 s2 subsamples");
    /* Errors: a kernel larger than the padded input, padding over half the kernel. */
    mn_maxpool3d big = {{5, 1, 1}, {1, 1, 1}, {0, 0, 0}};
    TEST_EXPECT(mn_maxpool3d_forward(&big, &in, x, y, arg) == MN_ERR_SHAPE, "maxpool kernel > input");
    TEST_EXPECT(strstr(mn_error_last(), "maxpool3d") != NULL, "message names maxpool3d: %s", mn_error_last());
    mn_avgpool3d badp = {{2, 2, 2}, {1, 1, 1}, {2, 0, 0}};
    TEST_EXPECT(mn_avgpool3d_out_shape(&badp, &in, &out) == MN_ERR_ARG, "avgpool padding > k/2");
    mn_shape zero = {0, 1, 1, 1, 1};
    TEST_EXPECT(mn_gap3d_forward(&zero, x, y) == MN_ERR_SHAPE, "gap invalid shape");
    free(x), free(y), free(arg);
}

/* ---- linear ---- */

typedef struct lin_ctx {
    mn_linear l;
    int n;
    float *x, *y, *dx, *r;
} lin_ctx;
static double lin_loss(void *v)
{
    lin_ctx *c = v;
    return mn_linear_forward(&c->l, c->n, c->x, c->y) == MN_OK ? mn_gc_dot(c->r, c->y, (size_t)c->n * c->l.out) : NAN;
}
static mn_err lin_bwd(void *v)
{
    lin_ctx *c = v;
    return mn_linear_backward(&c->l, c->n, c->x, c->r, c->dx);
}
static void test_linear(void)
{
    lin_ctx c = {.n = 3};
    c.l.in = 7;
    c.l.out = 5;
    c.l.w = rand_f(35, 1);
    c.l.b = rand_f(5, 1);
    c.l.dw = mn_test_alloc(35);
    c.l.db = mn_test_alloc(5);
    c.x = rand_f(21, 1);
    c.dx = mn_test_alloc(21);
    c.y = mn_test_alloc(15);
    c.r = rand_f(15, 1);
    mn_gc_run(&(mn_gc_case){.name = "linear n3 in7 out5", .ctx = &c, .loss = lin_loss, .backward = lin_bwd,
                            .t = {{"x", c.x, c.dx, 21}, {"w", c.l.w, c.l.dw, 35}, {"b", c.l.b, c.l.db, 5}},
                            .eps = 1e-2, .tol = 1e-3, .floor_abs = 1e-3, .samples = 40});
    TEST_EXPECT(mn_linear_forward(&c.l, 0, c.x, c.y) == MN_ERR_SHAPE, "linear n = 0");
    TEST_EXPECT(strstr(mn_error_last(), "linear") != NULL, "message names linear: %s", mn_error_last());
    free(c.l.w), free(c.l.b), free(c.l.dw), free(c.l.db), free(c.x), free(c.dx), free(c.y), free(c.r);
}

/* ---- trilinear resizing ---- */

typedef struct up_ctx {
    mn_shape in, out;
    float *x, *y, *dx, *r;
} up_ctx;
static double up_loss(void *v)
{
    up_ctx *c = v;
    return mn_upsample3d_forward(&c->in, c->x, &c->out, c->y) == MN_OK ? mn_gc_dot(c->r, c->y, mn_shape_numel(&c->out))
                                                                        : NAN;
}
static mn_err up_bwd(void *v)
{
    up_ctx *c = v;
    return mn_upsample3d_backward(&c->in, &c->out, c->r, c->dx);
}
static void up_gradcheck(mn_shape in, mn_shape out, const char *name)
{
    up_ctx c = {in, out, NULL, NULL, NULL, NULL};
    size_t n = mn_shape_numel(&in), ny = mn_shape_numel(&out);
    c.x = rand_f(n, 1);
    c.y = mn_test_alloc(ny);
    c.r = rand_f(ny, 1);
    c.dx = mn_test_alloc(n);
    mn_gc_run(&(mn_gc_case){.name = name, .ctx = &c, .loss = up_loss, .backward = up_bwd, .t = {{"x", c.x, c.dx, n}},
                            .eps = 1e-2, .tol = 1e-3, .floor_abs = 1e-3, .samples = 40});
    free(c.x), free(c.y), free(c.r), free(c.dx);
}

/* Values: a constant stays constant; a 2x up-sampling of a ramp along w follows PyTorch's rule; same size copies. */
static void test_upsample_values(void)
{
    mn_shape in = {1, 1, 2, 2, 4}, out = {1, 1, 3, 5, 8};
    float x[16], y[120];
    for (int i = 0; i < 16; i++) x[i] = 3.25f;
    TEST_EXPECT(mn_upsample3d_forward(&in, x, &out, y) == MN_OK, "upsample");
    int ok = 1;
    for (int i = 0; i < 120; i++) ok &= fabsf(y[i] - 3.25f) < 1e-6f;
    TEST_EXPECT(ok, "upsample keeps constants");
    for (int i = 0; i < 16; i++) x[i] = (float)(i % 4);
    TEST_EXPECT(mn_upsample3d_forward(&in, x, &out, y) == MN_OK, "upsample");
    /* w: 4 -> 8, src = (dst + 0.5)/2 - 0.5 clamped to [0, 3]. */
    const float expect[8] = {0.0f, 0.25f, 0.75f, 1.25f, 1.75f, 2.25f, 2.75f, 3.0f};
    ok = 1;
    for (int i = 0; i < 8; i++) ok &= fabsf(y[8 + i] - expect[i]) < 1e-6f;
    TEST_EXPECT(ok, "upsample ramp follows align_corners=False");
    TEST_EXPECT(mn_upsample3d_forward(&in, x, &in, y) == MN_OK && memcmp(x, y, sizeof x) == 0, "same size copies");
    mn_shape bad = {2, 1, 3, 5, 8};
    TEST_EXPECT(mn_upsample3d_forward(&in, x, &bad, y) == MN_ERR_SHAPE, "upsample batch mismatch");
    TEST_EXPECT(strstr(mn_error_last(), "upsample3d") != NULL, "message names upsample3d: %s", mn_error_last());
}

/* Nearest label resizing against the rule written out here. */
static int ref_nearest(int dst, int in, int out)
{
    if (in == out) return dst;
    int s = (int)floorf((float)dst * ((float)in / (float)out));
    return s < in - 1 ? s : in - 1;
}
static void test_labels_nearest(void)
{
    const int sizes[3][6] = {{3, 4, 5, 7, 9, 6}, {7, 9, 6, 3, 4, 5}, {5, 3, 8, 10, 6, 4}};
    for (int t = 0; t < 3; t++) {
        const int *s = sizes[t];
        mn_shape in = {2, 1, s[0], s[1], s[2]}, out = {2, 1, s[3], s[4], s[5]};
        size_t n = mn_shape_numel(&in), m = mn_shape_numel(&out);
        int32_t *x = malloc(n * sizeof *x), *y = malloc(m * sizeof *y);
        for (size_t i = 0; i < n; i++) x[i] = (int32_t)i;
        TEST_EXPECT(mn_labels_resize_nearest(&in, x, &out, y) == MN_OK, "labels resize");
        int ok = 1;
        for (int b = 0; b < 2; b++)
            for (int z = 0; z < out.d; z++)
                for (int yy = 0; yy < out.h; yy++)
                    for (int xx = 0; xx < out.w; xx++) {
                        int sz = ref_nearest(z, in.d, out.d), sy = ref_nearest(yy, in.h, out.h);
                        int sx = ref_nearest(xx, in.w, out.w);
                        ok &= y[(((size_t)b * out.d + z) * out.h + yy) * out.w + xx] ==
                              x[(((size_t)b * in.d + sz) * in.h + sy) * in.w + sx];
                    }
        TEST_EXPECT(ok, "labels nearest %dx%dx%d -> %dx%dx%d", s[0], s[1], s[2], s[3], s[4], s[5]);
        free(x), free(y);
    }
}

static void test_eltwise(void)
{
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {0.5f, -2, 1, 0, 2};
    mn_add_inplace(5, a, b);
    TEST_EXPECT(a[0] == 1.5f && a[1] == 0 && a[2] == 4 && a[3] == 4 && a[4] == 7, "add_inplace");
    mn_zero(5, a);
    TEST_EXPECT(a[0] == 0 && a[4] == 0, "zero");
}

int main(void)
{
    mn_error_set_quiet(1);
    printf("gradient checks (L = sum r*y, central differences):\n");
    test_relu();
    bn_gradcheck((mn_shape){2, 3, 3, 5, 7}, 1, "bn3d train 2x3x3x5x7");
    bn_gradcheck((mn_shape){3, 7, 2, 3, 3}, 1, "bn3d train 3x7x2x3x3");
    bn_gradcheck((mn_shape){2, 5, 3, 5, 7}, 0, "bn3d eval 2x5x3x5x7");
    bn_gradcheck((mn_shape){4, 3, 1, 2, 1}, 1, "bn3d train 4x3x1x2x1 (8 per channel)");
    bn_gradcheck((mn_shape){2, 5, 1, 3, 1}, 1, "bn3d train 2x5x1x3x1 (6 per channel)");
    const int k3[3] = {3, 3, 3}, s2[3] = {2, 2, 2}, p1[3] = {1, 1, 1};
    const int kg[3] = {2, 3, 2}, sg[3] = {1, 2, 3}, pg[3] = {1, 0, 1};
    const int k1[3] = {1, 1, 1}, p0[3] = {0, 0, 0};
    pool_gradcheck(0, (mn_shape){2, 3, 3, 5, 7}, k3, s2, p1, "maxpool k3 s2 p1 2x3x3x5x7");
    pool_gradcheck(0, (mn_shape){3, 5, 4, 5, 7}, kg, sg, pg, "maxpool k232 s123 p101 3x5x4x5x7");
    pool_gradcheck(1, (mn_shape){2, 3, 3, 5, 7}, k3, s2, p1, "avgpool k3 s2 p1 2x3x3x5x7");
    pool_gradcheck(1, (mn_shape){3, 5, 4, 5, 7}, kg, sg, pg, "avgpool k232 s123 p101 3x5x4x5x7");
    pool_gradcheck(1, (mn_shape){2, 3, 3, 5, 7}, k1, s2, p0, "avgpool k1 s2 2x3x3x5x7");
    pool_gradcheck(2, (mn_shape){3, 5, 3, 5, 7}, NULL, NULL, NULL, "gap3d 3x5x3x5x7");
    test_linear();
    up_gradcheck((mn_shape){2, 3, 3, 4, 5}, (mn_shape){2, 3, 7, 9, 6}, "upsample 3x4x5 -> 7x9x6");
    up_gradcheck((mn_shape){2, 3, 7, 9, 6}, (mn_shape){2, 3, 3, 4, 5}, "upsample 7x9x6 -> 3x4x5");
    up_gradcheck((mn_shape){3, 2, 4, 3, 5}, (mn_shape){3, 2, 8, 3, 2}, "upsample 4x3x5 -> 8x3x2");
    printf("semantic checks:\n");
    test_bn_running();
    test_bn_split();
    test_bn_fused();
    test_bn_errors();
    test_pool_values();
    test_maxpool_fast_vs_ref();
    test_upsample_values();
    test_labels_nearest();
    test_eltwise();
    return mn_test_finish("test_layers");
}
