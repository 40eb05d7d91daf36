/* test_loss: cross-entropy and Dice losses.
 *
 * - Gradients by central differences of scale * loss (computed in double; gradcheck.h) on 60 logits: CE with class
 *   weights and an ignore label, CE plain, soft Dice skipping the background and with all classes.
 * - Values against hand-computed ones; the all-ignored case; hard Dice on a small example.
 * - Accumulation (two calls double dlogits), a label out of range (MN_ERR_ARG naming value and voxel), a NaN logit
 *   (MN_ERR_NUMERIC), and dlogits left untouched on error.
 */
#include "mednet/loss.h"
#include "gradcheck.h"

#include <string.h>

static mn_test_rng g_rng = {0xD1B54A32D192ED03ULL};

enum { IGN = 255 };

typedef struct loss_case {
    const char *name;
    int dice; /* 0: CE, 1: soft Dice */
    mn_shape in;
    float *x;
    int32_t *lab;
    const float *w;
    int first_class;
    float smooth, scale;
} loss_case;

static mn_err eval(const loss_case *c, double *L, float *grad)
{
    if (c->dice)
        return mn_dice_loss(&c->in, c->x, c->lab, IGN, c->first_class, c->smooth, c->scale, L, grad);
    return mn_ce_loss(&c->in, c->x, c->lab, IGN, c->w, c->scale, L, grad, NULL);
}

/* scale * loss: what the gradient is of. */
static double scaled_loss(void *p)
{
    const loss_case *c = p;
    double L;
    return eval(c, &L, NULL) == MN_OK ? c->scale * L : NAN;
}

static void loss_gradcheck(loss_case *c, double eps, double tol)
{
    size_t n = mn_shape_numel(&c->in);
    float *g = calloc(n, sizeof(float)), *g2 = calloc(n, sizeof(float));
    double L0, L1;
    TEST_EXPECT(eval(c, &L0, g) == MN_OK, "%s: value and gradient", c->name);
    /* Accumulates: a second call on a copy doubles it. */
    memcpy(g2, g, n * sizeof(float));
    TEST_EXPECT(eval(c, &L1, g2) == MN_OK && L1 == L0, "%s: second call", c->name);
    double acc = mn_test_max_relerr_s(g2, 2.0, g, n, 1e-9);
    TEST_EXPECT(acc < 1e-6, "%s: gradient does not accumulate (%.3g)", c->name, acc);
    mn_gc_run(&(mn_gc_case){.name = c->name, .ctx = c, .loss = scaled_loss, .t = {{"logits", c->x, g, n}},
                            .eps = eps, .tol = tol, .floor_rel = 1e-2, .samples = 60, .seed = 0xD1B54A32D192ED03ULL});
    free(g), free(g2);
}

static void make_case(loss_case *c, mn_shape in, double ignore_frac)
{
    c->in = in;
    size_t n = mn_shape_numel(&in), nv = (size_t)in.n * mn_shape_voxels(&in);
    c->x = malloc(n * sizeof(float));
    mn_test_fill(&g_rng, c->x, n, 2.0f);
    c->lab = malloc(nv * sizeof(int32_t));
    for (size_t i = 0; i < nv; i++) {
        double u = 0.5 * (mn_test_rng_uniform(&g_rng) + 1.0);
        c->lab[i] = u < ignore_frac ? IGN : (int32_t)(mn_test_rng_u64(&g_rng) % (uint64_t)in.c);
    }
}

static void test_gradients(void)
{
    float w[5] = {0.5f, 1.5f, 1.0f, 0.8f, 1.2f};
    loss_case ce = {.name = "ce 2x5x3x4x5 weights+ignore scale .75", .dice = 0};
    make_case(&ce, (mn_shape){2, 5, 3, 4, 5}, 0.15);
    ce.w = w;
    ce.scale = 0.75f;
    loss_gradcheck(&ce, 5e-3, 1e-2);
    loss_case ce2 = ce;
    ce2.name = "ce 2x5x3x4x5 no weights";
    ce2.w = NULL;
    ce2.scale = 1.0f;
    loss_gradcheck(&ce2, 5e-3, 1e-2);
    free(ce.x), free(ce.lab);

    loss_case d = {.name = "dice 3x4x3x5x2 first_class 1 smooth 1 ignore", .dice = 1};
    make_case(&d, (mn_shape){3, 4, 3, 5, 2}, 0.15);
    d.first_class = 1;
    d.smooth = 1.0f;
    d.scale = 0.5f;
    loss_gradcheck(&d, 5e-3, 1e-2);
    loss_case d0 = d;
    d0.name = "dice 3x4x3x5x2 all classes smooth 1e-5";
    d0.first_class = 0;
    d0.smooth = 1e-5f;
    d0.scale = 1.0f;
    loss_gradcheck(&d0, 5e-3, 1e-2);
    free(d.x), free(d.lab);
}

