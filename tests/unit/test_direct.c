/* test_direct.c: the channel-blocked direct kernels (nn/direct.c: convolutions with several input channels) against
 * the loop nests, for every instruction set the CPU has (AVX-512F, AVX2+FMA).  The mn_direct_* functions are called
 * themselves, not through mn_conv3d_forward, so every pass they accept is checked whatever conv3d.c would choose.
 *
 * (a) forward, backward-data and backward-weights against mn_conv3d_forward_ref / mn_conv3d_backward_ref on each
 *     pass mn_direct_eligible accepts, which must be exactly the passes direct.h's rule accepts: MedicalNet's layer1
 *     (64->64 k3 p1), 32->32, stride 2 with odd extents and stride unequal per dimension (backward-data refused), the
 *     1x1x1 stride-2 shortcut, dilation 2 and 4 on volumes where most taps fall in the padding, kernels 3x1x3, 1x3x1
 *     and 2x3x2, padding 0 and padding dil*(k-1) (the most backward-data takes), cin not a multiple of 16 (3, 24,
 *     40), cout of 1, 2, 3 and 5 vectors (tails after the register blocks), output rows of 1, 2, 5, 6, 7, 13, 14, 29
 *     and MN_DIRECT_MAX_OX voxels, batch 1, 2 and 3, with and without bias.  y is prefilled with NaN (must be
 *     overwritten), dx and dw accumulate onto random values, db is not touched; relative error below 1e-4 with a
 *     floor of 1% of the largest reference value (as test_stem);
 * (b) refusals: cin 1, cout not a multiple of the vector width (forward, backward-weights), an output row longer
 *     than MN_DIRECT_MAX_OX, backward-data with stride 2 (also in one dimension only), with cin not a multiple of the
 *     vector width or with padding beyond dil*(k-1); the passes these layers do take run as in (a); a bad pass
 *     number (3, -1); with the kernels turned off (MN_STEM_ISA_NONE) every pass is refused;
 * (c) 1 and 2 threads give bitwise equal y, dx and dw, on layer1 (64->64 k3 p1 at 2x(9x10x11)) and a dilation-2
 *     layer;
 * (d) mn_direct_workspace_floats is > 0 when some pass is eligible and 0 when none is.  The workspace is allocated
 *     with exactly that many floats, and each operand the kernels touch on its own, so AddressSanitizer sees an
 *     overrun.
 */
#include <math.h>
#include <string.h>

#include "mednet/conv3d.h"
#include "mednet/threads.h"
#include "nn/direct.h"
#include "nn/stem.h"
#include "test_util.h"

#define TOL 1e-4

/* Masks of passes (dcase.expect, and what mn_direct_eligible says). */
#define EF (1 << MN_CONV_PASS_FWD)
#define ED (1 << MN_CONV_PASS_BWD_DATA)
#define EW (1 << MN_CONV_PASS_BWD_WEIGHTS)
#define RULE (-1) /* dcase.expect: whatever direct.h's rule says for the vector width in use */

/* One layer and its input (n, cin, d, h, w).  cout < 0 means -cout vectors of the instruction set's width, so the
 * tails differ per instruction set (AVX-512: 16 32 48 80; AVX2: 8 16 24 40). */
typedef struct dcase {
    int cin, cout, k[3], s[3], p[3], dil, n, d, h, w, bias;
    int expect; /* mask of the eligible passes, or RULE */
} dcase;

