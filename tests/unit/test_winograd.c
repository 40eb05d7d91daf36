/* test_winograd.c: the Winograd F(2x2x2, 3x3x3) path of mn_conv3d against the direct loop nests.
 *
 * (a) forward, backward-data and backward-weights forced onto Winograd (l->algo), compared with
 *     mn_conv3d_forward_ref / mn_conv3d_backward_ref on awkward shapes: odd extents, extents smaller than one tile
 *     (1x2x3), dilation 1/2/4 and mixed per dimension, padding 0, 1, d and unequal per dimension, batch 1 and 3,
 *     channels not multiples of 8, with and without bias, and a layer spread over several tile blocks.  y is
 *     overwritten (prefilled with NaN), dx and dw accumulate (prefilled with random values), db too; relative
 *     error below 1e-4 with an absolute floor of 1% of the largest reference value (as test_conv3d);
 * (b) mixed passes (Winograd backward-data with GEMM backward-weights and the reverse) give the same gradients;
 * (c) mn_conv3d_pass_algo reports the path; a layer Winograd cannot run (stride 2, kernel 1) keeps the GEMM path
 *     when asked for Winograd and still matches the reference;
 * (d) mn_conv3d_choose_algo: MEDNET_CONV_ALGO=gemm / winograd force the choice, an unknown value is MN_ERR_ARG,
 *     auto measures and leaves the layer's parameters and gradients untouched, unset applies the rule (GEMM for
 *     this dilated layer); the workspace size follows l->algo and the variable;
 * (e) the default rule (mn_conv3d_rule_algo; MEDNET_CONV_ALGO unset, empty or "rule") picks the recorded algorithm
 *     per pass, on 1 thread and on 2 or more, for the ResNet shapes it was measured on and for the edges of its
 *     thresholds, choose_algo applies it without timing, the workspace counts Winograd only where the rule takes
 *     it, and bad MEDNET_CONV_ALGO values (unknown, wrong case, trailing blank) are MN_ERR_ARG.  The Winograd table
 *     runs with the direct kernels turned off (a CPU without AVX2); a second table checks that, where the CPU has
 *     them, they take every pass they can run of the stride-1 layers with kernels larger than 1, an output of at
 *     least 8^3, and dilation at most 2 or an output of at least 12^3 (the dilation-4 stage at 112^3 input), and
 *     nothing else.  A change of the rule fails here on purpose: measure
 *     again (bench_conv3d --sweep) and update the table and README.
 * (f) the same layer on 1 and on 2 threads gives bitwise equal y and dx (the 64 products of a block are dealt
 *     over the threads, each single-threaded, by mn_gemm_batch; BLIS threads larger ones itself), and dw equal to
 *     fp32 rounding: one thread uses smaller tile blocks, and the weight gradient sums the blocks in order; a layer
 *     that fits one block on both gives a bitwise equal dw too.
 * Runs with 2 threads (the transforms are OpenMP-parallel over channels).
 */
#include <blis.h>
#include <omp.h>
#include <string.h>

#include "mednet/conv3d.h"
#include "mednet/threads.h"
#include "nn/stem.h"
#include "test_util.h"

#define TOL 1e-4

static double g_worst;

/* Worst relative error of a against the reference b, with an absolute floor of 1% of max|b|. */
static double cmp(const float *a, const float *b, size_t n)
{
    double big = 0;
    for (size_t i = 0; i < n; i++) big = fmax(big, fabs(b[i]));
    return mn_test_max_relerr(a, b, n, fmax(1e-6, 0.01 * big));
}

static mn_conv3d mk(int cin, int cout, const int k[3], const int s[3], const int p[3], const int dil[3])
{
    mn_conv3d l;
    memset(&l, 0, sizeof l);
    l.cin = cin;
    l.cout = cout;
    for (int i = 0; i < 3; i++) {
        l.k[i] = k[i];
        l.s[i] = s[i];
        l.p[i] = p[i];
        l.dil[i] = dil[i];
    }
    return l;
}

/* Run the layer with algo[] on every pass and compare with the loop nests.  expect: the name mn_conv3d_pass_algo
 * must report for each pass ("gemm": any GEMM-path name; NULL: not checked). */