/* Every voxel of a tensor with full 64-voxel blocks and a tail, against formulas evaluated here in double. */
static void test_vs_double(void)
{
    const mn_shape in = {2, 5, 5, 6, 7}; /* V = 210 = 3 blocks of 64 + 18 */
    const int C = in.c;
    const size_t V = mn_shape_voxels(&in), n = mn_shape_numel(&in), nv = (size_t)in.n * V;
    loss_case c = {.name = "ref"};
    make_case(&c, in, 0.1);
    for (size_t i = 0; i < n; i += 7) c.x[i] *= 20.0f; /* some large logits */
    float w[5] = {0.3f, 1.0f, 2.0f, 0.7f, 1.1f};
    double *p = malloc(n * sizeof(double)), *gce = calloc(n, sizeof(double)), *gd = calloc(n, sizeof(double));
    double lce = 0, wsum = 0, I[5] = {0}, P[5] = {0}, G[5] = {0};
    for (size_t t = 0; t < nv; t++) {
        size_t b = t / V, v = t % V;
        double mx = -INFINITY, se = 0;
        for (int k = 0; k < C; k++) mx = fmax(mx, c.x[(b * C + k) * V + v]);
        for (int k = 0; k < C; k++) se += exp(c.x[(b * C + k) * V + v] - mx);
        for (int k = 0; k < C; k++) p[(b * C + k) * V + v] = exp(c.x[(b * C + k) * V + v] - mx) / se;
        int y = c.lab[t];
        if (y == IGN) continue;
        lce += w[y] * -log(p[(b * C + y) * V + v]);
        wsum += w[y];
        for (int k = 0; k < C; k++) {
            P[k] += p[(b * C + k) * V + v];
            G[k] += k == y;
            I[k] += k == y ? p[(b * C + k) * V + v] : 0;
        }
    }
    lce /= wsum;
    const int fc = 1, K = C - fc;
    const double sm = 0.5;
    double ld = 0;
    for (int k = fc; k < C; k++) ld += (2 * I[k] + sm) / (P[k] + G[k] + sm);
    ld = 1 - ld / K;
    for (size_t t = 0; t < nv; t++) {
        size_t b = t / V, v = t % V;
        int y = c.lab[t];
        if (y == IGN) continue;
        double a[5], dot = 0;
        for (int k = 0; k < C; k++) {
            double den = P[k] + G[k] + sm, num = 2 * I[k] + sm;
            a[k] = k < fc ? 0 : (num / (den * den) - (k == y ? 2.0 / den : 0)) / K;
            dot += p[(b * C + k) * V + v] * a[k];
        }
        for (int k = 0; k < C; k++) {
            size_t i = (b * C + k) * V + v;
            gce[i] = w[y] / wsum * (p[i] - (k == y));
            gd[i] = p[i] * (a[k] - dot);
        }
    }
    float *g = calloc(n, sizeof(float));
    double L, eg = 0, gmax = 0;
    long nval = 0;
    TEST_EXPECT(mn_ce_loss(&in, c.x, c.lab, IGN, w, 1.0f, &L, g, &nval) == MN_OK, "ce");
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(gce[i]));
    for (size_t i = 0; i < n; i++) eg = fmax(eg, fabs(g[i] - gce[i]) / gmax);
    printf("  ce   vs double, %zu voxels (3 full blocks + tail per sample): loss rel err %.2e, max |dlogits err| / "
           "max |dlogits| %.2e\n", nv, fabs(L - lce) / lce, eg);
    TEST_EXPECT(fabs(L - lce) <= 1e-6 * lce && eg < 1e-5, "ce vs double: loss %.9f vs %.9f, grad %.3g", L, lce, eg);
    memset(g, 0, n * sizeof(float));
    eg = 0, gmax = 0;
    TEST_EXPECT(mn_dice_loss(&in, c.x, c.lab, IGN, fc, (float)sm, 1.0f, &L, g) == MN_OK, "dice");
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(gd[i]));
    for (size_t i = 0; i < n; i++) eg = fmax(eg, fabs(g[i] - gd[i]) / gmax);
    printf("  dice vs double, same data: loss rel err %.2e, max |dlogits err| / max |dlogits| %.2e\n",
           fabs(L - ld) / ld, eg);
    TEST_EXPECT(fabs(L - ld) <= 1e-6 * ld && eg < 1e-5, "dice vs double: loss %.9f vs %.9f, grad %.3g", L, ld, eg);
    free(p), free(gce), free(gd), free(g), free(c.x), free(c.lab);
}