/* (a) */
static const dcase cases_a[] = {
    /* cin cout  k          s          p       dil n  d  h  w  bias */
    {64, 64, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 2, 6, 7, 9, 1, RULE},   /* MedicalNet layer1 */
    {32, 32, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 5, 6, 7, 0, RULE},   /* ox 7 */
    {64, 128, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, 1, 2, 7, 9, 11, 1, RULE}, /* stride 2, odd extents: ox 6 */
    {32, 64, {3, 3, 3}, {1, 2, 2}, {1, 1, 1}, 1, 1, 5, 7, 15, 0, RULE},  /* stride unequal per dimension */
    {64, 128, {1, 1, 1}, {2, 2, 2}, {0, 0, 0}, 1, 2, 7, 8, 9, 0, RULE},  /* the 1x1x1 stride-2 shortcut */
    {32, 32, {3, 3, 3}, {1, 1, 1}, {2, 2, 2}, 2, 2, 5, 6, 7, 1, RULE},   /* dilation 2 */
    {32, 48, {3, 3, 3}, {1, 1, 1}, {4, 4, 4}, 4, 1, 5, 6, 7, 0, RULE},   /* dilation 4: most taps in padding */
    {16, 32, {3, 1, 3}, {1, 1, 1}, {1, 0, 1}, 1, 1, 6, 5, 7, 1, RULE},
    {32, 16, {1, 3, 1}, {1, 1, 1}, {0, 1, 0}, 1, 2, 4, 6, 5, 0, RULE},   /* ox 5 */
    {16, 48, {2, 3, 2}, {1, 1, 1}, {1, 1, 0}, 1, 1, 5, 6, 7, 1, RULE},
    {32, 32, {3, 3, 3}, {1, 1, 1}, {0, 0, 0}, 1, 2, 6, 7, 9, 0, RULE},   /* padding 0 */
    {16, 16, {3, 3, 3}, {1, 1, 1}, {2, 2, 2}, 1, 1, 4, 5, 6, 1, RULE},   /* padding dil*(k-1) */
    {3, 16, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 2, 6, 7, 9, 1, RULE},    /* cin not a multiple of 16 */
    {24, 32, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 5, 6, 7, 0, RULE},
    {40, 48, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 3, 3, 4, 5, 1, RULE},   /* batch 3 */
    {32, -1, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 5, 6, 1, 1, RULE},   /* cout tails; ox 1 */
    {32, -2, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 4, 5, 13, 0, RULE},  /* ox 13 */
    {16, 32, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 2, 3, 4, 2, 1, RULE},   /* ox 2: the first tap reads only x 0 */
    {16, 16, {3, 3, 3}, {1, 1, 1}, {4, 4, 4}, 4, 1, 5, 6, 14, 0, RULE},  /* dilation 4, ox 14: blocks 4+6+4 */
    {24, -3, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 2, 3, 4, 29, 1, RULE},  /* ox 29 */
    {32, -5, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 4, 5, 6, 0, RULE},
    {16, 16, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 1, 2, MN_DIRECT_MAX_OX, 1, RULE}, /* the longest row */
};

/* (b): explicit expectations, the same for both vector widths (20 and 12 are multiples of neither). */
static const dcase cases_b[] = {
    {1, 64, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 5, 6, 7, 0, 0},       /* one input channel */
    {64, 20, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 5, 6, 7, 1, ED},     /* cout not a multiple */
    {12, 16, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 5, 6, 7, 1, EF | EW}, /* cin not a multiple */
    {64, 64, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 1, 1, 2, MN_DIRECT_MAX_OX + 1, 0, 0}, /* row too long */
    {64, 64, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, 1, 1, 5, 6, 7, 1, EF | EW}, /* stride 2 */
    {64, 64, {3, 3, 3}, {1, 1, 2}, {1, 1, 1}, 1, 1, 5, 6, 7, 0, EF | EW}, /* stride 2 in x only */
    {64, 64, {3, 3, 3}, {1, 1, 1}, {1, 3, 1}, 1, 1, 5, 6, 7, 0, EF | EW}, /* padding 3 > dil*(k-1) = 2 */
    {64, 64, {3, 3, 3}, {1, 1, 1}, {4, 4, 5}, 2, 1, 5, 6, 7, 1, EF | EW}, /* padding 5 > dil*(k-1) = 4 */
    {64, 64, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 1, 1, 3, 4, 5, 0, EF | EW}, /* 1x1x1 with padding */
};

/* (c) */
static const dcase cases_c[] = {
    {64, 64, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 1, 2, 9, 10, 11, 1, EF | ED | EW}, /* layer1 */
    {32, 32, {3, 3, 3}, {1, 1, 1}, {2, 2, 2}, 2, 2, 7, 8, 9, 1, EF | ED | EW},   /* dilation 2 */
};

#define NCASES(t) (sizeof(t) / sizeof *(t))

static double g_worst;
static int g_runs[MN_CONV_NPASS]; /* passes run on the current instruction set */

static double cmp(const float *a, const float *b, size_t n)
{
    double big = 0;
    for (size_t i = 0; i < n; i++) big = fmax(big, fabs(b[i]));
    return mn_test_max_relerr(a, b, n, fmax(1e-6, 0.01 * big));
}