static void check(const char *name, mn_conv3d l, mn_shape in, int bias, const unsigned char algo[3],
                  const char *expect, uint64_t seed)
{
    mn_test_rng rng = {seed};
    mn_shape out;
    if (mn_conv3d_out_shape(&l, &in, &out) != MN_OK) {
        TEST_EXPECT(0, "%s: out_shape failed", name);
        return;
    }
    const size_t nx = mn_shape_numel(&in), ny = mn_shape_numel(&out), nw = (size_t)l.cout * l.cin * l.k[0] * l.k[1] *
                                                                          l.k[2];
    const int K = l.cout;
    memcpy(l.algo, algo, sizeof l.algo); /* before sizing the workspace, which depends on it */
    float *x = mn_test_alloc(nx), *w = mn_test_alloc(nw), *b = mn_test_alloc(K), *dy = mn_test_alloc(ny), *y = mn_test_alloc(ny), *yr = mn_test_alloc(ny);
    float *dx = mn_test_alloc(nx), *dxr = mn_test_alloc(nx), *dw = mn_test_alloc(nw), *dwr = mn_test_alloc(nw), *db = mn_test_alloc(K), *dbr = mn_test_alloc(K);
    float *ws = mn_test_alloc(mn_conv3d_workspace_floats(&l, &in));
    mn_test_fill(&rng, x, nx, 1.0f);
    mn_test_fill(&rng, w, nw, 0.5f);
    mn_test_fill(&rng, b, K, 1.0f);
    mn_test_fill(&rng, dy, ny, 1.0f);
    mn_test_fill(&rng, dx, nx, 1.0f);
    memcpy(dxr, dx, nx * sizeof *dx);
    mn_test_fill(&rng, dw, nw, 1.0f);
    memcpy(dwr, dw, nw * sizeof *dw);
    mn_test_fill(&rng, db, K, 1.0f);
    memcpy(dbr, db, K * sizeof *db);
    for (size_t i = 0; i < ny; i++) y[i] = NAN; /* forward must overwrite */
    l.w = w;
    l.b = bias ? b : NULL;
    for (int p = 0; p < MN_CONV_NPASS && expect; p++)
        TEST_EXPECT(!strcmp(expect, "gemm") ? strcmp(mn_conv3d_pass_algo(&l, &in, p), "winograd") != 0
                                            : !strcmp(mn_conv3d_pass_algo(&l, &in, p), expect), "%s: pass %d runs '%s', expected '%s'", name,
                    p, mn_conv3d_pass_algo(&l, &in, p), expect);

    mn_conv3d r = l;
    int ok = mn_conv3d_forward(&l, &in, x, y, ws) == MN_OK && mn_conv3d_forward_ref(&r, &in, x, yr) == MN_OK;
    l.dw = dw;
    l.db = bias ? db : NULL;
    r.dw = dwr;
    r.db = bias ? dbr : NULL;
    ok = ok && mn_conv3d_backward(&l, &in, x, dy, dx, ws) == MN_OK &&
         mn_conv3d_backward_ref(&r, &in, x, dy, dxr) == MN_OK;
    TEST_EXPECT(ok, "%s: a call failed", name);
    const double ey = cmp(y, yr, ny), ex = cmp(dx, dxr, nx), ew = cmp(dw, dwr, nw), eb = cmp(db, dbr, K);
    double e = fmax(fmax(ey, ex), fmax(ew, eb));
    printf("  %-52s y %.2e dx %.2e dw %.2e db %.2e\n", name, ey, ex, ew, eb);
    TEST_EXPECT(e < TOL, "%s: worst rel err %.3g (y %.3g dx %.3g dw %.3g db %.3g)", name, e, ey, ex, ew, eb);
    if (e > g_worst || e != e) g_worst = e;
    free(x);
    free(w);
    free(b);
    free(dy);
    free(y);
    free(yr);
    free(dx);
    free(dxr);
    free(dw);
    free(dwr);
    free(db);
    free(dbr);
    free(ws);
}