static void test_values(void)
{
    /* One voxel, three classes: CE = log(e^1 + e^2 + e^3) - 3. */
    mn_shape one = {1, 3, 1, 1, 1};
    float x[3] = {1, 2, 3}, g[3] = {0};
    int32_t y = 2;
    double L;
    long nv = -1;
    TEST_EXPECT(mn_ce_loss(&one, x, &y, IGN, NULL, 1.0f, &L, g, &nv) == MN_OK, "ce one voxel");
    double e = log(exp(1) + exp(2) + exp(3)) - 3;
    TEST_EXPECT(fabs(L - e) < 1e-6 && nv == 1, "ce value %.8f vs %.8f", L, e);
    TEST_EXPECT(fabs(g[2] - (exp(3) / (exp(1) + exp(2) + exp(3)) - 1)) < 1e-6, "ce gradient");
    /* Large logits stay finite (stable log-softmax). */
    float big[3] = {1000, -1000, 999};
    TEST_EXPECT(mn_ce_loss(&one, big, &y, IGN, NULL, 1.0f, &L, NULL, NULL) == MN_OK && fabs(L - 1.3132616875) < 1e-6,
                "ce stable: %.10f", L);

    /* Weighted mean: two voxels (labels 0 and 1), weights 2 and 0.5: (2*l0 + 0.5*l1) / 2.5. */
    mn_shape two = {1, 2, 1, 1, 2};
    float x2[4] = {0.3f, -1.0f, 0.7f, 2.0f}; /* class 0: voxels (0.3, -1); class 1: (0.7, 2) */
    int32_t y2[2] = {0, 1};
    float w2[2] = {2.0f, 0.5f};
    TEST_EXPECT(mn_ce_loss(&two, x2, y2, IGN, w2, 1.0f, &L, NULL, NULL) == MN_OK, "ce weighted");
    double l0 = log(exp(0.3) + exp(0.7)) - 0.3, l1 = log(exp(-1.0) + exp(2.0)) - 2.0;
    e = (2.0 * l0 + 0.5 * l1) / 2.5;
    TEST_EXPECT(fabs(L - e) < 1e-6, "ce weighted value %.8f vs %.8f", L, e);

    /* Every voxel ignored: loss 0, no gradient, nvalid 0. */
    int32_t ig[2] = {IGN, IGN};
    float g2[4] = {0};
    TEST_EXPECT(mn_ce_loss(&two, x2, ig, IGN, NULL, 1.0f, &L, g2, &nv) == MN_OK && L == 0 && nv == 0, "all ignored");
    TEST_EXPECT(g2[0] == 0 && g2[1] == 0 && g2[2] == 0 && g2[3] == 0, "all ignored: zero gradient");

    /* Soft Dice: confident correct logits give a loss near 0; hand value on one voxel per class. */
    float conf[4] = {20, -20, -20, 20};
    TEST_EXPECT(mn_dice_loss(&two, conf, y2, IGN, 0, 1.0f, 1.0f, &L, NULL) == MN_OK && L < 1e-6, "dice perfect: %g",
                L);
    float half[4] = {0, 0, 0, 0}; /* p = 0.5 everywhere; class 1: I = .5, P = 1, G = 1 */
    TEST_EXPECT(mn_dice_loss(&two, half, y2, IGN, 1, 1.0f, 1.0f, &L, NULL) == MN_OK, "dice");
    TEST_EXPECT(fabs(L - (1.0 - 2.0 / 3.0)) < 1e-7, "dice value %.8f vs 1/3", L);

    /* Hard Dice: 1x3 classes over 4 voxels. */
    mn_shape four = {1, 3, 1, 2, 2};
    /* argmax per voxel: 0, 1, 1, 2 */
    float h[12] = {5, 0, 0, 0, 0, 5, 5, 0, 0, 0, 0, 5};
    int32_t yh[4] = {0, 1, 2, IGN};
    double dice[3];
    TEST_EXPECT(mn_dice_hard(&four, h, yh, IGN, dice) == MN_OK, "hard dice");
    /* class 0: tp 1, pred 1, lab 1 -> 1; class 1: tp 1, pred 2, lab 1 -> 2/3; class 2: tp 0, pred 0, lab 1 -> 0 */
    TEST_EXPECT(fabs(dice[0] - 1) < 1e-12 && fabs(dice[1] - 2.0 / 3.0) < 1e-12 && dice[2] == 0, "hard dice values "
                "%g %g %g", dice[0], dice[1], dice[2]);
    int32_t yabs[4] = {0, 0, 0, IGN};
    float h0[12] = {5, 5, 5, 5, 0, 0, 0, 0, 0, 0, 0, 0};
    TEST_EXPECT(mn_dice_hard(&four, h0, yabs, IGN, dice) == MN_OK && dice[0] == 1 && isnan(dice[1]), "absent: NaN");
}