/* The larger of two errors, NaN if either is (fmax would drop it). */
static double worse(double a, double b)
{
    return a != a || a > b ? a : b;
}

static mn_conv3d layer_of(const dcase *c, int vl)
{
    mn_conv3d l;
    memset(&l, 0, sizeof l);
    l.cin = c->cin;
    l.cout = c->cout > 0 ? c->cout : -c->cout * vl;
    for (int i = 0; i < 3; i++) {
        l.k[i] = c->k[i];
        l.s[i] = c->s[i];
        l.p[i] = c->p[i];
        l.dil[i] = c->dil;
    }
    return l;
}

static mn_shape shape_of(const dcase *c)
{
    return (mn_shape){c->n, c->cin, c->d, c->h, c->w};
}

/* direct.h's eligibility rule, written out again (vl 0: the kernels are off). */
static int rule(const mn_conv3d *l, const mn_shape *out, int pass, int vl)
{
    if (vl == 0 || l->cin < 2 || out->w > MN_DIRECT_MAX_OX) return 0;
    if (pass == MN_CONV_PASS_FWD || pass == MN_CONV_PASS_BWD_WEIGHTS) return l->cout % vl == 0;
    if (pass != MN_CONV_PASS_BWD_DATA || l->cin % vl) return 0;
    for (int i = 0; i < 3; i++)
        if (l->s[i] != 1 || l->p[i] > l->dil[i] * (l->k[i] - 1)) return 0;
    return 1;
}

static void case_name(const dcase *c, int vl, char *buf, size_t n)
{
    const mn_conv3d l = layer_of(c, vl);
    snprintf(buf, n, "%d->%d k%d%d%d s%d%d%d p%d%d%d dil%d %dx(%dx%dx%d)%s", l.cin, l.cout, c->k[0], c->k[1],
             c->k[2], c->s[0], c->s[1], c->s[2], c->p[0], c->p[1], c->p[2], c->dil, c->n, c->d, c->h, c->w,
             c->bias ? " bias" : "");
}

/* Floats of y, dx and dw together (what check keeps for (c)). */
static size_t case_floats(const dcase *c, int vl)
{
    const mn_conv3d l = layer_of(c, vl);
    const mn_shape in = shape_of(c);
    mn_shape os;
    if (mn_conv3d_out_shape(&l, &in, &os) != MN_OK) return 0;
    return mn_shape_numel(&in) + mn_shape_numel(&os) + (size_t)l.cout * l.cin * l.k[0] * l.k[1] * l.k[2];
}

/* One case at vector width vl (0: kernels off): eligibility against the rule and c->expect, the workspace size,
 * then each eligible pass against the loop nests.  With keep != NULL, y, dx and dw are copied there
 * (case_floats). */