/* (d) the choice and its environment variable. */
static void check_choose(void)
{
    const int k3[3] = {3, 3, 3}, s1[3] = {1, 1, 1}, p2[3] = {2, 2, 2}, d2[3] = {2, 2, 2};
    mn_conv3d l = mk(12, 20, k3, s1, p2, d2);
    mn_shape in = {2, 12, 8, 8, 8};
    const size_t nw = (size_t)20 * 12 * 27;
    setenv("MEDNET_CONV_ALGO", "auto", 1); /* the workspace then has room for Winograd */
    float *w = mn_test_alloc(nw), *dw = mn_test_alloc(nw), *ws = mn_test_alloc(mn_conv3d_workspace_floats(&l, &in));
    mn_test_rng rng = {99};
    mn_test_fill(&rng, w, nw, 0.5f);
    mn_test_fill(&rng, dw, nw, 0.5f);
    float w0 = w[7], dw0 = dw[7];
    l.w = w;
    l.dw = dw;
    const size_t wsn = mn_conv3d_workspace_floats(&l, &in);

    setenv("MEDNET_CONV_ALGO", "winograd", 1);
    TEST_EXPECT(mn_conv3d_choose_algo(&l, &in, ws, wsn) == MN_OK, "choose (winograd) failed");
    for (int p = 0; p < MN_CONV_NPASS; p++)
        TEST_EXPECT(l.algo[p] == MN_CONV_ALGO_WINOGRAD, "MEDNET_CONV_ALGO=winograd: pass %d not Winograd", p);
    setenv("MEDNET_CONV_ALGO", "gemm", 1);
    TEST_EXPECT(mn_conv3d_choose_algo(&l, &in, ws, wsn) == MN_OK, "choose (gemm) failed");
    for (int p = 0; p < MN_CONV_NPASS; p++)
        TEST_EXPECT(l.algo[p] == MN_CONV_ALGO_GEMM, "MEDNET_CONV_ALGO=gemm: pass %d not GEMM", p);
    setenv("MEDNET_CONV_ALGO", "fastest", 1);
    fprintf(stderr, "(an error about MEDNET_CONV_ALGO='fastest' is expected next)\n");
    TEST_EXPECT(mn_conv3d_choose_algo(&l, &in, ws, wsn) == MN_ERR_ARG, "MEDNET_CONV_ALGO=fastest accepted");
    setenv("MEDNET_CONV_ALGO", "auto", 1);
    TEST_EXPECT(mn_conv3d_choose_algo(&l, &in, ws, wsn) == MN_OK, "choose (auto) failed");
    printf("  auto choice for 12->20 dil2 8^3 n2: fwd %s, bwd-data %s, bwd-weights %s\n",
           mn_conv3d_pass_algo(&l, &in, 0), mn_conv3d_pass_algo(&l, &in, 1), mn_conv3d_pass_algo(&l, &in, 2));
    TEST_EXPECT(w[7] == w0 && dw[7] == dw0, "choose_algo changed the layer's weights or gradients");
    /* A layer Winograd cannot run is never timed and stays on GEMM. */
    const int s2[3] = {2, 2, 2}, p1[3] = {1, 1, 1};
    mn_conv3d l2 = mk(12, 20, k3, s2, p1, s1);
    l2.w = w;
    TEST_EXPECT(mn_conv3d_choose_algo(&l2, &in, ws, wsn) == MN_OK && l2.algo[0] == MN_CONV_ALGO_GEMM,
                "stride-2 layer: choose failed or chose Winograd");
    unsetenv("MEDNET_CONV_ALGO");
    TEST_EXPECT(mn_conv3d_choose_algo(&l, &in, ws, wsn) == MN_OK && l.algo[0] == MN_CONV_ALGO_GEMM &&
                    l.algo[1] == MN_CONV_ALGO_GEMM && l.algo[2] == MN_CONV_ALGO_GEMM,
                "MEDNET_CONV_ALGO unset (rule), dilated 12->20 layer: not GEMM on every pass");
    TEST_EXPECT(mn_conv3d_workspace_floats(&l, &in) < wsn, "unset variable, GEMM layer: Winograd workspace counted");
    l.algo[1] = MN_CONV_ALGO_WINOGRAD;
    TEST_EXPECT(mn_conv3d_workspace_floats(&l, &in) == wsn, "layer asking for Winograd: its workspace not counted");
        free(w);
    free(dw);
    free(ws);
}