static void test_errors(void)
{
    mn_shape in = {2, 3, 2, 2, 3};
    size_t n = mn_shape_numel(&in), nv = 24;
    float *x = malloc(n * sizeof(float)), *g = calloc(n, sizeof(float));
    int32_t *y = malloc(nv * sizeof(int32_t));
    mn_test_fill(&g_rng, x, n, 1.0f);
    for (size_t i = 0; i < nv; i++) y[i] = (int32_t)(i % 3);
    double L;
    /* Label 7 at voxel t = 1*12 + 1*6 + 0*3 + 2 = 20: (n=1, z=1, y=0, x=2). */
    y[20] = 7;
    TEST_EXPECT(mn_ce_loss(&in, x, y, IGN, NULL, 1.0f, &L, g, NULL) == MN_ERR_ARG, "label out of range");
    TEST_EXPECT(strstr(mn_error_last(), "label 7") && strstr(mn_error_last(), "n=1, z=1, y=0, x=2"),
                "message names value and voxel: %s", mn_error_last());
    TEST_EXPECT(mn_dice_loss(&in, x, y, IGN, 1, 1.0f, 1.0f, &L, g) == MN_ERR_ARG, "dice label out of range");
    TEST_EXPECT(mn_dice_hard(&in, x, y, IGN, (double[3]){0}) == MN_ERR_ARG, "hard dice label out of range");
    y[20] = -2;
    TEST_EXPECT(mn_ce_loss(&in, x, y, IGN, NULL, 1.0f, &L, g, NULL) == MN_ERR_ARG, "negative label");
    y[20] = IGN;
    TEST_EXPECT(mn_ce_loss(&in, x, y, IGN, NULL, 1.0f, &L, NULL, NULL) == MN_OK, "ignore label accepted");
    /* NaN logit at (n=0, c=2, voxel 5). */
    x[2 * 12 + 5] = NAN;
    TEST_EXPECT(mn_ce_loss(&in, x, y, IGN, NULL, 1.0f, &L, g, NULL) == MN_ERR_NUMERIC, "NaN logit");
    TEST_EXPECT(strstr(mn_error_last(), "non-finite") && strstr(mn_error_last(), "c=2"), "message: %s",
                mn_error_last());
    TEST_EXPECT(mn_dice_loss(&in, x, y, IGN, 0, 1.0f, 1.0f, &L, g) == MN_ERR_NUMERIC, "dice NaN logit");
    x[2 * 12 + 5] = INFINITY;
    TEST_EXPECT(mn_ce_loss(&in, x, y, IGN, NULL, 1.0f, &L, g, NULL) == MN_ERR_NUMERIC, "Inf logit");
    int untouched = 1;
    for (size_t i = 0; i < n; i++) untouched &= g[i] == 0;
    TEST_EXPECT(untouched, "dlogits untouched on error");
    x[2 * 12 + 5] = 0;
    TEST_EXPECT(mn_dice_loss(&in, x, y, IGN, 3, 1.0f, 1.0f, &L, g) == MN_ERR_ARG, "first_class out of range");
    mn_shape bad = {0, 3, 2, 2, 3};
    TEST_EXPECT(mn_ce_loss(&bad, x, y, IGN, NULL, 1.0f, &L, g, NULL) == MN_ERR_SHAPE, "invalid shape");
    free(x), free(g), free(y);
}

int main(void)
{
    mn_error_set_quiet(1);
    printf("loss gradient checks (central differences of scale * loss):\n");
    test_gradients();
    test_vs_double();
    test_values();
    test_errors();
    return mn_test_finish("test_loss");
}