static void check(const dcase *c, int vl, uint64_t seed, float *keep)
{
    mn_conv3d l = layer_of(c, vl);
    const mn_shape in = shape_of(c);
    mn_shape os;
    char name[96];
    case_name(c, vl, name, sizeof name);
    if (mn_conv3d_out_shape(&l, &in, &os) != MN_OK) {
        TEST_EXPECT(0, "%s: out_shape failed", name);
        return;
    }
    /* which passes run: the library against the rule (a refusal the rule does not make fails) */
    int got = 0, want = 0;
    for (int pass = 0; pass < MN_CONV_NPASS; pass++) {
        const int e = mn_direct_eligible(&l, &in, pass);
        TEST_EXPECT(e == 0 || e == 1, "%s: mn_direct_eligible returned %d for pass %d", name, e, pass);
        got |= e ? 1 << pass : 0;
        want |= rule(&l, &os, pass, vl) << pass;
    }
    TEST_EXPECT(got == want, "%s: eligible passes %#x, direct.h's rule says %#x (fwd 1, bwd-data 2, bwd-w 4)", name,
                got, want);
    if (c->expect != RULE)
        TEST_EXPECT(got == c->expect, "%s: eligible passes %#x, expected %#x", name, got, c->expect);
    /* (d) */
    const size_t nws = mn_direct_workspace_floats(&l, &in);
    TEST_EXPECT(got ? nws > 0 : nws == 0, "%s: workspace of %zu floats with eligible passes %#x", name, nws, got);

    /* operands the kernels touch, each on its own; the references and prefills in one block */
    const size_t nx = mn_shape_numel(&in), ny = mn_shape_numel(&os),
                 nw = (size_t)l.cout * l.cin * l.k[0] * l.k[1] * l.k[2], K = (size_t)l.cout;
    float *x = mn_test_alloc(nx), *y = mn_test_alloc(ny), *dx = mn_test_alloc(nx), *dy = mn_test_alloc(ny);
    float *w = mn_test_alloc(nw), *dw = mn_test_alloc(nw), *b = mn_test_alloc(K), *db = mn_test_alloc(K);
    float *ws = mn_test_alloc(nws);
    float *ref = mn_test_alloc(ny + nx + nw + K), *yr = ref, *dxr = yr + ny, *dwr = dxr + nx, *db0 = dwr + nw;
    mn_test_rng rng = {seed};
    mn_test_fill(&rng, x, nx, 1.0f);
    mn_test_fill(&rng, w, nw, 0.5f);
    mn_test_fill(&rng, b, K, 1.0f);
    mn_test_fill(&rng, dy, ny, 1.0f);
    mn_test_fill(&rng, dx, nx, 1.0f);
    mn_test_fill(&rng, dw, nw, 1.0f);
    mn_test_fill(&rng, db, K, 1.0f);
    memcpy(dxr, dx, nx * sizeof *dx);
    memcpy(dwr, dw, nw * sizeof *dw);
    memcpy(db0, db, K * sizeof *db);
    for (size_t i = 0; i < ny; i++) y[i] = NAN;
    l.w = w;
    l.b = c->bias ? b : NULL;
    l.dw = dw;
    l.db = c->bias ? db : NULL;

    /* the loop nests (only when something runs to compare with), then the eligible passes */
    int ok = 1;
    if (got) {
        mn_conv3d r = l;
        r.dw = dwr;
        r.db = NULL;
        ok = mn_conv3d_forward_ref(&r, &in, x, yr) == MN_OK && mn_conv3d_backward_ref(&r, &in, x, dy, dxr) == MN_OK;
    }
    if (got & EF) ok = ok && mn_direct_forward(&l, &in, &os, x, y, ws) == MN_OK;
    if (got & ED) ok = ok && mn_direct_backward_data(&l, &in, &os, dy, dx, ws) == MN_OK;
    if (got & EW) ok = ok && mn_direct_backward_weights(&l, &in, &os, x, dy, ws) == MN_OK;
    TEST_EXPECT(ok, "%s: a call failed", name);
    TEST_EXPECT(!memcmp(db, db0, K * sizeof *db), "%s: the bias gradient was touched", name);
    for (int pass = 0; pass < MN_CONV_NPASS; pass++) g_runs[pass] += (got >> pass) & 1;

    const double ey = got & EF ? cmp(y, yr, ny) : 0, ex = got & ED ? cmp(dx, dxr, nx) : 0,
                 ew = got & EW ? cmp(dw, dwr, nw) : 0;
    const double e = worse(worse(ey, ex), ew);
    char sy[16] = "-", sx[16] = "-", sw[16] = "-";
    if (got & EF) snprintf(sy, sizeof sy, "%.2e", ey);
    if (got & ED) snprintf(sx, sizeof sx, "%.2e", ex);
    if (got & EW) snprintf(sw, sizeof sw, "%.2e", ew);
    printf("  %-46s ox %3d  y %-8s dx %-8s dw %-8s ws %zu\n", name, os.w, sy, sx, sw, nws);
    TEST_EXPECT(e < TOL, "%s: worst rel err %.3g (y %.3g dx %.3g dw %.3g)", name, e, ey, ex, ew);
    g_worst = worse(g_worst, e);
    if (keep) {
        memcpy(keep, y, ny * sizeof *y);
        memcpy(keep + ny, dx, nx * sizeof *dx);
        memcpy(keep + ny + nx, dw, nw * sizeof *dw);
    }
    float *bufs[] = {x, y, dx, dy, w, dw, b, db, ws, ref};
    for (size_t i = 0; i < NCASES(bufs); i++) free(bufs[i]);
}