/* One letter per algorithm: "w" Winograd F(2,3), "4" Winograd F(4,3), "x" the direct kernels, "g" the GEMM path. */
static char algo_char(mn_conv_algo a)
{
    return a == MN_CONV_ALGO_WINOGRAD ? 'w' : a == MN_CONV_ALGO_WINOGRAD4 ? '4' : a == MN_CONV_ALGO_DIRECT ? 'x' : 'g';
}

/* (e) The default rule: expected choice per pass (fwd, bwd-data, bwd-weights; letters as algo_char). */
static void check_rule(void)
{
    const int k3[3] = {3, 3, 3}, k1[3] = {1, 1, 1}, s1[3] = {1, 1, 1}, s2[3] = {2, 2, 2}, p0[3] = {0, 0, 0},
              p1[3] = {1, 1, 1}, p2[3] = {2, 2, 2}, p4[3] = {4, 4, 4}, d2[3] = {2, 2, 2}, d4[3] = {4, 4, 4},
              d121[3] = {1, 2, 1};
    struct {
        const char *name;
        mn_conv3d l;
        mn_shape in;
        const char *expect, *expect_mt; /* passes on 1 thread, on 2 or more */
    } t[] = {
        {"layer1 64->64 @16^3 n2", mk(64, 64, k3, s1, p1, s1), {2, 64, 16, 16, 16}, "444", "444"},
        {"layer1 64->64 @28^3 n1", mk(64, 64, k3, s1, p1, s1), {1, 64, 28, 28, 28}, "444", "444"},
        {"layer2 128->128 @8^3 n2", mk(128, 128, k3, s1, p1, s1), {2, 128, 8, 8, 8}, "www", "www"},
        {"layer2 128->128 @14^3 n2", mk(128, 128, k3, s1, p1, s1), {2, 128, 14, 14, 14}, "444", "444"},
        {"layer2.0.conv1 64->128 s2 @16^3", mk(64, 128, k3, s2, p1, s1), {2, 64, 16, 16, 16}, "ggg", "ggg"},
        {"layer3 128->256 d2 @8^3", mk(128, 256, k3, s1, p2, d2), {2, 128, 8, 8, 8}, "www", "www"},
        {"layer3 256->256 d2 @14^3", mk(256, 256, k3, s1, p2, d2), {2, 256, 14, 14, 14}, "444", "444"},
        {"layer4 512->512 d4 @14^3", mk(512, 512, k3, s1, p4, d4), {1, 512, 14, 14, 14}, "ggg", "ggg"},
        {"head 32->32 @16^3", mk(32, 32, k3, s1, p1, s1), {2, 32, 16, 16, 16}, "wgg", "wgg"},
        {"head 32->32 @28^3", mk(32, 32, k3, s1, p1, s1), {1, 32, 28, 28, 28}, "wgg", "wgg"},
        {"1x1 64->64", mk(64, 64, k1, s1, p0, s1), {2, 64, 16, 16, 16}, "ggg", "ggg"},
        {"64->64 @7^3 (below the extent threshold)", mk(64, 64, k3, s1, p1, s1), {2, 64, 7, 7, 7}, "ggg", "ggg"},
        {"64->64 @8x8x7 (smallest extent counts)", mk(64, 64, k3, s1, p1, s1), {2, 64, 8, 8, 7}, "ggg", "ggg"},
        {"64->64 p0 @10^3 (output 8^3)", mk(64, 64, k3, s1, p0, s1), {2, 64, 10, 10, 10}, "www", "www"},
        {"63->64 @16^3 (below 64 channels)", mk(63, 64, k3, s1, p1, s1), {2, 63, 16, 16, 16}, "wgg", "wgg"},
        {"64->31 @16^3 (below 32 channels)", mk(64, 31, k3, s1, p1, s1), {2, 64, 16, 16, 16}, "ggg", "ggg"},
        {"64->64 dilation (1,2,1)", mk(64, 64, k3, s1, p1, d121), {2, 64, 16, 16, 16}, "444", "444"},
        {"64->64 dilation (1,2,1) @12x16x16 n1 (48 tiles; F(2,3) takes one dilation only)",
         mk(64, 64, k3, s1, p1, d121), {1, 64, 12, 16, 16}, "ggg", "ggg"},
        {"64->64 @16^3 n1 (64 tiles: at the F(4,3) threshold)", mk(64, 64, k3, s1, p1, s1), {1, 64, 16, 16, 16}, "444",
         "444"},
        {"64->64 @12x16x16 n1 (48 tiles: below it)", mk(64, 64, k3, s1, p1, s1), {1, 64, 12, 16, 16}, "www", "www"},
        {"512->512 d4 @14^3 n2 (dilation 4: not F(4,3))", mk(512, 512, k3, s1, p4, d4), {2, 512, 14, 14, 14}, "ggg",
         "ggg"},
        {"64->64 @19^3 n1", mk(64, 64, k3, s1, p1, s1), {1, 64, 19, 19, 19}, "444", "444"},
        {"64->64 @20x24x22 n1", mk(64, 64, k3, s1, p1, s1), {1, 64, 20, 24, 22}, "444", "444"},
        {"63->64 d2 @8^3 (below 64 channels: forward only)", mk(63, 64, k3, s1, p2, d2), {2, 63, 8, 8, 8}, "wgg",
         "wgg"},
    };
    const int isa = mn_stem_set_isa(MN_STEM_ISA_NONE); /* the Winograd rule alone */
    const char *envs[] = {NULL, "", "rule"};
    for (size_t e = 0; e < sizeof envs / sizeof envs[0]; e++) {
        if (envs[e])
            setenv("MEDNET_CONV_ALGO", envs[e], 1);
        else
            unsetenv("MEDNET_CONV_ALGO");
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
            mn_conv3d l = t[i].l;
            l.algo[1] = MN_CONV_ALGO_WINOGRAD; /* choose_algo must overwrite every pass */
            TEST_EXPECT(mn_conv3d_choose_algo(&l, &t[i].in, NULL, 0) == MN_OK, "%s: choose (rule) failed", t[i].name);
            int any_w = 0, any_4 = 0;
            for (int p = 0; p < MN_CONV_NPASS; p++) {
                /* This test runs on 2 threads: the choice is the 2-thread one; the 1-thread one is checked too. */
                const char want = t[i].expect_mt[p];
                const mn_conv_algo a1 = mn_conv3d_rule_algo_threads(&t[i].l, &t[i].in, p, 1);
                const mn_conv_algo a4 = mn_conv3d_rule_algo_threads(&t[i].l, &t[i].in, p, 4);
                const char r1 = algo_char(a1), r4 = algo_char(a4);
                TEST_EXPECT(r1 == t[i].expect[p] && r4 == want,
                            "%s, pass %d: rule on 1 / 4 threads says %c / %c, expected %c / %c", t[i].name, p, r1, r4,
                            t[i].expect[p], want);
                const char rule = algo_char(mn_conv3d_rule_algo(&t[i].l, &t[i].in, p));
                const char got = algo_char((mn_conv_algo)l.algo[p]);
                TEST_EXPECT(rule == want && got == want, "%s, MEDNET_CONV_ALGO=%s, pass %d: rule says %c, choose_algo "
                            "set %c, expected %c", t[i].name, envs[e] ? envs[e] : "(unset)", p, rule, got, want);
                any_w |= want == 'w';
                any_4 |= want == '4';
            }
            /* The workspace has Winograd's share exactly when the rule takes Winograd on some pass. */
            mn_conv3d plain = t[i].l;
            const size_t ws_rule = mn_conv3d_workspace_floats(&plain, &t[i].in);
            setenv("MEDNET_CONV_ALGO", "gemm", 1);
            const size_t ws_gemm = mn_conv3d_workspace_floats(&plain, &t[i].in);
            setenv("MEDNET_CONV_ALGO", "winograd", 1);
            const size_t ws_wino = mn_conv3d_workspace_floats(&plain, &t[i].in);
            setenv("MEDNET_CONV_ALGO", "winograd4", 1);
            const size_t ws_wino4 = mn_conv3d_workspace_floats(&plain, &t[i].in);
            if (envs[e])
                setenv("MEDNET_CONV_ALGO", envs[e], 1);
            else
                unsetenv("MEDNET_CONV_ALGO");
            TEST_EXPECT(ws_rule == (any_4 ? ws_wino4 : any_w ? ws_wino : ws_gemm),
                        "%s: rule workspace %zu, GEMM %zu, Winograd %zu, F(4,3) %zu", t[i].name, ws_rule, ws_gemm,
                        ws_wino, ws_wino4);
        }
    }
    printf("  rule checked on %zu shapes (unset, empty, \"rule\"), direct kernels off\n", sizeof t / sizeof t[0]);
    mn_stem_set_isa(isa);
    if (isa != MN_STEM_ISA_NONE) {
        /* x: the direct kernels; the passes they cannot run keep the Winograd rule. */
        struct {
            const char *name;
            mn_conv3d l;
            mn_shape in;
            const char *expect;
        } d[] = {
            {"layer1 64->64 @16^3 n2 (F(4,3) first)", mk(64, 64, k3, s1, p1, s1), {2, 64, 16, 16, 16}, "444"},
            {"layer2.0.conv1 64->128 s2 @16^3 (strided: backward-data on GEMM)", mk(64, 128, k3, s2, p1, s1),
             {2, 64, 16, 16, 16}, "xgx"},
            {"64->128 s2 @14^3 (strided, output 7^3: below the extent)", mk(64, 128, k3, s2, p1, s1),
             {2, 64, 14, 14, 14}, "ggg"},
            {"layer2.0.downsample 256->512 k1 s2 @28^3", mk(256, 512, k1, s2, p0, s1), {1, 256, 28, 28, 28}, "ggg"},
            {"layer3 256->256 d2 @14^3 (F(4,3) first)", mk(256, 256, k3, s1, p2, d2), {2, 256, 14, 14, 14}, "444"},
            {"layer3 256->256 d2 @8^3 n2 (16 tiles)", mk(256, 256, k3, s1, p2, d2), {2, 256, 8, 8, 8}, "xxx"},
            {"layer4 512->512 d4 @14^3", mk(512, 512, k3, s1, p4, d4), {1, 512, 14, 14, 14}, "xxx"},
            {"layer4 512->512 d4 @8^3 (dilated: below the extent)", mk(512, 512, k3, s1, p4, d4), {2, 512, 8, 8, 8},
             "ggg"},
            {"layer4 512->512 d4 @12x12x11", mk(512, 512, k3, s1, p4, d4), {1, 512, 12, 12, 11}, "ggg"},
            {"layer4 256->512 d4 @12^3 (at it)", mk(256, 512, k3, s1, p4, d4), {1, 256, 12, 12, 12}, "xxx"},
            {"64->64 @8x8x7 (below the direct kernels' extent)", mk(64, 64, k3, s1, p1, s1), {2, 64, 8, 8, 7},
             "ggg"},
            {"64->64 @8^3 (at it)", mk(64, 64, k3, s1, p1, s1), {2, 64, 8, 8, 8}, "xxx"},
            {"head 32->32 @28^3", mk(32, 32, k3, s1, p1, s1), {1, 32, 28, 28, 28}, "xxx"},
            {"1x1 64->64", mk(64, 64, k1, s1, p0, s1), {2, 64, 16, 16, 16}, "ggg"},
            {"64->31 @16^3 (cout not a multiple of the vector width: backward-data only)", mk(64, 31, k3, s1, p1, s1),
             {2, 64, 16, 16, 16}, "gxg"},
            {"63->64 @16^3 (backward-data needs cin a multiple)", mk(63, 64, k3, s1, p1, s1), {2, 63, 16, 16, 16},
             "xgx"},
        };
        for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
            for (int p = 0; p < MN_CONV_NPASS; p++) {
                const mn_conv_algo a = mn_conv3d_rule_algo(&d[i].l, &d[i].in, p);
                const char got = algo_char(a);
                TEST_EXPECT(got == d[i].expect[p], "%s, pass %d: rule says %c with the direct kernels, expected %c",
                            d[i].name, p, got, d[i].expect[p]);
            }
        printf("  rule checked on %zu shapes with the direct kernels (%s)\n", sizeof d / sizeof d[0],
               mn_stem_isa_name(isa));
    }
    TEST_EXPECT(mn_conv3d_rule_algo(&t[0].l, &t[0].in, 3) == MN_CONV_ALGO_GEMM &&
                    mn_conv3d_rule_algo(&t[0].l, &t[0].in, -1) == MN_CONV_ALGO_GEMM,
                "rule: a bad pass index is not GEMM");
    const char *bad[] = {"Winograd", "rule ", "fastest", "0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("MEDNET_CONV_ALGO", bad[i], 1);
        mn_conv3d l = t[0].l;
        fprintf(stderr, "(an error about MEDNET_CONV_ALGO='%s' is expected next)\n", bad[i]);
        TEST_EXPECT(mn_conv3d_choose_algo(&l, &t[0].in, NULL, 0) == MN_ERR_ARG, "MEDNET_CONV_ALGO='%s' accepted",
                    bad[i]);
    }
    unsetenv("MEDNET_CONV_ALGO");
}