/* (a), (b) and (d) on the instruction set in use (vector width vl). */
static void check_isa(int vl)
{
    memset(g_runs, 0, sizeof g_runs);
    for (size_t i = 0; i < NCASES(cases_a); i++) check(&cases_a[i], vl, 100 + i, NULL);
    printf(" refusals:\n");
    for (size_t i = 0; i < NCASES(cases_b); i++) check(&cases_b[i], vl, 200 + i, NULL);
    const mn_conv3d l = layer_of(&cases_a[0], vl);
    const mn_shape in = shape_of(&cases_a[0]);
    TEST_EXPECT(!mn_direct_eligible(&l, &in, MN_CONV_NPASS) && !mn_direct_eligible(&l, &in, -1),
                "layer1: a bad pass number (3 or -1) was accepted");
    TEST_EXPECT(g_runs[MN_CONV_PASS_FWD] > 0 && g_runs[MN_CONV_PASS_BWD_DATA] > 0 &&
                    g_runs[MN_CONV_PASS_BWD_WEIGHTS] > 0,
                "a pass never ran (fwd %d, bwd-data %d, bwd-w %d cases)", g_runs[0], g_runs[1], g_runs[2]);
}

int main(void)
{
    if (mn_threads_init(2) != MN_OK) return 2;
    const int isa0 = mn_stem_isa();
    printf("test_direct: BLIS kernels %s, 2 threads, direct kernels %s\n", mn_blis_arch(), mn_stem_isa_name(isa0));
    const int isas[2] = {MN_STEM_ISA_AVX512, MN_STEM_ISA_AVX2};
    int vls[2] = {0, 0}; /* vector width per instruction set; 0: the CPU lacks it */
    for (int i = 0; i < 2; i++) {
        if (mn_stem_set_isa(isas[i]) < 0) {
            printf("(the CPU lacks %s: not tested)\n", mn_stem_isa_name(isas[i]));
            continue;
        }
        vls[i] = isas[i] == MN_STEM_ISA_AVX512 ? 16 : 8;
        printf("(a), (b), (d) on %s:\n", mn_stem_isa_name(isas[i]));
        check_isa(vls[i]);
    }
    TEST_EXPECT(vls[0] || vls[1] || isa0 == MN_STEM_ISA_NONE, "no instruction set could be tested");

    printf("(b), (d) kernels off:\n");
    TEST_EXPECT(mn_stem_set_isa(MN_STEM_ISA_NONE) >= 0, "turning the kernels off refused");
    dcase off = cases_a[0];
    off.expect = 0;
    check(&off, 0, 300, NULL);
    mn_stem_set_isa(isa0);

    /* (c): every instruction set and case on 2 threads, then again on 1 */
    printf("(c) thread count:\n");
    float *keep[2][2][NCASES(cases_c)] = {{{NULL}}}; /* [2 threads, 1 thread][instruction set][case] */
    for (int t = 0; t < 2; t++) {
        if (t == 1 && mn_threads_init(1) != MN_OK) return 2;
        for (int i = 0; i < 2; i++) {
            if (!vls[i]) continue;
            mn_stem_set_isa(isas[i]);
            for (size_t j = 0; j < NCASES(cases_c); j++) {
                keep[t][i][j] = mn_test_alloc(case_floats(&cases_c[j], vls[i]));
                check(&cases_c[j], vls[i], 400 + j, keep[t][i][j]);
            }
        }
        mn_stem_set_isa(isa0);
    }
    for (int i = 0; i < 2; i++) {
        if (!vls[i]) continue;
        for (size_t j = 0; j < NCASES(cases_c); j++) {
            char name[96];
            case_name(&cases_c[j], vls[i], name, sizeof name);
            const int same = !memcmp(keep[0][i][j], keep[1][i][j], case_floats(&cases_c[j], vls[i]) * sizeof(float));
            TEST_EXPECT(same, "%s on %s: y, dx or dw differ between 1 and 2 threads", name, mn_stem_isa_name(isas[i]));
            printf("  %s on %s: y, dx and dw %s on 1 and 2 threads\n", name, mn_stem_isa_name(isas[i]),
                   same ? "bitwise equal" : "DIFFER");
            free(keep[0][i][j]);
            free(keep[1][i][j]);
        }
    }
    printf("worst relative error vs loop nests: %.3g (tol %.0e)\n", g_worst, TOL);
    return mn_test_finish("test_direct");
}