/* (f) one Winograd layer, all three passes, with nthreads threads: y, dx and dw into out (ny + nx + nw floats). */
static void run_threads(int nthreads, mn_conv3d l, mn_shape in, float *out)
{
    if (mn_threads_init(nthreads) != MN_OK) {
        TEST_EXPECT(0, "mn_threads_init(%d) failed", nthreads);
        return;
    }
    mn_test_rng rng = {4242};
    mn_shape os;
    if (mn_conv3d_out_shape(&l, &in, &os) != MN_OK) return;
    const size_t nx = mn_shape_numel(&in), ny = mn_shape_numel(&os), nw = (size_t)l.cout * l.cin * 27;
    for (int p = 0; p < MN_CONV_NPASS; p++) l.algo[p] = MN_CONV_ALGO_WINOGRAD;
    float *x = mn_test_alloc(nx), *w = mn_test_alloc(nw), *dy = mn_test_alloc(ny);
    float *ws = mn_test_alloc(mn_conv3d_workspace_floats(&l, &in));
    mn_test_fill(&rng, x, nx, 1.0f);
    mn_test_fill(&rng, w, nw, 0.5f);
    mn_test_fill(&rng, dy, ny, 1.0f);
    float *y = out, *dx = out + ny, *dw = dx + nx;
    memset(dx, 0, (nx + nw) * sizeof *dx);
    l.w = w;
    l.b = NULL;
    l.dw = dw;
    l.db = NULL;
    TEST_EXPECT(mn_conv3d_forward(&l, &in, x, y, ws) == MN_OK && mn_conv3d_backward(&l, &in, x, dy, dx, ws) == MN_OK,
                "%d threads: a call failed", nthreads);
    free(x);
    free(w);
    free(dy);
    free(ws);
}

static void check_threads(void)
{
    const int k3[3] = {3, 3, 3}, s1[3] = {1, 1, 1}, p1[3] = {1, 1, 1};
    const struct {
        const char *name;
        mn_shape in;
        int cout, one_block;
    } c[] = {{"32->48 p1 16^3 n2 (several blocks on 1 thread)", {2, 32, 16, 16, 16}, 48, 0},
             {"16->24 p1 6x7x8 n1 (one block)", {1, 16, 6, 7, 8}, 24, 1}};
    for (int i = 0; i < 2; i++) {
        const mn_shape in = c[i].in;
        const mn_conv3d l = mk(in.c, c[i].cout, k3, s1, p1, s1);
        const size_t ny = (size_t)in.n * c[i].cout * in.d * in.h * in.w, nx = mn_shape_numel(&in),
                     nw = (size_t)c[i].cout * in.c * 27, n = ny + nx + nw;
        float *a = mn_test_alloc(n), *b = mn_test_alloc(n);
        run_threads(1, l, in, a);
        run_threads(2, l, in, b);
        TEST_EXPECT(!memcmp(a, b, (ny + nx) * sizeof *a), "%s: y or dx differ between 1 and 2 threads", c[i].name);
        const double ew = cmp(a + ny + nx, b + ny + nx, nw);
        TEST_EXPECT(c[i].one_block ? !memcmp(a + ny + nx, b + ny + nx, nw * sizeof *a) : ew < TOL,
                    "%s: dw differs between 1 and 2 threads (rel err %.3g)", c[i].name, ew);
        printf("  %s: y, dx bitwise equal on 1 and 2 threads; dw rel err %.2e\n", c[i].name, ew);
        free(a);
        free(b);
    }
}

int main(void)
{
    if (mn_threads_init(2) != MN_OK) return 2;
    printf("test_winograd: BLIS kernels %s, 2 threads\n", mn_blis_arch());
    const unsigned char W[3] = {1, 1, 1}, G[3] = {0, 0, 0}, WG[3] = {1, 1, 0}, GW[3] = {0, 0, 1};
    const int k3[3] = {3, 3, 3}, s1[3] = {1, 1, 1};
    struct {
        const char *name;
        int cin, cout, p[3], dil[3];
        mn_shape in;
        int bias;
    } cases[] = {
        {"3->5 p1 7x6x5 n1 bias", 3, 5, {1, 1, 1}, {1, 1, 1}, {1, 3, 7, 6, 5}, 1},
        {"5->7 p0 9x8x7 n3", 5, 7, {0, 0, 0}, {1, 1, 1}, {3, 5, 9, 8, 7}, 0},
        {"4->3 p1 1x2x3 (smaller than a tile) n2 bias", 4, 3, {1, 1, 1}, {1, 1, 1}, {2, 4, 1, 2, 3}, 1},
        {"6->9 p2 dil2 11x10x9 n3 bias", 6, 9, {2, 2, 2}, {2, 2, 2}, {3, 6, 11, 10, 9}, 1},
        {"3->5 p4 dil4 9x10x11 n1", 3, 5, {4, 4, 4}, {4, 4, 4}, {1, 3, 9, 10, 11}, 0},
        {"9->11 p4 dil4 8x8x8 n3 bias (layer4-like)", 9, 11, {4, 4, 4}, {4, 4, 4}, {3, 9, 8, 8, 8}, 1},
        {"10->6 p1 dil2 7x9x5 n2 (p < d)", 10, 6, {1, 1, 1}, {2, 2, 2}, {2, 10, 7, 9, 5}, 0},
        {"5->4 p0 dil2 9x8x7 n1", 5, 4, {0, 0, 0}, {2, 2, 2}, {1, 5, 9, 8, 7}, 1},
        {"7->5 p(0,1,2) dil(1,2,4) 6x9x13 n2 bias", 7, 5, {0, 1, 2}, {1, 2, 4}, {2, 7, 6, 9, 13}, 1},
        {"3->4 p3 dil1 5x4x3 n1 (pad > kernel)", 3, 4, {3, 3, 3}, {1, 1, 1}, {1, 3, 5, 4, 3}, 0},
        {"24->24 p1 15^3 n3 (several tile blocks)", 24, 24, {1, 1, 1}, {1, 1, 1}, {3, 24, 15, 15, 15}, 1},
    };
    const int nc = (int)(sizeof cases / sizeof cases[0]);
    printf("(a) all passes Winograd vs loop nests:\n");
    for (int i = 0; i < nc; i++)
        check(cases[i].name, mk(cases[i].cin, cases[i].cout, k3, s1, cases[i].p, cases[i].dil), cases[i].in,
              cases[i].bias, W, "winograd", 1000 + (uint64_t)i);
    printf("(b) mixed passes:\n");
    check("6->9 p2 dil2 11x10x9 n3: Winograd fwd+data, GEMM weights", mk(6, 9, k3, s1, cases[3].p, cases[3].dil),
          cases[3].in, 1, WG, NULL, 77);
    check("6->9 p2 dil2 11x10x9 n3: GEMM fwd+data, Winograd weights", mk(6, 9, k3, s1, cases[3].p, cases[3].dil),
          cases[3].in, 1, GW, NULL, 78);
    printf("(c) layers Winograd cannot run keep the GEMM path:\n");
    {
        const int s2[3] = {2, 2, 2}, p1[3] = {1, 1, 1}, k1[3] = {1, 1, 1}, p0[3] = {0, 0, 0};
        mn_shape in = {2, 5, 9, 8, 7};
        check("5->7 k3 s2 p1 asked for Winograd", mk(5, 7, k3, s2, p1, s1), in, 1, W, "gemm", 79);
        check("5->7 k1 asked for Winograd", mk(5, 7, k1, s1, p0, s1), in, 0, W, "pointwise", 80);
        check("5->7 k3 p1 GEMM", mk(5, 7, k3, s1, p1, s1), in, 0, G, "gemm", 81);
    }
    printf("(d) choice by measurement and MEDNET_CONV_ALGO:\n");
    check_choose();
    printf("(e) the default rule:\n");
    check_rule();
    printf("(f) thread count:\n");
    check_threads();
    printf("worst relative error vs loop nests: %.3g (tol %.0e)\n", g_worst, TOL);
    return mn_test_finish("test_winograd");
}
